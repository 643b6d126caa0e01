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

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{
    AsyncMessage, Client, Connection, NoTls, Socket, Transaction, tls::NoTlsStream,
};
use tower_patterns_core::{
    ConfigError,
    tenant::{TenantError, TenantErrorKind, TenantId},
};

use crate::{
    ApiKeyHash, Registry, StoreError, TenantRecord, TenantStatus, TenantStore, registry::parse_hash,
};

/// The channel on which the registry's tables announce their changes.
pub const CHANGES_CHANNEL: &str = "tp_tenant_changes";

/// The registry in PostgreSQL: tables `tp_tenants (id, plan, status)` and
/// `tp_tenant_api_keys (sha256, tenant_id)`; [`PostgresTenants::migrate`] creates them, with
/// triggers that announce every change on [`CHANGES_CHANNEL`] for [`listen`].
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

    /// Creates the registry's tables if they are missing, and (re)creates the triggers that
    /// announce their changes: `tenant:<id>` for a row of `tp_tenants` (its old and new id),
    /// `key:<hex sha256>` for a row of `tp_tenant_api_keys`, `all` for a `TRUNCATE`.
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
                    tenant_id text NOT NULL REFERENCES tp_tenants (id) ON DELETE CASCADE);
                 CREATE OR REPLACE FUNCTION tp_tenants_notify() RETURNS trigger
                 LANGUAGE plpgsql AS $$
                 BEGIN
                    IF TG_OP = 'TRUNCATE' THEN
                        PERFORM pg_notify('tp_tenant_changes', 'all');
                    ELSIF TG_TABLE_NAME = 'tp_tenants' THEN
                        IF TG_OP <> 'INSERT' THEN
                            PERFORM pg_notify('tp_tenant_changes', 'tenant:' || OLD.id);
                        END IF;
                        IF TG_OP <> 'DELETE' THEN
                            PERFORM pg_notify('tp_tenant_changes', 'tenant:' || NEW.id);
                        END IF;
                    ELSE
                        IF TG_OP <> 'INSERT' THEN
                            PERFORM pg_notify('tp_tenant_changes', 'key:' || encode(OLD.sha256, 'hex'));
                        END IF;
                        IF TG_OP <> 'DELETE' THEN
                            PERFORM pg_notify('tp_tenant_changes', 'key:' || encode(NEW.sha256, 'hex'));
                        END IF;
                    END IF;
                    RETURN NULL;
                 END $$;
                 DROP TRIGGER IF EXISTS tp_tenants_notify ON tp_tenants;
                 CREATE TRIGGER tp_tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tp_tenants
                    FOR EACH ROW EXECUTE FUNCTION tp_tenants_notify();
                 DROP TRIGGER IF EXISTS tp_tenants_notify_truncate ON tp_tenants;
                 CREATE TRIGGER tp_tenants_notify_truncate AFTER TRUNCATE ON tp_tenants
                    FOR EACH STATEMENT EXECUTE FUNCTION tp_tenants_notify();
                 DROP TRIGGER IF EXISTS tp_tenants_notify ON tp_tenant_api_keys;
                 CREATE TRIGGER tp_tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tp_tenant_api_keys
                    FOR EACH ROW EXECUTE FUNCTION tp_tenants_notify();
                 DROP TRIGGER IF EXISTS tp_tenants_notify_truncate ON tp_tenant_api_keys;
                 CREATE TRIGGER tp_tenants_notify_truncate AFTER TRUNCATE ON tp_tenant_api_keys
                    FOR EACH STATEMENT EXECUTE FUNCTION tp_tenants_notify();",
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

/// Keeps a [`Registry`] over [`PostgresTenants`] in step with its tables, returned by
/// [`listen`]: a task on its own connection (not one of the pool's) that `LISTEN`s on
/// [`CHANGES_CHANNEL`] and invalidates each changed tenant or key at once, so a revoked key
/// or a suspension applies to the next request rather than when the cache entry expires.
///
/// When the connection drops, everything cached is invalidated (changes may be missed while
/// it is down), and the task reconnects, backing off from 100 ms to 30 s, and invalidates
/// everything again once it listens. Dropping the handle stops the task.
#[derive(Debug)]
pub struct RegistryListener {
    task: tokio::task::JoinHandle<()>,
    notifications: Arc<AtomicU64>,
}

impl RegistryListener {
    /// How many notifications the task has applied so far.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::SeqCst)
    }
}

impl Drop for RegistryListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts keeping `registry` in step with the registry tables of the database `config`
/// names (see [`RegistryListener`]). Returns once the first connection listens, so a change
/// committed after this returns is seen. Call [`PostgresTenants::migrate`] first: it installs
/// the triggers that send the notifications.
///
/// # Errors
///
/// When the first connection or its `LISTEN` fails.
pub async fn listen(
    registry: Registry<PostgresTenants>,
    config: tokio_postgres::Config,
) -> Result<RegistryListener, StoreError> {
    let first = connect_listening(&config).await.map_err(store_err)?;
    let notifications = Arc::new(AtomicU64::new(0));
    let count = notifications.clone();
    let task = tokio::spawn(async move {
        let mut listening = Some(first);
        let mut backoff = FIRST_BACKOFF;
        loop {
            if let Some((client, mut connection, early)) = listening.take() {
                backoff = FIRST_BACKOFF;
                for payload in early {
                    apply(&registry, &payload);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx))
                    .await
                    .and_then(Result::ok)
                {
                    if let AsyncMessage::Notification(note) = message {
                        apply(&registry, note.payload());
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
                drop(client);
                tracing::warn!(
                    target: "tower_patterns::tenant",
                    "tenant registry notifications lost; the cache is cleared until they resume"
                );
                registry.invalidate_all();
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            if let Ok(again) = connect_listening(&config).await {
                // Changes made while no one listened were not announced.
                registry.invalidate_all();
                listening = Some(again);
            }
        }
    });
    Ok(RegistryListener {
        task,
        notifications,
    })
}

/// The wait before the first reconnection of the listener.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The wait after `backoff` when reconnecting failed again: doubled, at most 30 s.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(Duration::from_secs(30))
}

/// A listening connection, and the notifications read while its `LISTEN` completed.
type Listening = (Client, Connection<Socket, NoTlsStream>, Vec<String>);

/// A connection that listens on [`CHANGES_CHANNEL`]: the `LISTEN` is sent while the
/// connection is driven by hand, which must go on doing so to receive the notifications.
/// Those that arrive with the `LISTEN`'s answer are kept for the caller to apply.
async fn connect_listening(
    config: &tokio_postgres::Config,
) -> Result<Listening, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut closed = false;
    let mut early = Vec::new();
    {
        let mut statement = std::pin::pin!(client.batch_execute("LISTEN tp_tenant_changes"));
        std::future::poll_fn(|cx| {
            while !closed {
                match connection.poll_message(cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(note)))) => {
                        early.push(note.payload().to_owned());
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => closed = true,
                    Poll::Pending => break,
                }
            }
            statement.as_mut().poll(cx)
        })
        .await?;
    }
    Ok((client, connection, early))
}

/// Applies one notification: `tenant:<id>`, `key:<hex sha256>`, or anything else (`all`)
/// which clears the whole cache.
fn apply(registry: &Registry<PostgresTenants>, payload: &str) {
    if let Some(id) = payload.strip_prefix("tenant:") {
        // An id that is not a valid tenant id was never cached.
        if let Ok(id) = TenantId::new(id) {
            registry.invalidate(&id);
        }
    } else if let Some(hash) = payload.strip_prefix("key:").and_then(parse_hash) {
        registry.invalidate_api_key(&hash);
    } else {
        registry.invalidate_all();
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

/// A quoted identifier for a name of `[A-Za-z0-9._-]`, 1 to 63 bytes (nothing to escape;
/// PostgreSQL would silently truncate a longer one, merging two tenants' names).
fn quoted(what: &'static str, name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(format!("\"{name}\""))
    } else {
        Err(ConfigError::new(
            what,
            format!("{name:?} is not 1 to 63 bytes of letters, digits, '.', '_' and '-'"),
        ))
    }
}

/// The schema of one tenant, and the role of the same name that owns it: `t_` and the id
/// (or a prefix of your own, [`TenantSchema::with_prefix`]), quoted (ids keep their case and
/// punctuation), checked against PostgreSQL's 63-byte limit, which would otherwise truncate
/// two ids to one schema.
///
/// Roles are shared by every database of the server: give each application its own prefix,
/// or two applications' tenants of one id would share a role.
///
/// ```
/// use tower_patterns_core::tenant::TenantId;
/// use tower_patterns_tenant::postgres::TenantSchema;
///
/// let acme = TenantId::new("acme").unwrap();
/// let schema = TenantSchema::new(&acme).unwrap();
/// assert_eq!(schema.quoted(), "\"t_acme\"");
/// assert_eq!(TenantSchema::with_prefix("shop", &acme).unwrap().name(), "shop_acme");
/// assert!(TenantSchema::new(&TenantId::new(&"a".repeat(62)).unwrap()).is_err());
/// let ddl = schema.provision_sql("app").unwrap();
/// assert!(ddl.contains("REVOKE ALL ON SCHEMA \"t_acme\" FROM PUBLIC"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSchema(String);

impl TenantSchema {
    /// The schema (and role) `t_<tenant>`.
    ///
    /// # Errors
    ///
    /// A [`TenantError`] (malformed) when the name would be longer than 63 bytes.
    pub fn new(tenant: &TenantId) -> Result<Self, TenantError> {
        Self::named(format!("t_{tenant}"))
    }

    /// The schema (and role) `<prefix>_<tenant>`.
    ///
    /// # Errors
    ///
    /// A [`TenantError`] (malformed) when the prefix is not a lower-case SQL identifier or
    /// the name would be longer than 63 bytes.
    pub fn with_prefix(prefix: &str, tenant: &TenantId) -> Result<Self, TenantError> {
        identifier("prefix", prefix)
            .map_err(|e| TenantError::new(TenantErrorKind::Malformed, e.to_string()))?;
        Self::named(format!("{prefix}_{tenant}"))
    }

    fn named(name: String) -> Result<Self, TenantError> {
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

    /// The DDL, run once by an administrator, that makes the schema the tenant's alone: a
    /// role of the schema's name (`NOLOGIN`: it is only ever entered with `SET LOCAL ROLE`)
    /// that owns the schema, `ALL` on the schema revoked from `PUBLIC`, and membership of
    /// that role for `app_role`, the role the application logs in as, so that
    /// [`begin_in_schema`] may switch to it. Idempotent.
    ///
    /// Every tenant role is made a member of the marker group [`TENANT_ROLES`] (`NOLOGIN`,
    /// created here when missing). A role that already has the tenant's name is reused only
    /// when it is one of those: a direct member of the group, `NOLOGIN`, neither superuser
    /// nor `CREATEROLE`, `CREATEDB`, `REPLICATION` or `BYPASSRLS`. Any other role of that
    /// name (an administrator's, the application's own) makes the DDL raise an exception and
    /// change nothing, rather than hand that role to the application.
    ///
    /// `app_role` must exist, not be superuser, and be `NOINHERIT` (`ALTER ROLE app
    /// NOINHERIT`): a member of every tenant's role that inherited their privileges would
    /// read every tenant's schema in any query outside [`begin_in_schema`]. The DDL raises an
    /// exception otherwise. Create the tenant's tables through [`begin_in_schema`] (its role
    /// then owns them).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `app_role` is not a lower-case SQL identifier, or it or the
    /// tenant's role is the marker group, or they are one role.
    pub fn provision_sql(&self, app_role: &str) -> Result<String, ConfigError> {
        identifier("role", app_role)?;
        if self.0 == app_role || app_role == TENANT_ROLES {
            return Err(ConfigError::new(
                "role",
                format!(
                    "{app_role:?} is the tenant's role or the marker group, not an application's"
                ),
            ));
        }
        if self.0 == TENANT_ROLES {
            return Err(ConfigError::new(
                "tenant",
                format!("{TENANT_ROLES:?} is the marker group, not a tenant's role"),
            ));
        }
        let name = self.quoted();
        let bare = &self.0; // [A-Za-z0-9._-]: safe inside a string literal too
        Ok(format!(
            "DO $$
             DECLARE
                 r pg_roles%ROWTYPE;
                 inherits boolean;
             BEGIN
                 SELECT * INTO r FROM pg_roles WHERE rolname = '{app_role}';
                 IF NOT FOUND THEN
                     RAISE EXCEPTION 'application role \"{app_role}\" does not exist';
                 END IF;
                 -- From PostgreSQL 16 on, NOINHERIT is only the default of new grants: a
                 -- membership granted while the role inherited keeps inheriting.
                 IF current_setting('server_version_num')::int >= 160000 THEN
                     EXECUTE 'SELECT EXISTS (SELECT FROM pg_auth_members
                                             WHERE member = $1 AND inherit_option)'
                         INTO inherits USING r.oid;
                     IF inherits THEN
                         RAISE EXCEPTION 'application role \"{app_role}\" inherits the privileges of a role it was granted'
                             USING HINT = 'grant each such role again WITH INHERIT FALSE';
                     END IF;
                 END IF;
                 IF r.rolsuper OR r.rolbypassrls THEN
                     RAISE EXCEPTION 'application role \"{app_role}\" is superuser or BYPASSRLS: it would bypass every tenant''s isolation';
                 END IF;
                 IF r.rolinherit THEN
                     RAISE EXCEPTION 'application role \"{app_role}\" inherits its roles'' privileges: it would read every tenant''s schema'
                         USING HINT = 'ALTER ROLE \"{app_role}\" NOINHERIT';
                 END IF;
                 BEGIN
                     CREATE ROLE \"{TENANT_ROLES}\" NOLOGIN NOINHERIT;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END;
                 SELECT * INTO r FROM pg_roles WHERE rolname = '{TENANT_ROLES}';
                 IF r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb
                     OR r.rolreplication OR r.rolbypassrls THEN
                     RAISE EXCEPTION 'role \"{TENANT_ROLES}\" exists and is not a NOLOGIN group without attributes';
                 END IF;
                 BEGIN
                     CREATE ROLE {name} NOLOGIN NOINHERIT IN ROLE \"{TENANT_ROLES}\";
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END;
                 SELECT * INTO r FROM pg_roles WHERE rolname = '{bare}';
                 IF r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb
                     OR r.rolreplication OR r.rolbypassrls OR r.rolinherit
                     OR NOT EXISTS (
                         SELECT FROM pg_auth_members
                         WHERE member = r.oid
                           AND roleid = (SELECT oid FROM pg_roles WHERE rolname = '{TENANT_ROLES}'))
                 THEN
                     RAISE EXCEPTION 'role \"{bare}\" exists and is not a tenant role: refusing to grant it to \"{app_role}\"'
                         USING HINT = 'tenant roles are NOLOGIN members of \"{TENANT_ROLES}\" without attributes; rename that role or choose another prefix';
                 END IF;
             END $$;
             CREATE SCHEMA IF NOT EXISTS {name} AUTHORIZATION {name};
             ALTER SCHEMA {name} OWNER TO {name};
             REVOKE ALL ON SCHEMA {name} FROM PUBLIC;
             GRANT {name} TO {app_role};"
        ))
    }
}

/// The marker group of the roles [`TenantSchema::provision_sql`] creates: a role of a
/// tenant's name is only reused when it is a member (see there).
pub const TENANT_ROLES: &str = "tower_patterns_tenants";

/// Schema per tenant: begins a transaction that runs as the tenant's role
/// (`SET LOCAL ROLE`, see [`TenantSchema::provision_sql`]) with `search_path` the tenant's
/// schema only. Unqualified names then resolve in that schema, and PostgreSQL refuses any
/// other tenant's schema whatever name a query uses; both settings end with the
/// transaction.
///
/// # Errors
///
/// When PostgreSQL fails, or the connection's role may not become the tenant's (it is not a
/// member: the schema was not provisioned for it).
pub async fn begin_in_schema<'c>(
    client: &'c mut Client,
    schema: &TenantSchema,
) -> Result<Transaction<'c>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT set_config('role', $1, true), set_config('search_path', $2, true)",
        &[&schema.name(), &schema.quoted()],
    )
    .await?;
    Ok(tx)
}

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

    fn id(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn reconnection_backs_off_doubling_to_thirty_seconds() {
        let mut waits = vec![FIRST_BACKOFF];
        while waits.len() < 11 {
            waits.push(next_backoff(*waits.last().unwrap()));
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [
                100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000
            ]
        );
    }

    #[test]
    fn schema_names_stay_within_postgres_limit() {
        let longest = TenantSchema::new(&id(&"a".repeat(61))).unwrap();
        assert_eq!(longest.name().len(), 63);
        assert!(TenantSchema::new(&id(&"a".repeat(62))).is_err());
        let schema = TenantSchema::with_prefix("shop_1", &id("Acme.eu-1")).unwrap();
        assert_eq!(schema.name(), "shop_1_Acme.eu-1");
        assert_eq!(schema.quoted(), "\"shop_1_Acme.eu-1\"");
        for bad in ["", "Shop", "1shop", "sh op", "shop;"] {
            assert!(
                TenantSchema::with_prefix(bad, &id("acme")).is_err(),
                "{bad:?}"
            );
        }
        assert!(TenantSchema::with_prefix(&"p".repeat(59), &id("acme")).is_err());
        assert!(TenantSchema::with_prefix(&"p".repeat(58), &id("acme")).is_ok());
    }

    #[test]
    fn provisioning_sql_owns_revokes_and_grants() {
        let sql = TenantSchema::new(&id("acme"))
            .unwrap()
            .provision_sql("app_1")
            .unwrap();
        for part in [
            "CREATE ROLE \"t_acme\" NOLOGIN NOINHERIT IN ROLE \"tower_patterns_tenants\";",
            "CREATE SCHEMA IF NOT EXISTS \"t_acme\" AUTHORIZATION \"t_acme\";",
            "REVOKE ALL ON SCHEMA \"t_acme\" FROM PUBLIC;",
            "GRANT \"t_acme\" TO app_1;",
        ] {
            assert!(sql.contains(part), "{part}");
        }
        assert!(
            TenantSchema::new(&id("acme"))
                .unwrap()
                .provision_sql("App")
                .is_err()
        );
        // The tenant's own role, or the marker group, as the application's: refused before
        // any SQL (no server needed to see it).
        let acme = TenantSchema::new(&id("acme")).unwrap();
        assert!(acme.provision_sql("t_acme").is_err());
        assert!(acme.provision_sql(TENANT_ROLES).is_err());

        let db = database_sql("shop_Acme.eu-1", Some("it's")).unwrap();
        assert_eq!(
            db,
            [
                "CREATE ROLE \"shop_Acme.eu-1\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD 'it''s'",
                "CREATE DATABASE \"shop_Acme.eu-1\" OWNER \"shop_Acme.eu-1\"",
                "REVOKE ALL ON DATABASE \"shop_Acme.eu-1\" FROM PUBLIC",
            ]
        );
        assert_eq!(
            database_sql("a", None).unwrap()[0],
            "CREATE ROLE \"a\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
        );
        assert!(database_sql(&"d".repeat(63), None).is_ok());
        for bad in ["", "a\"b", "a b", "a;b", &"d".repeat(64)] {
            assert!(database_sql(bad, None).is_err(), "{bad:?}");
        }
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
