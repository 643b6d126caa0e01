//! Upstreams and a gateway over real HTTP on 127.0.0.1, and a client.
#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::IntoResponse,
    routing::any,
};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};
use tower_patterns_gateway::{Gateway, GatewayConfig};

/// A test upstream: echoes requests as JSON (`port`, `method`, `uri`, `headers`, `body_len`);
/// `/status/{code}` answers that status, `/slow/{ms}` answers after that many milliseconds,
/// and `fail_with` makes every answer that status.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    fail_with: Arc<AtomicU16>,
}

#[derive(Clone)]
struct Ctx {
    port: u16,
    hits: Arc<AtomicU64>,
    fail_with: Arc<AtomicU16>,
}

async fn echo(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    ctx.hits.fetch_add(1, Ordering::SeqCst);
    let fail = ctx.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return StatusCode::from_u16(fail).unwrap().into_response();
    }
    let path = uri.path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return (
            StatusCode::from_u16(code).unwrap(),
            Json(json!({ "port": ctx.port })),
        )
            .into_response();
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
    }
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::from(v.to_str().unwrap_or("?")),
            )
        })
        .collect();
    (
        [
            ("server", "test-upstream"),
            ("x-upstream-secret", "internal"),
        ],
        Json(json!({
            "port": ctx.port,
            "method": method.as_str(),
            "uri": uri.to_string(),
            "headers": headers,
            "body_len": body.len(),
        })),
    )
        .into_response()
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let fail_with = Arc::new(AtomicU16::new(0));
        let ctx = Ctx {
            port: addr.port(),
            hits: hits.clone(),
            fail_with: fail_with.clone(),
        };
        let app = Router::new().fallback(any(echo)).with_state(ctx);
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            hits,
            fail_with,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every answer from now on has `status` (0: back to normal).
    pub fn fail_with(&self, status: u16) {
        self.fail_with.store(status, Ordering::SeqCst);
    }
}

/// Waits until `done` holds, polling every 5 ms: for a state reached over real sockets (a
/// request has arrived, a counter moved), where a fixed sleep is too short on a busy machine.
/// Panics naming `what` after 10 s.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An address where nothing listens (bound, then closed).
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A gateway serving a configuration file in a temporary directory.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestGateway {
    pub async fn start(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, toml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> Self {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        let gateway = Gateway::builder("test").config_file(&path).build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut rx) = watch::channel(false);
        let served = tokio::spawn(gateway.clone().serve(listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        Self {
            addr,
            gateway,
            dir,
            stop,
            served,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The handle of the part named `name` (`test.<group>` for a group's parts), of `pattern`.
    pub fn handle(
        &self,
        pattern: &str,
        name: &str,
    ) -> std::sync::Arc<dyn tower_patterns_core::observe::StateHandle> {
        self.gateway
            .handles()
            .into_iter()
            .find(|h| h.pattern() == pattern && h.name() == name)
            .unwrap_or_else(|| panic!("no {pattern} handle named {name}"))
    }

    /// Replaces the config file at once (written aside, then renamed over it), so the
    /// gateway's poller never reads a half-written or empty file.
    pub fn rewrite(&self, toml: &str) {
        let aside = self.dir.path().join("gateway.toml.new");
        std::fs::write(&aside, toml).unwrap();
        std::fs::rename(&aside, self.dir.path().join("gateway.toml")).unwrap();
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.served.await.unwrap().unwrap();
    }
}

/// Parses a configuration (for in-process use).
pub fn parse(toml: &str) -> GatewayConfig {
    GatewayConfig::parse(toml, "test.toml").unwrap()
}

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new())
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The header the upstream saw, from its echo.
    pub fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// GET `url` with `headers`.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Full::default()).unwrap()).await
}

/// The SHA-256 of an API key, in hex, as the configuration holds it.
pub fn key_hash(key: &str) -> String {
    tower_patterns_tenant::hash_api_key(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An address that accepts connections and never answers.
pub async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}
