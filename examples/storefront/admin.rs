//! The admin routes, outside the tenant layer and behind the admin token: every pattern's
//! report as JSON, Prometheus metrics, and the switches of the chaos layers.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tower_patterns::{
    chaos::{ChaosHandle, Fault},
    observe::Report,
};

use crate::{
    App,
    payments::Provider,
    routes::{ApiError, JsonBody, Params},
};

/// The admin routes, each behind [`require_token`].
pub(crate) fn routes(app: App) -> Router<App> {
    Router::new()
        .route("/admin", get(crate::status::page))
        .route("/admin/patterns", get(patterns))
        .route("/admin/provider/{state}", post(provider))
        .route("/admin/chaos/{name}", post(chaos))
        .route("/admin/cache/catalog/invalidate", post(invalidate_catalog))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app, require_token))
}

/// A random token: 128 bits from the operating system, as 32 hex digits.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness from the OS: a token nobody can guess is better than a known one, so
        // refuse every admin call instead (no token of 32 hex digits contains a 'z').
        return "z".repeat(32);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares in time that depends on the lengths only, not on where the first difference is.
/// Written here rather than taken from a crate: ten lines, and `subtle` is not among ours.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request presents: `Authorization: Bearer <token>`, else `?token=<token>` (what
/// a browser can send to the status page's polling). Logs never include queries.
fn presented<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return crate::auth::bearer_token(value.to_str().ok()?);
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// 401 with a fixed phrase unless the request presents the admin token.
pub(crate) async fn require_token(State(app): State<App>, req: Request, next: Next) -> Response {
    match presented(req.headers(), req.uri().query()) {
        Some(token) if same(token.as_bytes(), app.admin_token.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "admin token required",
        )
            .into_response(),
    }
}

/// Every handle's report, and the payment breaker's last transitions:
/// `{"patterns": [report, ...], "transitions": [...]}`.
async fn patterns(State(app): State<App>) -> Response {
    let reports: Vec<Report> = app.handles.iter().map(|h| h.report()).collect();
    Json(serde_json::json!({ "patterns": reports, "transitions": app.transitions.list() }))
        .into_response()
}

/// Prometheus text. Reports first: layers that count for their handles (the caches) publish
/// their counts when they report.
async fn metrics(State(app): State<App>) -> Response {
    for handle in app.handles.iter() {
        let _ = handle.report();
    }
    match &app.prometheus {
        Some(prometheus) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            prometheus.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder").into_response(),
    }
}

/// Empties the catalog cache: the next read of each tenant loads again (once, however many
/// ask at the same time).
async fn invalidate_catalog(State(app): State<App>) -> Result<String, ApiError> {
    (app.invalidate_catalog)()
        .await
        .map_err(|e| ApiError::Unavailable("cache unavailable", e))?;
    Ok("catalog cache emptied\n".to_owned())
}

/// Puts the simulated payment provider in a state: `up`, `down` (every charge fails) or `slow`
/// (every charge takes a second).
async fn provider(
    State(app): State<App>,
    Params(state): Params<String>,
) -> Result<String, ApiError> {
    let state = Provider::parse(&state).ok_or(ApiError::NotFound("no such provider state"))?;
    // The states' faults are valid plans; a refusal would be a bug, answered as a 503.
    state
        .apply(&app.provider)
        .map_err(|e| ApiError::Unavailable("payment provider switch failed", e))?;
    Ok(format!("payment provider {}\n", state.as_str()))
}

/// One fault of a chaos plan, as JSON: `{"kind": "latency", "ms": 300, "rate": 0.5}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    kind: String,
    #[serde(default = "one")]
    rate: f64,
    ms: Option<u64>,
    status: Option<u16>,
}

fn one() -> f64 {
    1.0
}

/// A chaos plan: `{"faults": [...], "enabled": true}`; no faults clears it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanSpec {
    #[serde(default)]
    faults: Vec<FaultSpec>,
    enabled: Option<bool>,
}

impl FaultSpec {
    fn fault(&self) -> Result<Fault, ApiError> {
        const BAD: ApiError = ApiError::BadRequest(
            "a fault is {kind: latency|status|error|hang|abort, rate, ms, status}",
        );
        let ms = |ms: Option<u64>| ms.filter(|ms| *ms <= 600_000).map(Duration::from_millis);
        let fault = match (self.kind.as_str(), self.ms, self.status) {
            ("latency", Some(_), None) => Fault::latency(ms(self.ms).ok_or(BAD)?),
            ("status", None, Some(code)) => Fault::status(
                StatusCode::from_u16(code)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .ok_or(BAD)?,
            ),
            ("error", None, None) => Fault::error(|| "fault injected".into()),
            ("hang", None, None) => Fault::hang(),
            ("abort", None, None) => Fault::abort(),
            ("abort", Some(_), None) => Fault::abort_after(ms(self.ms).ok_or(BAD)?),
            _ => return Err(BAD),
        };
        Ok(fault.rate(self.rate))
    }
}

/// Replaces the faults of the chaos layer `name`: `payment-provider` (the payment client's
/// provider), `orders-projection` (the orders' read models' reads of their event stores) or
/// `catalog-db` (the catalog's database reads).
async fn chaos(
    State(app): State<App>,
    Params(name): Params<String>,
    JsonBody(plan): JsonBody<PlanSpec>,
) -> Result<String, ApiError> {
    let handle: &ChaosHandle = match name.as_str() {
        "payment-provider" => &app.provider,
        "orders-projection" => &app.lag,
        "catalog-db" => &app.catalog_db,
        _ => return Err(ApiError::NotFound("no such chaos layer")),
    };
    // A projection's read that hangs would hang it for good: it takes latency only.
    if name == "orders-projection" && plan.faults.iter().any(|f| f.kind != "latency") {
        return Err(ApiError::BadRequest(
            "the projection's reads take latency faults only",
        ));
    }
    let faults = plan
        .faults
        .iter()
        .map(FaultSpec::fault)
        .collect::<Result<Vec<_>, _>>()?;
    let count = faults.len();
    handle
        .set(faults)
        .map_err(|_| ApiError::BadRequest("rates must be 0 to 1 and add up to at most 1"))?;
    match plan.enabled {
        Some(false) => handle.disable(),
        Some(true) => handle.enable(),
        None => {}
    }
    tracing::info!(layer = %name, faults = count, enabled = handle.is_enabled(), "chaos plan set");
    Ok(format!(
        "chaos {name}: {count} fault(s), {}\n",
        if handle.is_active() { "on" } else { "off" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
        let token = random_token();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, random_token());
    }

    #[test]
    fn the_token_comes_from_the_header_first() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers, Some("a=1&token=t1")), Some("t1"));
        assert_eq!(presented(&headers, Some("a=1")), None);
        assert_eq!(presented(&headers, None), None);
        headers.insert(header::AUTHORIZATION, "Bearer t2".parse().unwrap());
        assert_eq!(presented(&headers, Some("token=t1")), Some("t2"));
        headers.insert(header::AUTHORIZATION, "Basic t2".parse().unwrap());
        assert_eq!(
            presented(&headers, Some("token=t1")),
            None,
            "a wrong scheme is no token"
        );
    }
}
