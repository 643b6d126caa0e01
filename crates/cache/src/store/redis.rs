//! Redis tiers (feature `redis`): [`RedisStore`], shared by every instance, and
//! [`TieredStore`], moka L1 in front of Redis L2 with invalidations broadcast over Redis
//! pub/sub to every instance's L1.
//!
//! Needs Redis 7 or later (tag sets use `PEXPIRE ... GT`/`NX`). Values are JSON (serde). Keys are `<prefix>:k:<tenant>:<key>` (`-` for no tenant); a tag is a
//! set `<prefix>:t:<tag>` of the keys it names. Every Redis call has a deadline (250 ms by
//! default), so a Redis that is gone costs a request at most that long, once per connection
//! attempt, and never fails it: the cache answers from the inner service and reports.
//!
//! # Two tiers and their consistency
//!
//! A [`TieredStore`] reads L1, then L2 (copying an L2 hit into L1). A put, an invalidation, a
//! prefix or tag invalidation is applied locally and published on `<prefix>:inv`; every other
//! instance drops the same keys from its L1. While an instance's subscription is down it
//! cannot hear those messages, so its L1 may serve a value another instance changed; when the
//! subscription comes back it clears its whole L1. During a Redis outage the L1s serve what
//! they hold for at most their TTL, and no instance can tell the others anything.
//!
//! ```no_run
//! use tower_patterns_cache::store::redis::{RedisStore, TieredStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_patterns_cache::store::StoreError> {
//! let l2 = RedisStore::<u64, String>::builder("redis://127.0.0.1:6379", "users").build()?;
//! let tiered = TieredStore::new(l2, 10_000);
//! # let _ = tiered;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    marker::PhantomData,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt as _;
use redis::{AsyncCommands as _, aio::ConnectionManager};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::{sync::Notify, time::Instant};
use tower_patterns_core::{observe::Health, tenant::TenantId};

use super::{
    CacheKey, InvalidationHook, MokaStore, RemoteInvalidation, Store, StoreError, StoreStats,
};
use crate::{Entry, ScopedKey};

const STORE: &str = "redis";

/// The cache entry as Redis holds it: wall-clock milliseconds instead of instants.
#[derive(Serialize, Deserialize)]
struct Wire<V> {
    v: V,
    /// Stored, fresh until, servable until: Unix milliseconds.
    s: u64,
    f: u64,
    u: u64,
    /// Load time in milliseconds.
    l: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    n: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    t: Vec<Box<str>>,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn to_unix(at: Instant, now: Instant, unix_now: u64) -> u64 {
    if at >= now {
        unix_now.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        unix_now.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

fn from_unix(ms: u64, now: Instant, unix_now: u64) -> Instant {
    if ms >= unix_now {
        now + Duration::from_millis(ms - unix_now)
    } else {
        now.checked_sub(Duration::from_millis(unix_now - ms))
            .unwrap_or(now)
    }
}

impl<V> Wire<V> {
    fn from_entry(e: Entry<V>) -> Self {
        let (now, unix) = (Instant::now(), unix_ms_now());
        Self {
            s: to_unix(e.stored_at, now, unix),
            f: to_unix(e.fresh_until, now, unix),
            u: to_unix(e.stale_until, now, unix),
            l: u64::try_from(e.load_time.as_millis()).unwrap_or(u64::MAX),
            n: e.negative,
            t: e.tags.as_deref().map(<[_]>::to_vec).unwrap_or_default(),
            v: e.value,
        }
    }

    fn into_entry(self) -> Entry<V> {
        let (now, unix) = (Instant::now(), unix_ms_now());
        Entry {
            stored_at: from_unix(self.s, now, unix),
            fresh_until: from_unix(self.f, now, unix),
            stale_until: from_unix(self.u, now, unix),
            load_time: Duration::from_millis(self.l),
            negative: self.n,
            tags: (!self.t.is_empty()).then(|| self.t.into()),
            value: self.v,
        }
    }
}

/// Escapes Redis glob characters, for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct RedisShared {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    healthy: AtomicBool,
    /// After a failure, calls fail fast until this Unix millisecond (0: no pause).
    resume_at: AtomicU64,
    pause: Duration,
}

/// A cache store in Redis, shared by every instance that names the same prefix. See the
/// [module docs](self).
pub struct RedisStore<K, V> {
    shared: Arc<RedisShared>,
    _kv: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for RedisStore<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _kv: PhantomData,
        }
    }
}

impl<K, V> fmt::Debug for RedisStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.shared.prefix)
            .field("healthy", &self.shared.healthy.load(Ordering::Relaxed))
            .finish()
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder<K, V> {
    url: String,
    prefix: String,
    timeout: Duration,
    pause: Duration,
    _kv: PhantomData<fn() -> (K, V)>,
}

impl<K, V> RedisStore<K, V> {
    /// A builder for the store of cache `name` at `url` (`redis://127.0.0.1:6379/0`). Keys are
    /// prefixed `tp:cache:<name>`.
    pub fn builder(url: impl Into<String>, name: &str) -> RedisStoreBuilder<K, V> {
        RedisStoreBuilder {
            url: url.into(),
            prefix: format!("tp:cache:{name}"),
            timeout: Duration::from_millis(250),
            pause: Duration::from_secs(1),
            _kv: PhantomData,
        }
    }
}

impl<K, V> RedisStoreBuilder<K, V> {
    /// The deadline of every Redis call (default 250 ms).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failed call, how long calls fail at once without reaching for Redis (default
    /// 1 s), so an outage costs each request nothing rather than a deadline.
    #[must_use]
    pub fn pause_after_failure(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Replaces the key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The store. It connects lazily and reconnects by itself: Redis need not be up yet.
    ///
    /// # Errors
    ///
    /// A malformed URL.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn build(self) -> Result<RedisStore<K, V>, StoreError> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StoreError::new(STORE, "open", e))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError::new(STORE, "connect", e))?;
        Ok(RedisStore {
            shared: Arc::new(RedisShared {
                conn,
                client,
                prefix: self.prefix,
                timeout: self.timeout,
                healthy: AtomicBool::new(true),
                resume_at: AtomicU64::new(0),
                pause: self.pause,
            }),
            _kv: PhantomData,
        })
    }
}

impl<K: CacheKey, V> RedisStore<K, V> {
    fn key(&self, key: &ScopedKey<K>) -> String {
        format!("{}:k:{key}", self.shared.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}:t:{tag}", self.shared.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:inv", self.shared.prefix)
    }

    /// Runs `f` on a connection with the deadline, recording health.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    {
        let resume_at = self.shared.resume_at.load(Ordering::Relaxed);
        if resume_at != 0 && unix_ms_now() < resume_at {
            return Err(StoreError::new(
                STORE,
                op,
                "unavailable (pausing after a failure)",
            ));
        }
        let conn = self.shared.conn.clone();
        let res = match tokio::time::timeout(self.shared.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::new(STORE, op, e)),
            Err(_) => Err(StoreError::new(STORE, op, "timed out")),
        };
        let pause_ms = u64::try_from(self.shared.pause.as_millis()).unwrap_or(u64::MAX);
        self.shared.resume_at.store(
            if res.is_ok() {
                0
            } else {
                unix_ms_now().saturating_add(pause_ms)
            },
            Ordering::Relaxed,
        );
        self.shared.healthy.store(res.is_ok(), Ordering::Relaxed);
        res
    }

    async fn scan_delete(&self, pattern: String) -> Result<(), StoreError> {
        self.run("scan", async move |mut c| {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut c)
                    .await?;
                if !keys.is_empty() {
                    let () = c.del(keys).await?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })
        .await
    }

    async fn publish(&self, message: String) -> Result<(), StoreError> {
        let channel = self.channel();
        self.run("publish", async move |mut c| {
            let _: i64 = c.publish(channel, message).await?;
            Ok(())
        })
        .await
    }
}

impl<K, V> Store<K, V> for RedisStore<K, V>
where
    K: CacheKey,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    fn peek(&self, _: &ScopedKey<K>) -> Option<Entry<V>> {
        None
    }

    fn is_local(&self) -> bool {
        false
    }

    async fn get(&self, key: &ScopedKey<K>) -> Result<Option<Entry<V>>, StoreError> {
        let k = self.key(key);
        let raw: Option<Vec<u8>> = self.run("get", async move |mut c| c.get(k).await).await?;
        let Some(raw) = raw else { return Ok(None) };
        serde_json::from_slice::<Wire<V>>(&raw)
            .map(|w| Some(w.into_entry()))
            .map_err(|e| StoreError::new(STORE, "decode", format!("entry {key:?}: {e}")))
    }

    async fn put(&self, key: ScopedKey<K>, entry: Entry<V>) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(entry.lifetime(Instant::now()).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let tags: Vec<String> = entry.tags().iter().map(|t| self.tag_key(t)).collect();
        let k = self.key(&key);
        let body = serde_json::to_vec(&Wire::from_entry(entry))
            .map_err(|e| StoreError::new(STORE, "encode", e))?;
        self.run("put", async move |mut c| {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(&k)
                .arg(body)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            for t in &tags {
                pipe.cmd("SADD").arg(t).arg(&k).ignore();
                // A tag set lives as long as its longest-lived key.
                pipe.cmd("PEXPIRE").arg(t).arg(ttl_ms).arg("GT").ignore();
                pipe.cmd("PEXPIRE").arg(t).arg(ttl_ms).arg("NX").ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    async fn invalidate(&self, key: &ScopedKey<K>) -> Result<(), StoreError> {
        let k = self.key(key);
        self.run("invalidate", async move |mut c| c.del::<_, ()>(k).await)
            .await
    }

    async fn invalidate_prefix(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        let scope = tenant.map_or("-", TenantId::as_str);
        self.scan_delete(format!(
            "{}:k:{scope}:{}*",
            glob_escape(&self.shared.prefix),
            glob_escape(prefix)
        ))
        .await
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), StoreError> {
        // One script, so the tag's keys and the tag go together.
        let script = redis::Script::new(
            "local ks = redis.call('SMEMBERS', KEYS[1])
             for i = 1, #ks, 500 do
               redis.call('DEL', unpack(ks, i, math.min(i + 499, #ks)))
             end
             redis.call('DEL', KEYS[1])
             return #ks",
        );
        let t = self.tag_key(tag);
        self.run("invalidate_tag", async move |mut c| {
            script.key(t).invoke_async::<i64>(&mut c).await.map(drop)
        })
        .await
    }

    async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.scan_delete(format!("{}:*", glob_escape(&self.shared.prefix)))
            .await
    }

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    fn health(&self) -> Health {
        if self.shared.healthy.load(Ordering::Relaxed) {
            Health::Ready
        } else {
            Health::Degraded
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Two tiers

struct TierShared {
    origin: u64,
    subscribed: AtomicBool,
    applied: AtomicU64,
    applied_notify: Notify,
}

/// Moka L1 in front of Redis L2; invalidations reach every instance's L1 over Redis pub/sub.
/// See the [module docs](self).
///
/// Keys must parse back from their text (`K: FromStr`), since invalidation messages carry keys
/// as text.
pub struct TieredStore<K, V> {
    l1: MokaStore<K, V>,
    l2: RedisStore<K, V>,
    tier: Arc<TierShared>,
    hooks: Hooks<K>,
    subscriber: Arc<tokio::task::JoinHandle<()>>,
}

impl<K, V> Clone for TieredStore<K, V> {
    fn clone(&self) -> Self {
        Self {
            l1: self.l1.clone(),
            l2: self.l2.clone(),
            tier: self.tier.clone(),
            hooks: self.hooks.clone(),
            subscriber: self.subscriber.clone(),
        }
    }
}

impl<K, V> fmt::Debug for TieredStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l2", &self.l2)
            .field("subscribed", &self.tier.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K, V> Drop for TieredStore<K, V> {
    fn drop(&mut self) {
        if Arc::strong_count(&self.subscriber) == 1 {
            self.subscriber.abort();
        }
    }
}

type Hooks<K> = Arc<std::sync::RwLock<Vec<InvalidationHook<K>>>>;

fn notify<K>(hooks: &Hooks<K>, what: &RemoteInvalidation<K>) {
    let hooks = hooks
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for hook in hooks.iter() {
        hook(what);
    }
}

/// Parses `<tenant>:<key>` (`-` for none) back into a key.
fn parse_scoped<K: FromStr>(s: &str) -> Option<ScopedKey<K>> {
    let (tenant, key) = s.split_once(':')?;
    let tenant = match tenant {
        "-" => None,
        t => Some(TenantId::new(t).ok()?),
    };
    Some(ScopedKey::new(tenant, key.parse().ok()?))
}

impl<K, V> TieredStore<K, V>
where
    K: CacheKey + FromStr,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    /// L1 of up to `l1_entries` entries in front of `l2`; starts the subscriber task.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn new(l2: RedisStore<K, V>, l1_entries: u64) -> Self {
        let l1 = MokaStore::builder().max_entries(l1_entries).build();
        let tier = Arc::new(TierShared {
            origin: {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(std::process::id())
            },
            subscribed: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            applied_notify: Notify::new(),
        });
        let hooks: Hooks<K> = Arc::default();
        let subscriber = tokio::spawn(subscribe(
            l1.clone(),
            l2.clone(),
            tier.clone(),
            hooks.clone(),
        ));
        Self {
            l1,
            l2,
            tier,
            hooks,
            subscriber: Arc::new(subscriber),
        }
    }

    /// The local tier.
    pub fn l1(&self) -> &MokaStore<K, V> {
        &self.l1
    }

    /// Whether the invalidation subscription is up now.
    pub fn is_subscribed(&self) -> bool {
        self.tier.subscribed.load(Ordering::Relaxed)
    }

    /// Invalidation messages from other instances applied so far.
    pub fn invalidations_applied(&self) -> u64 {
        self.tier.applied.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` invalidation messages from other instances have been applied
    /// (for tests and orderly handovers).
    pub async fn wait_for_invalidations(&self, n: u64) {
        loop {
            let notified = self.tier.applied_notify.notified();
            if self.invalidations_applied() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the subscription is up.
    pub async fn wait_until_subscribed(&self) {
        loop {
            let notified = self.tier.applied_notify.notified();
            if self.is_subscribed() {
                return;
            }
            notified.await;
        }
    }

    async fn broadcast(&self, what: String) -> Result<(), StoreError> {
        self.l2
            .publish(format!("{}|{what}", self.tier.origin))
            .await
    }
}

async fn subscribe<K, V>(
    l1: MokaStore<K, V>,
    l2: RedisStore<K, V>,
    tier: Arc<TierShared>,
    hooks: Hooks<K>,
) where
    K: CacheKey + FromStr,
    V: Clone + Send + Sync + 'static,
{
    let channel = l2.channel();
    let mut pause = Duration::from_millis(50);
    loop {
        let connected = tokio::time::timeout(l2.shared.timeout * 4, async {
            let mut ps = l2.shared.client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            redis::RedisResult::Ok(ps)
        })
        .await;
        if let Ok(Ok(ps)) = connected {
            // Messages sent while we were not listening are lost: start L1 afresh.
            l1.clear();
            notify(&hooks, &RemoteInvalidation::Bulk);
            tier.subscribed.store(true, Ordering::SeqCst);
            tier.applied_notify.notify_waiters();
            pause = Duration::from_millis(50);
            let mut messages = ps.into_on_message();
            while let Some(msg) = messages.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                apply(&l1, &tier, &hooks, &text);
            }
            tier.subscribed.store(false, Ordering::SeqCst);
            tracing::warn!(target: "tower_patterns::cache", channel, "invalidation subscription lost");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Applies one invalidation message `<origin>|<op>|<args>` to L1.
fn apply<K, V>(l1: &MokaStore<K, V>, tier: &TierShared, hooks: &Hooks<K>, text: &str)
where
    K: CacheKey + FromStr,
    V: Clone + Send + Sync + 'static,
{
    let mut parts = text.splitn(3, '|');
    let (Some(origin), Some(op)) = (parts.next(), parts.next()) else {
        return;
    };
    if origin.parse::<u64>().ok() == Some(tier.origin) {
        return;
    }
    let arg = parts.next().unwrap_or("");
    let key = (op == "k").then(|| parse_scoped::<K>(arg)).flatten();
    // First the hooks (loads in flight must not store), then L1.
    notify(
        hooks,
        &key.clone()
            .map_or(RemoteInvalidation::Bulk, RemoteInvalidation::Key),
    );
    match op {
        "k" => match key {
            Some(key) => l1.evict(&key),
            None => l1.clear(), // a key we cannot read: be safe
        },
        "p" => match arg.split_once(':') {
            Some(("-", prefix)) => l1.evict_prefix(None, prefix),
            Some((t, prefix)) => match TenantId::new(t) {
                Ok(t) => l1.evict_prefix(Some(&t), prefix),
                Err(_) => l1.clear(),
            },
            None => l1.clear(),
        },
        "t" => l1.evict_tag(arg),
        _ => l1.clear(),
    }
    tier.applied.fetch_add(1, Ordering::SeqCst);
    tier.applied_notify.notify_waiters();
}

impl<K, V> Store<K, V> for TieredStore<K, V>
where
    K: CacheKey + FromStr,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    #[inline]
    fn peek(&self, key: &ScopedKey<K>) -> Option<Entry<V>> {
        self.l1.peek(key)
    }

    fn is_local(&self) -> bool {
        false
    }

    async fn get(&self, key: &ScopedKey<K>) -> Result<Option<Entry<V>>, StoreError> {
        let now = Instant::now();
        if let Some(e) = self.l1.peek(key).filter(|e| e.fresh_until() > now) {
            return Ok(Some(e));
        }
        let found = self.l2.get(key).await?;
        if let Some(e) = &found {
            self.l1.put(key.clone(), e.clone()).await?;
        }
        Ok(found)
    }

    async fn put(&self, key: ScopedKey<K>, entry: Entry<V>) -> Result<(), StoreError> {
        self.l1.put(key.clone(), entry.clone()).await?;
        self.l2.put(key.clone(), entry).await?;
        self.broadcast(format!("k|{key}")).await
    }

    async fn invalidate(&self, key: &ScopedKey<K>) -> Result<(), StoreError> {
        self.l1.evict(key);
        self.l2.invalidate(key).await?;
        self.broadcast(format!("k|{key}")).await
    }

    async fn invalidate_prefix(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        self.l1.evict_prefix(tenant, prefix);
        self.l2.invalidate_prefix(tenant, prefix).await?;
        let scope = tenant.map_or("-", TenantId::as_str);
        self.broadcast(format!("p|{scope}:{prefix}")).await
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), StoreError> {
        self.l1.evict_tag(tag);
        self.l2.invalidate_tag(tag).await?;
        self.broadcast(format!("t|{tag}")).await
    }

    async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.l1.clear();
        self.l2.invalidate_all().await?;
        self.broadcast("a|".to_owned()).await
    }

    fn stats(&self) -> StoreStats {
        self.l1.stats()
    }

    fn on_remote_invalidation(&self, hook: InvalidationHook<K>) {
        self.hooks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(hook);
    }

    fn health(&self) -> Health {
        if self.l2.health() == Health::Ready && self.is_subscribed() {
            Health::Ready
        } else {
            Health::Degraded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_from_their_text() {
        let t = TenantId::new("acme").unwrap();
        let k = ScopedKey::new(Some(t), 42u64);
        assert_eq!(parse_scoped::<u64>(&k.to_string()), Some(k));
        let k = ScopedKey::new(None, "a:b".to_owned());
        assert_eq!(parse_scoped::<String>(&k.to_string()), Some(k));
        assert_eq!(parse_scoped::<u64>("acme:x"), None);
        assert_eq!(parse_scoped::<u64>("bad tenant:1"), None);
    }

    #[test]
    fn wall_clock_round_trips_within_a_millisecond() {
        let now = Instant::now();
        let e = Entry::new(1u8, now, Duration::from_secs(5), Duration::from_secs(2));
        let back = Wire::from_entry(e.clone()).into_entry();
        let close = |a: Instant, b: Instant| {
            let d = if a > b { a - b } else { b - a };
            d <= Duration::from_millis(2)
        };
        assert!(close(back.fresh_until, e.fresh_until));
        assert!(close(back.stale_until, e.stale_until));
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
