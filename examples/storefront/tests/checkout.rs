//! The order saga and the payment queue: a refused step undoes the ones before it; queued
//! payments drain once the breaker closes, and wait across a restart.

use std::time::Duration;

use axum::http::Method;
use tower_patterns::breaker::State;

use super::{Shop, admin, open_shop, reports, send, shop};
use crate::{TENANTS, ledger::INITIAL_STOCK};

/// The order id in an answer such as `PAID order <id> tea x1`.
fn order_id(answer: &str) -> String {
    answer.split_whitespace().nth(2).unwrap().to_owned()
}

async fn status_of(shop: &Shop, order: &str) -> String {
    let (code, body) = send(shop, Method::GET, &format!("/orders/{order}"), Some("acme")).await;
    assert_eq!(code, 200, "{body}");
    body.split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn out_of_stock_undoes_the_order_and_refunds_the_charge() {
    let shop = shop("saga-stock").await;
    shop.app
        .ledger
        .with(|c| {
            c.execute(
                "UPDATE stock SET available = 2 WHERE tenant = 'acme' AND sku = 'tea'",
                [],
            )
        })
        .await
        .unwrap();
    let (code, body) = send(&shop, Method::POST, "/orders/tea/2", Some("acme")).await;
    assert_eq!(
        (code, body.split_whitespace().next()),
        (201, Some("PAID")),
        "{body}"
    );
    let (code, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.starts_with("CANCELLED order ") && body.ends_with("(out of stock)\n"),
        "{body}"
    );
    // Undone newest first: the charge refunded, the order cancelled; the stock untouched.
    assert_eq!(status_of(&shop, &order_id(&body)).await, "CANCELLED");
    assert_eq!(shop.app.ledger.undone().await.unwrap(), (1, 0));
    let left = shop
        .app
        .ledger
        .available("acme".into(), "tea".into())
        .await
        .unwrap();
    assert_eq!(left, 0);
    // The saga's own report counts it.
    let saga = reports(&shop)
        .await
        .into_iter()
        .find(|r| r["pattern"] == "saga")
        .expect("the saga reports");
    assert_eq!(saga["name"], "checkout", "{saga}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_payment_undoes_the_order_and_gives_the_stock_back() {
    let shop = shop("saga-payment").await;
    admin(&shop, Method::POST, "/admin/provider/down").await;
    let (code, body) = send(&shop, Method::POST, "/orders/tea/5", Some("acme")).await;
    assert_eq!(code, 502, "{body}");
    assert!(body.ends_with("(payment failed)\n"), "{body}");
    assert_eq!(status_of(&shop, &order_id(&body)).await, "CANCELLED");
    // Payment comes before the stock: nothing was reserved, nothing refunded.
    let left = shop
        .app
        .ledger
        .available("acme".into(), "tea".into())
        .await
        .unwrap();
    assert_eq!(left, INITIAL_STOCK);
    assert_eq!(shop.app.ledger.undone().await.unwrap(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn queued_payments_drain_once_the_breaker_closes() {
    let shop = shop("queue-drain").await;
    admin(&shop, Method::POST, "/admin/provider/down").await;
    // The first order fails (two attempts), the second opens the breaker and is queued, the
    // third is queued at once.
    send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    let mut queued = Vec::new();
    for _ in 0..2 {
        let (code, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
        assert_eq!(code, 202, "{body}");
        queued.push(order_id(&body));
    }
    assert_eq!(shop.app.breaker.state(), State::Open);
    assert_eq!(shop.app.queue.queued(), 2);
    assert_eq!(status_of(&shop, &queued[0]).await, "PAYMENT_QUEUED");
    // Open, the worker sends nothing, even with the provider back.
    admin(&shop, Method::POST, "/admin/provider/up").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(shop.app.queue.queued(), 2);
    assert_eq!(shop.app.queue.drained(), 0);
    // Past the open time the breaker lets a probe through: the worker's payment closes it,
    // and the rest follow.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(shop.app.queue.queued(), 0);
    assert_eq!(shop.app.queue.drained(), 2);
    assert_eq!(shop.app.breaker.state(), State::Closed);
    for order in &queued {
        assert_eq!(status_of(&shop, order).await, "PAID");
    }
    let (_, health) = send(&shop, Method::GET, "/health", None).await;
    assert!(health.contains("queued payments 0; drained 2"), "{health}");
}

#[tokio::test(start_paused = true)]
async fn queued_payments_wait_across_a_restart() {
    let shop = shop("queue-restart").await;
    admin(&shop, Method::POST, "/admin/provider/down").await;
    send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    let (code, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(code, 202, "{body}");
    let order = order_id(&body);
    shop.app.shutdown();
    // The same data directory, a new process's state: the provider answers, the breaker is
    // closed, and the queued payment goes through.
    let again = open_shop(shop.dir, &[], TENANTS, None).await;
    assert_eq!(again.app.queue.queued(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(again.app.queue.queued(), 0);
    assert_eq!(status_of(&again, &order).await, "PAID");
}

#[tokio::test(start_paused = true)]
async fn the_worker_never_charges_a_cancelled_order() {
    use tower_patterns::shard::{Jump, Route, Strategy};
    let shop = shop("queue-cancelled").await;
    admin(&shop, Method::POST, "/admin/provider/down").await;
    let (code, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(code, 502, "{body}");
    let order = order_id(&body);
    // Say the payment had been queued before the saga undid the order.
    let Route::To(shard) = Jump::new(shop.app.shards.all.len()).route("guest") else {
        panic!("no shard")
    };
    shop.app
        .ledger
        .enqueue(shard, "acme", &order, 4)
        .await
        .unwrap();
    assert_eq!(shop.app.queue.queued(), 1);
    admin(&shop, Method::POST, "/admin/provider/up").await;
    let attempts = shop
        .app
        .provider_attempts
        .load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(shop.app.queue.queued(), 0, "it leaves the queue");
    assert_eq!(
        shop.app
            .provider_attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        attempts,
        "uncharged"
    );
    assert_eq!(status_of(&shop, &order).await, "CANCELLED");
}
