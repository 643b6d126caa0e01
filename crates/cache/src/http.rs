//! An HTTP cache for GET and HEAD with the basics of RFC 9111, as a shared (server-side) cache.
//!
//! - **Storing**: only responses with explicit freshness (`s-maxage`, `max-age`, `Expires`) or,
//!   when a [default TTL](HttpCacheLayerBuilder::default_ttl) is set, heuristically cacheable
//!   statuses; never `no-store`, `private`, `Vary: *`, `Set-Cookie`, `206`, or a body whose
//!   size is unknown or above [`max_body`](HttpCacheLayerBuilder::max_body). A request carrying
//!   `Authorization` is answered from, and stored in, the cache only when the response says
//!   `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5).
//! - **Keys**: the tenant (from the request extensions, as for [`CacheLayer`](crate::CacheLayer)),
//!   the host and the path with query. `Vary` is enforced: each stored variant keeps the
//!   request headers it was chosen by, and is served only to requests that match them.
//! - **Freshness**: `s-maxage` over `max-age` over `Expires − Date`, minus the `Age` the origin
//!   sent; `no-cache` (in the response or the request) and `max-age=0` in the request make the
//!   cache revalidate. Stale responses are revalidated with `If-None-Match` / `If-Modified-Since`;
//!   a `304` from the origin refreshes the stored response. `stale-while-revalidate` and
//!   `stale-if-error` (RFC 5861) are honoured, bounded by their values.
//! - **Answers**: `Age` on every stored response served, `x-cache: HIT | MISS | STALE`, and `304
//!   Not Modified` to a client whose `If-None-Match` or `If-Modified-Since` matches a fresh
//!   entry. Concurrent misses for one URL make one origin request (the cache-aside layer's
//!   single flight); if the request that started it is dropped, the origin request goes on for
//!   the others. The waiting requests share its stored response, or its error (a
//!   [`LoadError`], or a stale copy within stale-if-error); a waiting request
//!   the stored response does not suit (other `Vary` values, or `Authorization` and a response
//!   not shared with it), or whose response was not stored, makes its own origin request.
//! - **Hits** are answered by a future that is ready at once (no allocation for the future;
//!   the answer's headers are copied from the stored ones).
//! - **Invalidation**: a successful `POST`, `PUT`, `PATCH` or `DELETE` drops the stored
//!   variants of its URL (RFC 9111 §4.4).
//!
//! Left out: `Content-Location`/`Location` invalidation, partial content, and a Redis tier for
//! HTTP responses (the stored form is in-process only).
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_patterns_cache::http::HttpCacheLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let origin = service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(
//!         Response::builder()
//!             .header("cache-control", "max-age=60")
//!             .body(Full::new(Bytes::from_static(b"catalog")))
//!             .unwrap(),
//!     )
//! });
//! let svc = HttpCacheLayer::builder("pages").build().unwrap().layer(origin);
//!
//! let get = || Request::get("http://shop.example/catalog").body(()).unwrap();
//! let first = svc.clone().oneshot(get()).await.unwrap();
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! let second = svc.clone().oneshot(get()).await.unwrap();
//! assert_eq!(second.headers()["x-cache"], "HIT");
//! assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "catalog");
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_util::{FutureExt as _, TryFutureExt as _, future::BoxFuture};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
    header::{self, AUTHORIZATION},
};
use http_body::Body;
use http_body_util::{BodyExt as _, Either, Full};
use tokio::{sync::oneshot, time::Instant};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_patterns_core::{BoxError, ConfigError, tenant::TenantId};
use tower_service::Service;

use crate::{
    Entry, ScopedKey,
    internal::{Count, Counters, Flights, LoadError},
    store::{MokaStore, Store},
};

/// The `x-cache` header this layer sets.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The body of a response from [`HttpCache`]: a stored body, or the origin's streamed through.
pub type HttpCacheBody<B> = Either<Full<Bytes>, B>;

// ---------------------------------------------------------------------------------------------
// Cache-Control

/// The directives of a `Cache-Control` header that this cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` (or `proxy-revalidate`).
    pub must_revalidate: bool,
    /// `stale-while-revalidate`, seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error`, seconds.
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` header of `headers`. Unknown directives are ignored; a
    /// malformed number makes its directive count as absent, except `max-age` and `s-maxage`,
    /// which then count as 0 (stale at once: the safe reading of RFC 9111 §4.2.1).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => cc.max_age = Some(secs().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(secs().unwrap_or(0)),
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    "stale-if-error" => cc.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        cc
    }
}

fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

// ---------------------------------------------------------------------------------------------
// What is stored

/// A stored response: one variant of a URL.
#[derive(Clone, Debug)]
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The request headers named by `Vary`, as the request that fetched this variant sent them.
    vary: VaryValues,
    /// Age the origin reported (the `Age` header) when it was received.
    initial_age: Duration,
    /// Freshness lifetime.
    lifetime: Duration,
    swr: Duration,
    sie: Duration,
    /// `no-cache`: revalidate before every use.
    no_cache: bool,
    /// `must-revalidate`: never serve stale, whatever the other directives say.
    must_revalidate: bool,
    /// May answer requests with `Authorization`.
    shareable_with_auth: bool,
}

impl Stored {
    fn matches(&self, req: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| req.get(name) == value.as_ref())
    }

    fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }
}

/// The request headers a variant was chosen by.
type VaryValues = Vec<(HeaderName, Option<HeaderValue>)>;

/// The variants stored for one URL (few: one per distinct set of `Vary` header values).
type Variants = Arc<Vec<Arc<Entry<Stored>>>>;

const MAX_VARIANTS: usize = 8;

// ---------------------------------------------------------------------------------------------
// The layer

/// An RFC 9111 cache for GET and HEAD; see the [module docs](self).
#[derive(Clone)]
pub struct HttpCacheLayer {
    shared: Arc<HttpShared>,
}

struct HttpShared {
    name: Arc<str>,
    store: MokaStore<String, Variants>,
    counters: Counters,
    max_body: usize,
    default_ttl: Option<Duration>,
    /// Origin requests in flight, one per URL: the cache-aside layer's single flight.
    flights: Flights<String, Fetched>,
}

/// What an origin request in flight leaves for the requests that waited on it.
#[derive(Clone)]
enum Fetched {
    /// The response was stored: it answers every waiting request it matches.
    Stored(Arc<Entry<Stored>>),
    /// The response was not stored: waiting requests make their own.
    NotStored,
    /// The origin answered with a server error while a stale copy could stand in for it
    /// (stale-if-error): not stored, and each request serves its stale copy if it has one.
    ServerError,
}

impl fmt::Debug for HttpCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("name", &self.shared.name)
            .field("max_body", &self.shared.max_body)
            .field("default_ttl", &self.shared.default_ttl)
            .finish_non_exhaustive()
    }
}

/// Builds an [`HttpCacheLayer`].
#[derive(Debug, Clone)]
pub struct HttpCacheLayerBuilder {
    name: Arc<str>,
    max_entries: u64,
    max_bytes: Option<u64>,
    max_body: usize,
    default_ttl: Option<Duration>,
}

impl HttpCacheLayer {
    /// A builder: 10,000 URLs, bodies up to 1 MiB, no heuristic freshness.
    pub fn builder(name: impl Into<Arc<str>>) -> HttpCacheLayerBuilder {
        HttpCacheLayerBuilder {
            name: name.into(),
            max_entries: 10_000,
            max_bytes: None,
            max_body: 1 << 20,
            default_ttl: None,
        }
    }

    /// Hits, misses and stale answers so far.
    pub fn stats(&self) -> HttpCacheStats {
        let c = &self.shared.counters;
        HttpCacheStats {
            hits: c.get(Count::Hit),
            misses: c.get(Count::Miss),
            stale: c.get(Count::Stale) + c.get(Count::StaleIfError),
            coalesced: c.get(Count::Coalesced),
            revalidated: c.get(Count::Refresh),
            bypassed: c.get(Count::Bypass),
        }
    }

    /// Origin requests in flight now: one per URL whose misses share it. A request leaves
    /// this count when it completes, or when every request waiting for it is dropped first.
    pub fn loads_in_flight(&self) -> usize {
        self.shared.flights.in_flight()
    }

    /// Drops every stored variant of `host` + `path_and_query` in `tenant`'s scope.
    pub fn purge(&self, tenant: Option<&TenantId>, host: &str, path_and_query: &str) {
        self.shared.store.evict(&ScopedKey::new(
            tenant.cloned(),
            format!("{host}{path_and_query}"),
        ));
    }
}

/// What an [`HttpCacheLayer`] has counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpCacheStats {
    /// Fresh stored responses served (304s to conditional requests included).
    pub hits: u64,
    /// Requests that went to the origin for want of a usable stored response.
    pub misses: u64,
    /// Stale responses served (stale-while-revalidate and stale-if-error).
    pub stale: u64,
    /// Requests that waited for another request's origin response.
    pub coalesced: u64,
    /// Stored responses revalidated with the origin (answered 304).
    pub revalidated: u64,
    /// Requests not eligible for caching (methods, `no-store`, `Authorization`).
    pub bypassed: u64,
}

impl HttpCacheLayerBuilder {
    /// The most URLs stored (default 10,000).
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Bounds the store by total body bytes instead of URLs.
    #[must_use]
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// The largest body stored (default 1 MiB); larger responses stream through.
    #[must_use]
    pub fn max_body(mut self, n: usize) -> Self {
        self.max_body = n;
        self
    }

    /// Freshness for responses that give none, with a cacheable status (RFC 9111 §4.2.2
    /// heuristic freshness; default none: such responses are not stored).
    #[must_use]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// An empty name, a zero bound or a zero default TTL.
    pub fn build(self) -> Result<HttpCacheLayer, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.max_entries == 0 || self.max_bytes == Some(0) {
            return Err(ConfigError::new("max_entries", "must be at least 1"));
        }
        if self.default_ttl.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("default_ttl", "must be more than zero"));
        }
        let store = match self.max_bytes {
            Some(bytes) => MokaStore::builder()
                .max_entries(bytes)
                .weigher(|k: &String, v: &Variants| {
                    let body: usize = v.iter().map(|e| e.value().body.len() + 256).sum();
                    u32::try_from(body + k.len()).unwrap_or(u32::MAX)
                })
                .build(),
            None => MokaStore::builder().max_entries(self.max_entries).build(),
        };
        Ok(HttpCacheLayer {
            shared: Arc::new(HttpShared {
                name: self.name,
                store,
                counters: Counters::new(),
                max_body: self.max_body,
                default_ttl: self.default_ttl,
                flights: Flights::new(),
            }),
        })
    }
}

impl<S> Layer<S> for HttpCacheLayer {
    type Service = HttpCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCache {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`HttpCacheLayer`].
#[derive(Clone)]
pub struct HttpCache<S> {
    inner: S,
    shared: Arc<HttpShared>,
}

impl<S: fmt::Debug> fmt::Debug for HttpCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCache")
            .field("name", &self.shared.name)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S> HttpCache<S> {
    tower_patterns_core::inner_service_accessors!();
}

fn key_of<B>(req: &Request<B>) -> ScopedKey<String> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    ScopedKey::new(TenantId::of(req).cloned(), format!("{host}{path}"))
}

fn age_of(entry: &Entry<Stored>, now: Instant) -> Duration {
    entry.value().initial_age + entry.age(now)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Hit,
    Miss,
    Stale,
}

impl Verdict {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
        })
    }
}

/// Builds the answer from a stored variant: `Age`, `x-cache`, and 304 to a matching
/// conditional request; no body for HEAD.
fn answer<B>(
    entry: &Entry<Stored>,
    verdict: Verdict,
    conditional: &Conditional,
    head: bool,
    now: Instant,
) -> Response<HttpCacheBody<B>> {
    let stored = entry.value();
    let not_modified = conditional.matches(stored);
    let mut res = Response::new(Either::Left(if not_modified || head {
        Full::new(Bytes::new())
    } else {
        Full::new(stored.body.clone())
    }));
    *res.status_mut() = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        stored.status
    };
    *res.headers_mut() = stored.headers.clone();
    if not_modified {
        res.headers_mut().remove(header::CONTENT_LENGTH);
    }
    res.headers_mut()
        .insert(header::AGE, HeaderValue::from(age_of(entry, now).as_secs()));
    res.headers_mut().insert(X_CACHE, verdict.header());
    res
}

/// The client's own validators, taken off the request so the cache can send its own.
#[derive(Default)]
struct Conditional {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<SystemTime>,
}

impl Conditional {
    fn take(headers: &mut HeaderMap) -> Self {
        let if_none_match = headers.remove(header::IF_NONE_MATCH);
        let if_modified_since = headers
            .remove(header::IF_MODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        Self {
            if_none_match,
            if_modified_since,
        }
    }

    fn matches(&self, stored: &Stored) -> bool {
        if stored.status != StatusCode::OK {
            return false;
        }
        if let Some(inm) = &self.if_none_match {
            // Weak comparison (RFC 9110 §13.1.2): W/ prefixes are ignored.
            let Some(etag) = stored.etag().and_then(|e| e.to_str().ok()) else {
                return false;
            };
            let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
            return inm.to_str().is_ok_and(|list| {
                list.trim() == "*" || list.split(',').any(|t| strip(t) == strip(etag))
            });
        }
        match (
            self.if_modified_since,
            http_date(&stored.headers, header::LAST_MODIFIED),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

/// Decides whether and how long to store `res` fetched for `req_headers`; `None`: not stored.
fn storable<B: Body>(
    shared: &HttpShared,
    req_headers: &HeaderMap,
    res: &Response<B>,
) -> Option<(CacheControl, Duration, VaryValues)> {
    let cc = CacheControl::parse(res.headers());
    if cc.no_store || cc.private || res.headers().contains_key(header::SET_COOKIE) {
        return None;
    }
    if res.status() == StatusCode::PARTIAL_CONTENT || res.status().is_informational() {
        return None;
    }
    if req_headers.contains_key(AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return None;
    }
    let size = res.body().size_hint().exact()?;
    if usize::try_from(size).map_or(true, |s| s > shared.max_body) {
        return None;
    }
    let mut vary = Vec::new();
    for value in res.headers().get_all(header::VARY) {
        let value = value.to_str().ok()?;
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let sent = req_headers.get(&name).cloned();
            vary.push((name, sent));
        }
    }
    let explicit = cc
        .s_maxage
        .or(cc.max_age)
        .map(Duration::from_secs)
        .or_else(|| {
            let expires = http_date(res.headers(), header::EXPIRES)?;
            let date = http_date(res.headers(), header::DATE).unwrap_or_else(SystemTime::now);
            Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
        });
    let heuristic = || {
        matches!(
            res.status().as_u16(),
            200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
        )
        .then_some(shared.default_ttl)
        .flatten()
    };
    let lifetime = explicit.or_else(heuristic)?;
    // A response that is stale on arrival and cannot be revalidated is not worth storing.
    let has_validator = res.headers().contains_key(header::ETAG)
        || res.headers().contains_key(header::LAST_MODIFIED);
    if lifetime.is_zero() && !has_validator && !cc.no_cache {
        return None;
    }
    Some((cc, lifetime, vary))
}

impl HttpShared {
    fn lookup(&self, key: &ScopedKey<String>, req: &HeaderMap) -> Option<Arc<Entry<Stored>>> {
        let variants = self.store.peek(key)?;
        variants
            .value()
            .iter()
            .find(|e| e.value().matches(req))
            .cloned()
    }

    fn insert(&self, key: &ScopedKey<String>, entry: Arc<Entry<Stored>>) {
        let mut variants: Vec<_> = self
            .store
            .peek(key)
            .map(|v| v.value().as_ref().clone())
            .unwrap_or_default();
        variants.retain(|e| e.value().vary != entry.value().vary);
        variants.insert(0, entry);
        variants.truncate(MAX_VARIANTS);
        let now = Instant::now();
        let longest = variants
            .iter()
            .map(|e| e.lifetime(now))
            .max()
            .unwrap_or_default();
        let holder = Entry::new(Arc::new(variants), now, longest, Duration::ZERO);
        self.store.insert(key.clone(), holder);
    }
}

/// Buffers a storable response and stores it; returns the answer and the stored entry.
async fn store_response<ResB>(
    shared: &HttpShared,
    key: &ScopedKey<String>,
    req_headers: &HeaderMap,
    res: Response<ResB>,
    sent_at: Instant,
) -> Result<(Response<HttpCacheBody<ResB>>, Option<Arc<Entry<Stored>>>), BoxError>
where
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let now = Instant::now();
    let Some((cc, lifetime, vary)) = storable(shared, req_headers, &res) else {
        let mut res = res.map(Either::Right);
        res.headers_mut().insert(X_CACHE, Verdict::Miss.header());
        return Ok((res, None));
    };
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(Into::into)?.to_bytes();
    let initial_age = parts
        .headers
        .get(header::AGE)
        .and_then(|a| a.to_str().ok()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
        + now.saturating_duration_since(sent_at);
    let must_revalidate = cc.must_revalidate;
    let stored = Stored {
        status: parts.status,
        headers: parts.headers.clone(),
        body: body.clone(),
        vary,
        initial_age,
        lifetime,
        swr: if must_revalidate {
            Duration::ZERO
        } else {
            Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0))
        },
        sie: if must_revalidate {
            Duration::ZERO
        } else {
            Duration::from_secs(cc.stale_if_error.unwrap_or(0))
        },
        no_cache: cc.no_cache,
        must_revalidate,
        shareable_with_auth: cc.public || cc.s_maxage.is_some() || cc.must_revalidate,
    };
    let fresh = lifetime.saturating_sub(initial_age);
    let grace = stored.swr.max(stored.sie).max(
        // Keep entries with validators past their freshness, for revalidation.
        if stored.etag().is_some() || stored.last_modified().is_some() {
            lifetime.max(Duration::from_secs(60))
        } else {
            Duration::ZERO
        },
    );
    let entry = Arc::new(Entry::new(stored, now, fresh, grace));
    shared.insert(key, entry.clone());
    let mut res = Response::from_parts(parts, Either::Left(Full::new(body)));
    res.headers_mut().insert(X_CACHE, Verdict::Miss.header());
    Ok((res, Some(entry)))
}

/// Revalidates `entry` with the origin: a 304 refreshes it; anything else replaces it or, if
/// not storable, drops it.
async fn revalidate<S, B, ResB>(
    shared: Arc<HttpShared>,
    inner: S,
    key: ScopedKey<String>,
    mut req: Request<B>,
    entry: Arc<Entry<Stored>>,
) -> Result<Result<Arc<Entry<Stored>>, Response<HttpCacheBody<ResB>>>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let stored = entry.value();
    if let Some(etag) = stored.etag() {
        req.headers_mut()
            .insert(header::IF_NONE_MATCH, etag.clone());
    } else if let Some(lm) = stored.last_modified() {
        req.headers_mut()
            .insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    let req_headers = req.headers().clone();
    let sent_at = Instant::now();
    let res = inner.oneshot(req).await.map_err(Into::into)?;
    if res.status() == StatusCode::NOT_MODIFIED {
        shared.counters.add(Count::Refresh);
        let mut refreshed = stored.clone();
        // RFC 9111 §4.3.4: the 304's headers update the stored ones.
        for (name, value) in res.headers() {
            if name != header::CONTENT_LENGTH {
                refreshed.headers.insert(name.clone(), value.clone());
            }
        }
        let cc = CacheControl::parse(&refreshed.headers);
        if let Some(secs) = cc.s_maxage.or(cc.max_age) {
            refreshed.lifetime = Duration::from_secs(secs);
        }
        refreshed.initial_age = Duration::ZERO;
        let now = Instant::now();
        let lifetime = refreshed.lifetime;
        let grace = entry
            .stale_until()
            .saturating_duration_since(entry.fresh_until())
            .max(lifetime);
        let entry = Arc::new(Entry::new(refreshed, now, lifetime, grace));
        shared.insert(&key, entry.clone());
        return Ok(Ok(entry));
    }
    let (res, stored) = store_response(&shared, &key, &req_headers, res, sent_at).await?;
    if stored.is_none() {
        shared.store.evict(&key);
    }
    Ok(Err(res))
}

/// The origin request for a miss, shared by every request for the same URL that arrives
/// while it runs (through the cache-aside layer's single flight: a load lives while anyone
/// polls it, so the request that started it may be dropped and the others still get its
/// answer). The starting request's own answer goes to it through `to_leader`.
///
/// `serve_stale`: the starting request holds a stale copy within stale-if-error, so a server
/// error is neither stored nor passed on.
fn fetch<S, B, ResB>(
    shared: Arc<HttpShared>,
    inner: S,
    key: ScopedKey<String>,
    (req, to_leader): (Request<B>, ToLeader<ResB>),
    serve_stale: bool,
) -> BoxFuture<'static, Result<Fetched, LoadError>>
where
    S: Service<Request<B>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    async move {
        let req_headers = req.headers().clone();
        let sent_at = Instant::now();
        let res = inner.oneshot(req).await.map_err(Into::into)?;
        if serve_stale && res.status().is_server_error() {
            return Ok(Fetched::ServerError);
        }
        let (res, entry) = store_response(&shared, &key, &req_headers, res, sent_at).await?;
        // The starting request may be gone: then its answer is dropped here.
        let _ = to_leader.send(res);
        Ok::<_, BoxError>(entry.map_or(Fetched::NotStored, Fetched::Stored))
    }
    .map_err(|e| LoadError(Arc::new(e)))
    .boxed()
}

/// Hands the starting request its own answer (which may stream, and so cannot be shared).
type ToLeader<ResB> = oneshot::Sender<Response<HttpCacheBody<ResB>>>;

/// The response future of [`HttpCache`]: ready at once with a stored answer (a hit, or a
/// stale answer while the entry revalidates in the background); boxed on the paths that go to
/// the origin.
pub struct HttpCacheFuture<ResB> {
    kind: Kind<ResB>,
}

/// A response or the error.
type Answer<ResB> = Result<Response<HttpCacheBody<ResB>>, BoxError>;

enum Kind<ResB> {
    Ready(Option<Response<HttpCacheBody<ResB>>>),
    Origin(BoxFuture<'static, Answer<ResB>>),
}

impl<ResB> HttpCacheFuture<ResB> {
    fn ready(res: Response<HttpCacheBody<ResB>>) -> Self {
        Self {
            kind: Kind::Ready(Some(res)),
        }
    }

    fn origin(fut: impl Future<Output = Answer<ResB>> + Send + 'static) -> Self {
        Self {
            kind: Kind::Origin(fut.boxed()),
        }
    }
}

impl<ResB> fmt::Debug for HttpCacheFuture<ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Ready(_) => "HttpCacheFuture::Stored",
            Kind::Origin(_) => "HttpCacheFuture::Origin",
        })
    }
}

// The response is only ever moved out of its `Option`, never pinned: the future is `Unpin`
// whatever the body is.
impl<ResB> Unpin for HttpCacheFuture<ResB> {}

impl<ResB> Future for HttpCacheFuture<ResB> {
    type Output = Answer<ResB>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.kind {
            Kind::Ready(res) => Poll::Ready(
                res.take()
                    .ok_or_else(|| "HttpCacheFuture polled after completion".into()),
            ),
            Kind::Origin(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<S, B, ResB> Service<Request<B>> for HttpCache<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<HttpCacheBody<ResB>>;
    type Error = BoxError;
    type Future = HttpCacheFuture<ResB>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Like the cache-aside layer: always ready; origin calls use a clone made ready first.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let method = req.method().clone();
        let key = key_of(&req);

        if method != Method::GET && method != Method::HEAD {
            let (shared, inner) = (self.shared.clone(), self.inner.clone());
            shared.counters.add(Count::Bypass);
            let unsafe_method = !method.is_safe();
            return HttpCacheFuture::origin(async move {
                let res = inner.oneshot(req).await.map_err(Into::into)?;
                if unsafe_method && (res.status().is_success() || res.status().is_redirection()) {
                    shared.store.evict(&key);
                }
                Ok(res.map(Either::Right))
            });
        }

        let req_cc = CacheControl::parse(req.headers());
        let has_auth = req.headers().contains_key(AUTHORIZATION);
        if req_cc.no_store {
            self.shared.counters.add(Count::Bypass);
            let inner = self.inner.clone();
            return HttpCacheFuture::origin(async move {
                Ok(inner
                    .oneshot(req)
                    .await
                    .map_err(Into::into)?
                    .map(Either::Right))
            });
        }
        let head = method == Method::HEAD;
        let conditional = Conditional::take(req.headers_mut());
        let must_revalidate_request = req_cc.no_cache || req_cc.max_age == Some(0);

        let shared = &self.shared;
        let now = Instant::now();
        let found = shared
            .lookup(&key, req.headers())
            .filter(|e| !has_auth || e.value().shareable_with_auth);
        if let Some(entry) = &found {
            let usable_fresh = !entry.value().no_cache && !must_revalidate_request;
            let fresh = now < entry.fresh_until();
            if usable_fresh && fresh {
                shared.counters.add(Count::Hit);
                return HttpCacheFuture::ready(answer(
                    entry,
                    Verdict::Hit,
                    &conditional,
                    head,
                    now,
                ));
            }
            // HEAD is answered from a fresh GET entry only; anything else goes to the
            // origin below, unstored (a HEAD response has no body to store).
            let stale_for = now.saturating_duration_since(entry.fresh_until());
            if !head
                && usable_fresh
                && !entry.value().must_revalidate
                && stale_for < entry.value().swr
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                shared.counters.add(Count::Stale);
                let res = answer(entry, Verdict::Stale, &conditional, head, now);
                let (shared, inner) = (shared.clone(), self.inner.clone());
                let (key, entry) = (key, entry.clone());
                rt.spawn(async move {
                    let _ = revalidate::<S, B, ResB>(shared, inner, key, req, entry).await;
                });
                return HttpCacheFuture::ready(res);
            }
        }

        let (shared, inner) = (shared.clone(), self.inner.clone());
        HttpCacheFuture::origin(async move {
            if let Some(entry) = &found {
                // Revalidate (or refetch) in the foreground.
                let stale_for = now.saturating_duration_since(entry.fresh_until());
                let has_validator =
                    entry.value().etag().is_some() || entry.value().last_modified().is_some();
                if has_validator && !head {
                    shared.counters.add(Count::Miss);
                    let sie = entry.value().sie;
                    return match revalidate(shared.clone(), inner, key.clone(), req, entry.clone())
                        .await
                    {
                        Ok(Ok(refreshed)) => Ok(answer(
                            &refreshed,
                            Verdict::Hit,
                            &conditional,
                            head,
                            Instant::now(),
                        )),
                        Ok(Err(res)) if res.status().is_server_error() && stale_for < sie => {
                            shared.counters.add(Count::StaleIfError);
                            Ok(answer(
                                entry,
                                Verdict::Stale,
                                &conditional,
                                head,
                                Instant::now(),
                            ))
                        }
                        Ok(Err(res)) => Ok(res),
                        Err(_) if stale_for < sie => {
                            shared.counters.add(Count::StaleIfError);
                            Ok(answer(
                                entry,
                                Verdict::Stale,
                                &conditional,
                                head,
                                Instant::now(),
                            ))
                        }
                        Err(e) => Err(e),
                    };
                }
            }
            // Past its freshness with no validator: refetch, falling back to it on failure
            // within its stale-if-error window.
            let fallback =
                found.filter(|e| now.saturating_duration_since(e.fresh_until()) < e.value().sie);
            // A miss. HEAD misses go to the origin unstored.
            if head {
                shared.counters.add(Count::Miss);
                let res = inner.oneshot(req).await.map_err(Into::into)?;
                let mut res = res.map(Either::Right);
                res.headers_mut().insert(X_CACHE, Verdict::Miss.header());
                return Ok(res);
            }
            // Single flight: one origin request per URL, whoever waits for it.
            let (to_leader, from_load) = oneshot::channel();
            let serve_stale = fallback.is_some();
            let (load, joined) = shared.flights.join_or_start_with(&key, (req, to_leader), {
                let (shared, inner, key) = (shared.clone(), inner.clone(), key.clone());
                move |input| fetch(shared, inner, key, input, serve_stale)
            });
            shared.counters.add(if joined.is_some() {
                Count::Coalesced
            } else {
                Count::Miss
            });
            let fetched = load.await;
            let stale_if_error = |stale: &Entry<Stored>| {
                shared.counters.add(Count::StaleIfError);
                answer(stale, Verdict::Stale, &conditional, head, Instant::now())
            };
            let Some((req, _)) = joined else {
                // This request started the load: its own answer, or its stale copy when the
                // origin failed or answered with a server error.
                if let Ok(mut res) = { from_load }.try_recv() {
                    if let Ok(Fetched::Stored(entry)) = &fetched
                        && conditional.matches(entry.value())
                    {
                        res = answer(entry, Verdict::Miss, &conditional, false, Instant::now());
                    }
                    return Ok(res);
                }
                return match (fetched, &fallback) {
                    (_, Some(stale)) => Ok(stale_if_error(stale)),
                    (Err(e), None) => Err(e.into()),
                    // `fetch` answers before it returns a response it stored or not.
                    (Ok(_), None) => Err("the origin's answer was lost".into()),
                };
            };
            // A request that waited: the shared answer, when it suits this request.
            match (fetched, &fallback) {
                (Ok(Fetched::Stored(entry)), _)
                    if entry.value().matches(req.headers())
                        && (!has_auth || entry.value().shareable_with_auth) =>
                {
                    return Ok(answer(
                        &entry,
                        Verdict::Hit,
                        &conditional,
                        head,
                        Instant::now(),
                    ));
                }
                (Ok(Fetched::ServerError) | Err(_), Some(stale)) => {
                    return Ok(stale_if_error(stale));
                }
                (Err(e), None) => return Err(e.into()),
                _ => {}
            }
            // Not shared with this request (not stored, stored for other request headers, or a
            // server error with no stale copy here): a request of its own.
            let req_headers = req.headers().clone();
            let sent_at = Instant::now();
            let res = inner.oneshot(req).await.map_err(Into::into)?;
            store_response(&shared, &key, &req_headers, res, sent_at)
                .await
                .map(|(r, _)| r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_parses_what_it_acts_on() {
        let mut h = HeaderMap::new();
        h.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        h.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static(
                "s-maxage=\"120\", stale-while-revalidate=30, Must-Revalidate",
            ),
        );
        let cc = CacheControl::parse(&h);
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(120));
        assert_eq!(cc.stale_while_revalidate, Some(30));
        assert!(cc.public && cc.must_revalidate && !cc.no_store);
        let mut bad = HeaderMap::new();
        bad.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=soon, no-store"),
        );
        let cc = CacheControl::parse(&bad);
        assert_eq!(cc.max_age, Some(0), "a malformed max-age is stale at once");
        assert!(cc.no_store);
    }
}
