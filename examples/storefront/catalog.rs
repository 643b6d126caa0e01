//! The catalog's read side: a projection of the product events (`products.rs`) into a read
//! model (`catalog-read.db`: a products table with a `tenant_id` column, and an FTS5 index of
//! the names), read through `Scoped` (the tenant filter cannot be left out) or searched by name,
//! cached per tenant and per query.
//!
//! The cache is in process by default. With `--redis` and `--postgres` together (several
//! storefronts sharing the events), it is two-tiered: an in-process tier in front of Redis,
//! shared by every storefront, with invalidations broadcast to each one's in-process tier.
//! Each storefront keeps its own read model, following the shared events at its own pace, so
//! an answer is keyed by the position its read model had reached when it was asked, beside
//! the search: an answer under a position shows at least the events up to it. A storefront
//! whose read model lags reads the older answers it would have loaded itself, never puts one
//! where a storefront further on would find it, and a read with a consistency token finds
//! nothing older than the token. The price: any product change moves the position, so every
//! tenant's next read is one load (per position, shared by the storefronts that reached
//! it); older answers expire with their 30 s TTL. With `--redis` alone each storefront has
//! its own events, so its catalog stays in process and a change drops one tenant's answers.

use std::{
    future::Future,
    path::{Path as FsPath, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rusqlite::{Transaction, params, types::Value};
use serde::{Deserialize, Serialize};
use tower::{Layer, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError, KeyError,
    cache::{
        CacheHandle, CacheLayer,
        store::{
            QuickCacheStore, Store,
            redis::{RedisStore, TieredStore},
        },
    },
    chaos::{AnswerAsError, ChaosHandle, ChaosLayer},
    consistency::{Mark, ReadSide},
    cqrs::{
        ApplyError, Projection, ProjectionHandle, SqliteProjection, Tables,
        projection::sqlite_reader,
    },
    eventstore::{EventStore, GlobalPosition, RecordedEvent},
    key::key_fn,
    observe::StateHandle,
    tenant::{TenantId, sqlite::Scoped},
};

use crate::products::{PRODUCT_PREFIX, ProductEvent};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Product {
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) price: i64,
}

/// What the catalog loader is asked: a tenant's products, all of them or those whose name
/// matches a search.
#[derive(Clone, Debug)]
pub(crate) struct CatalogQuery {
    pub(crate) tenant: TenantId,
    /// The search, normalised by [`search_terms`]; empty for every product.
    pub(crate) q: Arc<str>,
}

/// A search as FTS5 terms: lowercase words of letters and digits (at most 8), each a prefix;
/// anything else in the query is dropped, so no input reaches the query syntax.
pub(crate) fn search_terms(q: &str) -> Arc<str> {
    let words: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(8)
        .map(|w| w.chars().take(32).collect::<String>().to_lowercase())
        .collect();
    Arc::from(words.join(" "))
}

/// The cached catalog service.
pub(crate) type Catalog = BoxCloneSyncService<CatalogQuery, Arc<[Product]>, BoxError>;

/// Empties the catalog cache (every tenant's entries).
pub(crate) type Invalidate =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync>;

/// Drops one tenant's cached answers.
pub(crate) type InvalidateTenant = Arc<
    dyn Fn(TenantId) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync,
>;

/// The read model: product rows and a name index, by tenant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CatalogView;

impl SqliteProjection for CatalogView {
    fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
        tx.execute_batch(&format!(
            "CREATE TABLE {products} (
                 seq INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, sku TEXT NOT NULL,
                 name TEXT NOT NULL, price INTEGER NOT NULL, version INTEGER NOT NULL,
                 UNIQUE (tenant_id, sku));
             CREATE VIRTUAL TABLE {fts} USING fts5(name, tokenize = 'unicode61');",
            products = t.name("products"),
            fts = t.name("names"),
        ))?;
        Ok(())
    }

    fn apply(&self, tx: &Transaction<'_>, t: &Tables, e: &RecordedEvent) -> Result<(), ApplyError> {
        // The sku has no '.'; a tenant id may.
        let Some((tenant, sku)) = e
            .stream_id
            .strip_prefix(PRODUCT_PREFIX)
            .and_then(|s| s.rsplit_once('.'))
        else {
            return Ok(());
        };
        let (products, fts) = (t.name("products"), t.name("names"));
        let version = i64::try_from(e.version).unwrap_or(i64::MAX);
        // Guarded by the stream version: an event applied twice changes nothing.
        match e.decode_event::<ProductEvent>()? {
            ProductEvent::Created { name, price } => {
                let n = tx.execute(
                    &format!(
                        "INSERT INTO {products} (tenant_id, sku, name, price, version)
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING"
                    ),
                    params![tenant, sku, name, price, version],
                )?;
                if n == 1 {
                    tx.execute(
                        &format!("INSERT INTO {fts} (rowid, name) VALUES (?1, ?2)"),
                        params![tx.last_insert_rowid(), name],
                    )?;
                }
            }
            ProductEvent::Repriced { price } => {
                tx.execute(
                    &format!(
                        "UPDATE {products} SET price = ?3, version = ?4
                         WHERE tenant_id = ?1 AND sku = ?2 AND version < ?4"
                    ),
                    params![tenant, sku, price, version],
                )?;
            }
        }
        Ok(())
    }
}

/// Waits until `view` has applied `position`, for at most `within` of wall-clock time (not
/// Tokio's clock, which a paused test would run past while the projection works on SQLite's
/// blocking threads); whether it did.
pub(crate) async fn reached(
    view: &ProjectionHandle,
    position: GlobalPosition,
    within: Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if ReadSide::reached(view, Mark::Position(position)) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads a query from the read model in `path`.
fn read(path: &FsPath, tables: &Tables, q: &CatalogQuery) -> Result<Vec<Product>, BoxError> {
    let conn = sqlite_reader(path)?;
    let rows: Vec<Vec<Value>> = if q.q.is_empty() {
        // Through the tenant-scoped API: the tenant filter cannot be left out.
        Scoped::new(&conn, &q.tenant).select(
            &tables.name("products"),
            &["sku", "name", "price"],
            &[],
        )?
    } else {
        let terms: Vec<String> = q.q.split(' ').map(|w| format!("\"{w}\"*")).collect();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT p.sku, p.name, p.price FROM {fts} JOIN {products} p ON p.seq = {fts}.rowid
             WHERE {fts} MATCH ?1 AND p.tenant_id = ?2 ORDER BY p.sku",
            fts = tables.name("names"),
            products = tables.name("products"),
        ))?;
        let rows = stmt.query_map(params![terms.join(" "), q.tenant.as_str()], |r| {
            Ok(vec![r.get::<_, Value>(0)?, r.get(1)?, r.get(2)?])
        })?;
        rows.collect::<Result<_, _>>()?
    };
    Ok(rows
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [Value::Text(sku), Value::Text(name), Value::Integer(price)] => Some(Product {
                sku: sku.clone(),
                name: name.clone(),
                price: *price,
            }),
            _ => None,
        })
        .collect())
}

/// The catalog: the cached service, its cache's handle, ways to empty the cache, the
/// projection that keeps the read model, and the chaos layer on the read model's reads
/// (`catalog-db`, to make a slow database for a stampede).
pub(crate) struct CatalogParts {
    pub(crate) service: Catalog,
    pub(crate) cache: Box<dyn StateHandle>,
    pub(crate) invalidate: Invalidate,
    pub(crate) invalidate_tenant: InvalidateTenant,
    pub(crate) view: ProjectionHandle,
    pub(crate) chaos: ChaosHandle,
}

/// The catalog cache's key: the search, and, when the cache is shared, the position the
/// read model had reached when it was asked. Its own type, not `Arc<str>`: a cache shared
/// through Redis reads keys back from text (`<commit>.<index>/<terms>`; terms never hold a
/// `/`), and the cache-hit path stays free of allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Search {
    at: Option<GlobalPosition>,
    terms: Arc<str>,
}

impl std::fmt::Display for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some(at) => write!(f, "{}.{}/{}", at.commit, at.index, self.terms),
            None => f.write_str(&self.terms),
        }
    }
}

impl std::str::FromStr for Search {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((at, terms)) = s.split_once('/') else {
            return Ok(Self {
                at: None,
                terms: s.into(),
            });
        };
        let (commit, index) = at.split_once('.').unwrap_or(("0", at));
        Ok(Self {
            at: Some(GlobalPosition::new(commit.parse()?, index.parse()?)),
            terms: terms.into(),
        })
    }
}

/// Starts the projection of `events` into `catalog-read.db` in `dir`, and the cached read
/// service over it; `loads` counts the reads that reach SQLite. With `redis`, the cache is
/// two-tiered over that Redis, shared by the storefronts on the same events.
pub(crate) async fn catalog<S: EventStore>(
    dir: &FsPath,
    events: Arc<S>,
    loads: Arc<AtomicU64>,
    redis: Option<&str>,
) -> Result<CatalogParts, BoxError> {
    let path: Arc<PathBuf> = Arc::new(dir.join("catalog-read.db"));
    let head = events.head().await?.map(|e| e.position);
    // The shared events' identity: the id of their first event, so that storefronts on other
    // databases (whose positions mean other events) keep apart on one Redis.
    let log_id = match events.read_all(GlobalPosition::START, 1).await?.first() {
        Some(first) => first.id.simple().to_string(),
        None => "empty".to_owned(),
    };
    let (view, _task) = Projection::builder("catalog")
        .source(events)
        .sqlite(&*path, CatalogView)
        .build()?
        .spawn();
    // The demo products are in the events already: serve once the read model shows them.
    if let Some(head) = head {
        reached(&view, head, Duration::from_secs(10)).await;
    }
    let tables = view.tables();
    let loader = service_fn(move |q: CatalogQuery| {
        let (path, tables, loads) = (path.clone(), tables.clone(), loads.clone());
        async move {
            loads.fetch_add(1, Ordering::Relaxed);
            let rows = tokio::task::spawn_blocking(move || read(&path, &tables, &q)).await??;
            Ok::<_, BoxError>(Arc::<[Product]>::from(rows))
        }
    });
    let chaos = ChaosLayer::builder("catalog-db")
        .answer_with(AnswerAsError)
        .build()?;
    let reads = chaos.layer(loader);
    let parts = match redis {
        None => cached(
            QuickCacheStore::builder().max_entries(10_000).build(),
            reads,
            None,
        )?,
        Some(url) => {
            let l2 = RedisStore::builder("catalog")
                .url(url)
                .prefix(format!("tp:storefront:{log_id}:catalog"))
                .build()?;
            let tiered = TieredStore::new(l2, 10_000);
            // Serve once this storefront hears the others' invalidations (a Redis that is
            // down delays the start by 2 s at most; the cache then answers without it).
            let _ =
                tokio::time::timeout(Duration::from_secs(2), tiered.wait_until_subscribed()).await;
            cached(tiered, reads, Some(view.clone()))?
        }
    };
    Ok(CatalogParts {
        service: parts.service,
        cache: parts.cache,
        invalidate: parts.invalidate,
        invalidate_tenant: parts.invalidate_tenant,
        chaos: chaos.handle(),
        view,
    })
}

/// The cache over `reads` on `store`, per tenant (the scope) and per search, and the ways to
/// empty it; with `view`, per position of the read model too.
fn cached<St, R>(store: St, reads: R, view: Option<ProjectionHandle>) -> Result<Cached, BoxError>
where
    St: Store<Search, Arc<[Product]>>,
    CacheHandle<Search, Arc<[Product]>, St>: StateHandle,
    R: tower::Service<CatalogQuery, Response = Arc<[Product]>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    R::Future: Send,
{
    let cache = CacheLayer::builder("catalog")
        .store(store)
        .key(key_fn(move |q: &CatalogQuery| {
            Ok::<_, KeyError>(Search {
                at: view.as_ref().map(ProjectionHandle::position),
                terms: q.q.clone(),
            })
        }))
        .scope_fn(|q: &CatalogQuery| Some(q.tenant.clone()))
        .require_tenant()
        .ttl(Duration::from_secs(30))
        .build()?;
    let handle = cache.handle();
    let all = handle.clone();
    let invalidate: Invalidate = Arc::new(move || {
        let handle = all.clone();
        Box::pin(async move { handle.invalidate_all().await.map_err(BoxError::from) })
    });
    let one = handle.clone();
    let invalidate_tenant: InvalidateTenant = Arc::new(move |tenant: TenantId| {
        let handle = one.clone();
        Box::pin(async move {
            handle
                .invalidate_prefix(Some(&tenant), "")
                .await
                .map_err(BoxError::from)
        })
    });
    Ok(Cached {
        service: BoxCloneSyncService::new(cache.layer(reads)),
        cache: Box::new(handle),
        invalidate,
        invalidate_tenant,
    })
}

/// A cache over the read model's reads, before the rest of [`CatalogParts`] joins it.
struct Cached {
    service: Catalog,
    cache: Box<dyn StateHandle>,
    invalidate: Invalidate,
    invalidate_tenant: InvalidateTenant,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared cache reads keys back from the text Redis sends (its invalidations).
    #[test]
    fn a_search_key_reads_back_as_written() {
        for key in [
            Search {
                at: Some(GlobalPosition::new(7, 3)),
                terms: "green* tea*".into(),
            },
            Search {
                at: Some(GlobalPosition::new(0, 12)),
                terms: "".into(),
            },
            Search {
                at: None,
                terms: "cof*".into(),
            },
        ] {
            let text = key.to_string();
            assert_eq!(text.parse::<Search>(), Ok(key), "{text}");
        }
        assert_eq!(
            Search {
                at: Some(GlobalPosition::new(7, 3)),
                terms: "tea*".into()
            }
            .to_string(),
            "7.3/tea*"
        );
        assert!("x.3/tea*".parse::<Search>().is_err());
    }
}
