//! The product catalog as a CQRS service: commands go to the `Product` aggregate in the event
//! store, queries to a read model kept by a projection (a product row and an FTS5 search
//! index in its own SQLite file).
//!
//! ```text
//! cargo run --example catalog --features consistency   # listens on 127.0.0.1:3000
//! curl -i -XPOST localhost:3000/products/p1 \
//!   -d '{"op":"create","name":"Red kettle","description":"A loud kettle","price_cents":2500}'
//! #   -> 200, tp-consistency: 1e…, set-cookie: tp_consistency_catalog=1e…; Path=/; HttpOnly; SameSite=Lax
//! curl -i -XPOST localhost:3000/products/p1 -d '{"op":"set_price","price_cents":1999}'
//! curl -H 'tp-consistency: 1e…' 'localhost:3000/products?text=kett&max_cents=2000'
//! # The same session in a cookie jar: each command's cookie is sent with the next request.
//! curl -c jar -b jar -XPOST localhost:3000/products/p2 \
//!   -d '{"op":"create","name":"Blue kettle","description":"Quiet","price_cents":1500}'
//! curl -c jar -b jar localhost:3000/products/p2
//! # A token this server did not sign: 400 "invalid consistency token", at once.
//! curl -i -H 'tp-consistency: 1e0000000000000000000000000000ffff0000000000000000' \
//!   localhost:3000/products
//! ```
//!
//! A command answers with a signed consistency token of the position it reached
//! (`tp-consistency`, and the `tp_consistency_catalog` cookie); a query that sends it back (header or
//! cookie) is answered once the read model has applied it, waiting up to 2 s, then `503` with
//! `Retry-After`: a client reads its own writes. The [`ConsistencyLayer`] does this around the
//! whole service. A malformed token in the header is a `400` (`malformed consistency token`),
//! a forged one too (`invalid consistency token`), so no client can hold reads with a position
//! from the future; a bad one in the cookie is ignored and the cookie cleared. Tokens are signed with `TP_TOKEN_KEY` (32 hexadecimal digits, `openssl rand -hex
//! 16`; every instance needs the same); without it, with a random key that does not survive a
//! restart. The informational `tp-position` header and the JSON body of a command stay as the
//! CQRS layer writes them.
//!
//! Bad JSON is a `400` with a fixed phrase, a refused command `422`, a conflict `409`.
//! `TP_CATALOG_DIR` picks the directory of the two SQLite files (default: the current one).
//! Built with `--features consistency,cqrs-postgres` and given `TP_POSTGRES_URL` (or
//! `DATABASE_URL`), it keeps the events and the read model in PostgreSQL instead (full-text
//! search by `tsvector`).
#![allow(clippy::print_stdout, reason = "an example says where it listens")]
#![allow(unreachable_pub, reason = "the tests include this file as a module")]

#[path = "model.rs"]
pub(crate) mod model;

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use tower::Layer;
use tower_patterns::{
    BoxError,
    consistency::{TokenKey, layer::ConsistencyLayer},
    cqrs::{
        Projection, ProjectionHandle, Tables,
        layer::{BadCommand, CqrsLayer, HttpClassifier, HttpCommands},
        projection::sqlite_reader,
    },
    eventstore::{Command, CommandService, EventStore, Repository, sqlite::SqliteStore},
    http::ErrorResponseLayer,
};

#[cfg(feature = "cqrs-postgres")]
use tower_patterns::eventstore::postgres::PostgresStore;

use model::{PRODUCT_PREFIX, Product, ProductCommand, Search};

/// Where the read model lives.
#[derive(Clone, Debug)]
enum Db {
    /// A SQLite file of its own, read with a connection per query.
    Sqlite(Arc<PathBuf>),
    /// The event store's PostgreSQL database, read through its pool.
    #[cfg(feature = "cqrs-postgres")]
    Postgres(Arc<PostgresStore>),
}

/// The read side's state: the read model and its projection.
#[derive(Clone, Debug)]
pub struct Reads {
    db: Db,
    projection: ProjectionHandle,
}

/// `POST /products/{id}` with a JSON `ProductCommand`.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the adapter hands the body over"
)]
pub fn product_command(
    parts: &http::request::Parts,
    body: bytes::Bytes,
) -> Result<Command<(String, ProductCommand)>, BadCommand> {
    let id = match parts.uri.path().split('/').collect::<Vec<_>>()[..] {
        ["", "products", id] if !id.is_empty() => id.to_owned(),
        _ => {
            return Err(BadCommand::with_status(
                StatusCode::NOT_FOUND,
                "no such route",
            ));
        }
    };
    let command: ProductCommand =
        serde_json::from_slice(&body).map_err(|_| BadCommand::new("not a product command"))?;
    Ok(Command::new(id.clone(), (id, command)))
}

fn failed() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "read failed").into_response()
}

/// Runs a read on a SQLite read model, on the blocking pool.
async fn read_sqlite<T: Send + 'static>(
    path: &Arc<PathBuf>,
    tables: Tables,
    f: impl FnOnce(&rusqlite::Connection, &Tables) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let path = path.clone();
    tokio::task::spawn_blocking(move || f(&sqlite_reader(&*path)?, &tables))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(failed)
}

async fn search(State(reads): State<Reads>, Query(q): Query<Search>) -> Result<Response, Response> {
    let tables = reads.projection.tables();
    let rows = match &reads.db {
        Db::Sqlite(path) => {
            read_sqlite(path, tables, move |c, t| model::search_sqlite(c, t, &q)).await?
        }
        #[cfg(feature = "cqrs-postgres")]
        Db::Postgres(store) => {
            let client = store.pool().get().await.map_err(|_| failed())?;
            model::search_postgres(&**client, &tables, &q)
                .await
                .map_err(|_| failed())?
        }
    };
    Ok(Json(rows).into_response())
}

async fn product(State(reads): State<Reads>, Path(id): Path<String>) -> Result<Response, Response> {
    let tables = reads.projection.tables();
    let row = match &reads.db {
        Db::Sqlite(path) => {
            read_sqlite(path, tables, move |c, t| model::product_sqlite(c, t, &id)).await?
        }
        #[cfg(feature = "cqrs-postgres")]
        Db::Postgres(store) => {
            let client = store.pool().get().await.map_err(|_| failed())?;
            model::product_postgres(&**client, &tables, &id)
                .await
                .map_err(|_| failed())?
        }
    };
    Ok(match row {
        Some(row) => Json(row).into_response(),
        None => (StatusCode::NOT_FOUND, "no such product").into_response(),
    })
}

/// The catalog's HTTP service: commands to `Product` aggregates in `store`, queries to the
/// read model, once its projection has started; consistency tokens signed with `key`.
async fn service<S: EventStore>(
    store: Arc<S>,
    reads: Reads,
    key: TokenKey,
) -> Result<Router, BoxError> {
    let started = reads
        .projection
        .wait_for_status(Duration::from_secs(10), |s| {
            matches!(s.as_str(), "live" | "catching_up")
        })
        .await;
    if !matches!(started.as_str(), "live" | "catching_up") {
        return Err(format!("the catalog projection did not start: {started:?}").into());
    }
    // A query carrying a command's token waits (up to 2 s) for the read model to reach it.
    let consistency = ConsistencyLayer::builder("catalog")
        .key(key)
        .read_side(reads.projection.clone())
        .wait(Duration::from_secs(2))
        .build()?;
    let queries = Router::new()
        .route("/products", get(search))
        .route("/products/{id}", get(product))
        .with_state(reads);
    let commands = CommandService::new(Repository::<Product, _>::new(store, PRODUCT_PREFIX));
    let cqrs = CqrsLayer::builder("catalog")
        .commands(commands)
        .classify(HttpClassifier::new())
        .adapter(HttpCommands::new(product_command))
        .build()?;
    let service = ErrorResponseLayer::new().layer(consistency.layer(cqrs.layer(queries)));
    Ok(Router::new().fallback_service(service))
}

/// The catalog over the SQLite files in `dir` (events, and the read model apart), its
/// consistency tokens signed with `key`.
///
/// # Errors
///
/// When a file cannot be opened or the projection does not start.
pub async fn sqlite_app(
    dir: &std::path::Path,
    key: TokenKey,
) -> Result<(Router, ProjectionHandle), BoxError> {
    let store = Arc::new(SqliteStore::open(dir.join("catalog-events.db"))?);
    let path = dir.join("catalog-read.db");
    let (projection, _task) = Projection::builder("catalog")
        .source(store.clone())
        .sqlite(&path, model::Catalog)
        .build()?
        .spawn();
    let reads = Reads {
        db: Db::Sqlite(Arc::new(path)),
        projection: projection.clone(),
    };
    Ok((service(store, reads, key).await?, projection))
}

/// The catalog on the PostgreSQL database at `url`: the events and, beside them, the read
/// model with its full-text index (one runner per projection across processes), its
/// consistency tokens signed with `key`.
///
/// # Errors
///
/// When the database cannot be reached or the projection does not start.
#[cfg(feature = "cqrs-postgres")]
pub async fn postgres_app(
    url: &str,
    key: TokenKey,
) -> Result<(Router, ProjectionHandle), BoxError> {
    let store = Arc::new(PostgresStore::connect(url, 8).await?);
    let (projection, _task) = Projection::builder("catalog")
        .source(store.clone())
        .postgres(store.pool().clone(), model::Catalog)
        .build()?
        .spawn();
    let reads = Reads {
        db: Db::Postgres(store.clone()),
        projection: projection.clone(),
    };
    Ok((service(store, reads, key).await?, projection))
}

/// The key that signs consistency tokens: `TP_TOKEN_KEY` (32 hexadecimal digits), or else a
/// random one for this process.
fn token_key() -> Result<TokenKey, BoxError> {
    match TokenKey::from_env("TP_TOKEN_KEY")? {
        Some(key) => Ok(key),
        None => {
            eprintln!(
                "TP_TOKEN_KEY is not set: consistency tokens are signed with a random key \
                 and will not survive a restart"
            );
            Ok(TokenKey::random()?)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let key = token_key()?;
    let dir = std::env::var_os("TP_CATALOG_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    #[cfg(feature = "cqrs-postgres")]
    let url = std::env::var("TP_POSTGRES_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok();
    #[cfg(feature = "cqrs-postgres")]
    let (app, _projection) = match url {
        Some(url) => postgres_app(&url, key).await?,
        None => sqlite_app(&dir, key).await?,
    };
    #[cfg(not(feature = "cqrs-postgres"))]
    let (app, _projection) = sqlite_app(&dir, key).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("the catalog listens on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
