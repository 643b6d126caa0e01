//! The photo feed as a CQRS service: posts, likes and follows are commands to the `Post` and
//! `Member` aggregates; a projection fans each post out to its author's followers' feeds and
//! counts likes, so reading a feed is one indexed scan of a precomputed table.
//!
//! ```text
//! cargo run --example feed --features consistency      # listens on 127.0.0.1:3001
//! curl -XPOST localhost:3001/members/bo -d '{"op":"follow","author":"ada"}'
//! curl -i -XPOST localhost:3001/posts/p1 -d '{"op":"create","author":"ada","at":1700000000000}'
//! #   -> 200, tp-consistency: 1e…, set-cookie: tp_consistency_feed=1e…; Path=/; HttpOnly; SameSite=Lax
//! curl -XPOST localhost:3001/posts/p1 -d '{"op":"like","user":"bo"}'
//! curl -H 'tp-consistency: 1e…' localhost:3001/feed/bo  # newest first, 20 a page
//! curl 'localhost:3001/feed/bo?before_at=1700000000000&before_post=p1'   # the next page
//! # The same session in a cookie jar: each command's cookie is sent with the next request.
//! curl -c jar -b jar -XPOST localhost:3001/posts/p2 -d '{"op":"create","author":"ada","at":1700000001000}'
//! curl -c jar -b jar localhost:3001/feed/bo
//! ```
//!
//! A command answers with a signed consistency token of the position it reached
//! (`tp-consistency`, and the `tp_consistency_feed` cookie); a query that sends it back (header or
//! cookie) is answered once the feed has applied it, waiting up to 2 s, then `503` with
//! `Retry-After`. The [`ConsistencyLayer`] does this around the whole service. A malformed or
//! forged token in the header is a `400` (`malformed consistency token`, `invalid consistency
//! token`; in the cookie it is ignored and the cookie cleared), never
//! a wait. Tokens are signed with `TP_TOKEN_KEY` (32 hexadecimal digits, `openssl rand -hex
//! 16`; every instance needs the same); without it, with a random key that does not survive a
//! restart. The informational `tp-position` header and the JSON body of a command stay as the
//! CQRS layer writes them.
//!
//! `TP_FEED_DIR` picks the directory of the two SQLite files (default: the current one). Built
//! with `--features consistency,cqrs-postgres` and given `TP_POSTGRES_URL` (or
//! `DATABASE_URL`), it keeps the events and the read model in PostgreSQL instead.
#![allow(clippy::print_stdout, reason = "an example says where it listens")]
#![allow(unreachable_pub, reason = "the tests include this file as a module")]

#[path = "model.rs"]
mod model;

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns::{
    BoxError,
    consistency::{TokenKey, layer::ConsistencyLayer},
    cqrs::{
        Projection, ProjectionHandle,
        layer::{BadCommand, CqrsLayer, HttpClassifier, HttpCommands},
        projection::sqlite_reader,
    },
    eventstore::{Command, CommandService, EventStore, Repository, sqlite::SqliteStore},
    http::ErrorResponseLayer,
};

#[cfg(feature = "cqrs-postgres")]
use tower_patterns::eventstore::postgres::PostgresStore;

use model::{FeedPage, MEMBER_PREFIX, Member, MemberCommand, POST_PREFIX, Post, PostCommand};

/// A command of either aggregate.
#[derive(Clone, Debug)]
pub enum FeedCommand {
    /// To a post.
    Post(Command<(String, PostCommand)>),
    /// To a member.
    Member(Command<(String, MemberCommand)>),
}

/// `POST /posts/{id}` with a JSON `PostCommand`, `POST /members/{id}` with a `MemberCommand`.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the adapter hands the body over"
)]
pub fn feed_command(
    parts: &http::request::Parts,
    body: bytes::Bytes,
) -> Result<FeedCommand, BadCommand> {
    let bad = || BadCommand::new("not a feed command");
    match parts.uri.path().split('/').collect::<Vec<_>>()[..] {
        ["", "posts", id] if !id.is_empty() => {
            let c = serde_json::from_slice(&body).map_err(|_| bad())?;
            Ok(FeedCommand::Post(Command::new(id, (id.to_owned(), c))))
        }
        ["", "members", id] if !id.is_empty() => {
            let c = serde_json::from_slice(&body).map_err(|_| bad())?;
            Ok(FeedCommand::Member(Command::new(id, (id.to_owned(), c))))
        }
        _ => Err(BadCommand::with_status(
            StatusCode::NOT_FOUND,
            "no such route",
        )),
    }
}

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

fn failed() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "read failed").into_response()
}

async fn feed(
    State(reads): State<Reads>,
    Path(user): Path<String>,
    Query(page): Query<FeedPage>,
) -> Result<Response, Response> {
    let tables = reads.projection.tables();
    let items = match &reads.db {
        Db::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                model::feed_sqlite(&sqlite_reader(&*path)?, &tables, &user, &page)
            })
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(failed)?
        }
        #[cfg(feature = "cqrs-postgres")]
        Db::Postgres(store) => {
            let client = store.pool().get().await.map_err(|_| failed())?;
            model::feed_postgres(&**client, &tables, &user, &page)
                .await
                .map_err(|_| failed())?
        }
    };
    Ok(Json(items).into_response())
}

/// The feed's HTTP service: commands to `Post` and `Member` aggregates in `store`, queries
/// to the read model, once its projection has started; consistency tokens signed with `key`.
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
        return Err(format!("the feed projection did not start: {started:?}").into());
    }
    // A query carrying a command's token waits (up to 2 s) for the feed to reach it.
    let consistency = ConsistencyLayer::builder("feed")
        .key(key)
        .read_side(reads.projection.clone())
        .wait(Duration::from_secs(2))
        .build()?;
    let queries = Router::new()
        .route("/feed/{user}", get(feed))
        .with_state(reads);
    let posts = CommandService::new(Repository::<Post, _>::new(store.clone(), POST_PREFIX));
    let members = CommandService::new(Repository::<Member, _>::new(store, MEMBER_PREFIX));
    let commands = service_fn(move |command: FeedCommand| {
        let (posts, members) = (posts.clone(), members.clone());
        async move {
            match command {
                FeedCommand::Post(c) => posts.oneshot(c).await.map_err(BoxError::from),
                FeedCommand::Member(c) => members.oneshot(c).await.map_err(BoxError::from),
            }
        }
    });
    let cqrs = CqrsLayer::builder("feed")
        .commands(commands)
        .classify(HttpClassifier::new())
        .adapter(HttpCommands::new(feed_command))
        .build()?;
    let service = ErrorResponseLayer::new().layer(consistency.layer(cqrs.layer(queries)));
    Ok(Router::new().fallback_service(service))
}

/// The feed over the SQLite files in `dir` (events, and the read model apart), its
/// consistency tokens signed with `key`.
///
/// # Errors
///
/// When a file cannot be opened or the projection does not start.
pub async fn sqlite_app(
    dir: &std::path::Path,
    key: TokenKey,
) -> Result<(Router, ProjectionHandle), BoxError> {
    let store = Arc::new(SqliteStore::open(dir.join("feed-events.db"))?);
    let path = dir.join("feed-read.db");
    let (projection, _task) = Projection::builder("feed")
        .source(store.clone())
        .sqlite(&path, model::Feed)
        .build()?
        .spawn();
    let reads = Reads {
        db: Db::Sqlite(Arc::new(path)),
        projection: projection.clone(),
    };
    Ok((service(store, reads, key).await?, projection))
}

/// The feed on the PostgreSQL database at `url`: the events and, beside them, the read model
/// (one runner per projection across processes), its consistency tokens signed with `key`.
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
    let (projection, _task) = Projection::builder("feed")
        .source(store.clone())
        .postgres(store.pool().clone(), model::Feed)
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
    let dir = std::env::var_os("TP_FEED_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("the feed listens on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
