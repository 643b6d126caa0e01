//! Three small upstream services on loopback for the sample configuration: users (:9101),
//! orders (:9102) and echo (:9103). Each answers JSON and shows the headers the gateway set.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{Path, Query},
    http::{HeaderMap, Method, Uri},
    response::IntoResponse,
    routing::{any, get},
};
use serde_json::{Value, json};

fn seen(headers: &HeaderMap) -> Value {
    let pick = [
        "x-consumer-id",
        "x-tenant-id",
        "x-request-id",
        "x-gateway",
        "x-forwarded-for",
        "x-version-routed",
        "cookie",
    ];
    let mut out = serde_json::Map::new();
    for name in pick {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.to_owned(), Value::from(v));
        }
    }
    Value::Object(out)
}

async fn user(Path(id): Path<String>, headers: HeaderMap) -> impl IntoResponse {
    (
        [("server", "demo-users")],
        Json(json!({ "id": id, "name": format!("User {id}"), "seen_headers": seen(&headers) })),
    )
}

async fn orders(Query(q): Query<std::collections::HashMap<String, String>>) -> Json<Value> {
    let user = q.get("user").cloned().unwrap_or_default();
    Json(
        json!({ "user": user, "orders": [{ "id": "o-1", "total_cents": 1250 }, { "id": "o-2", "total_cents": 830 }] }),
    )
}

async fn order(Path(id): Path<String>, headers: HeaderMap) -> Json<Value> {
    Json(json!({ "id": id, "status": "shipped", "seen_headers": seen(&headers) }))
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> Json<Value> {
    Json(
        json!({ "method": method.as_str(), "path": uri.to_string(), "seen_headers": seen(&headers) }),
    )
}

async fn serve(addr: SocketAddr, app: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// Starts the three demo upstreams.
pub(crate) async fn start() -> std::io::Result<()> {
    serve(
        ([127, 0, 0, 1], 9101).into(),
        Router::new().route("/v2/users/{id}", get(user).put(user)),
    )
    .await?;
    serve(
        ([127, 0, 0, 1], 9102).into(),
        Router::new()
            .route("/orders", get(orders))
            .route("/orders/{id}", get(order)),
    )
    .await?;
    serve(
        ([127, 0, 0, 1], 9103).into(),
        Router::new().fallback(any(echo)),
    )
    .await?;
    Ok(())
}
