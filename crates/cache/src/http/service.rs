//! The HTTP cache's service: carries out what the [policy](super::policy) decides.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::Either;
use tokio::{sync::oneshot, time::Instant};
use tower::ServiceExt as _;
use tower_patterns_core::{BoxError, tenant::TenantId};
use tower_service::Service;

use super::{
    HttpCacheBody, HttpCacheHandle, X_CACHE,
    future::ResponseFuture,
    layer::HttpShared,
    origin::{Fetched, fetch, revalidate, store_response},
    policy::{self, Action, RequestFacts},
    stored::{Conditional, Stored, Verdict, answer},
};
use crate::{Entry, ScopedKey, internal::Count};

/// The service made by [`HttpCacheLayer`](super::HttpCacheLayer).
#[derive(Clone)]
pub struct HttpCache<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<HttpShared>,
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

    /// A handle on the cache this service shares with its layer.
    pub fn handle(&self) -> HttpCacheHandle {
        HttpCacheHandle {
            shared: self.shared.clone(),
        }
    }
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
    type Future = ResponseFuture<ResB>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Like the cache-aside layer: always ready; origin calls use a clone made ready first.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let key = key_of(&req);
        let facts = RequestFacts::of(&req);
        let shared = &self.shared;
        let (conditional, found) = if facts.consults_store() {
            let conditional = Conditional::take(req.headers_mut());
            (conditional, shared.lookup(&key, req.headers()))
        } else {
            (Conditional::default(), None)
        };
        let now = Instant::now();
        let mut runtime = None;
        let action = policy::decide(&facts, found.as_deref(), now, || {
            runtime = tokio::runtime::Handle::try_current().ok();
            runtime.is_some()
        });
        match action {
            Action::PassThrough { invalidates } => {
                shared.counters.add(Count::Bypass);
                let (shared, inner) = (shared.clone(), self.inner.clone());
                ResponseFuture::origin(async move {
                    let res = inner.oneshot(req).await.map_err(Into::into)?;
                    if invalidates && (res.status().is_success() || res.status().is_redirection()) {
                        shared.store.evict(&key);
                    }
                    Ok(res.map(Either::Right))
                })
            }
            Action::ServeFresh => {
                shared.counters.add(Count::Hit);
                let entry = found.as_deref().expect("a fresh answer has its entry");
                ResponseFuture::ready(answer(entry, Verdict::Hit, &conditional, facts.head, now))
            }
            Action::ServeStaleAndRevalidate => {
                shared.counters.add(Count::Stale);
                let entry = found.expect("a stale answer has its entry");
                let res = answer(&entry, Verdict::Stale, &conditional, facts.head, now);
                let (shared, inner) = (shared.clone(), self.inner.clone());
                if let Some(rt) = runtime {
                    rt.spawn(async move {
                        let _ = revalidate::<S, B, ResB>(shared, inner, key, req, entry).await;
                    });
                }
                ResponseFuture::ready(res)
            }
            Action::Revalidate => {
                let entry = found.expect("a revalidation has its entry");
                let (shared, inner) = (shared.clone(), self.inner.clone());
                ResponseFuture::origin(revalidate_in_foreground(
                    shared,
                    inner,
                    key,
                    req,
                    entry,
                    (conditional, facts.head, now),
                ))
            }
            Action::FetchHead => {
                let inner = self.inner.clone();
                let shared = shared.clone();
                ResponseFuture::origin(async move {
                    shared.counters.add(Count::Miss);
                    let res = inner.oneshot(req).await.map_err(Into::into)?;
                    let mut res = res.map(Either::Right);
                    res.headers_mut().insert(X_CACHE, Verdict::Miss.header());
                    Ok(res)
                })
            }
            Action::Fetch { stale_fallback } => {
                let fallback = found.filter(|_| stale_fallback);
                let (shared, inner) = (shared.clone(), self.inner.clone());
                ResponseFuture::origin(fetch_shared(
                    shared,
                    inner,
                    key,
                    req,
                    fallback,
                    (conditional, facts.has_auth),
                ))
            }
        }
    }
}

/// Revalidates `entry` before answering: a 304 answers it refreshed; a failure within its
/// stale-if-error window answers it stale.
async fn revalidate_in_foreground<S, B, ResB>(
    shared: Arc<HttpShared>,
    inner: S,
    key: ScopedKey<String>,
    req: Request<B>,
    entry: Arc<Entry<Stored>>,
    (conditional, head, now): (Conditional, bool, Instant),
) -> Result<Response<HttpCacheBody<ResB>>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    shared.counters.add(Count::Miss);
    let stale_if_error = || {
        shared.counters.add(Count::StaleIfError);
        answer(&entry, Verdict::Stale, &conditional, head, Instant::now())
    };
    match revalidate(shared.clone(), inner, key, req, entry.clone()).await {
        Ok(Ok(refreshed)) => Ok(answer(
            &refreshed,
            Verdict::Hit,
            &conditional,
            head,
            Instant::now(),
        )),
        Ok(Err(res))
            if res.status().is_server_error() && policy::within_stale_if_error(&entry, now) =>
        {
            Ok(stale_if_error())
        }
        Ok(Err(res)) => Ok(res),
        Err(_) if policy::within_stale_if_error(&entry, now) => Ok(stale_if_error()),
        Err(e) => Err(e),
    }
}

/// A miss: one origin request per URL (the single flight), whose stored answer serves every
/// request that waited and suits it; `fallback` answers stale if the origin fails.
async fn fetch_shared<S, B, ResB>(
    shared: Arc<HttpShared>,
    inner: S,
    key: ScopedKey<String>,
    req: Request<B>,
    fallback: Option<Arc<Entry<Stored>>>,
    (conditional, has_auth): (Conditional, bool),
) -> Result<Response<HttpCacheBody<ResB>>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
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
        answer(stale, Verdict::Stale, &conditional, false, Instant::now())
    };
    let Some((req, _)) = joined else {
        // This request started the load: its own answer, or its stale copy when the origin
        // failed or answered with a server error.
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
            if policy::suits(entry.value(), req.headers(), has_auth) =>
        {
            return Ok(answer(
                &entry,
                Verdict::Hit,
                &conditional,
                false,
                Instant::now(),
            ));
        }
        (Ok(Fetched::ServerError) | Err(_), Some(stale)) => {
            return Ok(stale_if_error(stale));
        }
        (Err(e), None) => return Err(e.into()),
        _ => {}
    }
    // Not shared with this request (not stored, stored for other request headers, or a server
    // error with no stale copy here): a request of its own.
    let req_headers = req.headers().clone();
    let sent_at = Instant::now();
    let res = inner.oneshot(req).await.map_err(Into::into)?;
    store_response(&shared, &key, &req_headers, res, sent_at)
        .await
        .map(|(r, _)| r)
}
