//! The product catalog end to end through its HTTP service (`examples/catalog`): a command
//! answers with its position, a query that sends it back sees the write, a price change moves
//! the product row and the search results, and bad input gets its 4xx.

#[allow(dead_code)]
#[path = "../examples/catalog/main.rs"]
mod catalog;

use axum::{Router, body::Body};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tower_patterns::cqrs::layer::{POSITION_HEADER, PositionToken};

struct App {
    router: Router,
    /// The position of the last command, sent with every query.
    last: Option<String>,
}

impl App {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Response<Body>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(last) = &self.last {
            req = req.header(POSITION_HEADER, last);
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
        let value = res.headers()[POSITION_HEADER].clone();
        let token = PositionToken::from_header_value(&value).unwrap();
        self.last = Some(value.to_str().unwrap().to_owned());
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
    let (router, projection) = catalog::sqlite_app(&dir).await.unwrap();
    price_change(router, &projection).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_updates_the_product_row_and_the_search_results_on_postgres() {
    let Some(url) = tower_patterns_testkit::fresh_postgres("catalog").await else {
        return; // skipped: no PostgreSQL (the reason is printed)
    };
    let (router, projection) = catalog::postgres_app(&url).await.unwrap();
    price_change(router, &projection).await;
}

async fn price_change(router: Router, projection: &tower_patterns::cqrs::ProjectionHandle) {
    let mut app = App { router, last: None };

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
        projection.position() >= app_position(&app),
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

fn app_position(app: &App) -> tower_patterns::eventstore::GlobalPosition {
    app.last
        .as_deref()
        .unwrap()
        .parse::<PositionToken>()
        .unwrap()
        .position()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_client_error_with_a_fixed_phrase() {
    let dir = temp_dir();
    let (router, _projection) = catalog::sqlite_app(&dir).await.unwrap();
    let mut app = App { router, last: None };
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
    app.last = Some("v1.0.01".into());
    let (status, res) = app.send("GET", "/products?text=kettle", None).await;
    assert_eq!(
        (status, text(res).await.as_str()),
        (StatusCode::BAD_REQUEST, "malformed position")
    );
    let _ = std::fs::remove_dir_all(dir);
}
