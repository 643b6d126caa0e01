//! The edge: what every request meets before routing (a request id, a trace span, the
//! server-wide load shed, a request timeout, a body limit) and the server that speaks HTTP/1 and
//! HTTP/2 on one port, cuts off clients slow to send their headers, and drains on shutdown.

use std::{future::Future, time::Duration};

use axum::{Router, body::Body, extract::DefaultBodyLimit, http::Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tower::{Layer, ServiceBuilder};
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer},
};
use tower_patterns::{
    BoxError, bulkhead::BulkheadLayer, http::ErrorResponseLayer, tenant::TenantId,
};
use tracing::Level;

use crate::{App, config::Config};

/// The largest request body a route reads (JSON commands are far smaller): 64 KiB, then 413.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;
/// The most bytes of request line and headers an HTTP/1 client may send, then 431.
pub(crate) const HEADER_LIMIT: usize = 32 * 1024;

/// The server-wide bulkhead: at most `--max-inflight` requests in flight, the next shed at once
/// with 503 and `Retry-After`, so a flood queues nowhere.
pub(crate) fn shed(cfg: &Config) -> Result<BulkheadLayer, BoxError> {
    Ok(BulkheadLayer::builder("edge")
        .max_concurrent(cfg.max_inflight)
        .build()?)
}

/// New request ids are UUIDv7: unique, and sorted by time in logs. A client that sends its own
/// `x-request-id` keeps it (tower-http's `SetRequestId` does not replace one), so a request
/// is traced under one id across services.
#[derive(Clone, Copy, Debug)]
struct UuidV7;

impl MakeRequestId for UuidV7 {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::now_v7().hyphenated().to_string();
        id.parse().ok().map(RequestId::new)
    }
}

/// Records the tenant the tenant layer found in the request's span.
pub(crate) fn record_tenant(req: Request<Body>) -> Request<Body> {
    if let Some(tenant) = TenantId::of(&req) {
        tracing::Span::current().record("tenant", tenant.as_str());
    }
    req
}

/// The span of one request: method, path (never the query, which may carry a token), the
/// request id, and the tenant once known.
fn span<B>(req: &Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = req.uri().path(),
        id,
        tenant = tracing::field::Empty,
    )
}

/// Serves `router` behind the edge stack on `listener` until `shutdown`, then stops accepting,
/// lets the requests in flight finish for up to `--drain`, and returns.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    app: &App,
    cfg: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let sensitive = [
        http::header::AUTHORIZATION,
        http::header::COOKIE,
        http::HeaderName::from_static(crate::API_KEY_HEADER),
    ];
    let svc = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(UuidV7))
        .layer(SetSensitiveRequestHeadersLayer::new(sensitive))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(span)
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(ErrorResponseLayer::new())
        .layer(app.edge_layer.clone())
        .timeout(cfg.request_timeout)
        .service(DefaultBodyLimit::max(BODY_LIMIT).layer(router));
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(HEADER_LIMIT);
    server
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HEADER_LIMIT as u32);
    let graceful = GracefulShutdown::new();
    // The connections' tasks, reaped as they end, so that those left when the drain time is
    // over can be closed.
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = server
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc.clone()))
                        .into_owned();
                    let conn = graceful.watch(conn);
                    connections.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(drain = ?cfg.drain, "shutting down: no new connections, finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every connection closed"),
        () = tokio::time::sleep(cfg.drain) => {
            tracing::warn!(left = connections.len(), "drain time over: closing the connections left");
            connections.abort_all();
        }
    }
    Ok(())
}
