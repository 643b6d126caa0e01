//! Shared schema: forced row-level security on `app.tenant_id`, set per transaction.

use tokio_postgres::{Client, Transaction};
use tower_patterns_core::{ConfigError, tenant::TenantId};

use super::names::identifier;

/// Shared schema: begins a transaction in which `app.tenant_id` is `tenant`, for the policy
/// [`rls_sql`] installs. The setting ends with the transaction.
///
/// # Errors
///
/// When PostgreSQL fails.
pub async fn begin_for_tenant<'c>(
    client: &'c mut Client,
    tenant: &TenantId,
) -> Result<Transaction<'c>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT set_config('app.tenant_id', $1, true)",
        &[&tenant.as_str()],
    )
    .await?;
    Ok(tx)
}

/// The DDL that puts `table` (with a `tenant_id text` column) under row-level security for
/// `role`: enabled and **forced** (so the owner is bound too), a policy that admits a row
/// only when its `tenant_id` is the transaction's `app.tenant_id` (reads, and writes through
/// `WITH CHECK`), and the grants `role` needs. `role` must not own the table, be a superuser
/// or have `BYPASSRLS`.
///
/// ```
/// let ddl = tower_patterns_tenant::postgres::rls_sql("orders", "app").unwrap();
/// assert!(ddl.contains("FORCE ROW LEVEL SECURITY"));
/// assert!(tower_patterns_tenant::postgres::rls_sql("orders; DROP TABLE x", "app").is_err());
/// ```
///
/// # Errors
///
/// A [`ConfigError`] when a name is not a plain lower-case identifier.
pub fn rls_sql(table: &str, role: &str) -> Result<String, ConfigError> {
    identifier("table", table)?;
    identifier("role", role)?;
    Ok(format!(
        "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
         DROP POLICY IF EXISTS tp_tenant_isolation ON {table};
         CREATE POLICY tp_tenant_isolation ON {table}
             USING (tenant_id = current_setting('app.tenant_id', true))
             WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
         GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role};"
    ))
}
