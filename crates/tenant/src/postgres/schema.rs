//! Schema per tenant: the tenant's role owns its schema, entered with `SET LOCAL ROLE`.

use tokio_postgres::{Client, Transaction};
use tower_patterns_core::{
    ConfigError,
    tenant::{TenantError, TenantErrorKind, TenantId},
};

use super::names::identifier;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::database_sql;

    fn id(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
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
}
