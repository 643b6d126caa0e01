//! The photo feed as a CQRS service: posts, likes and follows are commands to the `Post` and
//! `Member` aggregates; a projection fans each post out to its author's followers' feeds and
//! counts likes, so reading a feed is one indexed scan of a precomputed table.
//!
//! ```text
//! cargo run --example feed --features cqrs              # listens on 127.0.0.1:3001
//! curl -XPOST localhost:3001/members/bo -d '{"op":"follow","author":"ada"}'
//! curl -i -XPOST localhost:3001/posts/p1 -d '{"op":"create","author":"ada","at":1700000000000}'
//! curl -XPOST localhost:3001/posts/p1 -d '{"op":"like","user":"bo"}'
//! curl -H 'tp-position: v1.0.3' localhost:3001/feed/bo  # newest first, 20 a page
//! curl 'localhost:3001/feed/bo?before_at=1700000000000&before_post=p1'   # the next page
//! ```
//!
//! A command answers with the position it reached (`tp-position`); a query that sends it back
//! waits (up to 2 s) until the feed has applied it. `TP_FEED_DIR` picks the directory of the
//! two SQLite files (default: the current one). Built with `--features cqrs-postgres` and
//! given `TP_POSTGRES_URL` (or `DATABASE_URL`), it keeps the events and the read model in
//! PostgreSQL instead.
#![allow(clippy::print_stdout, reason = "an example says where it listens")]
#![allow(unreachable_pub, reason = "the tests include this file as a module")]

#[path = "model.rs"]
mod model;

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns::{
    BoxError,
    cqrs::{
        Projection, ProjectionHandle,
        layer::{
            BadCommand, CqrsLayer, HttpClassifier, HttpCommands, POSITION_HEADER, PositionToken,
        },
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
    headers: HeaderMap,
    Path(user): Path<String>,
    Query(page): Query<FeedPage>,
) -> Result<Response, Response> {
    if let Some(value) = headers.get(POSITION_HEADER) {
        let Ok(token) = PositionToken::from_header_value(value) else {
            return Err((StatusCode::BAD_REQUEST, "malformed position").into_response());
        };
        let within = Duration::from_secs(2);
        if !reads.projection.wait_for(token.position(), within).await {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "read model behind").into_response());
        }
    }
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
/// to the read model, once its projection has started.
async fn service<S: EventStore>(store: Arc<S>, reads: Reads) -> Result<Router, BoxError> {
    let started = reads
        .projection
        .wait_for_status(Duration::from_secs(10), |s| {
            matches!(s.as_str(), "live" | "catching_up")
        })
        .await;
    if !matches!(started.as_str(), "live" | "catching_up") {
        return Err(format!("the feed projection did not start: {started:?}").into());
    }
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
    let service = ErrorResponseLayer::new().layer(cqrs.layer(queries));
    Ok(Router::new().fallback_service(service))
}

/// The feed over the SQLite files in `dir` (events, and the read model apart).
///
/// # Errors
///
/// When a file cannot be opened or the projection does not start.
pub async fn sqlite_app(dir: &std::path::Path) -> Result<(Router, ProjectionHandle), BoxError> {
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
    Ok((service(store, reads).await?, projection))
}

/// The feed on the PostgreSQL database at `url`: the events and, beside them, the read model
/// (one runner per projection across processes).
///
/// # Errors
///
/// When the database cannot be reached or the projection does not start.
#[cfg(feature = "cqrs-postgres")]
pub async fn postgres_app(url: &str) -> Result<(Router, ProjectionHandle), BoxError> {
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
    Ok((service(store, reads).await?, projection))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = std::env::var_os("TP_FEED_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    #[cfg(feature = "cqrs-postgres")]
    let url = std::env::var("TP_POSTGRES_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok();
    #[cfg(feature = "cqrs-postgres")]
    let (app, _projection) = match url {
        Some(url) => postgres_app(&url).await?,
        None => sqlite_app(&dir).await?,
    };
    #[cfg(not(feature = "cqrs-postgres"))]
    let (app, _projection) = sqlite_app(&dir).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("the feed listens on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
