//! The tenant registry's store on PostgreSQL: the tables and the triggers that announce their
//! changes.

use std::fmt;

use deadpool_postgres::Pool;
use tower_patterns_core::tenant::TenantId;

use crate::{ApiKeyHash, StoreError, TenantRecord, TenantStatus, TenantStore};

/// The channel on which the registry's tables announce their changes.
pub const CHANGES_CHANNEL: &str = "tp_tenant_changes";

/// The registry in PostgreSQL: tables `tp_tenants (id, plan, status)` and
/// `tp_tenant_api_keys (sha256, tenant_id)`; [`PostgresTenants::migrate`] creates them, with
/// triggers that announce every change on [`CHANGES_CHANNEL`] for [`listen`](super::listen).
#[derive(Clone)]
pub struct PostgresTenants {
    pool: Pool,
}

impl fmt::Debug for PostgresTenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTenants").finish_non_exhaustive()
    }
}

pub(super) fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError(Box::new(e))
}

impl PostgresTenants {
    /// A registry over `pool`.
    pub fn new(pool: Pool) -> Self {
        tower_patterns_core::http::register_error_response::<StoreError>();
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
