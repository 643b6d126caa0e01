//! An HTTP cache for GET and HEAD with the basics of RFC 9111, as a shared (server-side) cache.
//!
//! - **Storing**: only responses with explicit freshness (`s-maxage`, `max-age`, `Expires`) or,
//!   when a [default TTL](HttpCacheBuilder::default_ttl) is set, heuristically cacheable
//!   statuses; never `no-store`, `private`, `Vary: *`, `Set-Cookie`, `206`, or a body whose
//!   size is unknown or above [`max_body`](HttpCacheBuilder::max_body). A request carrying
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
//!   [`LoadError`](crate::LoadError), or a stale copy within stale-if-error); a waiting request
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
//! # How it is built
//!
//! The decisions are a pure policy (`policy.rs`, and `storable.rs` for storing): from the request's facts, the stored
//! variant and the time it returns an action (serve fresh, serve stale and revalidate in the
//! background, revalidate first, fetch through the single flight with or without a stale
//! fallback, fetch a HEAD, pass through), and it decides what is stored and for how long. The
//! service (`service.rs`) looks the variant up, asks the policy and carries the action out;
//! the origin requests (storing, revalidating, the shared fetch) are in `origin.rs`.
//!
//! **Why not `http-cache-semantics`.** That crate's `CachePolicy` (RFC 7234 rules) was weighed
//! for the freshness rules and not adopted: its `before_request(&req, now: SystemTime)`
//! answers `Fresh(response::Parts)` or `Stale { request: request::Parts, .. }`, owned parts
//! built on every call (a new header map per hit, and the request split into parts to be
//! revalidated, while this service forwards the caller's `Request<B>` with its body), and it
//! keeps its own time in `SystemTime`, while this cache's entries, the cache-aside layer and
//! the tests run on Tokio's monotonic (and pausable) clock. It also has no `stale-if-error`,
//! which this cache serves from the single flight's outcome. What it would replace here is
//! small and pinned by the policy's unit tests: `CacheControl::parse`, `storable` and the
//! freshness arithmetic of `decide`.
//!
//! # Metrics
//!
//! Published when the handle reports ([`StateHandle::report`](tower_patterns_core::observe::StateHandle::report)
//! on [`HttpCacheHandle`]), from the counts the cache keeps anyway, so no request pays for
//! them; label `name`:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `tower_patterns_cache_hits_total` | counter | fresh stored responses served |
//! | `tower_patterns_cache_misses_total` | counter | requests that went to the origin |
//! | `tower_patterns_cache_stale_total` | counter | stale responses served (while revalidating, or on error) |
//! | `tower_patterns_cache_coalesced_total` | counter | requests that waited for another's origin request |
//! | `tower_patterns_cache_refreshes_total` | counter | stored responses revalidated (304) |
//! | `tower_patterns_cache_bypassed_total` | counter | requests not eligible for caching |
//! | `tower_patterns_cache_evictions_total` | counter | stored URLs evicted (where counted) |
//! | `tower_patterns_cache_entries` | gauge | URLs stored |
//! | `tower_patterns_cache_loads_in_flight` | gauge | origin requests in flight |
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

use bytes::Bytes;
use http::HeaderName;
use http_body_util::{Either, Full};

mod cache_control;
pub mod future;
mod handle;
mod layer;
mod origin;
mod policy;
mod service;
mod storable;
mod stored;

pub use cache_control::CacheControl;
pub use handle::{HttpCacheHandle, HttpCacheStats};
pub use layer::{HttpCacheBuilder, HttpCacheLayer};
pub use service::HttpCache;

/// The `x-cache` header this layer sets.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The body of a response from [`HttpCache`]: a stored body, or the origin's streamed through.
pub type HttpCacheBody<B> = Either<Full<Bytes>, B>;
