//! The catalog as CQRS: product commands event-sourced, reads and searches from the read
//! model, cached per tenant and per search; a command drops the tenant's cached answers once
//! the read model shows it, so the next read is one load and sees it.

use std::sync::atomic::Ordering;

use axum::{body::Body, http::Method};

use super::{Shop, data_dir, exchange, open_shop, request, send, shop};
use crate::TENANTS;

async fn command(shop: &Shop, tenant: &str, sku: &str, body: &str) -> (u16, String) {
    let key = format!("demo-key-{tenant}");
    let mut req = request(
        Method::POST,
        &format!("/products/{sku}"),
        &[("x-api-key", &key), ("content-type", "application/json")],
    );
    *req.body_mut() = Body::from(body.to_owned());
    exchange(shop.router.clone(), req).await
}

#[tokio::test(start_paused = true)]
async fn search_finds_names_within_the_tenant() {
    let shop = shop("catalog-search").await;
    let get = |tenant: &'static str, q: &'static str| send(&shop, Method::GET, q, Some(tenant));
    assert_eq!(
        get("acme", "/products?q=gre").await,
        (200, "tea 4\n".into())
    );
    assert_eq!(
        get("acme", "/products?q=DARK%20cof").await,
        (200, "coffee 5\n".into())
    );
    // Another tenant's product is not found, by name or otherwise.
    assert_eq!(
        get("acme", "/products?q=widget").await,
        (200, String::new())
    );
    assert_eq!(
        get("globex", "/products?q=blue").await,
        (200, "widget 120\n".into())
    );
    // Query syntax in the input is only text.
    assert_eq!(
        get("acme", "/products?q=%22tea%22%20OR%20*").await,
        (200, String::new())
    );
    assert_eq!(
        get("acme", "/products?q=").await,
        (200, "coffee 5\ntea 4\n".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_command_is_seen_by_the_next_read_after_one_load() {
    let shop = shop("catalog-command").await;
    assert_eq!(
        send(&shop, Method::GET, "/products", Some("acme")).await.0,
        200
    );
    send(&shop, Method::GET, "/products", Some("acme")).await;
    let loads = || shop.app.catalog_loads.load(Ordering::Relaxed);
    assert_eq!(loads(), 1, "cached after the first read");

    let (status, body) = command(
        &shop,
        "acme",
        "matcha",
        r#"{"name":"Matcha tea","price":9}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (201, "created matcha at 9\n"));
    let (status, body) = send(&shop, Method::GET, "/products", Some("acme")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "coffee 5\nmatcha 9\ntea 4\n")
    );
    assert_eq!(loads(), 2, "exactly one load after the command");
    assert_eq!(
        send(&shop, Method::GET, "/products?q=tea", Some("acme")).await,
        (200, "matcha 9\ntea 4\n".into())
    );
    // The other tenant's cache was left alone, and does not see it.
    assert_eq!(
        send(&shop, Method::GET, "/products", Some("globex")).await,
        (200, "widget 120\n".into())
    );

    assert_eq!(
        command(&shop, "acme", "tea", r#"{"price":6}"#).await,
        (200, "repriced tea at 6\n".into())
    );
    assert_eq!(
        send(&shop, Method::GET, "/products", Some("acme")).await.1,
        "coffee 5\nmatcha 9\ntea 6\n"
    );
    // The new product can be ordered: it has stock.
    assert_eq!(
        send(&shop, Method::POST, "/orders/matcha/2", Some("acme"))
            .await
            .0,
        201
    );
}

#[tokio::test(start_paused = true)]
async fn bad_product_commands_are_clear_4xx() {
    let shop = shop("catalog-bad").await;
    let cases = [
        (
            "tea",
            r#"{"name":"Again","price":4}"#,
            (409, "the product exists"),
        ),
        ("nope", r#"{"price":4}"#, (404, "no such product")),
        (
            "tea",
            r#"{"price":0}"#,
            (400, "a price is from 1 to 100000000"),
        ),
        ("tea", r#"{"price":"four"}"#, (400, "malformed JSON")),
        (
            "tea",
            r#"{"price":4,"color":"red"}"#,
            (400, "malformed JSON"),
        ),
        (
            "bad%20sku",
            r#"{"price":4}"#,
            (400, "a sku is 1 to 64 letters, digits or '-'"),
        ),
    ];
    for (sku, body, (status, phrase)) in cases {
        assert_eq!(
            command(&shop, "acme", sku, body).await,
            (status, phrase.to_owned()),
            "{sku} {body}"
        );
    }
    // A customer's token names the tenant, but the catalog is the tenant's to change.
    let token = crate::auth::mint(
        &shop.app.jwt_secret,
        "acme",
        "ada",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let mut req = request(
        Method::POST,
        "/products/tea",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
    );
    *req.body_mut() = Body::from(r#"{"price":1}"#);
    assert_eq!(
        exchange(shop.router.clone(), req).await,
        (403, "product commands need the tenant's API key".to_owned())
    );
    // Without a key: the tenant layer answers first.
    let mut req = request(
        Method::POST,
        "/products/tea",
        &[("content-type", "application/json")],
    );
    *req.body_mut() = Body::from(r#"{"price":4}"#);
    assert_eq!(exchange(shop.router.clone(), req).await.0, 401);
}

#[tokio::test(start_paused = true)]
async fn a_restart_adds_no_product_twice() {
    let shop = shop("catalog-restart").await;
    command(
        &shop,
        "acme",
        "matcha",
        r#"{"name":"Matcha tea","price":9}"#,
    )
    .await;
    shop.app.shutdown();
    let again = open_shop(shop.dir, &[], TENANTS, None).await;
    assert_eq!(
        send(&again, Method::GET, "/products", Some("acme")).await,
        (200, "coffee 5\nmatcha 9\ntea 4\n".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_tenant_id_with_a_dot_keeps_its_own_catalog() {
    let tenants = "[[tenants]]\nid = \"acme\"\nplan = \"gold\"\n[[tenants]]\nid = \"acme.eu\"\nplan = \"gold\"\n";
    let shop = open_shop(data_dir("dotted"), &["--tenant-header-only"], tenants, None).await;
    let as_tenant =
        |tenant: &'static str, method: Method, uri: &'static str, body: &'static str| {
            let router = shop.router.clone();
            async move {
                let mut req = request(
                    method,
                    uri,
                    &[
                        ("x-tenant-id", tenant),
                        ("content-type", "application/json"),
                    ],
                );
                *req.body_mut() = Body::from(body);
                exchange(router, req).await
            }
        };
    assert_eq!(
        as_tenant(
            "acme.eu",
            Method::POST,
            "/products/stroopwafel",
            r#"{"name":"Stroopwafel","price":3}"#
        )
        .await
        .0,
        201
    );
    assert_eq!(
        as_tenant("acme.eu", Method::GET, "/products", "").await,
        (200, "stroopwafel 3\n".into())
    );
    // acme's catalog (the demo products) does not get acme.eu's product, under any name.
    let (_, acme) = as_tenant("acme", Method::GET, "/products", "").await;
    assert_eq!(acme, "coffee 5\ntea 4\n");
    assert_eq!(
        as_tenant("acme", Method::GET, "/products?q=stroop", "")
            .await
            .1,
        ""
    );
    // acme.eu's orders are its own, and readable.
    let (status, body) = as_tenant("acme.eu", Method::POST, "/orders/stroopwafel/1", "").await;
    assert_eq!(status, 201, "{body}");
}

/// acme's products, as `shop` answers them.
async fn products(shop: &Shop) -> (u16, String) {
    send(shop, Method::GET, "/products", Some("acme")).await
}

/// Polls `done` every 10 ms for up to 10 s (real time: over Redis and PostgreSQL).
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// With `--redis` and `--postgres`, storefronts share the catalog cache: one's load serves
/// the others. Each answer is kept under the position its storefront's read model had
/// reached, so a storefront that lags never serves its older answers to one further on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_and_postgres_the_catalog_cache_is_shared_by_position() {
    use tower_patterns_testkit::servers::{Server, fresh_postgres, server_url};
    let Some(redis) = server_url(Server::Redis) else {
        return;
    };
    let Some(postgres) = fresh_postgres("sfcache").await else {
        return;
    };
    let _turn = super::REAL_TIME.lock().await;
    let flags = ["--postgres", postgres.as_str(), "--redis", redis.as_str()];
    let a = open_shop(data_dir("cache-a"), &flags, TENANTS, None).await;
    let b = open_shop(data_dir("cache-b"), &flags, TENANTS, None).await;
    let loads = |shop: &Shop| shop.app.catalog_loads.load(Ordering::Relaxed);
    let search = |shop: &Shop, q: &str| {
        let uri = format!("/products?q={q}");
        let router = shop.router.clone();
        async move {
            let req = request(Method::GET, &uri, &[("x-api-key", "demo-key-acme")]);
            exchange(router, req).await
        }
    };
    let before = (loads(&a), loads(&b));
    assert_eq!(products(&a).await, (200, "coffee 5\ntea 4\n".into()));
    assert_eq!(products(&b).await, (200, "coffee 5\ntea 4\n".into()));
    assert_eq!(
        (loads(&a), loads(&b)),
        (before.0 + 1, before.1),
        "b was served what a loaded"
    );

    // b's read model stops following the events; a reprices coffee.
    b.app.catalog_view.shutdown();
    until("b's read model has stopped", async || {
        b.app.catalog_view.status() == tower_patterns::cqrs::projection::Status::ShutDown
    })
    .await;
    assert_eq!(command(&a, "acme", "coffee", r#"{"price":7}"#).await.0, 200);
    // b, behind, answers from its own read model and puts that answer in the shared cache;
    // a, further on, does not find it there.
    assert_eq!(search(&b, "cof").await, (200, "coffee 5\n".into()));
    let loaded = loads(&a);
    assert_eq!(search(&a, "cof").await, (200, "coffee 7\n".into()));
    assert_eq!(loads(&a), loaded + 1, "a loaded its own answer");

    // b restarts, catches up, and finds a's answer.
    b.app.shutdown();
    let b = open_shop(b.dir, &flags, TENANTS, None).await;
    assert_eq!(search(&b, "cof").await, (200, "coffee 7\n".into()));
    assert_eq!(loads(&b), 0, "served what a loaded at the same position");
    a.app.shutdown();
    b.app.shutdown();
}
