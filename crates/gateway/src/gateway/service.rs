//! One request through the gateway: sanitise, identify, route, read the body within its
//! limits, call the route's stack (auth, limit, transforms, the upstream group), apply the
//! response rules.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body::Body;
use tower::ServiceExt;
use tower_patterns_core::{BoxError, http::error_response};
use tower_service::Service;
use tracing::Instrument;

use super::Gateway;
use crate::{
    GatewayBody,
    compile::{Compiled, Settings, Strip},
    error::{GatewayError, Kind},
    limits::ClientAddr,
    route::{Miss, RouteParams},
};

/// Hop-by-hop headers, never forwarded (RFC 9110 §7.6.1), besides those `Connection` names.
/// Names made once, not parsed per request.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];
/// Headers that say where a request came from or how to treat its body, which only the
/// gateway may set: removed from every request before it is routed.
const CLIENT_MUST_NOT_SET: [HeaderName; 4] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    // The gateway reads the body before it calls; the upstream has no continue to give.
    header::EXPECT,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        for name in &named {
            headers.remove(name.as_str());
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Removes hop-by-hop headers and every header a client must not set (the identity headers
/// the gateway sets after authentication, and the configured names and prefixes).
fn sanitize(headers: &mut HeaderMap, settings: &Settings) {
    strip_hop_by_hop(headers);
    for name in &CLIENT_MUST_NOT_SET {
        headers.remove(name);
    }
    let mut prefixed = Vec::new();
    for strip in &settings.strip {
        match strip {
            Strip::Name(name) => {
                headers.remove(name);
            }
            Strip::Prefix(prefix) => prefixed.extend(
                headers
                    .keys()
                    .filter(|k| k.as_str().starts_with(prefix.as_str()))
                    .cloned(),
            ),
        }
    }
    for name in prefixed {
        headers.remove(name);
    }
}

/// A path a gateway must not route or pass on: dot segments (`/a/../b`), empty segments
/// (`//`), backslashes, or encoded dots, slashes and backslashes (`%2e`, `%2f`, `%5c`), each a
/// way to reach an upstream path that a route's prefix did not allow (an upstream that
/// normalises paths would serve `/public/../admin` as `/admin`).
fn unsafe_path(path: &str) -> bool {
    if path.contains("//") || path.contains('\\') {
        return true;
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return true;
    }
    let bytes = path.as_bytes();
    bytes.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c')
            )
    })
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

fn process_prefix() -> u64 {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// The request's id: the client's when it is sane (1 to 128 visible ASCII characters), or a
/// new one (a per-process random prefix and a counter: unique without a clock or a lock).
fn request_id(headers: &mut HeaderMap, settings: &Settings) -> HeaderValue {
    if let Some(v) = headers.get(&settings.request_id)
        && (1..=128).contains(&v.len())
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let n = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    let mut text = [0u8; 32];
    for (i, word) in [process_prefix(), n].into_iter().enumerate() {
        for (j, digit) in text[16 * i..16 * (i + 1)].iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[(word >> (60 - 4 * j) & 0xf) as usize];
        }
    }
    let id = HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"));
    headers.insert(settings.request_id.clone(), id.clone());
    id
}

fn class(status: http::StatusCode) -> usize {
    match status.as_u16() {
        200..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        _ => 3,
    }
}

fn refusal(kind: Kind, detail: &'static str) -> Response<GatewayBody> {
    error_response(&GatewayError::new(kind, detail))
}

/// The client of a connection: its address, and that address as the `X-Forwarded-For` value
/// (made once per connection).
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    addr: SocketAddr,
    ip: HeaderValue,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }
}

impl Gateway {
    /// Serves one request from `peer` (when known).
    pub(crate) fn serve_one<B>(
        &self,
        req: Request<B>,
        peer: Option<Peer>,
    ) -> impl Future<Output = Response<GatewayBody>> + Send + use<B>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let compiled = self.shared.current.load_full();
        handle(compiled, req, peer)
    }
}

async fn handle<B>(
    compiled: std::sync::Arc<Compiled>,
    req: Request<B>,
    peer: Option<Peer>,
) -> Response<GatewayBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let settings = &compiled.settings;
    let (mut parts, body) = req.into_parts();
    sanitize(&mut parts.headers, settings);
    let id = request_id(&mut parts.headers, settings);
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or_default(),
        method = %parts.method,
        path = parts.uri.path(),
        route = tracing::field::Empty,
    );
    // An absolute-form target's authority is the host (RFC 9112 §3.2.2): the Host header sent
    // on is made to agree with the one routed on.
    // Only host and port: a user-info part (`user:pass@`) is never passed on.
    if let Some(host) = parts.uri.host() {
        let value = match parts.uri.port_u16() {
            Some(port) => HeaderValue::try_from(format!("{host}:{port}")),
            None => HeaderValue::try_from(host),
        };
        if let Ok(value) = value {
            parts.headers.insert(header::HOST, value);
        }
    }
    let head = Request::from_parts(parts, ());
    let found = if unsafe_path(head.uri().path()) {
        Err(None)
    } else {
        compiled.router.find(&head).map_err(Some)
    };
    let (mut parts, ()) = head.into_parts();
    let mut res = async {
        let (index, params) = match found {
            Ok(found) => found,
            Err(None) => return refusal(Kind::BadPath, "bad path"),
            Err(Some(Miss::NotFound)) => return refusal(Kind::NoRoute, "no route"),
            Err(Some(Miss::MethodNotAllowed)) => {
                return refusal(Kind::MethodNotAllowed, "method not allowed");
            }
        };
        let route = &compiled.routes[index];
        tracing::Span::current().record("route", &*route.name);
        // A length over the cap is refused before anything else; the body itself is read by
        // the route's stack, after authentication and the limit.
        if body.size_hint().lower() > settings.max_body {
            return refusal(Kind::BodyTooLarge, "content-length over the cap");
        }
        if let Some(peer) = peer {
            parts.extensions.insert(ClientAddr(peer.addr));
            parts.headers.insert(X_FORWARDED_FOR, peer.ip);
        }
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if params != RouteParams::default() {
            parts.extensions.insert(params);
        }
        let req = Request::from_parts(parts, GatewayBody::new(body));
        let mut res = match route.service.clone().oneshot(req).await {
            Ok(res) => res,
            Err(e) => error_response(&*e),
        };
        strip_hop_by_hop(res.headers_mut());
        route.response.apply(res.headers_mut());
        route.counts.by_class[class(res.status())].fetch_add(1, Ordering::Relaxed);
        res
    }
    .instrument(span)
    .await;
    res.headers_mut().insert(settings.request_id.clone(), id);
    res
}

/// The future of [`Gateway`]'s `call`.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Response<GatewayBody>> + Send>>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl<B> Service<Request<B>> for Gateway
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// Serves `req`; the peer address, when a `ClientAddr` is in its extensions, is the
    /// client's.
    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let peer = req.extensions().get::<ClientAddr>().map(|a| Peer::new(a.0));
        ResponseFuture {
            inner: Box::pin(self.serve_one(req, peer)),
        }
    }
}
