//! The monolith migration, end to end over real HTTP on 127.0.0.1: a monolith, a user
//! service and an orders service (small axum apps, each with its own SQLite database) behind
//! the gateway, moved through the five phases of the strangler fig by rewriting the gateway's
//! file and reloading it.
//!
//! 1. Everything to the monolith through the gateway.
//! 2. `/api/users` shadowed to the user service (a planted mismatch found, a noisy field not
//!    reported), then moved to it.
//! 3. A 50/50 split, sticky per user, with dual writes both ways; the monolith's database
//!    down for a while, then reconciled: both databases equal. A ramp rolls back by itself when
//!    the user service starts failing, and completes once it is fixed and resumed.
//! 4. The orders service extracted too.
//! 5. The monolith read-only, then gone.
#![cfg(all(feature = "gateway", feature = "strangler"))]

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt;
use tower_patterns::{
    gateway::Gateway,
    strangler::{
        Mode, RampAction, RampStatus, Share,
        dual::{DualWrite, Reconciler, SqliteRows, Write},
    },
};

/// One of the apps: its name (in `x-served-by`), its database, its dual writes to the other
/// database, a switch that makes it fail, and a planted bug.
#[derive(Clone)]
struct App {
    name: &'static str,
    rows: SqliteRows,
    dual: DualWrite<SqliteRows>,
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
    /// The user whose name this app gets wrong (a bug shadow mode must find).
    bug_for: Option<u64>,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn served(app: &App, status: StatusCode, body: Value) -> Response {
    (status, [("x-served-by", app.name)], Json(body)).into_response()
}

async fn get_user(State(app): State<App>, UrlPath(id): UrlPath<u64>) -> Response {
    app.hits.fetch_add(1, Ordering::SeqCst);
    if app.failing.load(Ordering::SeqCst) {
        return served(
            &app,
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "down"}),
        );
    }
    let row = app.rows.get_row(&format!("user:{id}")).await;
    let Some(mut user) = row else {
        return served(
            &app,
            StatusCode::NOT_FOUND,
            json!({"error": "no such user"}),
        );
    };
    if app.bug_for == Some(id) {
        user["name"] = Value::from(user["name"].as_str().unwrap_or("").to_uppercase());
    }
    // A field that differs on every call, on either side: noise, not a difference.
    user["request_nonce"] = Value::from(NONCE.fetch_add(1, Ordering::SeqCst));
    served(&app, StatusCode::OK, user)
}

async fn post_user(State(app): State<App>, Json(user): Json<Value>) -> Response {
    app.hits.fetch_add(1, Ordering::SeqCst);
    let Some(id) = user["id"].as_u64() else {
        return served(&app, StatusCode::BAD_REQUEST, json!({"error": "id"}));
    };
    let write = Write::put_json(format!("user:{id}"), &user).unwrap();
    match app.dual.clone().oneshot(write).await {
        Ok(w) => served(&app, StatusCode::CREATED, json!({"version": w.version})),
        Err(_) => served(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "store"}),
        ),
    }
}

async fn get_order(State(app): State<App>, UrlPath(id): UrlPath<u64>) -> Response {
    app.hits.fetch_add(1, Ordering::SeqCst);
    served(&app, StatusCode::OK, json!({"order": id}))
}

async fn catalog(State(app): State<App>) -> Response {
    app.hits.fetch_add(1, Ordering::SeqCst);
    served(&app, StatusCode::OK, json!({"items": 3}))
}

trait GetRow {
    async fn get_row(&self, key: &str) -> Option<Value>;
}

impl GetRow for SqliteRows {
    async fn get_row(&self, key: &str) -> Option<Value> {
        use tower_patterns::strangler::dual::RowStore;
        let row = self.get(key).await.ok()??;
        row.json::<Value>().ok()?
    }
}

/// Serves `router` on a free loopback port until `stop` turns true.
async fn serve(router: Router) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut rx) = watch::channel(false);
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
    });
    (addr, stop)
}

fn app(name: &'static str, own: &Path, other: &Path, bug_for: Option<u64>) -> App {
    let rows = SqliteRows::open(own, "users").unwrap();
    // The other side's database, as a secondary that fails at once when locked.
    let secondary = SqliteRows::open(other, "users")
        .unwrap()
        .with_busy_timeout(Duration::ZERO)
        .unwrap();
    let dual = DualWrite::builder(name)
        .primary(rows.clone())
        .secondary(secondary)
        .backoff(
            tower_patterns::backoff::Backoff::Constant(Duration::from_millis(50)),
            Duration::from_millis(50),
        )
        .missed_after(3)
        .build()
        .unwrap();
    App {
        name,
        rows,
        dual,
        failing: Arc::default(),
        hits: Arc::default(),
        bug_for,
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/api/users/{id}", get(get_user))
        .route("/api/users", axum::routing::post(post_user))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/catalog", get(catalog).post(catalog))
        .with_state(app)
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    gateway: SocketAddr,
}

struct Answer {
    status: u16,
    served_by: String,
    body: Value,
}

impl Http {
    async fn send(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway));
        if let Some(u) = user {
            req = req.header("x-user", u);
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let res = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let served_by = res
            .headers()
            .get("x-served-by")
            .map_or("gateway", |v| v.to_str().unwrap())
            .to_owned();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            served_by,
            body,
        }
    }

    async fn get(&self, path: &str, user: &str) -> Answer {
        self.send("GET", path, Some(user), None).await
    }
}

fn config(monolith: SocketAddr, users: SocketAddr, orders: SocketAddr, routes: &str) -> String {
    format!(
        r#"
[upstreams.monolith]
addresses = ["{monolith}"]
[upstreams.monolith.retry]
attempts = 1
[upstreams.users]
addresses = ["{users}"]
[upstreams.users.retry]
attempts = 1
[upstreams.orders]
addresses = ["{orders}"]
{routes}
"#
    )
}

/// Waits (sending traffic, for the ramp to judge) until `done` holds, for at most 20 s.
async fn until(http: &Http, mut done: impl FnMut() -> bool) {
    for i in 0..4000u32 {
        if done() {
            return;
        }
        http.get(&format!("/api/users/{}", i % 50), &format!("ramp-{i}"))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the condition did not come true within 20 s");
}

/// Every row of a SQLite file's table, in key order.
fn dump(path: &Path) -> Vec<(String, Option<Vec<u8>>, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, value, version FROM users ORDER BY key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_phases_of_a_monolith_migration() {
    let dir = tempfile::tempdir().unwrap();
    let (monolith_db, users_db) = (dir.path().join("monolith.db"), dir.path().join("users.db"));
    let orders_db = dir.path().join("orders.db");
    let monolith = app("monolith", &monolith_db, &users_db, None);
    let users = app("users", &users_db, &monolith_db, Some(13));
    let orders = app("orders", &orders_db, &dir.path().join("unused.db"), None);
    let (monolith_addr, stop_monolith) = serve(router(monolith.clone())).await;
    let (users_addr, _stop_users) = serve(router(users.clone())).await;
    let (orders_addr, _stop_orders) = serve(router(orders.clone())).await;
    let file = dir.path().join("gateway.toml");
    let write = |routes: &str| {
        std::fs::write(
            &file,
            config(monolith_addr, users_addr, orders_addr, routes),
        )
        .unwrap();
    };

    // Phase 1: everything to the monolith.
    write("[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"monolith\"\n");
    let gateway = Gateway::builder("phases")
        .config_file(&file)
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = Http {
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        gateway: listener.local_addr().unwrap(),
    };
    let (stop_gateway, mut stop_rx) = watch::channel(false);
    let served = tokio::spawn(gateway.clone().serve(listener, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let reload = |routes: &str| {
        write(routes);
        gateway.reloader().reload_now().unwrap();
    };
    for id in 1..=40u64 {
        let user = json!({"id": id, "name": format!("user {id}")});
        let a = http.send("POST", "/api/users", None, Some(user)).await;
        assert_eq!((a.status, a.served_by.as_str()), (201, "monolith"));
    }
    for path in ["/api/users/1", "/api/orders/1", "/api/catalog"] {
        assert_eq!(http.get(path, "u").await.served_by, "monolith", "{path}");
    }
    // The monolith's dual writes copied its users to the new service's database.
    assert!(
        monolith
            .dual
            .handle()
            .wait_idle(Duration::from_secs(10))
            .await
    );
    assert_eq!(dump(&monolith_db), dump(&users_db));

    // Phase 2a: the user service in shadow: the monolith answers, the answers are compared.
    let rest = "[[routes]]\nname = \"rest\"\nprefix = \"/\"\nupstream = \"monolith\"\n";
    let users_route = |table: &str| {
        format!(
            "[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\n[routes.strangler]\nlegacy = \"monolith\"\nnew = \"users\"\nkey = \"header:x-user\"\n{table}\n{rest}"
        )
    };
    reload(&users_route(
        "mode = \"shadow\"\nshadow = { noise_baseline = true }",
    ));
    for id in 1..=20u64 {
        let a = http.get(&format!("/api/users/{id}"), "u").await;
        assert_eq!((a.status, a.served_by.as_str()), (200, "monolith"));
        assert_eq!(
            a.body["name"],
            format!("user {id}"),
            "legacy answers, bug or not"
        );
    }
    let migration = gateway.migration("users").unwrap();
    let mut counts = migration.shadow().unwrap();
    for _ in 0..2000 {
        if counts.matched + counts.mismatched + counts.failed + counts.skipped >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        counts = migration.shadow().unwrap();
    }
    assert_eq!(
        (counts.matched, counts.mismatched, counts.failed),
        (19, 1, 0),
        "{counts:?}"
    );
    let found = migration.mismatches();
    assert_eq!(found[0].request, "GET /api/users/13");
    assert_eq!(
        found[0].differences.len(),
        1,
        "the nonce is noise: {found:?}"
    );
    assert!(found[0].differences[0].contains("/name"), "{found:?}");

    // Phase 2b: the user service serves /api/users; everything else stays on the monolith.
    reload(&users_route("mode = \"new\""));
    assert_eq!(http.get("/api/users/1", "u").await.served_by, "users");
    assert_eq!(http.get("/api/orders/1", "u").await.served_by, "monolith");

    // Phase 3: a 50/50 split, sticky per user, within 3 points over 1,000 users.
    reload(&users_route("mode = \"split\"\nsplit = 50"));
    let mut side = std::collections::HashMap::new();
    for round in 0..2 {
        for u in 0..1000 {
            let user = format!("user-{u}");
            let a = http.get(&format!("/api/users/{}", u % 40 + 1), &user).await;
            assert_eq!(a.status, 200);
            let first = side.entry(user).or_insert_with(|| a.served_by.clone());
            assert_eq!(*first, a.served_by, "user-{u} moved sides in round {round}");
        }
    }
    let on_new = side.values().filter(|s| *s == "users").count();
    assert!(
        (470..=530).contains(&on_new),
        "{on_new} of 1000 on the user service"
    );

    // Dual writes with the monolith's database down for a while: the user service's writes
    // are acknowledged, the misses recorded, and after reconciliation both databases agree.
    let lock = rusqlite::Connection::open(&monolith_db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let new_users: Vec<String> = side
        .iter()
        .filter(|(_, s)| *s == "users")
        .map(|(u, _)| u.clone())
        .take(30)
        .collect();
    for (i, u) in new_users.iter().enumerate() {
        let body = json!({"id": 100 + i, "name": format!("new {u}")});
        let a = http.send("POST", "/api/users", Some(u), Some(body)).await;
        assert_eq!(
            (a.status, a.served_by.as_str()),
            (201, "users"),
            "{:?}",
            a.body
        );
    }
    let handle = users.dual.handle();
    for _ in 0..2000 {
        if handle.missed_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        handle.missed_count() > 0,
        "missed writes recorded while the monolith's database is down"
    );
    assert!(dump(&users_db).len() > 40);
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    // A row lost on the monolith's side behind the dual writes' back (a manual fix gone wrong).
    rusqlite::Connection::open(&monolith_db)
        .unwrap()
        .execute("DELETE FROM users WHERE key = 'user:7'", [])
        .unwrap();
    assert!(
        handle.wait_idle(Duration::from_secs(10)).await,
        "the worker catches up"
    );
    let reconciler = Reconciler::builder("users")
        .primary(SqliteRows::open(&users_db, "users").unwrap())
        .secondary(SqliteRows::open(&monolith_db, "users").unwrap())
        .repair(true)
        .build()
        .unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(report.missing, 1, "the lost row: {report:?}");
    assert!(reconciler.run_once().await.unwrap().is_clean());
    assert_eq!(dump(&users_db), dump(&monolith_db), "both databases equal");
    assert_eq!(handle.missed_count(), 0);

    // A ramp to 100%: it rolls back by itself while the user service fails...
    users.failing.store(true, Ordering::SeqCst);
    reload(&users_route(
        "ramp = { steps = [50, 100], window = \"200ms\", hold = \"400ms\", min_requests = 5, p99_slack = \"1s\" }",
    ));
    let migration = gateway.migration("users").unwrap();
    until(&http, || {
        migration.ramp("users").unwrap().status == RampStatus::RolledBack
    })
    .await;
    assert_eq!(migration.mode("users"), Some(Mode::Legacy));
    let events = migration.ramp_events();
    let rollback = events
        .iter()
        .find(|e| e.action == RampAction::Rollback)
        .unwrap();
    assert_eq!((rollback.from, rollback.to), (Share::HALF, Share::NONE));
    assert!(
        rollback.reason.contains("error rate"),
        "{}",
        rollback.reason
    );
    // ...and, fixed and resumed, completes.
    users.failing.store(false, Ordering::SeqCst);
    migration.resume_ramp("users").unwrap();
    until(&http, || {
        migration.ramp("users").unwrap().status == RampStatus::Complete
    })
    .await;
    assert_eq!(migration.mode("users"), Some(Mode::New));

    // Phase 4: the orders service extracted too.
    let phase4 = String::from(
        "[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nupstream = \"users\"\n\
         [[routes]]\nname = \"orders\"\nprefix = \"/api/orders\"\n[routes.strangler]\nlegacy = \"monolith\"\nnew = \"orders\"\nmode = \"new\"\n\
         [[routes]]\nname = \"rest\"\nprefix = \"/\"\n[routes.strangler]\nlegacy = \"monolith\"\nnew = \"monolith\"\nmode = \"legacy\"\n",
    );
    reload(&phase4);
    assert_eq!(http.get("/api/users/1", "u").await.served_by, "users");
    assert_eq!(http.get("/api/orders/9", "u").await.served_by, "orders");
    assert_eq!(http.get("/api/catalog", "u").await.served_by, "monolith");

    // Phase 5: the monolith read-only (reads served, writes refused)...
    reload(&phase4.replace(
        "mode = \"legacy\"\n",
        "mode = \"legacy\"\nlegacy_read_only = true\n",
    ));
    assert_eq!(http.get("/api/catalog", "u").await.served_by, "monolith");
    let refused = http
        .send("POST", "/api/catalog", None, Some(json!({})))
        .await;
    assert_eq!(
        (refused.status, refused.served_by.as_str()),
        (503, "gateway")
    );
    assert_eq!(
        refused.body,
        Value::Null,
        "a fixed phrase, not JSON internals"
    );
    // ...then gone: switched off, and nothing routes to it.
    reload(
        "[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nupstream = \"users\"\n\
         [[routes]]\nname = \"orders\"\nprefix = \"/api/orders\"\nupstream = \"orders\"\n",
    );
    stop_monolith.send(true).unwrap();
    let hits = monolith.hits.load(Ordering::SeqCst);
    assert_eq!(http.get("/api/users/1", "u").await.served_by, "users");
    assert_eq!(http.get("/api/orders/1", "u").await.served_by, "orders");
    assert_eq!(http.get("/api/catalog", "u").await.status, 404);
    assert_eq!(
        monolith.hits.load(Ordering::SeqCst),
        hits,
        "the monolith gets nothing"
    );

    stop_gateway.send(true).unwrap();
    served.await.unwrap().unwrap();
}
