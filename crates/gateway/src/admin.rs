//! The admin routes: `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::Ordering;

use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::{Gateway, GatewayBody};

fn text(status: StatusCode, body: &'static str) -> Response<GatewayBody> {
    let mut res = Response::new(GatewayBody::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn answer<B>(gateway: &Gateway, req: &Request<B>) -> Response<GatewayBody> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if gateway.shared.draining.load(Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/metrics" => {
            let token = gateway.shared.current.load().settings.admin_token.clone();
            if let Some(token) = token {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if !same(given.as_bytes(), token.as_bytes()) {
                    let mut res = text(StatusCode::UNAUTHORIZED, "admin token required\n");
                    res.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return res;
                }
            }
            // Publish the counts kept in atomics before rendering.
            for handle in gateway.handles() {
                let _ = handle.report();
            }
            metrics_text(gateway)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(feature = "prometheus")]
fn metrics_text(gateway: &Gateway) -> Response<GatewayBody> {
    match &gateway.shared.prometheus {
        Some(handle) => {
            let mut res = Response::new(GatewayBody::from(handle.render()));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        None => text(StatusCode::NOT_FOUND, "no metrics recorder\n"),
    }
}

#[cfg(not(feature = "prometheus"))]
fn metrics_text(_: &Gateway) -> Response<GatewayBody> {
    text(StatusCode::NOT_FOUND, "no metrics recorder\n")
}
