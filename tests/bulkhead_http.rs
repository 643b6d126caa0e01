//! A bulkhead in an axum app: a slow route fills its own pool and answers 503, while a fast
//! route keeps answering at once.

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body, error_handling::HandleErrorLayer, http::StatusCode, routing::get};
use http::Request;
use tokio::{sync::Notify, time::Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_patterns::{bulkhead::BulkheadLayer, http::handle_error};

#[tokio::test(start_paused = true)]
async fn a_slow_route_cannot_starve_a_fast_one() {
    let release = Arc::new(Notify::new());
    let slow_pool = BulkheadLayer::builder("reports")
        .max_concurrent(2)
        .build()
        .unwrap();
    let pool = slow_pool.handle();
    let app = Router::new()
        .route(
            "/report",
            get({
                let release = release.clone();
                move || async move {
                    release.notified().await;
                    "report"
                }
            })
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(slow_pool),
            ),
        )
        .route("/health", get(|| async { "ok" }));
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();

    let stuck: Vec<_> = (0..2)
        .map(|_| tokio::spawn(app.clone().oneshot(get("/report"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(pool.in_flight(), 2);

    let full = app.clone().oneshot(get("/report")).await.unwrap();
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);

    let start = Instant::now();
    for _ in 0..50 {
        let res = app.clone().oneshot(get("/health")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the fast route never waited"
    );

    release.notify_waiters();
    for s in stuck {
        assert_eq!(s.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(pool.in_flight(), 0);
}
