//! Orders sharded by customer, read from read models: placement by jump hash, privacy between
//! customers, read-your-writes with the token while a projection lags, and a data directory
//! that keeps its shard count.

use std::time::Duration;

use axum::http::Method;
use tower_patterns::{
    shard::{Jump, Route, Strategy},
    tenant::StaticTenants,
};

use super::{TOKEN, admin, exchange, request, shop};
use crate::{TENANTS, config, storefront};

/// An order as `customer` of acme (through the tenant's API key); the answer and its
/// consistency token.
async fn order_as(shop: &super::Shop, customer: &str) -> (u16, String, Option<String>) {
    let req = request(
        Method::POST,
        "/orders/tea/1",
        &[("x-api-key", "demo-key-acme"), ("x-customer-id", customer)],
    );
    let res = tower::ServiceExt::oneshot(shop.router.clone(), req)
        .await
        .unwrap();
    let token = res
        .headers()
        .get("tp-consistency")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = res.status().as_u16();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), token)
}

async fn read_as(
    shop: &super::Shop,
    customer: &str,
    order: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut headers = vec![("x-api-key", "demo-key-acme"), ("x-customer-id", customer)];
    if let Some(token) = token {
        headers.push(("tp-consistency", token));
    }
    exchange(
        shop.router.clone(),
        request(Method::GET, &format!("/orders/{order}"), &headers),
    )
    .await
}

fn id(answer: &str) -> String {
    answer.split_whitespace().nth(2).unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn customers_are_placed_by_jump_hash_and_read_only_their_own() {
    let shop = shop("shard-placement").await;
    let jump = Jump::new(shop.app.shards.all.len());
    let mut used = std::collections::BTreeSet::new();
    for n in 0..12 {
        let customer = format!("customer-{n}");
        let (status, body, token) = order_as(&shop, &customer).await;
        assert_eq!(status, 201, "{body}");
        let Route::To(expected) = jump.route(customer.as_str()) else {
            panic!("no shard")
        };
        used.insert(expected);
        let order = id(&body);
        // The order is in its customer's shard's read model, and in no other.
        let (status, text) = read_as(&shop, &customer, &order, token.as_deref()).await;
        assert_eq!(
            (status, text.split_whitespace().next()),
            (200, Some("PAID")),
            "{text}"
        );
        for shard in shop.app.shards.all.iter() {
            let row = shard.read("acme", &customer, &order).await.unwrap();
            assert_eq!(
                row.is_some(),
                shard.index == expected,
                "shard {}",
                shard.index
            );
        }
        // Another customer of the same tenant does not see it.
        assert_eq!(read_as(&shop, "someone-else", &order, None).await.0, 404);
    }
    assert!(used.len() > 1, "twelve customers on one shard: {used:?}");
    let (_, patterns) = admin(&shop, Method::GET, "/admin/patterns").await;
    assert!(
        patterns.contains(r#""name":"orders","pattern":"shard""#),
        "{patterns}"
    );
    let router = shop
        .app
        .handles
        .iter()
        .find(|h| h.pattern() == "shard")
        .unwrap()
        .report();
    assert_eq!(router.value("shards"), Some(4.0), "{router:?}");
}

/// Real time: with paused time the runtime would jump over the lag whenever it waits for a
/// SQLite read on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_read_with_its_token_while_the_projection_lags() {
    let _turn = super::REAL_TIME.lock().await;
    let shop = shop("shard-lag").await;
    let plan = r#"{"faults":[{"kind":"latency","ms":1000}]}"#;
    let mut req = request(
        Method::POST,
        "/admin/chaos/orders-projection",
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("content-type", "application/json"),
        ],
    );
    *req.body_mut() = axum::body::Body::from(plan);
    assert_eq!(exchange(shop.router.clone(), req).await.0, 200);

    let (status, body, token) = order_as(&shop, "ada").await;
    assert_eq!(status, 201, "{body}");
    let token = token.expect("a write answers with a consistency token");
    let order = id(&body);
    // Without the token: the read model has not caught up; the order is not there yet.
    assert_eq!(read_as(&shop, "ada", &order, None).await.0, 404);
    // With it: the read waits for the projection, then sees the write.
    let start = tokio::time::Instant::now();
    let (status, text) = read_as(&shop, "ada", &order, Some(&token)).await;
    assert_eq!(
        (status, text.split_whitespace().next()),
        (200, Some("PAID")),
        "{text}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "it waited for the projection"
    );
    // A forged token is refused at once, not waited on. Its last tag digit is changed to
    // another one (always another: the tag's last digit is a 0 one time in sixteen).
    let (body, last) = token.split_at(token.len() - 1);
    let forged = format!("{body}{}", if last == "0" { '1' } else { '0' });
    assert_eq!(read_as(&shop, "ada", &order, Some(&forged)).await.0, 400);
    assert_eq!(
        read_as(&shop, "ada", &order, Some("not-a-token")).await.0,
        400
    );
}

#[tokio::test(start_paused = true)]
async fn the_customer_comes_from_the_token_first() {
    let shop = shop("shard-customer").await;
    let token =
        crate::auth::mint(&shop.app.jwt_secret, "acme", "ada", Duration::from_secs(60)).unwrap();
    let bearer = format!("Bearer {token}");
    let post = |headers: Vec<(&'static str, String)>| {
        let router = shop.router.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            exchange(router, request(Method::POST, "/orders/tea/1", &headers)).await
        }
    };
    assert_eq!(post(vec![("authorization", bearer.clone())]).await.0, 201);
    assert_eq!(
        post(vec![
            ("authorization", bearer.clone()),
            ("x-customer-id", "ada".into())
        ])
        .await
        .0,
        201
    );
    assert_eq!(
        post(vec![
            ("authorization", bearer),
            ("x-customer-id", "bob".into())
        ])
        .await,
        (403, "the customer does not match the token".to_owned())
    );
    // The scheme in lower case is still the verified token: the header cannot outrank it.
    assert_eq!(
        post(vec![
            ("authorization", format!("bearer {token}")),
            ("x-customer-id", "bob".into())
        ])
        .await,
        (403, "the customer does not match the token".to_owned())
    );
    assert_eq!(
        post(vec![
            ("x-api-key", "demo-key-acme".into()),
            ("x-customer-id", "no spaces".into())
        ])
        .await,
        (400, "malformed customer id".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn the_data_keeps_its_shard_count() {
    let shop = shop("shard-count").await;
    let dir = shop.dir.0.display().to_string();
    shop.app.shutdown();
    let cfg = config::parse(
        vec!["--data".into(), dir.clone(), "--shards".into(), "3".into()],
        |_| None,
    )
    .unwrap();
    let tenants = StaticTenants::from_toml(TENANTS).unwrap();
    let err = storefront(&cfg, tenants, TOKEN.into(), None)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.starts_with("storefront: --shards 3: the data in "),
        "{err}"
    );
    assert!(err.contains("was made with 4 shards"), "{err}");
    assert_eq!(err.lines().count(), 1);
}
