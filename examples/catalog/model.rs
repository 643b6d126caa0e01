//! The product catalog: a `Product` aggregate (the write side) and the `Catalog` read model,
//! a cached product row per product plus a real search index: SQLite FTS5 on one machine,
//! PostgreSQL full-text search (`tsvector` + GIN) when it has outgrown one.
//!
//! Self-contained: the example, its tests and the projection benchmark include this file with
//! `#[path]`. Every table is named through [`Tables::name`], so a rebuild fills a fresh copy.

#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    reason = "the example, its tests and the benchmark each use part of the model"
)]

use serde::{Deserialize, Serialize};
use tower_patterns::{
    cqrs::{ApplyError, Tables},
    eventstore::{Aggregate, DomainEvent, RecordedEvent},
};

/// The stream prefix of products (`product-<id>`).
pub const PRODUCT_PREFIX: &str = "product-";

/// What happened to a product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductEvent {
    /// Listed.
    ProductCreated {
        id: String,
        name: String,
        description: String,
        price_cents: i64,
    },
    /// Repriced.
    PriceUpdated { id: String, price_cents: i64 },
    /// Renamed (new text for the search index).
    Renamed {
        id: String,
        name: String,
        description: String,
    },
    /// Taken off the catalog.
    Deleted { id: String },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::ProductCreated { .. } => "ProductCreated",
            Self::PriceUpdated { .. } => "PriceUpdated",
            Self::Renamed { .. } => "Renamed",
            Self::Deleted { .. } => "Deleted",
        }
    }
}

/// What a product can be asked to do.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ProductCommand {
    /// List it.
    Create {
        name: String,
        description: String,
        price_cents: i64,
    },
    /// Reprice it.
    SetPrice { price_cents: i64 },
    /// Rename it.
    Rename { name: String, description: String },
    /// Take it off.
    Delete,
}

/// Why a product refused a command.
#[derive(Debug, PartialEq, Eq)]
pub enum ProductError {
    /// `Create` of a listed product.
    AlreadyListed,
    /// Anything but `Create` on a product not listed (or deleted).
    NotListed,
    /// A negative price.
    NegativePrice,
}

impl std::fmt::Display for ProductError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AlreadyListed => "the product is already listed",
            Self::NotListed => "no such product",
            Self::NegativePrice => "a negative price",
        })
    }
}

impl std::error::Error for ProductError {}

/// The write side's state of one product.
#[derive(Default, Serialize, Deserialize)]
pub struct Product {
    id: Option<String>,
    price_cents: i64,
    deleted: bool,
}

impl Aggregate for Product {
    type Command = (String, ProductCommand);
    type Event = ProductEvent;
    type Error = ProductError;

    fn handle(&self, (id, command): &Self::Command) -> Result<Vec<ProductEvent>, ProductError> {
        let id = id.clone();
        let listed = self.id.is_some() && !self.deleted;
        match command.clone() {
            ProductCommand::Create { .. } if self.id.is_some() => Err(ProductError::AlreadyListed),
            _ if !listed && !matches!(command, ProductCommand::Create { .. }) => {
                Err(ProductError::NotListed)
            }
            ProductCommand::Create { price_cents, .. }
            | ProductCommand::SetPrice { price_cents }
                if price_cents < 0 =>
            {
                Err(ProductError::NegativePrice)
            }
            ProductCommand::Create {
                name,
                description,
                price_cents,
            } => Ok(vec![ProductEvent::ProductCreated {
                id,
                name,
                description,
                price_cents,
            }]),
            ProductCommand::SetPrice { price_cents } if price_cents == self.price_cents => {
                Ok(vec![])
            }
            ProductCommand::SetPrice { price_cents } => {
                Ok(vec![ProductEvent::PriceUpdated { id, price_cents }])
            }
            ProductCommand::Rename { name, description } => Ok(vec![ProductEvent::Renamed {
                id,
                name,
                description,
            }]),
            ProductCommand::Delete => Ok(vec![ProductEvent::Deleted { id }]),
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductCreated {
                id, price_cents, ..
            } => {
                self.id = Some(id.clone());
                self.price_cents = *price_cents;
            }
            ProductEvent::PriceUpdated { price_cents, .. } => self.price_cents = *price_cents,
            ProductEvent::Renamed { .. } => {}
            ProductEvent::Deleted { .. } => self.deleted = true,
        }
    }
}

/// A product as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProductRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
}

/// A catalog query: words to match (all of them, as prefixes; empty: any product), a price
/// range (inclusive), and the page after a `(price, id)` cursor, cheapest first.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Search {
    #[serde(default)]
    pub text: String,
    pub min_cents: Option<i64>,
    pub max_cents: Option<i64>,
    /// The last row of the previous page, as `price_cents` and `id`.
    pub after_cents: Option<i64>,
    pub after_id: Option<String>,
    pub limit: Option<u32>,
}

impl Search {
    /// The page size: `limit`, 20 by default, at most 100.
    pub fn page_size(&self) -> u32 {
        self.limit.unwrap_or(20).clamp(1, 100)
    }

    /// The words of `text`: letters and digits only, so no query syntax gets through.
    pub fn words(&self) -> Vec<String> {
        self.text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }

    fn cursor(&self) -> (i64, String) {
        match (&self.after_cents, &self.after_id) {
            (Some(c), Some(id)) => (*c, id.clone()),
            _ => (i64::MIN, String::new()),
        }
    }
}

/// The catalog read model (a `SqliteProjection` and a `PostgresProjection`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Catalog;

fn decode(event: &RecordedEvent) -> Result<Option<ProductEvent>, ApplyError> {
    if !event.stream_id.starts_with(PRODUCT_PREFIX) {
        return Ok(None); // another aggregate's event
    }
    Ok(Some(event.decode_event::<ProductEvent>()?))
}

fn version(event: &RecordedEvent) -> i64 {
    i64::try_from(event.version).unwrap_or(i64::MAX)
}

mod sqlite_model {
    use rusqlite::{Transaction, params};

    use super::*;

    impl tower_patterns::cqrs::SqliteProjection for Catalog {
        fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
            let (products, fts) = (t.name("products"), t.name("products_fts"));
            tx.execute_batch(&format!(
                "CREATE TABLE {products} (
                     seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
                     description TEXT NOT NULL, price_cents INTEGER NOT NULL,
                     version INTEGER NOT NULL);
                 CREATE INDEX {price} ON {products} (price_cents, id);
                 CREATE VIRTUAL TABLE {fts} USING fts5(name, description,
                     tokenize = 'porter unicode61');",
                price = t.name("products_price"),
            ))?;
            Ok(())
        }

        fn apply(
            &self,
            tx: &Transaction<'_>,
            t: &Tables,
            e: &RecordedEvent,
        ) -> Result<(), ApplyError> {
            let Some(event) = decode(e)? else {
                return Ok(());
            };
            let (products, fts) = (t.name("products"), t.name("products_fts"));
            let v = version(e);
            // Each write is guarded by the stream version, so a repeated event changes nothing.
            match event {
                ProductEvent::ProductCreated {
                    id,
                    name,
                    description,
                    price_cents,
                } => {
                    let n = tx.execute(
                        &format!(
                            "INSERT INTO {products} (id, name, description, price_cents, version)
                             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING"
                        ),
                        params![id, name, description, price_cents, v],
                    )?;
                    if n == 1 {
                        tx.execute(
                            &format!(
                                "INSERT INTO {fts} (rowid, name, description) VALUES (?1, ?2, ?3)"
                            ),
                            params![tx.last_insert_rowid(), name, description],
                        )?;
                    }
                }
                ProductEvent::PriceUpdated { id, price_cents } => {
                    tx.execute(
                        &format!("UPDATE {products} SET price_cents = ?2, version = ?3 WHERE id = ?1 AND version < ?3"),
                        params![id, price_cents, v],
                    )?;
                }
                ProductEvent::Renamed {
                    id,
                    name,
                    description,
                } => {
                    let n = tx.execute(
                        &format!("UPDATE {products} SET name = ?2, description = ?3, version = ?4 WHERE id = ?1 AND version < ?4"),
                        params![id, name, description, v],
                    )?;
                    if n == 1 {
                        tx.execute(
                            &format!("UPDATE {fts} SET name = ?2, description = ?3 WHERE rowid = (SELECT seq FROM {products} WHERE id = ?1)"),
                            params![id, name, description],
                        )?;
                    }
                }
                ProductEvent::Deleted { id } => {
                    tx.execute(
                        &format!("DELETE FROM {fts} WHERE rowid = (SELECT seq FROM {products} WHERE id = ?1)"),
                        params![id],
                    )?;
                    tx.execute(
                        &format!("DELETE FROM {products} WHERE id = ?1"),
                        params![id],
                    )?;
                }
            }
            Ok(())
        }
    }

    /// Searches the catalog's live tables `t` on `conn`.
    pub fn search_sqlite(
        conn: &rusqlite::Connection,
        t: &Tables,
        q: &Search,
    ) -> rusqlite::Result<Vec<ProductRow>> {
        let (products, fts) = (t.name("products"), t.name("products_fts"));
        let words = q.words();
        // FTS5 query: every word as a quoted prefix ("word"*), all required.
        let matcher = words
            .iter()
            .map(|w| format!("\"{w}\"*"))
            .collect::<Vec<_>>()
            .join(" ");
        let text_filter = if words.is_empty() {
            String::new()
        } else {
            format!("AND p.seq IN (SELECT rowid FROM {fts} WHERE {fts} MATCH ?6)")
        };
        let sql = format!(
            "SELECT p.id, p.name, p.description, p.price_cents FROM {products} p
             WHERE p.price_cents BETWEEN ?1 AND ?2 AND (p.price_cents, p.id) > (?3, ?4) {text_filter}
             ORDER BY p.price_cents, p.id LIMIT ?5"
        );
        let (after_cents, after_id) = q.cursor();
        let mut stmt = conn.prepare(&sql)?;
        let map = |r: &rusqlite::Row<'_>| {
            Ok(ProductRow {
                id: r.get(0)?,
                name: r.get(1)?,
                description: r.get(2)?,
                price_cents: r.get(3)?,
            })
        };
        let min = q.min_cents.unwrap_or(i64::MIN);
        let max = q.max_cents.unwrap_or(i64::MAX);
        if words.is_empty() {
            stmt.query_map(params![min, max, after_cents, after_id, q.page_size()], map)?
                .collect()
        } else {
            stmt.query_map(
                params![min, max, after_cents, after_id, q.page_size(), matcher],
                map,
            )?
            .collect()
        }
    }

    /// One product by id.
    pub fn product_sqlite(
        conn: &rusqlite::Connection,
        t: &Tables,
        id: &str,
    ) -> rusqlite::Result<Option<ProductRow>> {
        use rusqlite::OptionalExtension as _;
        conn.query_row(
            &format!(
                "SELECT id, name, description, price_cents FROM {} WHERE id = ?1",
                t.name("products")
            ),
            params![id],
            |r| {
                Ok(ProductRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    description: r.get(2)?,
                    price_cents: r.get(3)?,
                })
            },
        )
        .optional()
    }
}

pub use sqlite_model::{product_sqlite, search_sqlite};

#[cfg(feature = "cqrs-postgres")]
mod postgres_model {
    use tokio_postgres::{GenericClient, Transaction};

    use super::*;

    impl tower_patterns::cqrs::PostgresProjection for Catalog {
        async fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
            let products = t.name("products");
            tx.batch_execute(&format!(
                "CREATE TABLE {products} (
                     id text PRIMARY KEY, name text NOT NULL, description text NOT NULL,
                     price_cents bigint NOT NULL, version bigint NOT NULL,
                     search tsvector GENERATED ALWAYS AS
                         (to_tsvector('english', name || ' ' || description)) STORED);
                 CREATE INDEX {search} ON {products} USING GIN (search);
                 CREATE INDEX {price} ON {products} (price_cents, id);",
                search = t.name("products_search"),
                price = t.name("products_price"),
            ))
            .await?;
            Ok(())
        }

        async fn apply(
            &self,
            tx: &Transaction<'_>,
            t: &Tables,
            e: &RecordedEvent,
        ) -> Result<(), ApplyError> {
            let Some(event) = decode(e)? else {
                return Ok(());
            };
            let products = t.name("products");
            let v = version(e);
            match event {
                ProductEvent::ProductCreated {
                    id,
                    name,
                    description,
                    price_cents,
                } => {
                    tx.execute(
                        &format!(
                            "INSERT INTO {products} (id, name, description, price_cents, version)
                                  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING"
                        ),
                        &[&id, &name, &description, &price_cents, &v],
                    )
                    .await?;
                }
                ProductEvent::PriceUpdated { id, price_cents } => {
                    tx.execute(
                        &format!("UPDATE {products} SET price_cents = $2, version = $3 WHERE id = $1 AND version < $3"),
                        &[&id, &price_cents, &v],
                    )
                    .await?;
                }
                ProductEvent::Renamed {
                    id,
                    name,
                    description,
                } => {
                    tx.execute(
                        &format!("UPDATE {products} SET name = $2, description = $3, version = $4 WHERE id = $1 AND version < $4"),
                        &[&id, &name, &description, &v],
                    )
                    .await?;
                }
                ProductEvent::Deleted { id } => {
                    tx.execute(&format!("DELETE FROM {products} WHERE id = $1"), &[&id])
                        .await?;
                }
            }
            Ok(())
        }

        async fn apply_batch(
            &self,
            tx: &Transaction<'_>,
            t: &Tables,
            events: &[RecordedEvent],
        ) -> Result<(), (usize, ApplyError)> {
            apply_pipelined(tx, t, events).await
        }
    }

    /// The batch, pipelined: its four statements prepared once (in one round trip), then
    /// every event's statement sent without waiting for the one before; the server runs them
    /// in log order. About one round trip per batch instead of two per event.
    pub(super) async fn apply_pipelined(
        tx: &Transaction<'_>,
        t: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), (usize, ApplyError)> {
        // Decoded first: an event that cannot be decoded ends the batch before it.
        let mut decoded = Vec::with_capacity(events.len());
        let mut undecodable = None;
        for (k, e) in events.iter().enumerate() {
            match decode(e) {
                Ok(event) => decoded.push((event, version(e))),
                Err(err) => {
                    undecodable = Some((k, err));
                    break;
                }
            }
        }
        if decoded.iter().all(|(event, _)| event.is_none()) {
            // Nothing of the catalog's in this batch: no statement to prepare.
            return undecodable.map_or(Ok(()), Err);
        }
        let products = t.name("products");
        let create = format!(
            "INSERT INTO {products} (id, name, description, price_cents, version)
                  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING"
        );
        let reprice = format!(
            "UPDATE {products} SET price_cents = $2, version = $3 WHERE id = $1 AND version < $3"
        );
        let rename = format!(
            "UPDATE {products} SET name = $2, description = $3, version = $4 \
             WHERE id = $1 AND version < $4"
        );
        let delete = format!("DELETE FROM {products} WHERE id = $1");
        let (create, reprice, rename, delete) = futures::try_join!(
            tx.prepare(&create),
            tx.prepare(&reprice),
            tx.prepare(&rename),
            tx.prepare(&delete),
        )
        .map_err(|e| {
            // Blamed on the first event with a statement to run: an event of another
            // aggregate before it needs none.
            let first = decoded.iter().position(|(event, _)| event.is_some());
            (first.unwrap_or(0), ApplyError::from(e))
        })?;
        let (create, reprice, rename, delete) = (&create, &reprice, &rename, &delete);
        // tokio-postgres sends a request when its future is first polled: each event's
        // future is polled once here, in log order, so the server gets the statements in
        // that order whatever order they finish in; `join_all` then drives them all.
        let mut statements: Vec<_> = decoded
            .iter()
            .map(|(event, v)| {
                Box::pin(futures::future::maybe_done(async move {
                    match event {
                        None => Ok(0),
                        Some(ProductEvent::ProductCreated {
                            id,
                            name,
                            description,
                            price_cents,
                        }) => {
                            tx.execute(create, &[id, name, description, price_cents, v])
                                .await
                        }
                        Some(ProductEvent::PriceUpdated { id, price_cents }) => {
                            tx.execute(reprice, &[id, price_cents, v]).await
                        }
                        Some(ProductEvent::Renamed {
                            id,
                            name,
                            description,
                        }) => tx.execute(rename, &[id, name, description, v]).await,
                        Some(ProductEvent::Deleted { id }) => tx.execute(delete, &[id]).await,
                    }
                }))
            })
            .collect();
        for statement in &mut statements {
            let _ = futures::poll!(statement.as_mut());
        }
        futures::future::join_all(statements.iter_mut().map(|s| s.as_mut())).await;
        let results = statements
            .iter_mut()
            // Every one is done (join_all drove them): take_output has each result.
            .map(|s| s.as_mut().take_output().unwrap_or(Ok(0)));
        // The first failure is the event that failed; those after it only found the
        // transaction aborted.
        if let Some((k, e)) = results
            .enumerate()
            .find_map(|(k, r)| r.err().map(|e| (k, e)))
        {
            return Err((k, e.into()));
        }
        undecodable.map_or(Ok(()), Err)
    }

    fn row(r: &tokio_postgres::Row) -> ProductRow {
        ProductRow {
            id: r.get(0),
            name: r.get(1),
            description: r.get(2),
            price_cents: r.get(3),
        }
    }

    /// Searches the catalog's live tables `t` through `client`.
    pub async fn search_postgres(
        client: &impl GenericClient,
        t: &Tables,
        q: &Search,
    ) -> Result<Vec<ProductRow>, tokio_postgres::Error> {
        let products = t.name("products");
        // to_tsquery: every word as a prefix (word:*), all required; words are alphanumeric.
        let matcher = q
            .words()
            .iter()
            .map(|w| format!("{w}:*"))
            .collect::<Vec<_>>()
            .join(" & ");
        let (after_cents, after_id) = q.cursor();
        let sql = format!(
            "SELECT id, name, description, price_cents FROM {products}
             WHERE price_cents BETWEEN $1 AND $2 AND (price_cents, id) > ($3, $4)
               AND ($6 = '' OR search @@ to_tsquery('english', $6))
             ORDER BY price_cents, id LIMIT $5"
        );
        let limit = i64::from(q.page_size());
        let rows = client
            .query(
                &sql,
                &[
                    &q.min_cents.unwrap_or(i64::MIN),
                    &q.max_cents.unwrap_or(i64::MAX),
                    &after_cents,
                    &after_id,
                    &limit,
                    &matcher,
                ],
            )
            .await?;
        Ok(rows.iter().map(row).collect())
    }

    /// One product by id.
    pub async fn product_postgres(
        client: &impl GenericClient,
        t: &Tables,
        id: &str,
    ) -> Result<Option<ProductRow>, tokio_postgres::Error> {
        let sql = format!(
            "SELECT id, name, description, price_cents FROM {} WHERE id = $1",
            t.name("products")
        );
        Ok(client.query_opt(&sql, &[&id]).await?.as_ref().map(row))
    }
}

#[cfg(feature = "cqrs-postgres")]
pub use postgres_model::{product_postgres, search_postgres};
