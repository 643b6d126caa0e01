//! Bulkheads in an axum app: each route has its own pool, so a slow route fills its pool and
//! answers 503 while a fast route, behind a pool of its own, keeps answering at once.

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body, error_handling::HandleErrorLayer, http::StatusCode, routing::get};
use http::Request;
use http_body_util::BodyExt;
use tokio::{sync::Notify, time::Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_patterns::{
    bulkhead::{BulkheadHandle, BulkheadLayer},
    http::handle_error,
};

/// A pool of two for a route (the same settings for both routes: only the pools differ).
fn pool(name: &str) -> BulkheadLayer {
    BulkheadLayer::builder(name)
        .max_concurrent(2)
        .build()
        .unwrap()
}

async fn body(res: axum::response::Response) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_route_cannot_starve_a_fast_one() {
    let release = Arc::new(Notify::new());
    let (reports, health) = (pool("reports"), pool("health"));
    let (report_pool, health_pool): (BulkheadHandle, BulkheadHandle) =
        (reports.handle(), health.handle());
    let report = {
        let release = release.clone();
        move || async move {
            release.notified().await;
            "report"
        }
    };
    // The fast handler answers with the permits its own pool has out and the slow one's: it
    // runs inside its own bulkhead, beside a full one.
    let status = {
        let (health_pool, report_pool) = (health_pool.clone(), report_pool.clone());
        move || async move { format!("{} {}", health_pool.in_flight(), report_pool.in_flight()) }
    };
    let app = Router::new()
        .route(
            "/report",
            get(report).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(reports),
            ),
        )
        .route(
            "/health",
            get(status).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(health),
            ),
        );
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    // Paused time runs ahead when every task waits: a call that blocks instead of answering
    // ends here, as a failure, rather than hanging the test.
    let answer = |path: &'static str| {
        let app = app.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), app.oneshot(get(path)))
                .await
                .unwrap_or_else(|_| panic!("{path} did not answer"))
                .unwrap()
        }
    };

    let stuck: Vec<_> = (0..2)
        .map(|_| tokio::spawn(app.clone().oneshot(get("/report"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(report_pool.in_flight(), 2);

    let start = Instant::now();
    let full = answer("/report").await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(full).await, "bulkhead full");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "a full pool rejects at once"
    );

    for _ in 0..50 {
        let res = answer("/health").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            body(res).await,
            "1 2",
            "served under its own pool's permit, beside the full one"
        );
    }
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the fast route never waited"
    );
    assert_eq!(health_pool.in_flight(), 0);

    release.notify_waiters();
    for s in stuck {
        assert_eq!(s.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(report_pool.in_flight(), 0);
    // With the slow pool empty again, /report answers too.
    let later = tokio::spawn(app.clone().oneshot(get("/report")));
    tokio::task::yield_now().await;
    assert_eq!(report_pool.in_flight(), 1);
    release.notify_waiters();
    assert_eq!(later.await.unwrap().unwrap().status(), StatusCode::OK);
}
