//! The catalog, cache-aside: a tenant's products read from a shared SQLite table through
//! `Scoped` (the tenant filter cannot be left out), cached per tenant.

use std::{
    future::Future,
    path::Path as FsPath,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, types::Value};
use serde::Serialize;
use tower::{Layer, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError, KeyError,
    cache::{CacheLayer, store::QuickCacheStore},
    chaos::{AnswerAsError, ChaosHandle, ChaosLayer},
    key::key_fn,
    observe::StateHandle,
    tenant::{TenantId, sqlite::Scoped},
};

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Product {
    pub(crate) sku: String,
    pub(crate) price: i64,
}

/// What the catalog loader is asked: a tenant's products.
#[derive(Clone, Debug)]
pub(crate) struct CatalogQuery {
    pub(crate) tenant: TenantId,
}

/// The key of a tenant's whole catalog.
static ALL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("all"));

pub(crate) type Catalog = BoxCloneSyncService<CatalogQuery, Arc<[Product]>, BoxError>;

/// Empties the catalog cache (every tenant's entry).
pub(crate) type Invalidate =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync>;

/// The catalog: the cached service, its cache's handle, a way to empty the cache, and the
/// chaos layer on its database reads (`catalog-db`, to make a slow database for a stampede).
pub(crate) struct CatalogParts {
    pub(crate) service: Catalog,
    pub(crate) cache: Box<dyn StateHandle>,
    pub(crate) invalidate: Invalidate,
    pub(crate) chaos: ChaosHandle,
}

/// Reads a tenant's products from the shared table, cache-aside per tenant; `loads` counts
/// the reads that reach SQLite.
pub(crate) fn catalog(
    db: Arc<Mutex<Connection>>,
    loads: Arc<AtomicU64>,
) -> Result<CatalogParts, BoxError> {
    let loader = service_fn(move |q: CatalogQuery| {
        let db = db.clone();
        let loads = loads.clone();
        async move {
            loads.fetch_add(1, Ordering::Relaxed);
            let rows = tokio::task::spawn_blocking(move || {
                let conn = db
                    .lock()
                    .map_err(|_| BoxError::from("catalog lock poisoned"))?;
                Scoped::new(&conn, &q.tenant)
                    .select("products", &["sku", "price"], &[])
                    .map_err(BoxError::from)
            })
            .await??;
            let products: Arc<[Product]> = rows
                .into_iter()
                .filter_map(|row| match row.as_slice() {
                    [Value::Text(sku), Value::Integer(price)] => Some(Product {
                        sku: sku.clone(),
                        price: *price,
                    }),
                    _ => None,
                })
                .collect();
            Ok::<_, BoxError>(products)
        }
    });
    let cache = CacheLayer::builder("catalog")
        .store(QuickCacheStore::builder().max_entries(10_000).build())
        // One entry per tenant (the scope); an owned key, so the cache's handle has no lifetime.
        .key(key_fn(|_: &CatalogQuery| Ok::<_, KeyError>(ALL.clone())))
        .scope_fn(|q: &CatalogQuery| Some(q.tenant.clone()))
        .require_tenant()
        .ttl(Duration::from_secs(30))
        .build()?;
    let chaos = ChaosLayer::builder("catalog-db")
        .answer_with(AnswerAsError)
        .build()?;
    let handle = cache.handle();
    let invalidate: Invalidate = Arc::new(move || {
        let handle = handle.clone();
        Box::pin(async move { handle.invalidate_all().await.map_err(BoxError::from) })
    });
    Ok(CatalogParts {
        cache: Box::new(cache.handle()),
        chaos: chaos.handle(),
        service: BoxCloneSyncService::new(cache.layer(chaos.layer(loader))),
        invalidate,
    })
}

/// The shared table and two tenants' rows.
/// The demo products: (tenant, sku, price).
pub(crate) const CATALOG: [(&str, &str, i64); 3] = [
    ("acme", "tea", 4),
    ("acme", "coffee", 5),
    ("globex", "widget", 120),
];

/// The demo products as (tenant, sku), for the stock.
pub(crate) const PRODUCTS: &[(&str, &str)] =
    &[("acme", "tea"), ("acme", "coffee"), ("globex", "widget")];

pub(crate) fn open_catalog(path: &FsPath) -> Result<Connection, BoxError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS products (tenant_id TEXT NOT NULL, sku TEXT NOT NULL, price INTEGER NOT NULL);
         DELETE FROM products;",
    )?;
    for (tenant, sku, price) in CATALOG {
        let tenant = TenantId::new(tenant)?;
        Scoped::new(&conn, &tenant).insert(
            "products",
            &[
                ("sku", Value::Text(sku.into())),
                ("price", Value::Integer(price)),
            ],
        )?;
    }
    Ok(conn)
}
