//! The product catalog end to end through its HTTP service (`examples/catalog`): a command
//! answers with a consistency token, a query that sends it back (header or cookie) sees the
//! write, a price change moves the product row and the search results, bad input gets its
//! 4xx, and a forged, malformed or unreachable token is refused rather than waited for.

#[allow(dead_code)]
#[path = "../examples/catalog/main.rs"]
mod catalog;

use std::time::{Duration, Instant};

use axum::{Router, body::Body};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tower_patterns::{
    consistency::{Mark, TokenKey, Tokens, layer::TOKEN_HEADER},
    cqrs::layer::{POSITION_HEADER, PositionToken},
    eventstore::GlobalPosition,
};

/// The key the tests' apps sign their tokens with.
const KEY: TokenKey = TokenKey::new(*b"catalog test key");

struct App {
    router: Router,
    /// The consistency token of the last command, sent with every request.
    last: Option<String>,
    /// The position the last command reached (its informational `tp-position`).
    position: Option<GlobalPosition>,
}

impl App {
    fn new(router: Router) -> Self {
        Self {
            router,
            last: None,
            position: None,
        }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Response<Body>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(last) = &self.last {
            req = req.header(TOKEN_HEADER, last);
        }
        let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
        let res = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        (res.status(), res)
    }

    async fn command(&mut self, uri: &str, body: Value) -> PositionToken {
        let (status, res) = self.send("POST", uri, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {}", text(res).await);
        let token = PositionToken::from_header_value(&res.headers()[POSITION_HEADER]).unwrap();
        self.position = Some(token.position());
        self.last = Some(res.headers()[TOKEN_HEADER].to_str().unwrap().to_owned());
        token
    }

    async fn get(&self, uri: &str) -> Value {
        let (status, res) = self.send("GET", uri, None).await;
        let body = text(res).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn search(&self, query: &str) -> Vec<(String, i64)> {
        let rows = self.get(&format!("/products?{query}")).await;
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_owned(),
                    r["price_cents"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

async fn text(res: Response<Body>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tp-catalog-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn create(name: &str, description: &str, price_cents: i64) -> Value {
    json!({"op": "create", "name": name, "description": description, "price_cents": price_cents})
}

fn ids(rows: &[(String, i64)]) -> Vec<&str> {
    rows.iter().map(|(id, _)| id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_updates_the_product_row_and_the_search_results() {
    let dir = temp_dir();
    let (router, projection) = catalog::sqlite_app(&dir, KEY).await.unwrap();
    price_change(router, &projection).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_updates_the_product_row_and_the_search_results_on_postgres() {
    let Some(url) = tower_patterns_testkit::fresh_postgres("catalog").await else {
        return; // skipped: no PostgreSQL (the reason is printed)
    };
    let (router, projection) = catalog::postgres_app(&url, KEY).await.unwrap();
    price_change(router, &projection).await;
}

async fn price_change(router: Router, projection: &tower_patterns::cqrs::ProjectionHandle) {
    let mut app = App::new(router);

    let first = app
        .command(
            "/products/p1",
            create("Red kettle", "A loud kettle, boils fast", 2500),
        )
        .await;
    app.command(
        "/products/p2",
        create("Blue kettle", "A quiet kettle", 1500),
    )
    .await;
    let last = app
        .command(
            "/products/p3",
            create("Green teapot", "Porcelain, for two", 3000),
        )
        .await;
    assert!(last > first);

    assert_eq!(
        app.search("text=kettle").await,
        [("p2".into(), 1500), ("p1".into(), 2500)]
    );
    assert_eq!(
        ids(&app.search("text=KETT").await),
        ["p2", "p1"],
        "prefix, any case"
    );
    assert_eq!(
        ids(&app.search("text=loud+kettle").await),
        ["p1"],
        "every word"
    );
    assert_eq!(ids(&app.search("text=boiling").await), ["p1"], "stemmed");
    assert_eq!(
        ids(&app.search("").await),
        ["p2", "p1", "p3"],
        "cheapest first"
    );

    app.command(
        "/products/p1",
        json!({"op": "set_price", "price_cents": 999}),
    )
    .await;
    let row = app.get("/products/p1").await;
    assert_eq!(row["price_cents"], 999, "the product row");
    assert!(
        projection.position() >= app.position.unwrap(),
        "the query waited for the write"
    );
    assert_eq!(
        app.search("text=kettle").await,
        [("p1".into(), 999), ("p2".into(), 1500)]
    );
    assert_eq!(ids(&app.search("text=kettle&max_cents=1000").await), ["p1"]);
    assert_eq!(
        ids(&app.search("min_cents=1000&max_cents=3000").await),
        ["p2", "p3"]
    );

    // Keyset pages, one product at a time.
    assert_eq!(ids(&app.search("limit=1").await), ["p1"]);
    assert_eq!(
        ids(&app.search("limit=1&after_cents=999&after_id=p1").await),
        ["p2"]
    );
    assert_eq!(
        ids(&app.search("limit=2&after_cents=1500&after_id=p2").await),
        ["p3"]
    );

    app.command(
        "/products/p3",
        json!({"op": "rename", "name": "Green mug", "description": "Stoneware"}),
    )
    .await;
    assert!(
        app.search("text=teapot").await.is_empty(),
        "the index forgot the old name"
    );
    assert_eq!(ids(&app.search("text=mug").await), ["p3"]);
    app.command("/products/p2", json!({"op": "delete"})).await;
    assert_eq!(ids(&app.search("text=kettle").await), ["p1"]);
    let (status, _) = app.send("GET", "/products/p2", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_client_error_with_a_fixed_phrase() {
    let dir = temp_dir();
    let (router, _projection) = catalog::sqlite_app(&dir, KEY).await.unwrap();
    let mut app = App::new(router);
    let (status, res) = app
        .send("POST", "/products/p1", Some(json!({"op": "fly"})))
        .await;
    assert_eq!(
        (status, text(res).await.as_str()),
        (StatusCode::BAD_REQUEST, "not a product command")
    );
    let (status, res) = app
        .send("POST", "/products/p9", Some(json!({"op": "delete"})))
        .await;
    assert_eq!(
        (status, text(res).await.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "command refused")
    );
    let (status, _) = app.send("POST", "/elsewhere", Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.command("/products/p1", create("Kettle", "Steel", 100))
        .await;
    let (status, res) = app
        .send("POST", "/products/p1", Some(create("Kettle", "Steel", 100)))
        .await;
    assert_eq!(
        (status, text(res).await.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "command refused")
    );
    // The CQRS layer's informational position is not a consistency token.
    app.last = Some("v1.0.01".into());
    let (status, res) = app.send("GET", "/products?text=kettle", None).await;
    assert_eq!(
        (status, text(res).await.as_str()),
        (StatusCode::BAD_REQUEST, "malformed consistency token")
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The `name=value` part of a response's `Set-Cookie`, as a client sends it back.
fn cookie_of(res: &Response<Body>) -> String {
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// A request with `cookie` as its `Cookie` header.
fn with_cookie(method: &str, uri: &str, cookie: &str, body: Option<Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::COOKIE, cookie)
        .body(body.map_or_else(Body::empty, |v| Body::from(v.to_string())))
        .unwrap()
}

/// A token signed with another key (for a position far ahead, which would hold every read
/// for the whole 2 s wait were it believed), in the header or the cookie, and a malformed
/// token are refused with a 400 and a fixed phrase, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_malformed_token_is_a_400_at_once() {
    let dir = temp_dir();
    let (router, _projection) = catalog::sqlite_app(&dir, KEY).await.unwrap();
    let mut app = App::new(router);
    app.command("/products/p1", create("Kettle", "Steel", 100))
        .await;
    let head = app.position.unwrap();
    let ahead = Mark::Position(GlobalPosition::new(head.commit, head.index + 1_000_000));
    let forged = Tokens::new("catalog", TokenKey::new([7; 16])).issue(ahead);
    let malformed = "1e00000000000000zz";
    for (token, phrase) in [
        (forged.as_str(), "invalid consistency token"),
        (malformed, "malformed consistency token"),
    ] {
        app.last = Some(token.to_owned());
        for uri in ["/products?text=kettle", "/products/p1"] {
            let started = Instant::now();
            let (status, res) = app.send("GET", uri, None).await;
            assert_eq!(
                (status, text(res).await.as_str()),
                (StatusCode::BAD_REQUEST, phrase),
                "{uri} with {token}"
            );
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{uri} with {token}: refused at once, not after the wait ({:?})",
                started.elapsed()
            );
        }
    }
    // The forged token in the cookie instead of the header: a cookie the client cannot see
    // (HttpOnly) is not refused but ignored and cleared, at once, never waited on.
    let started = Instant::now();
    let res = app
        .router
        .clone()
        .oneshot(with_cookie(
            "GET",
            "/products/p1",
            &format!("tp_consistency_catalog={forged}"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(
        res.headers()[http::header::SET_COOKIE],
        "tp_consistency_catalog=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    );
    // Answered as a query without a token: the product if the read model has it yet, else 404;
    // never a 400, never after a wait.
    assert!(
        matches!(res.status(), StatusCode::OK | StatusCode::NOT_FOUND),
        "{}",
        res.status()
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    let _ = std::fs::remove_dir_all(dir);
}

/// The session in a cookie, as a browser keeps it: a command's `Set-Cookie` sent back as
/// `Cookie` holds a query until the read model has applied the command, and the query sees
/// it. The read model is held behind by a write lock on its file while the query is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_the_session_cookie_waits_for_and_sees_the_write() {
    let dir = temp_dir();
    let (router, projection) = catalog::sqlite_app(&dir, KEY).await.unwrap();
    let send = |req: Request<Body>| router.clone().oneshot(req);

    let res = send(
        Request::post("/products/p1")
            .body(Body::from(create("Kettle", "Steel", 2500).to_string()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = cookie_of(&res);
    assert_eq!(
        cookie,
        format!(
            "tp_consistency_catalog={}",
            res.headers()[TOKEN_HEADER].to_str().unwrap()
        )
    );
    let res = send(with_cookie("GET", "/products/p1", &cookie, None))
        .await
        .unwrap();
    let (status, body) = (res.status(), text(res).await);
    assert_eq!(status, StatusCode::OK, "the new product is seen: {body}");
    let row: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(row["price_cents"], 2500);

    // Hold the read model's file: the projection cannot apply the next command.
    let lock = rusqlite::Connection::open(dir.join("catalog-read.db")).unwrap();
    lock.busy_timeout(Duration::from_secs(5)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    let res = send(with_cookie(
        "POST",
        "/products/p1",
        &cookie,
        Some(json!({"op": "set_price", "price_cents": 999})),
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = cookie_of(&res);
    let wrote = PositionToken::from_header_value(&res.headers()[POSITION_HEADER])
        .unwrap()
        .position();
    let pending = tokio::spawn(send(with_cookie("GET", "/products/p1", &cookie, None)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        projection.position() < wrote,
        "the read model is held behind"
    );
    assert!(
        !pending.is_finished(),
        "the query waits for the read model to apply the price change"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);

    let res = pending.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let row: Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(row["price_cents"], 999, "the query sees the write");
    let _ = std::fs::remove_dir_all(dir);
}

/// A genuine token (signed with the app's key) for a position the log has not reached: the
/// query waits the whole 2 s for the read model, then gets a 503 with `Retry-After`. On
/// paused time, so the test does not wait the 2 s.
#[tokio::test(flavor = "current_thread")]
async fn a_token_beyond_the_head_waits_two_seconds_then_gets_503() {
    let dir = temp_dir();
    let (router, _projection) = catalog::sqlite_app(&dir, KEY).await.unwrap();
    let mut app = App::new(router);
    app.command("/products/p1", create("Kettle", "Steel", 100))
        .await;
    let head = app.position.unwrap();
    let ahead = Mark::Position(GlobalPosition::new(head.commit, head.index + 1_000_000));
    app.last = Some(Tokens::new("catalog", KEY).issue(ahead));

    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let (status, res) = app.send("GET", "/products/p1", None).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    assert_eq!(text(res).await, "read side has not caught up");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

use catalog::model;

/// The PostgreSQL read model pipelines each batch (`apply_batch`): a log of interleaved
/// listings, price changes, renames and deletions caught up in batches of 64 ends as applying
/// the events one by one would, and an event the database refuses in the middle of a batch (a
/// name holding a NUL byte, which PostgreSQL's `text` cannot store) is the one dead-lettered,
/// with the events before and after it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_postgres_batch_applies_in_log_order_and_blames_the_failing_event() {
    use std::{collections::BTreeMap, sync::Arc, time::Duration};

    use model::{ProductEvent, ProductRow};
    use tower_patterns::{
        cqrs::{FailurePolicy, Projection, checkpoint::PostgresCheckpoints},
        eventstore::{EventData, EventStore as _, ExpectedVersion, postgres::PostgresStore},
    };

    let Some(url) = tower_patterns_testkit::fresh_postgres("catalog_batch").await else {
        return; // skipped: no PostgreSQL (the reason is printed)
    };
    let store = Arc::new(PostgresStore::connect(&url, 4).await.unwrap());
    let append = |stream: String, event: ProductEvent| {
        let store = store.clone();
        async move {
            let data = EventData::json(
                tower_patterns::eventstore::DomainEvent::event_type(&event),
                &event,
            )
            .unwrap();
            store
                .append(&stream, ExpectedVersion::Any, vec![data])
                .await
                .unwrap();
        }
    };
    // Round k touches every product once, so each batch holds several events of each.
    let mut expected: BTreeMap<String, Option<ProductRow>> = BTreeMap::new();
    for round in 0..8_i64 {
        for p in 0..30_i64 {
            let id = format!("p{p}");
            let row = expected.entry(id.clone()).or_insert(None);
            let event = match (round, row.as_mut()) {
                (0, _) | (_, None) => ProductEvent::ProductCreated {
                    id: id.clone(),
                    name: format!("Lamp {p}"),
                    description: "Brass".into(),
                    price_cents: 1_000 + p,
                },
                (_, Some(_)) if round == 5 && p % 4 == 0 => {
                    ProductEvent::Deleted { id: id.clone() }
                }
                (_, Some(_)) if round % 3 == 2 => ProductEvent::Renamed {
                    id: id.clone(),
                    name: format!("Lamp {p} mark {round}"),
                    description: "Brass, rewired".into(),
                },
                (_, Some(_)) => ProductEvent::PriceUpdated {
                    id: id.clone(),
                    price_cents: 2_000 + 10 * round + p,
                },
            };
            match &event {
                ProductEvent::ProductCreated {
                    name,
                    description,
                    price_cents,
                    ..
                } => {
                    // A deleted product's stream goes on: its next listing is a new version.
                    *row = Some(ProductRow {
                        id: id.clone(),
                        name: name.clone(),
                        description: description.clone(),
                        price_cents: *price_cents,
                    });
                }
                ProductEvent::PriceUpdated { price_cents, .. } => {
                    row.as_mut().unwrap().price_cents = *price_cents;
                }
                ProductEvent::Renamed {
                    name, description, ..
                } => {
                    let r = row.as_mut().unwrap();
                    r.name.clone_from(name);
                    r.description.clone_from(description);
                }
                ProductEvent::Deleted { .. } => *row = None,
            }
            append(format!("{}{id}", model::PRODUCT_PREFIX), event).await;
            if round == 3 && p == 10 {
                // The poison, in the middle of the log (and of a batch).
                append(
                    format!("{}bad", model::PRODUCT_PREFIX),
                    ProductEvent::ProductCreated {
                        id: "bad".into(),
                        name: "nul\u{0}".into(),
                        description: String::new(),
                        price_cents: 1,
                    },
                )
                .await;
            }
        }
    }
    let head = store.head().await.unwrap().unwrap().position;
    let (handle, _task) = Projection::builder("catalog")
        .source(store.clone())
        .postgres(store.pool().clone(), model::Catalog)
        .policy(FailurePolicy::dead_letter())
        .batch(64)
        .build()
        .unwrap()
        .spawn();
    assert!(
        handle.wait_for(head, Duration::from_secs(30)).await,
        "caught up: {:?}",
        handle.status()
    );
    let client = store.pool().get().await.unwrap();
    let tables = handle.tables();
    for (id, row) in &expected {
        let got = model::product_postgres(&**client, &tables, id)
            .await
            .unwrap();
        assert_eq!(got.as_ref(), row.as_ref(), "product {id}");
    }
    assert_eq!(
        model::product_postgres(&**client, &tables, "bad")
            .await
            .unwrap(),
        None
    );
    let dead = PostgresCheckpoints::new(store.pool().clone())
        .await
        .unwrap()
        .dead_letters("catalog")
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].stream, format!("{}bad", model::PRODUCT_PREFIX));
    // The server's own words, not tokio-postgres's bare "db error".
    assert!(
        dead[0].error.contains("invalid byte sequence") && dead[0].error.contains("22021"),
        "{}",
        dead[0].error
    );
}

/// When the batch's statements cannot be prepared (here the read model's table was dropped
/// behind the projection's back), the failure is blamed on the first catalog event of the
/// batch, not on another aggregate's event before it, which needs no statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prepare_is_blamed_on_the_first_event_with_a_statement() {
    use std::{sync::Arc, time::Duration};

    use model::ProductEvent;
    use tower_patterns::{
        cqrs::{FailurePolicy, Projection, checkpoint::PostgresCheckpoints},
        eventstore::{EventData, EventStore as _, ExpectedVersion, postgres::PostgresStore},
    };

    let Some(url) = tower_patterns_testkit::fresh_postgres("catalog_prep").await else {
        return; // skipped: no PostgreSQL (the reason is printed)
    };
    let store = Arc::new(PostgresStore::connect(&url, 4).await.unwrap());
    let (handle, _task) = Projection::builder("catalog")
        .source(store.clone())
        .postgres(store.pool().clone(), model::Catalog)
        .policy(FailurePolicy::dead_letter())
        .build()
        .unwrap()
        .spawn();
    // Live (its tables created); then the table goes.
    let status = handle
        .wait_for_status(Duration::from_secs(30), |s| {
            matches!(s, tower_patterns::cqrs::Status::Live)
        })
        .await;
    assert!(
        matches!(status, tower_patterns::cqrs::Status::Live),
        "{status:?}"
    );
    let client = store.pool().get().await.unwrap();
    let products = handle.tables().name("products");
    client
        .batch_execute(&format!("DROP TABLE {products}"))
        .await
        .unwrap();
    let member = EventData::json("Joined", &serde_json::json!({"user": "ann"})).unwrap();
    let product = ProductEvent::PriceUpdated {
        id: "p1".into(),
        price_cents: 5,
    };
    let product = EventData::json(
        tower_patterns::eventstore::DomainEvent::event_type(&product),
        &product,
    )
    .unwrap();
    store
        .append("member-ann", ExpectedVersion::Any, vec![member])
        .await
        .unwrap();
    let last = store
        .append(
            &format!("{}p1", model::PRODUCT_PREFIX),
            ExpectedVersion::Any,
            vec![product],
        )
        .await
        .unwrap();
    assert!(
        handle
            .wait_for(last.positions[0], Duration::from_secs(30))
            .await,
        "{:?}",
        handle.status()
    );
    let dead = PostgresCheckpoints::new(store.pool().clone())
        .await
        .unwrap()
        .dead_letters("catalog")
        .await
        .unwrap();
    let streams: Vec<&str> = dead.iter().map(|d| d.stream.as_str()).collect();
    assert_eq!(streams, [format!("{}p1", model::PRODUCT_PREFIX)]);
}
