//! Orders sharded by customer: N event stores (`orders-<i>.db`), each followed by its own read
//! model (`orders-read-<i>.db`, a CQRS projection), each behind its own consistency layer whose
//! tokens name the shard. A customer's orders all live on the shard jump hash gives them, so
//! a token from one write compares with the reads that follow it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rusqlite::{OptionalExtension, Transaction, params};
use tower_patterns::{
    BoxError,
    chaos::{Always, AnswerAsError, ChaosLayer},
    consistency::{TokenKey, layer::ConsistencyLayer},
    cqrs::{
        ApplyError, Projection, ProjectionHandle, SqliteProjection, Tables,
        projection::sqlite_reader,
    },
    eventstore::{RecordedEvent, Repository},
};

use crate::{
    backend::{self, Store},
    lag::Lagging,
    orders::{Order, OrderEvent},
};

/// The orders' read model: one row per order, written only by the projection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OrdersView;

/// The prefix of every order's stream.
pub(crate) const ORDER_PREFIX: &str = "order-";

impl SqliteProjection for OrdersView {
    fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
        tx.execute_batch(&format!(
            "CREATE TABLE {orders} (
                 stream TEXT PRIMARY KEY, tenant TEXT NOT NULL, order_id TEXT NOT NULL,
                 customer TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
                 status TEXT NOT NULL, version INTEGER NOT NULL);",
            orders = t.name("orders"),
        ))?;
        Ok(())
    }

    fn apply(&self, tx: &Transaction<'_>, t: &Tables, e: &RecordedEvent) -> Result<(), ApplyError> {
        // The order id has no '.'; a tenant id may.
        let Some((tenant, order)) = e
            .stream_id
            .strip_prefix(ORDER_PREFIX)
            .and_then(|s| s.rsplit_once('.'))
        else {
            return Ok(());
        };
        let orders = t.name("orders");
        let version = i64::try_from(e.version).unwrap_or(i64::MAX);
        // Guarded by the stream version: an event applied twice changes nothing.
        match e.decode_event::<OrderEvent>()? {
            OrderEvent::Placed { sku, qty, customer } => {
                tx.execute(
                    &format!(
                        "INSERT INTO {orders} (stream, tenant, order_id, customer, sku, qty, status, version)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'PLACED', ?7) ON CONFLICT (stream) DO NOTHING"
                    ),
                    params![e.stream_id, tenant, order, customer, sku, qty, version],
                )?;
            }
            event => {
                let status = match event {
                    OrderEvent::Paid { .. } => "PAID",
                    OrderEvent::PaymentQueued => "PAYMENT_QUEUED",
                    _ => "CANCELLED",
                };
                tx.execute(
                    &format!("UPDATE {orders} SET status = ?2, version = ?3 WHERE stream = ?1 AND version < ?3"),
                    params![e.stream_id, status, version],
                )?;
            }
        }
        Ok(())
    }
}

/// One order as the read model has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OrderRow {
    pub(crate) status: String,
    pub(crate) sku: String,
    pub(crate) qty: u32,
    pub(crate) version: u64,
}

/// One shard: its event store, its read model and the consistency layer in front of both.
#[derive(Clone)]
pub(crate) struct Shard {
    pub(crate) index: usize,
    pub(crate) orders: Repository<Order, Store>,
    pub(crate) view: ProjectionHandle,
    read: Arc<PathBuf>,
    pub(crate) consistency: ConsistencyLayer<ProjectionHandle>,
}

impl Shard {
    /// The order `order` of `customer` of `tenant`, from the read model.
    pub(crate) async fn read(
        &self,
        tenant: &str,
        customer: &str,
        order: &str,
    ) -> Result<Option<OrderRow>, BoxError> {
        let (path, tables) = (self.read.clone(), self.view.tables());
        let stream = format!("{ORDER_PREFIX}{tenant}.{order}");
        let (tenant, customer) = (tenant.to_owned(), customer.to_owned());
        tokio::task::spawn_blocking(move || {
            let conn = sqlite_reader(&*path)?;
            conn.query_row(
                &format!(
                    "SELECT status, sku, qty, version FROM {} WHERE stream = ?1 AND tenant = ?2 AND customer = ?3",
                    tables.name("orders")
                ),
                params![stream, tenant, customer],
                |r| {
                    Ok(OrderRow {
                        status: r.get(0)?,
                        sku: r.get(1)?,
                        qty: r.get(2)?,
                        version: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(BoxError::from)
        })
        .await?
    }
}

/// The shards, in placement order (the shard router's jump hash picks among them).
#[derive(Clone)]
pub(crate) struct Shards {
    pub(crate) all: Arc<[Shard]>,
}

/// Checks the number of shards against the one the data directory was made with (recorded
/// in `shards` at the first start): orders placed by jump hash over N stores cannot be read
/// over M without moving them.
pub(crate) fn check_count(dir: &Path, n: usize) -> Result<(), String> {
    let file = dir.join("shards");
    match std::fs::read_to_string(&file) {
        Ok(text) if text.trim() == n.to_string() => Ok(()),
        Ok(text) => Err(format!(
            "storefront: --shards {n}: the data in {:?} was made with {} shards; start with --shards {} or a new --data (also TP_SHARDS)",
            dir.display(),
            text.trim(),
            text.trim()
        )),
        Err(_) => std::fs::write(&file, format!("{n}\n"))
            .map_err(|e| format!("storefront: --data {:?}: {e} (also TP_DATA)", dir.display())),
    }
}

/// Opens `n` shards in `dir`: each store, its projection (reading through the lag gate),
/// and its consistency layer (tokens signed with `key`, scoped to the shard).
pub(crate) async fn open(
    dir: &Path,
    postgres: Option<&str>,
    n: usize,
    key: &TokenKey,
    lag: &ChaosLayer<Always, AnswerAsError>,
) -> Result<Shards, BoxError> {
    let mut all = Vec::with_capacity(n);
    for index in 0..n {
        let store = Arc::new(backend::store(dir, postgres, &format!("orders-{index}")).await?);
        let read = dir.join(format!("orders-read-{index}.db"));
        let (view, _task) = Projection::builder(format!("orders_{index}"))
            .source(Arc::new(Lagging::new(store.clone(), lag)))
            .sqlite(&read, OrdersView)
            .build()?
            .spawn();
        let consistency = ConsistencyLayer::builder(format!("orders-{index}"))
            .key(*key)
            .read_side(view.clone())
            .wait(std::time::Duration::from_secs(2))
            .build()?;
        all.push(Shard {
            index,
            orders: Repository::new(store, ORDER_PREFIX),
            view,
            read: Arc::new(read),
            consistency,
        });
    }
    Ok(Shards { all: all.into() })
}
