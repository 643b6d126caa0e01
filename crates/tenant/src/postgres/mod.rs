//! Tenants on PostgreSQL: the registry (kept fresh by [`listen`]), and the three
//! isolation levels, each enforced by PostgreSQL's own privileges rather than by the names a
//! query happens to use.
//!
//! | level | provision with | a tenant's query runs... |
//! |---|---|---|
//! | database per tenant | [`database_sql`], then [`TenantPools`] | on a pool of the tenant's own database, logged in as the tenant's own role; `CONNECT` is revoked from `PUBLIC`, so no other tenant's role can open it |
//! | schema per tenant | [`TenantSchema::provision_sql`] (for a `NOINHERIT` login, which it checks), then [`begin_in_schema`] | in a transaction under `SET LOCAL ROLE` to the tenant's role, which owns its schema (revoked from `PUBLIC`), with `search_path` that schema only |
//! | shared schema | [`rls_sql`], then [`begin_for_tenant`] | in a transaction with `app.tenant_id` set locally, under a forced row-level security policy |
//!
//! Settings are always transaction-local (`set_config(..., true)`), so a pooled connection
//! handed to the next tenant carries nothing over; a query outside such a transaction sees
//! no tenant's rows (the policy compares with an unset setting, which is never equal).
//!
//! What holds, and is tested against a real PostgreSQL: inside the library's transaction or
//! pool for tenant A, no query reads or writes tenant B's rows, whatever name it uses
//! (qualified, `search_path` changed, another database). What does not: SQL that itself
//! changes the role or the setting (`RESET ROLE`, `SET ROLE`, `set_config('app.tenant_id',
//! ...)`) leaves the tenant, so never build SQL from client input; only database per tenant,
//! where the connection itself logs in as the tenant, survives that.
//!
//! ```no_run
//! use tower_patterns_core::tenant::TenantId;
//! use tower_patterns_tenant::postgres::begin_for_tenant;
//!
//! # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
//! let acme = TenantId::new("acme").unwrap();
//! let tx = begin_for_tenant(client, &acme).await?;
//! let rows = tx.query("SELECT id, total FROM orders", &[]).await?; // acme's orders only
//! tx.commit().await?;
//! # let _ = rows; Ok(()) }
//! ```
//!
//! The module's parts: the registry's store ([`PostgresTenants`]) and its [`listen`]er, and
//! one file per isolation level (shared schema, schema per tenant, database per tenant).

mod database;
mod listen;
mod names;
mod registry;
mod rls;
mod schema;

pub use database::{TenantPools, database_sql};
pub use listen::{RegistryListener, listen};
pub use registry::{CHANGES_CHANNEL, PostgresTenants};
pub use rls::{begin_for_tenant, rls_sql};
pub use schema::{TENANT_ROLES, TenantSchema, begin_in_schema};
