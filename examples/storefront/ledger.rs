//! The storefront's own tables on SQLite (`ledger.db`): the queue of payments waiting for the
//! provider, stock and its reservations, shipments and refunds. Every write is keyed so that a
//! step the checkout saga repeats (a retry, a recovery after a crash) changes nothing the second
//! time.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use rusqlite::{Connection, OptionalExtension, params};
use tower_patterns::BoxError;

/// The stock every product starts with, per tenant.
pub(crate) const INITIAL_STOCK: i64 = 1_000;

/// A payment waiting in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Queued {
    /// The shard that holds the order.
    pub(crate) shard: usize,
    pub(crate) tenant: String,
    pub(crate) order: String,
    pub(crate) amount: i64,
    /// When it was queued, in Unix seconds.
    pub(crate) since: i64,
}

/// The tables, behind one connection (SQLite serialises writers anyway).
#[derive(Clone)]
pub(crate) struct Ledger {
    db: Arc<Mutex<Connection>>,
    /// The queue's length and its oldest entry's time, kept for reports.
    depth: Arc<(AtomicU64, AtomicI64)>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Ledger {
    /// Opens (or creates) the tables in `path`; stock is set where none is recorded yet, so a
    /// restart keeps what was sold.
    pub(crate) fn open(path: &Path, products: &[(&str, &str)]) -> Result<Self, BoxError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS payment_queue (
                 tenant TEXT NOT NULL, order_id TEXT NOT NULL, shard INTEGER NOT NULL,
                 amount INTEGER NOT NULL, since INTEGER NOT NULL, PRIMARY KEY (tenant, order_id));
             CREATE TABLE IF NOT EXISTS stock (
                 tenant TEXT NOT NULL, sku TEXT NOT NULL, available INTEGER NOT NULL,
                 PRIMARY KEY (tenant, sku));
             CREATE TABLE IF NOT EXISTS reservations (
                 key TEXT PRIMARY KEY, tenant TEXT NOT NULL, sku TEXT NOT NULL,
                 qty INTEGER NOT NULL, released INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS shipments (
                 key TEXT PRIMARY KEY, tenant TEXT NOT NULL, order_id TEXT NOT NULL,
                 status TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS refunds (
                 key TEXT PRIMARY KEY, tenant TEXT NOT NULL, order_id TEXT NOT NULL,
                 charge TEXT NOT NULL);",
        )?;
        for (tenant, sku) in products {
            conn.execute(
                "INSERT OR IGNORE INTO stock (tenant, sku, available) VALUES (?1, ?2, ?3)",
                params![tenant, sku, INITIAL_STOCK],
            )?;
        }
        let (n, oldest) = conn.query_row(
            "SELECT COUNT(*), COALESCE(MIN(since), 0) FROM payment_queue",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        Ok(Self {
            db: Arc::new(Mutex::new(conn)),
            depth: Arc::new((AtomicU64::new(n.unsigned_abs()), AtomicI64::new(oldest))),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BoxError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await?
        .map_err(BoxError::from)
    }

    /// Queues a payment (once per order).
    pub(crate) async fn enqueue(
        &self,
        shard: usize,
        tenant: &str,
        order: &str,
        amount: i64,
    ) -> Result<(), BoxError> {
        let (tenant, order) = (tenant.to_owned(), order.to_owned());
        let shard = i64::try_from(shard)?;
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO payment_queue (tenant, order_id, shard, amount, since) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![tenant, order, shard, amount, now()],
            )
        })
        .await?;
        self.refresh_depth().await
    }

    /// Sets the stock of a new product (a product that has stock keeps it).
    pub(crate) async fn stock(&self, tenant: &str, sku: &str) -> Result<(), BoxError> {
        let (tenant, sku) = (tenant.to_owned(), sku.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO stock (tenant, sku, available) VALUES (?1, ?2, ?3)",
                params![tenant, sku, INITIAL_STOCK],
            )
        })
        .await
        .map(drop)
    }

    /// Takes a payment out of the queue; whether it was there.
    pub(crate) async fn dequeue(&self, tenant: &str, order: &str) -> Result<bool, BoxError> {
        let (tenant, order) = (tenant.to_owned(), order.to_owned());
        let n = self
            .with(move |c| {
                c.execute(
                    "DELETE FROM payment_queue WHERE tenant = ?1 AND order_id = ?2",
                    params![tenant, order],
                )
            })
            .await?;
        self.refresh_depth().await?;
        Ok(n > 0)
    }

    /// The oldest `n` queued payments.
    pub(crate) async fn queued(&self, n: u32) -> Result<Vec<Queued>, BoxError> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT tenant, order_id, shard, amount, since FROM payment_queue ORDER BY since, order_id LIMIT ?1",
            )?;
            let rows = stmt.query_map([n], |r| {
                Ok(Queued {
                    tenant: r.get(0)?,
                    order: r.get(1)?,
                    shard: r.get(2)?,
                    amount: r.get(3)?,
                    since: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// How many payments wait, and the age in seconds of the oldest (0 when none), as of the
    /// last change or sweep: read without touching SQLite, so that a report (which is not
    /// async) never blocks a runtime thread.
    pub(crate) fn queue_depth(&self) -> (u64, u64) {
        let queued = self.depth.0.load(Ordering::Relaxed);
        let oldest = self.depth.1.load(Ordering::Relaxed);
        let age = if queued == 0 {
            0
        } else {
            (now() - oldest).max(0)
        };
        (queued, age.unsigned_abs())
    }

    /// Counts the queue again (on a blocking thread) for [`queue_depth`](Self::queue_depth).
    pub(crate) async fn refresh_depth(&self) -> Result<(), BoxError> {
        let (n, oldest) = self
            .with(|c| {
                c.query_row(
                    "SELECT COUNT(*), COALESCE(MIN(since), 0) FROM payment_queue",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
            })
            .await?;
        self.depth.1.store(oldest, Ordering::Relaxed);
        self.depth.0.store(n.unsigned_abs(), Ordering::Relaxed);
        Ok(())
    }

    /// Reserves `qty` of `sku` under `key`: `Ok(false)` when too few are left. A key already
    /// reserved is a success that takes nothing more.
    pub(crate) async fn reserve(
        &self,
        key: String,
        tenant: String,
        sku: String,
        qty: i64,
    ) -> Result<bool, BoxError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let held: Option<i64> = tx
                .query_row("SELECT released FROM reservations WHERE key = ?1", [&key], |r| r.get(0))
                .optional()?;
            if held.is_some() {
                return Ok(true);
            }
            let taken = tx.execute(
                "UPDATE stock SET available = available - ?3 WHERE tenant = ?1 AND sku = ?2 AND available >= ?3",
                params![tenant, sku, qty],
            )?;
            if taken == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO reservations (key, tenant, sku, qty) VALUES (?1, ?2, ?3, ?4)",
                params![key, tenant, sku, qty],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Gives back what `key` reserved, once; whether anything was given back.
    pub(crate) async fn release(&self, key: String) -> Result<bool, BoxError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let held: Option<(String, String, i64)> = tx
                .query_row(
                    "SELECT tenant, sku, qty FROM reservations WHERE key = ?1 AND released = 0",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((tenant, sku, qty)) = held else {
                return Ok(false);
            };
            tx.execute(
                "UPDATE stock SET available = available + ?3 WHERE tenant = ?1 AND sku = ?2",
                params![tenant, sku, qty],
            )?;
            tx.execute(
                "UPDATE reservations SET released = 1 WHERE key = ?1",
                [&key],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// What is left of `sku` for `tenant`.
    #[cfg(test)]
    pub(crate) async fn available(&self, tenant: String, sku: String) -> Result<i64, BoxError> {
        self.with(move |c| {
            c.query_row(
                "SELECT available FROM stock WHERE tenant = ?1 AND sku = ?2",
                params![tenant, sku],
                |r| r.get(0),
            )
            .optional()
            .map(|n| n.unwrap_or(0))
        })
        .await
    }

    /// Records the shipment of `key` (once) with `status`, or changes its status.
    pub(crate) async fn ship(
        &self,
        key: String,
        tenant: String,
        order: String,
        status: &'static str,
    ) -> Result<(), BoxError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO shipments (key, tenant, order_id, status) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET status = excluded.status",
                params![key, tenant, order, status],
            )
        })
        .await
        .map(drop)
    }

    /// Records the refund of `charge` under `key` (once).
    pub(crate) async fn refund(
        &self,
        key: String,
        tenant: String,
        order: String,
        charge: String,
    ) -> Result<(), BoxError> {
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO refunds (key, tenant, order_id, charge) VALUES (?1, ?2, ?3, ?4)",
                params![key, tenant, order, charge],
            )
        })
        .await
        .map(drop)
    }

    /// How many refunds and how many cancelled shipments are recorded.
    pub(crate) async fn undone(&self) -> Result<(u64, u64), BoxError> {
        self.with(|c| {
            let count = |sql: &str| {
                c.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map(i64::unsigned_abs)
            };
            Ok((
                count("SELECT COUNT(*) FROM refunds")?,
                count("SELECT COUNT(*) FROM shipments WHERE status = 'cancelled'")?,
            ))
        })
        .await
    }
}
