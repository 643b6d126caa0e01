//! The cache's origin requests: storing a response, revalidating a stored variant, and the
//! shared origin request of a miss.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{FutureExt as _, TryFutureExt as _, future::BoxFuture};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt as _, Either, Full};
use tokio::{sync::oneshot, time::Instant};
use tower::ServiceExt as _;
use tower_patterns_core::BoxError;
use tower_service::Service;

use super::{
    HttpCacheBody, X_CACHE,
    cache_control::CacheControl,
    layer::HttpShared,
    storable::{Storage, storable},
    stored::{Stored, Verdict},
};
use crate::{
    Entry, ScopedKey,
    internal::{Count, LoadError},
};

/// Buffers a storable response and stores it; returns the answer and the stored entry.
pub(crate) async fn store_response<ResB>(
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
    let storage = storable(
        shared.limits,
        req_headers,
        res.status(),
        res.headers(),
        res.body().size_hint().exact(),
    );
    let Some(Storage { cc, lifetime, vary }) = storage else {
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
pub(crate) async fn revalidate<S, B, ResB>(
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
pub(crate) fn fetch<S, B, ResB>(
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
pub(crate) type ToLeader<ResB> = oneshot::Sender<Response<HttpCacheBody<ResB>>>;

/// What an origin request in flight leaves for the requests that waited on it.
#[derive(Clone)]
pub(crate) enum Fetched {
    /// The response was stored: it answers every waiting request it matches.
    Stored(Arc<Entry<Stored>>),
    /// The response was not stored: waiting requests make their own.
    NotStored,
    /// The origin answered with a server error while a stale copy could stand in for it
    /// (stale-if-error): not stored, and each request serves its stale copy if it has one.
    ServerError,
}
