//! [`TieredStore`]: moka L1 in front of Redis L2, invalidations over pub/sub.

use std::{
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{sync::Notify, time::Instant};
use tower_patterns_core::{observe::Health, tenant::TenantId};

use crate::{
    Entry, ScopedKey,
    internal::Epochs,
    store::{
        CacheKey, InvalidationHook, MokaStore, RemoteInvalidation, Store, StoreError, StoreStats,
    },
};

use super::RedisStore;

struct TierShared {
    origin: u64,
    subscribed: AtomicBool,
    applied: AtomicU64,
    applied_notify: Notify,
    /// Marked before every eviction from L1, local or remote (per key, or all at once): a
    /// Redis hit read before an eviction that covers it is not copied into L1 after it (see
    /// [`TieredStore::promote`]).
    epochs: Epochs,
}

/// Moka L1 in front of Redis L2; invalidations reach every instance's L1 over Redis pub/sub.
/// See the [module docs](super).
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
            epochs: Epochs::new(),
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

    /// Copies `entry`, a Redis hit for `key` read from the epoch `started` on, into L1,
    /// unless an eviction covering `key` has come since: it may have been meant for this
    /// very entry, which L1 would then keep until its TTL. An eviction that lands while
    /// copying takes the copy out again.
    async fn promote(
        &self,
        started: u64,
        key: &ScopedKey<K>,
        entry: &Entry<V>,
    ) -> Result<(), StoreError> {
        if !self.tier.epochs.may_store(key, started) {
            return Ok(());
        }
        self.l1.put(key.clone(), entry.clone()).await?;
        if !self.tier.epochs.may_store(key, started) {
            self.l1.evict(key);
        }
        Ok(())
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
            tier.epochs.mark_all();
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
    // First the epochs and the hooks (reads and loads in flight must not store), then L1.
    match &key {
        Some(key) => tier.epochs.mark(key),
        None => tier.epochs.mark_all(),
    }
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
        let started = self.tier.epochs.now();
        let found = self.l2.get(key).await?;
        if let Some(e) = &found {
            self.promote(started, key, e).await?;
        }
        Ok(found)
    }

    // A put, like each invalidation, marks the keys it covers (so that a Redis hit read
    // before it is not copied into L1 after it) and changes L1 at once, then again once
    // Redis has the change: a hit read in between may have been copied into L1 meanwhile.
    // The first mark holds even when Redis fails the change.
    async fn put(&self, key: ScopedKey<K>, entry: Entry<V>) -> Result<(), StoreError> {
        self.tier.epochs.mark(&key);
        self.l1.put(key.clone(), entry.clone()).await?;
        let stored = self.l2.put(key.clone(), entry.clone()).await;
        self.tier.epochs.mark(&key);
        self.l1.put(key.clone(), entry).await?;
        stored?;
        self.broadcast(format!("k|{key}")).await
    }

    async fn invalidate(&self, key: &ScopedKey<K>) -> Result<(), StoreError> {
        self.tier.epochs.mark(key);
        self.l1.evict(key);
        self.l2.invalidate(key).await?;
        self.tier.epochs.mark(key);
        self.l1.evict(key);
        self.broadcast(format!("k|{key}")).await
    }

    async fn invalidate_prefix(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        self.tier.epochs.mark_all();
        self.l1.evict_prefix(tenant, prefix);
        self.l2.invalidate_prefix(tenant, prefix).await?;
        self.tier.epochs.mark_all();
        self.l1.evict_prefix(tenant, prefix);
        let scope = tenant.map_or("-", TenantId::as_str);
        self.broadcast(format!("p|{scope}:{prefix}")).await
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<(), StoreError> {
        self.tier.epochs.mark_all();
        self.l1.evict_tag(tag);
        self.l2.invalidate_tag(tag).await?;
        self.tier.epochs.mark_all();
        self.l1.evict_tag(tag);
        self.broadcast(format!("t|{tag}")).await
    }

    async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.tier.epochs.mark_all();
        self.l1.clear();
        self.l2.invalidate_all().await?;
        self.tier.epochs.mark_all();
        self.l1.clear();
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

    /// A Redis hit read before an eviction (here, another instance's message) is not copied
    /// into L1 after it; one read with no eviction since is.
    #[tokio::test]
    async fn a_hit_read_before_an_eviction_stays_out_of_l1() {
        // Nothing listens on port 1: the subscriber keeps retrying, and no call is made here.
        let l2 = RedisStore::<u64, u64>::builder("promote")
            .url("redis://127.0.0.1:1")
            .build()
            .unwrap();
        let store = TieredStore::new(l2, 100);
        let key = ScopedKey::new(None, 7u64);
        let entry = Entry::new(
            1u64,
            Instant::now(),
            Duration::from_secs(60),
            Duration::ZERO,
        );
        // Another key, in L1: a key's message leaves it there.
        let other = ScopedKey::new(None, 8u64);
        store.l1.put(other.clone(), entry.clone()).await.unwrap();
        let seen = store.tier.epochs.now();
        apply(&store.l1, &store.tier, &store.hooks, "1|k|-:7");
        assert!(store.l1.peek(&other).is_some(), "only key 7 was named");
        store.promote(seen, &key, &entry).await.unwrap();
        assert!(store.l1.peek(&key).is_none(), "evicted since the read");
        let seen = store.tier.epochs.now();
        store.promote(seen, &key, &entry).await.unwrap();
        assert_eq!(store.l1.peek(&key).map(|e| e.value), Some(1));
    }

    /// The same for this instance's own invalidations, each kind (against the test Redis).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hit_read_before_a_local_invalidation_stays_out_of_l1() {
        let Some(url) = tower_patterns_testkit::server_url(tower_patterns_testkit::Server::Redis)
        else {
            return;
        };
        let l2 = RedisStore::<u64, u64>::builder("promote-local")
            .url(url)
            .prefix(format!("tp:test:promote:{}", std::process::id()))
            .build()
            .unwrap();
        let store = TieredStore::new(l2, 100);
        // Subscribing starts L1 afresh, an eviction of its own.
        store.wait_until_subscribed().await;
        let tenant = TenantId::new("acme").unwrap();
        let key = ScopedKey::new(Some(tenant.clone()), 7u64);
        let entry = Entry::new(
            1u64,
            Instant::now(),
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .with_tags(vec!["t".into()]);
        for kind in ["key", "prefix", "tag", "all"] {
            let seen = store.tier.epochs.now();
            match kind {
                "key" => store.invalidate(&key).await,
                "prefix" => store.invalidate_prefix(Some(&tenant), "").await,
                "tag" => store.invalidate_tag("t").await,
                _ => store.invalidate_all().await,
            }
            .unwrap();
            store.promote(seen, &key, &entry).await.unwrap();
            assert!(
                store.l1.peek(&key).is_none(),
                "{kind}: evicted since the read"
            );
        }
    }
}
