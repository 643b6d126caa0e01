//! Database per tenant: the tenant's own login role and database, one pool per tenant.

use std::{fmt, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tower_patterns_core::{ConfigError, tenant::TenantId};

use super::names::quoted;

/// Database per tenant: the statements, run one at a time by an administrator (`CREATE
/// DATABASE` cannot share a transaction), that create the login role `database` (the name
/// [`TenantPools`] logs in with) and the database it owns, with `CONNECT` and `TEMPORARY`
/// revoked from `PUBLIC`: no other tenant's role can open it. Create the tenant's tables
/// through its pool, so its role owns them.
///
/// ```
/// let ddl = tower_patterns_tenant::postgres::database_sql("shop_acme", Some("s3cret")).unwrap();
/// assert_eq!(ddl.len(), 3);
/// assert!(ddl[2].contains("REVOKE ALL ON DATABASE \"shop_acme\" FROM PUBLIC"));
/// ```
///
/// # Errors
///
/// A [`ConfigError`] when `database` is not 1 to 63 bytes of `[A-Za-z0-9._-]`.
pub fn database_sql(database: &str, password: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let name = quoted("database", database)?;
    let password = password.map_or_else(String::new, |p| {
        format!(" PASSWORD '{}'", p.replace('\'', "''"))
    });
    Ok(vec![
        format!(
            "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS{password}"
        ),
        format!("CREATE DATABASE {name} OWNER {name}"),
        format!("REVOKE ALL ON DATABASE {name} FROM PUBLIC"),
    ])
}

/// Sets the user and password a tenant's pool logs in with (see [`TenantPools::credentials`]).
type Credentials = Arc<dyn Fn(&TenantId, &mut tokio_postgres::Config) + Send + Sync>;

/// Database per tenant: one pool per tenant database, created on first use (once, however
/// many requests race for it), at most `max_pools` at once (the least used are closed),
/// `pool_size` connections each. Each pool logs in as the role named after the database
/// ([`database_sql`] creates both), with the base configuration's password, unless
/// [`credentials`](Self::credentials) says otherwise.
pub struct TenantPools {
    base: tokio_postgres::Config,
    database: fn(&TenantId) -> String,
    credentials: Credentials,
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
    /// Pools made from `base` (host, port, password) with the database `database(tenant)`,
    /// logged in as the role of the same name.
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
            credentials: Arc::new(|_, _| {}),
            pool_size,
            pools: moka::sync::Cache::builder()
                .max_capacity(max_pools)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        })
    }

    /// Sets each tenant's login (user, password...) on the configuration of its pool, after
    /// the database and the default user are set: a per-tenant password from a secret store,
    /// say. Called once per pool built.
    #[must_use]
    pub fn credentials(
        mut self,
        set: impl Fn(&TenantId, &mut tokio_postgres::Config) + Send + Sync + 'static,
    ) -> Self {
        self.credentials = Arc::new(set);
        self
    }

    /// The pool of `tenant`'s database. Concurrent first calls for one tenant build one
    /// pool, which they all get.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the pool cannot be built.
    pub fn pool(&self, tenant: &TenantId) -> Result<Pool, ConfigError> {
        self.pools
            .try_get_with_by_ref(tenant, || self.build(tenant))
            .map_err(|e| (*e).clone())
    }

    fn build(&self, tenant: &TenantId) -> Result<Pool, ConfigError> {
        let mut config = self.base.clone();
        let database = (self.database)(tenant);
        config.dbname(&database).user(&database);
        (self.credentials)(tenant, &mut config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(self.pool_size)
            .build()
            .map_err(|e| ConfigError::new("pool", e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::PostgresTenants;

    fn id(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn pools_are_bounded_and_built_without_connecting() {
        let base = tokio_postgres::Config::new();
        assert!(TenantPools::new(base.clone(), |t| t.to_string(), 0, 1).is_err());
        assert!(TenantPools::new(base.clone(), |t| t.to_string(), 1, 0).is_err());
        let pools = TenantPools::new(base, |t| format!("db_{t}"), 4, 3).unwrap();
        assert!(pools.is_empty());
        let pool = pools.pool(&id("acme")).unwrap();
        assert_eq!(pool.status().max_size, 3);
        assert_eq!(pools.len(), 1);
        assert!(!pools.is_empty());
        assert!(format!("{pools:?}").contains("pool_size: 3"));
        let store = PostgresTenants::new(pool);
        assert!(format!("{store:?}").starts_with("PostgresTenants"));
    }
}
