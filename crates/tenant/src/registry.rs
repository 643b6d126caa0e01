//! The tenant registry: who the tenants are, their plan and status, their API keys.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;

use crate::ttl::TtlMap;
use sha2::{Digest, Sha256};
use tower_patterns_core::{
    ConfigError,
    http::{ErrorMapping, IntoErrorResponse, register_error_response},
    tenant::{TenantError, TenantErrorKind, TenantId},
};

/// Whether a tenant may use the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Served.
    #[default]
    Active,
    /// Refused with 403 until reactivated.
    Suspended,
}

/// One tenant as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRecord {
    /// The tenant.
    pub id: TenantId,
    /// The plan or tier (`free`, `gold`): what rate limits and bulkheads key their size on.
    pub plan: Arc<str>,
    /// Active or suspended.
    pub status: TenantStatus,
}

/// The SHA-256 of an API key: registries store and look up hashes, never keys.
pub type ApiKeyHash = [u8; 32];

/// Hashes an API key as the registry stores it.
///
/// ```
/// let hash = tower_patterns_tenant::hash_api_key("sk_live_123");
/// assert_eq!(hash.len(), 32);
/// ```
pub fn hash_api_key(key: &str) -> ApiKeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// A registry could not answer.
#[derive(Debug)]
pub struct StoreError(pub Box<dyn std::error::Error + Send + Sync>);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant registry: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// 503 with the phrase of an unavailable registry, for a store's error that reaches a
/// response unconverted (a handler that queried the store itself). The layer never returns
/// one: it answers a failing store with a `TenantError` of kind `Unavailable`. Registered
/// with core's error mapping when a [`Registry`], a tenancy layer or a PostgreSQL registry
/// is built.
impl IntoErrorResponse for StoreError {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            TenantErrorKind::Unavailable.public_message(),
        )
    }
}

/// Where tenants are kept: a file ([`StaticTenants`]), a database (`PostgresTenants`, feature
/// `postgres`), or your own.
pub trait TenantStore: Send + Sync + 'static {
    /// The tenant `id`, or `None` when there is none.
    fn tenant(
        &self,
        id: &TenantId,
    ) -> impl Future<Output = Result<Option<TenantRecord>, StoreError>> + Send;

    /// The tenant owning the API key whose hash is `hash`, or `None`.
    fn tenant_by_api_key(
        &self,
        hash: &ApiKeyHash,
    ) -> impl Future<Output = Result<Option<TenantId>, StoreError>> + Send;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenants: Vec<FileTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTenant {
    id: String,
    #[serde(default = "default_plan")]
    plan: String,
    #[serde(default)]
    status: TenantStatus,
    /// Hex SHA-256 of each API key.
    #[serde(default)]
    api_key_sha256: Vec<String>,
}

fn default_plan() -> String {
    "free".to_owned()
}

/// Tenants from a TOML file, held in memory.
///
/// ```
/// use tower_patterns_tenant::{StaticTenants, TenantStatus};
///
/// let tenants = StaticTenants::from_toml(r#"
///     [[tenants]]
///     id = "acme"
///     plan = "gold"
///     ## the hex SHA-256 of the key, never the key
///     api_key_sha256 = ["a1e1fba4bd5cd3f64b4a1ec4c8d1a6c1d09b2c9a8e0a4aa8e4dd1a0d0c5d0e7f"]
///
///     [[tenants]]
///     id = "globex"
///     status = "suspended"
/// "#).unwrap();
/// assert_eq!(tenants.len(), 2);
///
/// // A corrupt file is a typed error naming the problem, never a panic.
/// let err = StaticTenants::from_toml("[[tenants]]\nid = \"bad id!\"").unwrap_err();
/// assert!(err.to_string().contains("tenant"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticTenants {
    by_id: HashMap<TenantId, TenantRecord>,
    by_key: HashMap<ApiKeyHash, TenantId>,
}

impl StaticTenants {
    /// Parses the registry file.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for invalid TOML, an unknown field, an invalid tenant id, a tenant
    /// listed twice, or an API key hash that is not 64 hex digits or belongs to two tenants.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: File =
            toml::from_str(text).map_err(|e| ConfigError::new("tenants", e.to_string()))?;
        let mut tenants = Self::default();
        for t in file.tenants {
            let id = TenantId::new(&t.id)
                .map_err(|e| ConfigError::new("tenants", format!("tenant {:?}: {e}", t.id)))?;
            for hex in &t.api_key_sha256 {
                let hash = parse_hash(hex).ok_or_else(|| {
                    ConfigError::new(
                        "tenants",
                        format!("tenant {id}: api_key_sha256 is not 64 hex digits"),
                    )
                })?;
                if tenants.by_key.insert(hash, id.clone()).is_some() {
                    return Err(ConfigError::new(
                        "tenants",
                        format!("tenant {id}: an API key belongs to two tenants"),
                    ));
                }
            }
            let record = TenantRecord {
                id: id.clone(),
                plan: t.plan.into(),
                status: t.status,
            };
            if tenants.by_id.insert(id.clone(), record).is_some() {
                return Err(ConfigError::new(
                    "tenants",
                    format!("tenant {id} is listed twice"),
                ));
            }
        }
        Ok(tenants)
    }

    /// Reads and parses the registry file at `path`.
    ///
    /// # Errors
    ///
    /// As [`Self::from_toml`], or when the file cannot be read.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path.as_ref()).map_err(|e| {
            ConfigError::new("tenants", format!("{}: {e}", path.as_ref().display()))
        })?;
        Self::from_toml(&text)
    }

    /// Adds or replaces a tenant (for tests and programmatic set-up).
    #[must_use]
    pub fn with(mut self, record: TenantRecord, api_keys: &[&str]) -> Self {
        for key in api_keys {
            self.by_key.insert(hash_api_key(key), record.id.clone());
        }
        self.by_id.insert(record.id.clone(), record);
        self
    }

    /// The number of tenants.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no tenants.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

pub(crate) fn parse_hash(hex: &str) -> Option<ApiKeyHash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

impl TenantStore for StaticTenants {
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        Ok(self.by_id.get(id).cloned())
    }

    async fn tenant_by_api_key(&self, hash: &ApiKeyHash) -> Result<Option<TenantId>, StoreError> {
        Ok(self.by_key.get(hash).cloned())
    }
}

/// A store in front of which every answer is cached: tenants for `ttl`, unknown ids and keys
/// for `negative_ttl` (so a flood of made-up ids costs one lookup each per `negative_ttl`,
/// not one per request). Store failures are not cached.
///
/// A change in the store (a plan, a suspension, a revoked key) shows once its entry is
/// invalidated: [`invalidate`](Self::invalidate), [`invalidate_api_key`](Self::invalidate_api_key)
/// or [`invalidate_all`](Self::invalidate_all) take effect for the next request, on every
/// clone of the registry, and a lookup that was under way when they ran does not put its
/// (possibly older) answer back in the cache. `postgres::listen` calls them on the
/// database's notifications. Otherwise a change shows when the entry expires.
pub struct Registry<S> {
    store: Arc<S>,
    tenants: TtlMap<TenantId, Arc<TenantRecord>>,
    unknown: TtlMap<TenantId, ()>,
    keys: TtlMap<ApiKeyHash, TenantId>,
    unknown_keys: TtlMap<ApiKeyHash, ()>,
    state: Arc<State>,
}

/// What every clone of a registry shares besides its caches.
#[derive(Debug, Default)]
struct State {
    /// Bumped by every invalidation: a lookup caches its answer only if no invalidation ran
    /// while it was reading the store.
    epoch: AtomicU64,
    /// Whether the store's last answer was an error.
    failing: AtomicBool,
    /// How many times the store failed.
    failures: AtomicU64,
}

/// How many entries a registry's caches hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CachedCounts {
    pub(crate) tenants: u64,
    pub(crate) unknown: u64,
    pub(crate) keys: u64,
    pub(crate) unknown_keys: u64,
}

impl<S> Clone for Registry<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            tenants: self.tenants.clone(),
            unknown: self.unknown.clone(),
            keys: self.keys.clone(),
            unknown_keys: self.unknown_keys.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S> fmt::Debug for Registry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("cached", &self.tenants.held())
            .finish_non_exhaustive()
    }
}

impl<S: TenantStore> Registry<S> {
    /// A registry over `store`: tenants cached 60 s, unknown ids 10 s, 100,000 of each.
    pub fn new(store: S) -> Self {
        Self::with_ttls(
            store,
            Duration::from_secs(60),
            Duration::from_secs(10),
            100_000,
        )
    }

    /// A registry with explicit cache lifetimes and bound.
    pub fn with_ttls(store: S, ttl: Duration, negative_ttl: Duration, max: u64) -> Self {
        register_error_response::<StoreError>();
        Self {
            store: Arc::new(store),
            tenants: cache(ttl, max),
            unknown: cache(negative_ttl, max),
            keys: cache(ttl, max),
            unknown_keys: cache(negative_ttl, max),
            state: Arc::new(State::default()),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The cached answer for `id`, if there is one: `Some(None)` for a cached unknown.
    pub fn cached<Q>(&self, id: &Q) -> Option<Option<Arc<TenantRecord>>>
    where
        TenantId: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(record) = self.tenants.get(id) {
            return Some(Some(record));
        }
        self.unknown.get(id).map(|()| None)
    }

    /// The cached owner of an API key, if there is one: `Some(None)` for a cached unknown.
    pub fn cached_key(&self, hash: &ApiKeyHash) -> Option<Option<TenantId>> {
        if let Some(id) = self.keys.get(hash) {
            return Some(Some(id));
        }
        self.unknown_keys.get(hash).map(|()| None)
    }

    /// The tenant `id`, from the cache or the store.
    ///
    /// # Errors
    ///
    /// A [`TenantError`] of kind `Unavailable` when the store fails.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Arc<TenantRecord>>, TenantError> {
        if let Some(hit) = self.cached(id) {
            return Ok(hit);
        }
        let epoch = self.state.epoch.load(Ordering::SeqCst);
        match self.store.tenant(id).await {
            Ok(Some(record)) => {
                self.store_answered();
                let record = Arc::new(record);
                self.cache_since(epoch, &self.tenants, id, record.clone());
                Ok(Some(record))
            }
            Ok(None) => {
                self.store_answered();
                self.cache_since(epoch, &self.unknown, id, ());
                Ok(None)
            }
            Err(err) => Err(self.store_failed(&err)),
        }
    }

    /// The owner of the API key hashed to `hash`, from the cache or the store.
    ///
    /// # Errors
    ///
    /// A [`TenantError`] of kind `Unavailable` when the store fails.
    pub async fn by_api_key(&self, hash: &ApiKeyHash) -> Result<Option<TenantId>, TenantError> {
        if let Some(hit) = self.cached_key(hash) {
            return Ok(hit);
        }
        let epoch = self.state.epoch.load(Ordering::SeqCst);
        match self.store.tenant_by_api_key(hash).await {
            Ok(Some(id)) => {
                self.store_answered();
                self.cache_since(epoch, &self.keys, hash, id.clone());
                Ok(Some(id))
            }
            Ok(None) => {
                self.store_answered();
                self.cache_since(epoch, &self.unknown_keys, hash, ());
                Ok(None)
            }
            Err(err) => Err(self.store_failed(&err)),
        }
    }

    fn store_answered(&self) {
        if self.state.failing.load(Ordering::Relaxed) {
            self.state.failing.store(false, Ordering::Relaxed);
        }
    }

    fn store_failed(&self, err: &StoreError) -> TenantError {
        self.state.failing.store(true, Ordering::Relaxed);
        self.state.failures.fetch_add(1, Ordering::Relaxed);
        unavailable(err)
    }

    /// Whether the store's last answer was an error (its next success clears it).
    pub fn store_failing(&self) -> bool {
        self.state.failing.load(Ordering::Relaxed)
    }

    /// How many times the store has failed a lookup of this registry (or a clone of it).
    pub fn store_failures(&self) -> u64 {
        self.state.failures.load(Ordering::Relaxed)
    }

    /// How many entries the caches hold, after pending maintenance.
    pub(crate) fn cached_counts(&self) -> CachedCounts {
        CachedCounts {
            tenants: entries(&self.tenants),
            unknown: entries(&self.unknown),
            keys: entries(&self.keys),
            unknown_keys: entries(&self.unknown_keys),
        }
    }

    /// Caches an answer read from the store after `epoch`, unless an invalidation ran since
    /// (the answer may predate the change it announced). Checked after the insert too, so an
    /// invalidation between the check and the insert cannot leave the answer behind: either
    /// it removes the entry, or the second check sees it and does.
    fn cache_since<K, V>(&self, epoch: u64, cache: &TtlMap<K, V>, key: &K, value: V)
    where
        K: Clone + std::hash::Hash + Eq,
        V: Clone,
    {
        if self.state.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        cache.insert(key.clone(), value);
        if self.state.epoch.load(Ordering::SeqCst) != epoch {
            cache.invalidate(key);
        }
    }

    /// Forgets what is cached about `id` (after a plan change or a suspension): the next
    /// request for it asks the store.
    pub fn invalidate(&self, id: &TenantId) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        self.tenants.invalidate(id);
        self.unknown.invalidate(id);
    }

    /// Forgets what is cached about the API key hashed to `hash` (after it was revoked,
    /// created or moved to another tenant): the next request with it asks the store.
    pub fn invalidate_api_key(&self, hash: &ApiKeyHash) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        self.keys.invalidate(hash);
        self.unknown_keys.invalidate(hash);
    }

    /// Forgets everything cached (after changes that were not announced one by one, such as
    /// a lost connection to the store's notifications).
    pub fn invalidate_all(&self) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        self.tenants.invalidate_all();
        self.unknown.invalidate_all();
        self.keys.invalidate_all();
        self.unknown_keys.invalidate_all();
    }
}

fn cache<K, V>(ttl: Duration, max: u64) -> TtlMap<K, V>
where
    K: std::hash::Hash + Eq + Clone,
    V: Clone,
{
    TtlMap::new(ttl, max)
}

/// The live entries of `cache` (it walks the map: for reports).
fn entries<K, V>(cache: &TtlMap<K, V>) -> u64
where
    K: std::hash::Hash + Eq + Clone,
    V: Clone,
{
    cache.live()
}

fn unavailable(err: &StoreError) -> TenantError {
    tracing::warn!(target: "tower_patterns::tenant", error = %err, "tenant registry failed");
    TenantError::new(TenantErrorKind::Unavailable, err.to_string())
}
