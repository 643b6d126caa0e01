//! Profiles read from PostgreSQL streaming replicas, with read-your-writes: a user who edits
//! their profile and reloads it sees the edit, although reads go to replicas that may lag.
//!
//! ```text
//! # a primary and replicas (scripts/test --with-servers -- sleep 3600 starts them on loopback)
//! TP_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/postgres \
//! TP_POSTGRES_REPLICA_URLS=postgres://postgres@127.0.0.1:55433/postgres,postgres://postgres@127.0.0.1:55434/postgres \
//!   cargo run --example replicas --features consistency-postgres     # 127.0.0.1:3002
//! curl -i -c jar -XPUT localhost:3002/profiles/ada -d 'Counts things.'
//! #   -> 200 {"id":"ada","version":1}, tp-consistency: 1w..., Set-Cookie: tp_consistency_profiles=...
//! curl -b jar localhost:3002/profiles/ada
//! #   -> {"id":"ada","bio":"Counts things.","version":1,"served_by":"replica replica-1"}
//! TP_ADMIN_TOKEN=... curl -H "Authorization: Bearer $TP_ADMIN_TOKEN" localhost:3002/replicas
//! #   -> the replica set's report: replicas healthy, lag in bytes and seconds (404 without
//! #      TP_ADMIN_TOKEN set to 16 characters or more, or without the token)
//! ```
//!
//! Writes (`PUT`) go to the primary; their response carries a signed token of the primary's WAL
//! position (header `tp-consistency` and a cookie). Reads (`GET`) go to a replica that has
//! replayed the session's token; when none has within `TP_READ_WAIT_MS` (default 1000 ms),
//! the read goes to the primary. Reads without a token go to any healthy replica and may be
//! stale. `TP_TOKEN_KEY` (32 hex digits) is the token key every instance shares; without it a
//! random key serves one process.
//!
//! This is a profile page, where a second of staleness for *other* readers is fine. Do not
//! read balances or stock counts this way: read those from the primary, in the transaction
//! that acts on them.
#![allow(clippy::print_stdout, reason = "an example says where it listens")]
#![allow(unreachable_pub, reason = "the tests include this file as a module")]

use std::{convert::Infallible, time::Duration};

use axum::{Router, body::Body};
use deadpool_postgres::{Config, Pool, Runtime};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tokio_postgres::NoTls;
use tower::{Layer, ServiceBuilder, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError,
    consistency::{
        TokenKey,
        layer::{Behind, ConsistencyHandle, ConsistencyLayer},
        replica::{ReplicaRouterLayer, ReplicaSet, ReplicaSetHandle, Routed},
    },
    http::ErrorResponseLayer,
    observe::StateHandle,
};

/// The largest profile text accepted.
const MAX_BIO: usize = 1024;

/// A pool of `size` connections to `url`; `sync_commit` makes its writes wait for the WAL
/// flush (PostgreSQL's default, which the test servers turn off).
fn pool(url: &str, size: usize, sync_commit: bool) -> Result<Pool, BoxError> {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    if sync_commit {
        config.options = Some("-c synchronous_commit=on".to_owned());
    }
    // Bounded waits: a full or unreachable pool answers with an error rather than hold a
    // request (the router also bounds its own waits by the set's probe timeout).
    config.pool = Some(deadpool_postgres::PoolConfig {
        max_size: size,
        timeouts: deadpool_postgres::Timeouts {
            wait: Some(Duration::from_secs(1)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(1)),
        },
        ..deadpool_postgres::PoolConfig::default()
    });
    Ok(config.create_pool(Some(Runtime::Tokio1), NoTls)?)
}

/// What the app hands back besides its router: the handles an operator reads.
#[derive(Clone, Debug)]
pub struct Handles {
    /// The replica set: lag, health, reads served.
    pub replicas: ReplicaSetHandle,
    /// The consistency layer: waits, reads sent to the primary, bad tokens.
    pub consistency: ConsistencyHandle,
}

/// The profiles service over the primary at `primary` and the replicas at `replicas`: a
/// router and its handles. `wait` is how long a read waits for a replica to reach its token
/// before `behind` applies.
///
/// # Errors
///
/// When a URL is invalid or the primary cannot create the table.
pub async fn app(
    primary: &str,
    replicas: &[String],
    key: TokenKey,
    wait: Duration,
    behind: Behind,
) -> Result<(Router, Handles), BoxError> {
    let primary = pool(primary, 16, true)?;
    primary
        .get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS profiles (
                 id text PRIMARY KEY, bio text NOT NULL, version bigint NOT NULL)",
        )
        .await?;
    let mut set = ReplicaSet::builder("profiles").primary(primary);
    for (i, url) in replicas.iter().enumerate() {
        set = set.replica(format!("replica-{}", i + 1), pool(url, 16, false)?);
    }
    let set = set.build()?;
    set.spawn();
    let consistency = ConsistencyLayer::builder("profiles")
        .key(key)
        .read_side(set.clone())
        .wait(wait)
        .when_behind(behind)
        .build()?;
    let handles = Handles {
        replicas: set.handle(),
        consistency: consistency.handle(),
    };
    let stack = consistency.layer(ReplicaRouterLayer::new(set).layer(service_fn(profiles)));
    let lag = handles.replicas.clone();
    let admin = std::env::var("TP_ADMIN_TOKEN")
        .ok()
        .filter(|t| t.len() >= 16);
    let service = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(BoxCloneSyncService::new(service_fn(
            move |req: Request<Body>| {
                let (lag, stack, admin) = (lag.clone(), stack.clone(), admin.clone());
                async move {
                    if req.uri().path() == "/replicas" {
                        // Operational detail: only with the admin token, and off without one.
                        return Ok(if admin.as_deref().is_some_and(|t| bearer_is(&req, t)) {
                            json(StatusCode::OK, &lag.report().to_json())
                        } else {
                            phrase(StatusCode::NOT_FOUND, "no such route")
                        });
                    }
                    tower::ServiceExt::oneshot(stack, req).await
                }
            },
        )));
    Ok((Router::new().fallback_service(service), handles))
}

/// The request carries `Authorization: Bearer <token>` (compared in constant time).
fn bearer_is(req: &Request<Body>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn json(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap_or_default()
}

fn phrase(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(text))
        .unwrap_or_default()
}

/// A profile id: 1 to 64 of `[a-z0-9-]`.
fn profile_id(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/profiles/")?;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(id)
}

/// The handler, on the connection the router chose: `PUT /profiles/{id}` writes (the
/// primary), `GET /profiles/{id}` reads (a replica that has reached the session's token, or
/// the primary).
async fn profiles(routed: Routed<Request<Body>>) -> Result<Response<Body>, Infallible> {
    let Routed {
        request,
        client,
        node,
    } = routed;
    let Some(id) = profile_id(request.uri().path()).map(str::to_owned) else {
        return Ok(phrase(StatusCode::NOT_FOUND, "no such route"));
    };
    let method = request.method().clone();
    let failed = |_| phrase(StatusCode::INTERNAL_SERVER_ERROR, "database error");
    Ok(match method {
        Method::PUT => {
            let body = match Limited::new(request.into_body(), MAX_BIO).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(phrase(StatusCode::PAYLOAD_TOO_LARGE, "profile too long")),
            };
            let Ok(bio) = String::from_utf8(body.to_vec()) else {
                return Ok(phrase(StatusCode::BAD_REQUEST, "profile is not UTF-8"));
            };
            match client
                .query_one(
                    "INSERT INTO profiles (id, bio, version) VALUES ($1, $2, 1)
                     ON CONFLICT (id) DO UPDATE
                     SET bio = EXCLUDED.bio, version = profiles.version + 1
                     RETURNING version",
                    &[&id, &bio],
                )
                .await
            {
                Ok(row) => json(
                    StatusCode::OK,
                    &serde_json::json!({"id": id, "version": row.get::<_, i64>(0)}).to_string(),
                ),
                Err(e) => failed(e),
            }
        }
        Method::GET => match client
            .query_opt("SELECT bio, version FROM profiles WHERE id = $1", &[&id])
            .await
        {
            Ok(Some(row)) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "id": id,
                    "bio": row.get::<_, String>(0),
                    "version": row.get::<_, i64>(1),
                    "served_by": node.to_string(),
                })
                .to_string(),
            ),
            Ok(None) => phrase(StatusCode::NOT_FOUND, "no such profile"),
            Err(e) => failed(e),
        },
        _ => phrase(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    })
}

/// The token key from `TP_TOKEN_KEY`, or a random one for this process.
///
/// # Errors
///
/// When `TP_TOKEN_KEY` is set but not 32 hex digits.
pub fn token_key() -> Result<TokenKey, BoxError> {
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
    let primary = std::env::var("TP_POSTGRES_URL")
        .map_err(|_| "set TP_POSTGRES_URL to the primary (scripts/test --with-servers)")?;
    let replicas: Vec<String> = std::env::var("TP_POSTGRES_REPLICA_URLS")
        .unwrap_or_default()
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let wait = std::env::var("TP_READ_WAIT_MS")
        .ok()
        .map(|ms| ms.parse::<u64>().map(Duration::from_millis))
        .transpose()
        .map_err(|_| "TP_READ_WAIT_MS must be a number of milliseconds")?
        .unwrap_or(Duration::from_secs(1));
    let (app, _handles) = app(&primary, &replicas, token_key()?, wait, Behind::Primary).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await?;
    println!(
        "profiles on http://{} ({} replicas)",
        listener.local_addr()?,
        replicas.len()
    );
    axum::serve(listener, app).await?;
    Ok(())
}
