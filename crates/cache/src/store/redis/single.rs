//! [`RedisStore`]: one store in Redis, shared by every instance.

use std::{
    fmt,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands as _, aio::ConnectionManager};
use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;
use tower_patterns_core::{observe::Health, tenant::TenantId};

use crate::{
    Entry, ScopedKey,
    store::{CacheKey, Store, StoreError, StoreStats},
};

use super::wire::{STORE, Wire, glob_escape, unix_ms_now};

pub(super) struct RedisShared {
    pub(super) conn: ConnectionManager,
    pub(super) client: redis::Client,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    pub(super) healthy: AtomicBool,
    /// After a failure, calls fail fast until this Unix millisecond (0: no pause).
    pub(super) resume_at: AtomicU64,
    pub(super) pause: Duration,
}

/// A cache store in Redis, shared by every instance that names the same prefix. See the
/// [module docs](super).
pub struct RedisStore<K, V> {
    pub(super) shared: Arc<RedisShared>,
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

/// The URL of a [`RedisStoreBuilder`] that has none yet.
#[derive(Debug, Clone, Copy)]
pub struct NoUrl;

/// Builds a [`RedisStore`]: [`RedisStore::builder`]`(name)`, then [`url`](Self::url)
/// (required), then settings, then [`build`](RedisStoreBuilder::build).
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder<K, V, U = NoUrl> {
    url: U,
    prefix: String,
    timeout: Duration,
    pause: Duration,
    _kv: PhantomData<fn() -> (K, V)>,
}

impl<K, V> RedisStore<K, V> {
    /// A builder for the store of cache `name`; keys are prefixed `tp:cache:<name>`. Its
    /// Redis URL comes next, with [`url`](RedisStoreBuilder::url).
    pub fn builder(name: impl Into<Arc<str>>) -> RedisStoreBuilder<K, V> {
        let name: Arc<str> = name.into();
        RedisStoreBuilder {
            url: NoUrl,
            prefix: format!("tp:cache:{name}"),
            timeout: Duration::from_millis(250),
            pause: Duration::from_secs(1),
            _kv: PhantomData,
        }
    }
}

impl<K, V, U> RedisStoreBuilder<K, V, U> {
    /// The Redis server (`redis://127.0.0.1:6379/0`).
    pub fn url(self, url: impl Into<String>) -> RedisStoreBuilder<K, V, String> {
        RedisStoreBuilder {
            url: url.into(),
            prefix: self.prefix,
            timeout: self.timeout,
            pause: self.pause,
            _kv: PhantomData,
        }
    }

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
}

impl<K, V> RedisStoreBuilder<K, V, String> {
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

    pub(super) fn channel(&self) -> String {
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

    pub(super) async fn publish(&self, message: String) -> Result<(), StoreError> {
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
