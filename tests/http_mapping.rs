//! The HTTP mapping of core, used as users will: from axum's `HandleErrorLayer` and, for plain
//! hyper services, through `ErrorResponseLayer`.

use std::{convert::Infallible, time::Duration};

use axum::{Router, body::Body, error_handling::HandleErrorLayer, routing::get};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_patterns::{
    BoxError, Rejected, RejectionKind,
    http::{ErrorResponseLayer, handle_error},
};

fn rejecting(kind: RejectionKind, after: Duration) -> Router {
    Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(handle_error))
            .map_result(move |_: Result<axum::response::Response, Infallible>| {
                Err::<axum::response::Response, BoxError>(
                    Rejected::new(kind)
                        .with_name("inner-dependency")
                        .with_retry_after(after)
                        .into(),
                )
            }),
    )
}

async fn body_text(res: Response<Body>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn axum_handle_error_layer_maps_rejections() {
    for (kind, status) in [
        (RejectionKind::CircuitOpen, StatusCode::SERVICE_UNAVAILABLE),
        (RejectionKind::BulkheadFull, StatusCode::SERVICE_UNAVAILABLE),
        (RejectionKind::LoadShed, StatusCode::SERVICE_UNAVAILABLE),
        (RejectionKind::RateLimited, StatusCode::TOO_MANY_REQUESTS),
        (RejectionKind::QuotaExceeded, StatusCode::TOO_MANY_REQUESTS),
    ] {
        let res = rejecting(kind, Duration::from_millis(2_500))
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{kind}");
        assert_eq!(
            res.headers()[header::RETRY_AFTER],
            "3",
            "{kind}: 2.5 s rounds up"
        );
        let text = body_text(res).await;
        assert_eq!(text, kind.as_str());
        assert!(!text.contains("inner-dependency"));
    }
}

#[tokio::test(start_paused = true)]
async fn axum_timeout_is_a_504() {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .timeout(Duration::from_secs(1)),
        );
    let res = app
        .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body_text(res).await, "request timed out");
}

#[tokio::test]
async fn plain_service_through_the_error_response_layer() {
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .load_shed()
        .service(service_fn(|req: Request<String>| async move {
            match req.uri().path() {
                "/ok" => Ok(Response::new(String::from("fine"))),
                _ => Err(BoxError::from("connection to 10.0.0.7:5432 refused")),
            }
        }));

    let ok = svc
        .clone()
        .oneshot(Request::get("/ok").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.body(), "fine");

    let failed = svc
        .oneshot(Request::get("/db").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.body(), "internal server error");
}

#[tokio::test]
async fn readiness_errors_are_answered_on_the_next_call() {
    #[derive(Clone)]
    struct NeverReady;
    impl tower::Service<Request<String>> for NeverReady {
        type Response = Response<String>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<String>, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Err(Rejected::new(RejectionKind::BulkheadFull).into()))
        }
        fn call(&mut self, _: Request<String>) -> Self::Future {
            unreachable!("never called: it is never ready")
        }
    }
    let res = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(NeverReady)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.body(), "bulkhead full");
}
