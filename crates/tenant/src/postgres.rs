//! Tenants on PostgreSQL: the registry, and the seed's three isolation levels.
//!
//! | level | here | a tenant's query runs... |
//! |---|---|---|
//! | database per tenant | [`TenantPools`] | on a pool of the tenant's own database (a bounded number of pools) |
//! | schema per tenant | [`TenantSchema`] + [`begin_in_schema`] | in a transaction whose `search_path` is the tenant's schema (`SET LOCAL`) |
//! | shared schema | [`begin_for_tenant`] + [`rls_sql`] | in a transaction with `app.tenant_id` set locally, under a row-level security policy |
//!
//! Settings are always transaction-local (`set_config(..., true)`), so a pooled connection
//! handed to the next tenant carries nothing over; a query outside such a transaction sees
//! no tenant's rows (the policy compares with an unset setting, which is never equal).
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

use std::{fmt, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, NoTls, Transaction};
use tower_patterns_core::{
    ConfigError,
    tenant::{TenantError, TenantErrorKind, TenantId},
};

use crate::{ApiKeyHash, StoreError, TenantRecord, TenantStatus, TenantStore};

/// The registry in PostgreSQL: tables `tp_tenants (id, plan, status)` and
/// `tp_tenant_api_keys (sha256, tenant_id)`; [`PostgresTenants::migrate`] creates them.
#[derive(Clone)]
pub struct PostgresTenants {
    pool: Pool,
}

impl fmt::Debug for PostgresTenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTenants").finish_non_exhaustive()
    }
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError(Box::new(e))
}

impl PostgresTenants {
    /// A registry over `pool`.
    pub const fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Creates the registry's tables if they are missing.
    ///
    /// # Errors
    ///
    /// When PostgreSQL fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(store_err)?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS tp_tenants (
                    id text PRIMARY KEY,
                    plan text NOT NULL DEFAULT 'free',
                    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')));
                 CREATE TABLE IF NOT EXISTS tp_tenant_api_keys (
                    sha256 bytea PRIMARY KEY CHECK (length(sha256) = 32),
                    tenant_id text NOT NULL REFERENCES tp_tenants (id) ON DELETE CASCADE);",
            )
            .await
            .map_err(store_err)
    }
}

impl TenantStore for PostgresTenants {
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let client = self.pool.get().await.map_err(store_err)?;
        let row = client
            .query_opt(
                "SELECT plan, status FROM tp_tenants WHERE id = $1",
                &[&id.as_str()],
            )
            .await
            .map_err(store_err)?;
        Ok(row.map(|row| TenantRecord {
            id: id.clone(),
            plan: row.get::<_, String>(0).into(),
            status: if row.get::<_, String>(1) == "suspended" {
                TenantStatus::Suspended
            } else {
                TenantStatus::Active
            },
        }))
    }

    async fn tenant_by_api_key(&self, hash: &ApiKeyHash) -> Result<Option<TenantId>, StoreError> {
        let client = self.pool.get().await.map_err(store_err)?;
        let row = client
            .query_opt(
                "SELECT tenant_id FROM tp_tenant_api_keys WHERE sha256 = $1",
                &[&hash.as_slice()],
            )
            .await
            .map_err(store_err)?;
        row.map(|row| TenantId::new(row.get::<_, &str>(0)).map_err(store_err))
            .transpose()
    }
}

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

fn identifier(what: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            what,
            format!("{name:?} is not a lower-case SQL identifier"),
        ))
    }
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

/// The schema of one tenant: `t_` and its id, quoted (ids keep their case and punctuation),
/// checked against PostgreSQL's 63-byte limit, which would otherwise truncate two ids to one
/// schema.
///
/// ```
/// use tower_patterns_core::tenant::TenantId;
/// use tower_patterns_tenant::postgres::TenantSchema;
///
/// let schema = TenantSchema::new(&TenantId::new("acme").unwrap()).unwrap();
/// assert_eq!(schema.quoted(), "\"t_acme\"");
/// assert!(TenantSchema::new(&TenantId::new(&"a".repeat(62)).unwrap()).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSchema(String);

impl TenantSchema {
    /// The schema of `tenant`.
    ///
    /// # Errors
    ///
    /// A [`TenantError`] (malformed) when the name would be longer than 63 bytes.
    pub fn new(tenant: &TenantId) -> Result<Self, TenantError> {
        let name = format!("t_{tenant}");
        if name.len() > 63 {
            return Err(TenantError::new(
                TenantErrorKind::Malformed,
                "tenant id too long for a schema name",
            ));
        }
        Ok(Self(name))
    }

    /// The name, unquoted.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name quoted as an identifier (ids are `[A-Za-z0-9._-]`: nothing to escape).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// Schema per tenant: begins a transaction whose `search_path` is the tenant's schema only.
/// Unqualified names then resolve in that schema; the setting ends with the transaction.
///
/// # Errors
///
/// When PostgreSQL fails.
pub async fn begin_in_schema<'c>(
    client: &'c mut Client,
    schema: &TenantSchema,
) -> Result<Transaction<'c>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT set_config('search_path', $1, true)",
        &[&schema.quoted()],
    )
    .await?;
    Ok(tx)
}

/// Database per tenant: one pool per tenant database, created on first use, at most
/// `max_pools` at once (the least used are closed), `pool_size` connections each.
pub struct TenantPools {
    base: tokio_postgres::Config,
    database: fn(&TenantId) -> String,
    pool_size: usize,
    pools: moka::sync::Cache<TenantId, Pool>,
}

impl fmt::Debug for TenantPools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantPools")
            .field("pools", &self.pools.entry_count())
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl TenantPools {
    /// Pools made from `base` (host, user, password) with the database `database(tenant)`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for zero pools or a zero pool size.
    pub fn new(
        base: tokio_postgres::Config,
        database: fn(&TenantId) -> String,
        max_pools: u64,
        pool_size: usize,
    ) -> Result<Self, ConfigError> {
        if max_pools == 0 || pool_size == 0 {
            return Err(ConfigError::new(
                "pools",
                "need at least one pool of one connection",
            ));
        }
        Ok(Self {
            base,
            database,
            pool_size,
            pools: moka::sync::Cache::builder()
                .max_capacity(max_pools)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        })
    }

    /// The pool of `tenant`'s database.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the pool cannot be built.
    pub fn pool(&self, tenant: &TenantId) -> Result<Pool, ConfigError> {
        if let Some(pool) = self.pools.get(tenant) {
            return Ok(pool);
        }
        let mut config = self.base.clone();
        config.dbname((self.database)(tenant));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .build()
            .map_err(|e| ConfigError::new("pool", e.to_string()))?;
        self.pools.insert(tenant.clone(), pool.clone());
        Ok(pool)
    }

    /// The number of open pools, after pending maintenance.
    pub fn len(&self) -> u64 {
        self.pools.run_pending_tasks();
        self.pools.entry_count()
    }

    /// Whether no pool is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
