//! An axum service whose layers fail in every way tower-patterns maps to HTTP.
//!
//! ```text
//! cargo run --example error_mapping            # listens on 127.0.0.1:3000 (TP_ADDR to change)
//! curl -i 127.0.0.1:3000/          # 200 hello
//! curl -i 127.0.0.1:3000/slow      # 504 after the 1 s timeout
//! curl -i 127.0.0.1:3000/limited   # 429 with Retry-After: 2
//! curl -i 127.0.0.1:3000/shed      # 503 with Retry-After: 30
//! ```

use std::time::Duration;

use axum::{Router, error_handling::HandleErrorLayer, routing::get};
use tower::ServiceBuilder;
use tower_patterns::{BoxError, Rejected, RejectionKind, http::handle_error};

fn rejecting(kind: RejectionKind, after: Duration) -> Router {
    Router::new()
        .route("/", get(|| async { "unreachable" }))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .map_result(
                    move |_: Result<axum::response::Response, std::convert::Infallible>| {
                        Err::<axum::response::Response, BoxError>(
                            Rejected::new(kind).with_retry_after(after).into(),
                        )
                    },
                ),
        )
}

/// The routes: one that answers, one too slow for its timeout, one rate limited, one shed.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late\n"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .timeout(Duration::from_secs(1)),
        )
        .nest(
            "/limited",
            rejecting(RejectionKind::RateLimited, Duration::from_millis(1_200)),
        )
        .nest(
            "/shed",
            rejecting(RejectionKind::LoadShed, Duration::from_secs(30)),
        )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let app = router();
    let addr = std::env::var("TP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
