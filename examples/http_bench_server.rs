//! The server `scripts/bench-http` loads: axum's hello world, bare or behind a resilience
//! stack. Not a benchmark by itself.
//!
//! `cargo run --release --example http_bench_server --features full -- <mode> <port> [requests]`
//! (with `requests`, the server exits after answering that many: for counting instructions per
//! request under callgrind), with
//! `<mode>` one of:
//! - `plain`: axum, one route answering "hello";
//! - `tower_patterns`: the same route behind this crate's stack, outermost first: error
//!   mapping, body replay, retry (HTTP policy, static), circuit breaker, timeout, bulkhead;
//! - `tower_timeout`, `tower_patterns_no_retry`: for attributing the stack's cost (tower's
//!   `Timeout` alone; our stack without body replay and retry);
//! - `tower_resilience`: behind tower-resilience 0.13's circuit breaker, bulkhead and time
//!   limiter (its retry needs `Clone` requests, which `Request<Body>` is not), with axum's
//!   error handling.
//!
//! One Tokio worker thread, so that `scripts/bench-http` can pin the server to one core and the
//! load generator to the other.
#![allow(clippy::print_stdout, reason = "the example reports where it listens")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    error_handling::HandleErrorLayer,
    routing::{Route, get},
};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_patterns::{
    BoxError,
    breaker::CircuitBreakerLayer,
    bulkhead::BulkheadLayer,
    http::handle_error,
    retry::{ReplayBodyLayer, RetryPolicy},
};

async fn hello() -> &'static str {
    "hello"
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "plain".into());
    let port: u16 = args.next().unwrap_or_else(|| "3000".into()).parse()?;
    let exit_after: Option<u64> = args.next().map(|n| n.parse()).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let routes = Router::new().route("/", get(hello));
        let app: Router = match mode.as_str() {
            "plain" => routes,
            "tower_patterns" => routes.layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(ReplayBodyLayer::new(64 * 1024))
                    .layer(RetryPolicy::builder("bench").http().build()?.leak().layer())
                    .layer(CircuitBreakerLayer::builder("bench").build()?)
                    .timeout(Duration::from_secs(5))
                    .layer(
                        BulkheadLayer::builder("bench")
                            .max_concurrent(1_024)
                            .build()?,
                    ),
            ),
            // For attributing the stack's cost: tower's own timeout alone, and our stack
            // without the body replay and retry.
            "tower_timeout" => routes.layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .timeout(Duration::from_secs(5)),
            ),
            "tower_patterns_no_retry" => routes.layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(CircuitBreakerLayer::builder("bench").build()?)
                    .timeout(Duration::from_secs(5))
                    .layer(
                        BulkheadLayer::builder("bench")
                            .max_concurrent(1_024)
                            .build()?,
                    ),
            ),
            "tower_resilience" => {
                use tower_resilience::{bulkhead, circuitbreaker, timelimiter};
                let cb = circuitbreaker::CircuitBreakerLayer::builder().build()?;
                let pool = bulkhead::BulkheadLayer::builder()
                    .max_concurrent_calls(1_024)
                    .build()?;
                let limit = timelimiter::TimeLimiterLayer::builder()
                    .timeout_duration(Duration::from_secs(5))
                    .build();
                let stack = tower::layer::layer_fn(move |route: Route| {
                    let svc = cb.layer(pool.layer(limit.layer(route)));
                    ServiceExt::<axum::extract::Request>::map_err(svc, BoxError::from)
                });
                routes.layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorLayer::new(handle_error))
                        .layer(stack),
                )
            }
            other => return Err(format!("unknown mode {other}").into()),
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on 127.0.0.1:{port} ({mode})");
        let Some(n) = exit_after else {
            axum::serve(listener, app).await?;
            return Ok(());
        };
        // Count requests outside everything else, and stop after the n-th answer.
        let done = Arc::new(tokio::sync::Notify::new());
        let (answered, d) = (Arc::new(AtomicU64::new(0)), done.clone());
        let app = app.layer(axum::middleware::map_response(
            move |res: axum::response::Response| {
                let (answered, d) = (answered.clone(), d.clone());
                async move {
                    if answered.fetch_add(1, Ordering::SeqCst) + 1 == n {
                        d.notify_one();
                    }
                    res
                }
            },
        ));
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { done.notified().await })
            .await?;
        Ok::<_, BoxError>(())
    })?;
    Ok(())
}
