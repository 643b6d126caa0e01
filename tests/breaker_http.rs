//! The circuit breaker in an axum app, as users will stack it: `HandleErrorLayer` turns the
//! open circuit into a 503 with `Retry-After`, 5xx trip it, 4xx do not.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use axum::{
    Router, body::Body, error_handling::HandleErrorLayer, extract::State, http::StatusCode,
    routing::get,
};
use http::{Request, header};
use tower::{ServiceBuilder, ServiceExt};
use tower_patterns::{
    breaker::{CircuitBreakerLayer, State as CircuitState},
    classify::TowerHttp,
    http::handle_error,
};

#[tokio::test(start_paused = true)]
async fn open_circuit_is_a_503_with_retry_after() {
    let status = Arc::new(AtomicU16::new(500));
    let breaker = CircuitBreakerLayer::builder("catalog")
        .count_window(4)
        .minimum_calls(4)
        .open_duration(Duration::from_millis(29_500))
        .classifier(TowerHttp::server_errors().ignore_status(|s| s.is_client_error()))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let app = Router::new()
        .route(
            "/items",
            get(|State(status): State<Arc<AtomicU16>>| async move {
                StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
            }),
        )
        .with_state(status.clone())
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(breaker),
        );
    let get = || Request::get("/items").body(Body::empty()).unwrap();

    status.store(404, Ordering::SeqCst);
    for _ in 0..10 {
        let res = app.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "4xx count neither way"
    );

    status.store(500, Ordering::SeqCst);
    for _ in 0..4 {
        let res = app.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(handle.state(), CircuitState::Open);

    let res = app.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::RETRY_AFTER], "30", "29.5 s rounds up");

    status.store(200, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(29_500)).await;
    for _ in 0..5 {
        let res = app.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(handle.state(), CircuitState::Closed, "five probes passed");
}
