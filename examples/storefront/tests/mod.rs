//! The routes end to end, in process (this file), the admin routes and metrics (`admin.rs`),
//! and the edge over real TCP (`edge.rs`).

mod admin;
mod auth;
mod catalog;
mod checkout;
mod demo;
mod edge;
mod shards;

use std::{path::PathBuf, sync::atomic::Ordering, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Method, Request, Response},
};
use http_body_util::BodyExt;
use rusqlite::Connection;
use tower::ServiceExt;
use tower_patterns::tenant::StaticTenants;

use crate::{
    API_KEY_HEADER, App, TENANT_CONCURRENCY, TENANT_HEADER, TENANTS,
    config::{self, Auth},
    storefront,
};

/// One test at a time among those that measure wall-clock time (real TCP, the demo's
/// latencies, a projection's real lag): on two cores, two of them side by side would make each
/// other slow. The paused-time tests run beside them freely.
pub(crate) static REAL_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The admin token of the test shops.
pub(crate) const TOKEN: &str = "test-admin-token-0123456789";

pub(crate) struct Shop {
    pub(crate) router: Router,
    pub(crate) app: App,
    dir: TempDir,
    /// The cookies the shop set (each shard's consistency token), sent back by [`send`] as a
    /// browser would: a client reads its own writes.
    jar: Jar,
}

/// Cookies by name.
#[derive(Clone, Default)]
pub(crate) struct Jar(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>);

impl Jar {
    fn header(&self) -> Option<String> {
        let jar = self.0.lock().unwrap();
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn keep(&self, res: &Response<Body>) {
        let mut jar = self.0.lock().unwrap();
        for cookie in res.headers().get_all("set-cookie") {
            let Some((pair, _)) = cookie.to_str().unwrap().split_once(';') else {
                continue;
            };
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    jar.remove(name);
                } else {
                    jar.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }
}

/// What a run printed, shared with the test that reads it.
#[derive(Clone, Default)]
pub(crate) struct Out(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    /// What was printed so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, empty data directory for the test `name`.
pub(crate) fn data_dir(name: &str) -> TempDir {
    let dir =
        std::env::temp_dir().join(format!("tp-storefront-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// The storefront over `dir` with `flags` beside `--data`, the tenants of the registry
/// `tenants` (TOML), and metrics on `prometheus` when given.
pub(crate) async fn open_shop(
    dir: TempDir,
    flags: &[&str],
    tenants: &str,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Shop {
    let mut args = vec!["--data".to_owned(), dir.0.display().to_string()];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let cfg = config::parse(args, |_| None).unwrap();
    let tenants = StaticTenants::from_toml(tenants).unwrap();
    let (router, app) = storefront(&cfg, tenants, TOKEN.into(), prometheus)
        .await
        .unwrap();
    Shop {
        router,
        app,
        dir,
        jar: Jar::default(),
    }
}

async fn shop_with(name: &str, auth: Auth) -> Shop {
    let flags: &[&str] = match auth {
        Auth::ApiKey => &[],
        Auth::HeaderOnly => &["--tenant-header-only"],
    };
    open_shop(data_dir(name), flags, TENANTS, None).await
}

pub(crate) async fn shop(name: &str) -> Shop {
    shop_with(name, Auth::ApiKey).await
}

/// Sends `req` and reads the answer.
pub(crate) async fn exchange(router: Router, req: Request<Body>) -> (u16, String) {
    let res: Response<Body> = router.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A request with `headers`.
pub(crate) fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Body::empty()).unwrap()
}

/// A request as `tenant`, with its demo API key (or no credential at all).
pub(crate) async fn send(
    shop: &Shop,
    method: Method,
    uri: &str,
    tenant: Option<&str>,
) -> (u16, String) {
    let key = tenant.map(|t| format!("demo-key-{t}"));
    let mut headers: Vec<(&str, &str)> = key.iter().map(|k| (API_KEY_HEADER, k.as_str())).collect();
    let cookies = shop.jar.header();
    if let Some(cookies) = &cookies {
        headers.push(("cookie", cookies));
    }
    let res: Response<Body> = shop
        .router
        .clone()
        .oneshot(request(method, uri, &headers))
        .await
        .unwrap();
    shop.jar.keep(&res);
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An admin request with the token.
pub(crate) async fn admin(shop: &Shop, method: Method, uri: &str) -> (u16, String) {
    let bearer = format!("Bearer {TOKEN}");
    exchange(
        shop.router.clone(),
        request(method, uri, &[("authorization", &bearer)]),
    )
    .await
}

/// Every report of `/admin/patterns`, as the status page reads them.
pub(crate) async fn reports(shop: &Shop) -> Vec<serde_json::Value> {
    let (status, body) = admin(shop, Method::GET, "/admin/patterns").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["patterns"]
        .as_array()
        .expect("a list of reports")
        .clone()
}

/// The report named `name` among `reports`.
pub(crate) fn named<'a>(reports: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    reports
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no report {name} in {reports:?}"))
}

async fn code(shop: &Shop, method: Method, uri: &str, tenant: Option<&str>) -> u16 {
    send(shop, method, uri, tenant).await.0
}

#[tokio::test(start_paused = true)]
async fn each_tenant_sees_its_own_catalog_loaded_once() {
    let shop = shop("catalog").await;
    let (status, body) = send(&shop, Method::GET, "/products", Some("acme")).await;
    assert_eq!((status, body.as_str()), (200, "coffee 5\ntea 4\n"));
    let (_, body) = send(&shop, Method::GET, "/products", Some("globex")).await;
    assert_eq!(body, "widget 120\n");
    for _ in 0..3 {
        send(&shop, Method::GET, "/products", Some("acme")).await;
    }
    assert_eq!(
        shop.app.catalog_loads.load(Ordering::Relaxed),
        2,
        "one load per tenant"
    );
}

#[tokio::test(start_paused = true)]
async fn who_may_call() {
    let shop = shop("who").await;
    let call = |headers: &[(&str, &str)]| {
        exchange(
            shop.router.clone(),
            request(Method::GET, "/products", headers),
        )
    };
    assert_eq!(call(&[]).await.0, 401, "no credential");
    assert_eq!(call(&[(API_KEY_HEADER, "guessed")]).await.0, 401);
    assert_eq!(call(&[(API_KEY_HEADER, "demo-key-initech")]).await.0, 403);
    assert_eq!(call(&[(API_KEY_HEADER, "demo-key-acme")]).await.0, 200);
    // The header alone proves nothing: any client could send it.
    assert_eq!(call(&[(TENANT_HEADER, "acme")]).await.0, 401);
    // With a key, it may only agree.
    let both = [(API_KEY_HEADER, "demo-key-acme"), (TENANT_HEADER, "acme")];
    assert_eq!(call(&both).await.0, 200);
    let other = [(API_KEY_HEADER, "demo-key-acme"), (TENANT_HEADER, "globex")];
    assert_eq!(call(&other).await.0, 403);
    // A key that is not visible ASCII is malformed, and says no more than that.
    let mut req = request(Method::GET, "/products", &[]);
    req.headers_mut().insert(
        API_KEY_HEADER,
        HeaderValue::from_bytes(b"demo-key-\xffacme").unwrap(),
    );
    assert_eq!(exchange(shop.router.clone(), req).await.0, 400);
    assert_eq!(code(&shop, Method::GET, "/health", None).await, 200);
}

#[tokio::test(start_paused = true)]
async fn header_only_tenancy_is_an_explicit_mode() {
    let auth = |value: Option<&str>| {
        let value = value.map(str::to_owned);
        config::parse(vec![], move |k| {
            (k == "TP_TENANT_HEADER_ONLY")
                .then(|| value.clone())
                .flatten()
        })
        .map(|cfg| cfg.auth)
    };
    assert_eq!(auth(None).unwrap(), Auth::ApiKey);
    for off in ["", "0", "false"] {
        assert_eq!(auth(Some(off)).unwrap(), Auth::ApiKey);
    }
    for on in ["1", "true", " 1 "] {
        assert_eq!(auth(Some(on)).unwrap(), Auth::HeaderOnly);
    }
    for typo in ["yes", "ture", "2"] {
        assert!(auth(Some(typo)).is_err(), "{typo}");
    }
    let shop = shop_with("header-only", Auth::HeaderOnly).await;
    let call = |tenant: &str| {
        exchange(
            shop.router.clone(),
            request(Method::GET, "/products", &[(TENANT_HEADER, tenant)]),
        )
    };
    assert_eq!(call("acme").await, (200, "coffee 5\ntea 4\n".to_owned()));
    assert_eq!(call("ac me").await.0, 400);
    assert_eq!(call("umbrella").await.0, 403);
    assert_eq!(call("initech").await.0, 403);
    assert_eq!(code(&shop, Method::GET, "/products", None).await, 401);
}

#[tokio::test(start_paused = true)]
async fn orders_are_paid_and_private() {
    let shop = shop("orders").await;
    let (status, body) = send(&shop, Method::POST, "/orders/tea/2", Some("acme")).await;
    assert_eq!(status, 201, "{body}");
    let id = body.split_whitespace().nth(2).unwrap().to_owned();
    let (status, body) = send(&shop, Method::GET, &format!("/orders/{id}"), Some("acme")).await;
    assert_eq!((status, body.as_str()), (200, "PAID tea x2 (version 2)\n"));
    // globex names the same id: its stream is its own, and empty.
    let (status, _) = send(&shop, Method::GET, &format!("/orders/{id}"), Some("globex")).await;
    assert_eq!(status, 404);
    // A product of another tenant is not for sale here.
    assert_eq!(
        send(&shop, Method::POST, "/orders/widget/1", Some("acme")).await,
        (404, "no such product".to_owned())
    );
    assert_eq!(
        send(&shop, Method::GET, "/orders/..%2F", Some("acme")).await,
        (400, "malformed order id".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn bad_paths_and_quantities_are_fixed_400s() {
    let shop = shop("quantities").await;
    let phrase = "the quantity must be a whole number from 1 to 100";
    for qty in ["0", "101", "abc", "-1", "+5", "4294967296", "1e3", "007x"] {
        let (status, body) = send(
            &shop,
            Method::POST,
            &format!("/orders/tea/{qty}"),
            Some("acme"),
        )
        .await;
        assert_eq!((status, body.as_str()), (400, phrase), "quantity {qty:?}");
    }
    // The path itself undecodable: one phrase, no parser's words.
    for uri in ["/orders/%FF/1", "/orders/%FF"] {
        let method = if uri.matches('/').count() == 3 {
            Method::POST
        } else {
            Method::GET
        };
        let (status, body) = send(&shop, method, uri, Some("acme")).await;
        assert_eq!((status, body.as_str()), (400, "malformed path"), "{uri}");
    }
    // The bound itself is an order.
    assert_eq!(
        code(&shop, Method::POST, "/orders/tea/100", Some("acme")).await,
        201
    );
}

#[tokio::test(start_paused = true)]
async fn a_catalog_outage_is_503_with_a_fixed_phrase() {
    let shop = shop("outage").await;
    Connection::open(shop.dir.0.join("catalog-read.db"))
        .unwrap()
        .execute_batch("DROP TABLE catalog_v1_products")
        .unwrap();
    let answer = (503, "catalog unavailable".to_owned());
    assert_eq!(
        send(&shop, Method::GET, "/products", Some("acme")).await,
        answer
    );
    // Not "no such product": the product may well exist.
    assert_eq!(
        send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await,
        answer
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_provider_cancels_then_the_open_breaker_queues() {
    let shop = shop("payments").await;
    admin(&shop, Method::POST, "/admin/provider/down").await;
    // The retry is outside the breaker: each of the first order's two attempts is a call
    // the breaker judges.
    let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(
        (status, body.split_whitespace().next()),
        (502, Some("CANCELLED"))
    );
    let s = shop.app.breaker.snapshot();
    assert_eq!((s.calls, s.failures), (2, 2), "{s:?}");
    // The next order's first attempt opens it; its retry is refused by the open breaker
    // and not retried, and the fallback queues the payment.
    let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(
        (status, body.split_whitespace().next()),
        (202, Some("QUEUED"))
    );
    assert_eq!(shop.app.provider_attempts.load(Ordering::SeqCst), 3);
    // While open, no charge reaches the provider.
    let (status, _) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(status, 202);
    assert_eq!(shop.app.provider_attempts.load(Ordering::SeqCst), 3);
    assert_eq!(shop.app.queue.queued(), 2);
    let (_, health) = send(&shop, Method::GET, "/health", None).await;
    assert!(health.contains("open"), "{health}");
}

#[tokio::test(start_paused = true)]
async fn the_provider_takes_only_its_documented_states() {
    let shop = shop("gateway").await;
    for state in ["sideways", "UP", "up%20", "down.", ""] {
        let (status, body) = admin(&shop, Method::POST, &format!("/admin/provider/{state}")).await;
        assert_eq!(status, 404, "{state:?}");
        assert!(
            body.is_empty() || body == "no such provider state",
            "{state:?}: {body}"
        );
    }
    // Without the token, nothing switches.
    assert_eq!(
        send(&shop, Method::POST, "/admin/provider/down", Some("acme")).await,
        (401, "admin token required".to_owned())
    );
    // None of them switched the provider off.
    assert_eq!(
        code(&shop, Method::POST, "/orders/tea/1", Some("acme")).await,
        201
    );
    assert_eq!(
        admin(&shop, Method::POST, "/admin/provider/down").await,
        (200, "payment provider down\n".to_owned())
    );
    assert_eq!(
        code(&shop, Method::POST, "/orders/tea/1", Some("acme")).await,
        502
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_routes_are_404_before_the_tenant_layer() {
    let shop = shop("routes").await;
    // Without a key: 404, not 401.
    assert_eq!(code(&shop, Method::GET, "/nope", None).await, 404);
    assert_eq!(code(&shop, Method::GET, "/orders/a/b/c", None).await, 404);
    // With one, many times: the free plan's burst (5) is not spent on them.
    for _ in 0..10 {
        assert_eq!(code(&shop, Method::GET, "/nope", Some("globex")).await, 404);
    }
    for _ in 0..5 {
        assert_eq!(
            code(&shop, Method::GET, "/products", Some("globex")).await,
            200
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_tenant_holds_at_most_its_own_pool() {
    let shop = shop("bulkhead").await;
    admin(&shop, Method::POST, "/admin/provider/slow").await;
    // acme fills its pool with slow orders...
    let held: Vec<_> = (0..TENANT_CONCURRENCY)
        .map(|_| {
            let router = shop.router.clone();
            tokio::spawn(exchange(
                router,
                request(
                    Method::POST,
                    "/orders/tea/1",
                    &[(API_KEY_HEADER, "demo-key-acme")],
                ),
            ))
        })
        .collect();
    // The orders' SQLite work runs on blocking threads, in real time: wait for it (a
    // guard against a hang, not a sleep; the paused clock does not move meanwhile).
    let guard = std::time::Instant::now();
    while shop.app.provider_attempts.load(Ordering::SeqCst) < u64::from(TENANT_CONCURRENCY) {
        assert!(
            guard.elapsed() < Duration::from_secs(60),
            "the held orders never reached the provider"
        );
        tokio::task::yield_now().await;
    }
    // ...so its next request is refused at once...
    let (status, body) = send(&shop, Method::GET, "/products", Some("acme")).await;
    assert_eq!((status, body.as_str()), (503, "bulkhead full"));
    // ...while globex, with a pool of its own, is served (after the slow provider).
    let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("globex")).await;
    assert_eq!((status, body.as_str()), (404, "no such product"));
    let (status, body) = send(&shop, Method::POST, "/orders/widget/1", Some("globex")).await;
    assert_eq!(status, 201, "{body}");
    for order in held {
        assert_eq!(order.await.unwrap().0, 201);
    }
    // Once acme's orders are done, its pool is free again.
    assert_eq!(
        code(&shop, Method::GET, "/products", Some("acme")).await,
        200
    );
}

#[tokio::test(start_paused = true)]
async fn the_free_plan_is_limited_per_tenant() {
    let shop = shop("limits").await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(code(&shop, Method::GET, "/products", Some("globex")).await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    // acme (gold) is not held back by globex's limit.
    assert_eq!(
        code(&shop, Method::GET, "/products", Some("acme")).await,
        200
    );
    // After a refill interval globex may call again.
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(
        code(&shop, Method::GET, "/products", Some("globex")).await,
        200
    );
}
