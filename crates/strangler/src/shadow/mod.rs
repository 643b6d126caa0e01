//! Shadow mode: the legacy side answers; the new side gets a copy of the request, and its
//! answer is compared with legacy's.
//!
//! - The answer never waits for the new side: the copy runs on its own task, bounded by
//!   `max_concurrency` (64); when all are busy the copy is dropped and counted, never queued.
//!   Legacy's body streams to the client as it comes, a copy kept for the comparison (up to
//!   `max_body`, 1 MiB; a longer one is not compared).
//! - Only requests whose body size is known and under `max_body` are copied (a `GET`, or a
//!   `POST` with a `Content-Length`); and only safe methods (`GET`, `HEAD`, `OPTIONS`,
//!   `TRACE`) unless [`mirror_writes`](Shadow::mirror_writes) says so, since a copied write
//!   writes twice.
//! - Shadow requests carry a marker header (`x-shadow-request: 1` by default) so the new side
//!   can keep them from having effects; the marker is removed from every incoming request, so
//!   a client cannot pass a real request off as a shadow one.
//! - The comparison (a [`Comparator`]): status, chosen headers,
//!   JSON bodies structurally with ignored paths and normalisers, other bodies as bytes.
//! - **Noise**: with [`noise_baseline`](Shadow::noise_baseline), legacy is called a second
//!   time (safe methods only) and differences legacy has with itself (a timestamp, a nonce)
//!   are not reported, as Twitter's Diffy does.
//! - Outcomes are counted in atomics and published by the handle's `report()` as
//!   `tower_patterns_strangler_shadow_total{name, outcome}` (`match`, `mismatch`, `dropped`,
//!   `skipped`, `failed`); mismatches are logged (at most
//!   `log_per_minute`, 10) and the last 32 are kept in the handle.
//!
//! ```
//! use std::time::Duration;
//! use tower_patterns_strangler::{compare::Comparator, Shadow};
//!
//! let compare = Comparator::builder().ignore("/served_at").build().unwrap();
//! let shadow = Shadow::new(compare)
//!     .max_concurrency(16)
//!     .timeout(Duration::from_secs(2))
//!     .noise_baseline(true);
//! # let _ = shadow;
//! ```

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::compare::{Answer, Comparator};

mod tee;

use tee::Captured;
pub use tee::Tee;

/// Shadow mode's settings: a value the migration's builder takes.
#[derive(Clone, Debug)]
pub struct Shadow {
    compare: Comparator,
    max_concurrency: usize,
    timeout: Duration,
    noise: bool,
    writes: bool,
    marker: HeaderName,
    max_body: usize,
    log_per_minute: u32,
}

impl Shadow {
    /// Shadow mode comparing answers with `compare`.
    pub fn new(compare: Comparator) -> Self {
        Self {
            compare,
            max_concurrency: 64,
            timeout: Duration::from_secs(5),
            noise: false,
            writes: false,
            marker: HeaderName::from_static("x-shadow-request"),
            max_body: 1 << 20,
            log_per_minute: 10,
        }
    }

    /// Shadow copies in flight at most (default 64); beyond, copies are dropped.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// How long a copy (the new side's answer, the noise call and legacy's body) may take
    /// before it is abandoned and counted as failed (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Calls legacy a second time for safe requests and drops differences legacy has with
    /// itself (default off).
    pub fn noise_baseline(mut self, on: bool) -> Self {
        self.noise = on;
        self
    }

    /// Copies writes (`POST`, `PUT`, `PATCH`, `DELETE`) too (default off: a copied write
    /// writes twice unless the new side honours the marker).
    pub fn mirror_writes(mut self, on: bool) -> Self {
        self.writes = on;
        self
    }

    /// The marker header on shadow requests (default `x-shadow-request`, value `1`).
    pub fn marker(mut self, name: HeaderName) -> Self {
        self.marker = name;
        self
    }

    /// The largest request or answer body copied and compared (default 1 MiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Mismatches logged per minute at most (default 10; all are counted).
    pub fn log_per_minute(mut self, n: u32) -> Self {
        self.log_per_minute = n;
        self
    }

    /// The marker header's name.
    pub(crate) fn marker_name(&self) -> &HeaderName {
        &self.marker
    }

    /// The checks the migration's `build()` makes of shadow settings.
    pub fn check(&self) -> Result<(), tower_patterns_core::ConfigError> {
        use tower_patterns_core::ConfigError;
        if self.max_concurrency == 0 || self.max_concurrency > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new("shadow.max_concurrency", "at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("shadow.timeout", "more than zero"));
        }
        Ok(())
    }

    pub(crate) fn build(self, name: Arc<str>) -> Mirror {
        for outcome in OUTCOMES {
            metrics::counter!(
                "tower_patterns_strangler_shadow_total",
                "name" => name.to_string(),
                "outcome" => outcome,
            )
            .increment(0);
        }
        Mirror {
            permits: Arc::new(Semaphore::new(self.max_concurrency)),
            settings: self,
            name,
            counts: Default::default(),
            samples: Mutex::new(VecDeque::new()),
            logged: Mutex::new((0, 0)),
            born: tokio::time::Instant::now(),
        }
    }
}

/// The outcomes of a shadow copy.
const OUTCOMES: [&str; 5] = ["match", "mismatch", "dropped", "skipped", "failed"];
const MATCH: usize = 0;
const MISMATCH: usize = 1;
const DROPPED: usize = 2;
const SKIPPED: usize = 3;
const FAILED: usize = 4;

/// Mismatches kept for the handle.
const SAMPLES_KEPT: usize = 32;

/// A mismatch, as kept in the handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The request's method and path (without the query).
    pub request: String,
    /// The differences, one line each.
    pub differences: Vec<String>,
}

/// Shadow mode's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    /// Copies whose answers matched.
    pub matched: u64,
    /// Copies whose answers differed (beyond noise).
    pub mismatched: u64,
    /// Copies dropped because `max_concurrency` were in flight.
    pub dropped: u64,
    /// Requests not copied: a write, or a body of unknown or too large size.
    pub skipped: u64,
    /// Copies that failed: the new side errored or timed out, or legacy's body broke or was
    /// not read to the end.
    pub failed: u64,
}

/// Shadow mode as built into a migration.
#[derive(Debug)]
pub(crate) struct Mirror {
    settings: Shadow,
    name: Arc<str>,
    permits: Arc<Semaphore>,
    counts: [AtomicU64; 5],
    samples: Mutex<VecDeque<Mismatch>>,
    /// (minute, logged in that minute).
    logged: Mutex<(u64, u32)>,
    born: tokio::time::Instant,
}

impl Mirror {
    /// Counts an outcome in an atomic; the handle's `report()` publishes the counts.
    fn count(&self, outcome: usize) {
        self.counts[outcome].fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the counts as `tower_patterns_strangler_shadow_total{name, outcome}`.
    pub(crate) fn publish(&self) {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            metrics::counter!(
                "tower_patterns_strangler_shadow_total",
                "name" => self.name.to_string(),
                "outcome" => *outcome,
            )
            .absolute(self.counts[i].load(Ordering::Relaxed));
        }
    }

    pub(crate) fn counts(&self) -> ShadowCounts {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        ShadowCounts {
            matched: c(MATCH),
            mismatched: c(MISMATCH),
            dropped: c(DROPPED),
            skipped: c(SKIPPED),
            failed: c(FAILED),
        }
    }

    pub(crate) fn samples(&self) -> Vec<Mismatch> {
        lock(&self.samples).iter().cloned().collect()
    }

    fn log_now(&self) -> bool {
        let minute = self.born.elapsed().as_secs() / 60;
        let mut logged = lock(&self.logged);
        if logged.0 != minute {
            *logged = (minute, 0);
        }
        if logged.1 < self.settings.log_per_minute {
            logged.1 += 1;
            true
        } else {
            false
        }
    }

    fn failed(&self, request: &str, why: &str) {
        self.count(FAILED);
        tracing::debug!(
            target: "tower_patterns_strangler",
            name = %self.name, %request, why,
            "shadow copy not compared"
        );
    }

    fn mismatch(&self, request: String, differences: Vec<String>) {
        self.count(MISMATCH);
        if self.log_now() {
            tracing::warn!(
                target: "tower_patterns_strangler",
                name = %self.name, %request, differences = %differences.join("; "),
                "shadow answer differs"
            );
        }
        let mut samples = lock(&self.samples);
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(Mismatch {
            request,
            differences,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The boxed future of a shadowed request.
pub(crate) type Started<LB> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Tee<LB>>, BoxError>> + Send>,
>;

/// Starts a shadowed request: reads its body, calls legacy (the ready service, swapped out of
/// `svc`) and hands the copy to a task. Gives the request back when it is not to be copied
/// (unsafe method, body of unknown or too large size, all copies busy).
#[allow(clippy::result_large_err)] // the request goes back by value, uncloned
pub(crate) fn start<L, N, K, B, LB, NB>(
    svc: &mut crate::Strangler<L, N, K>,
    req: Request<B>,
) -> Result<Started<LB>, Request<B>>
where
    L: Service<Request<B>, Response = Response<LB>> + Clone + Send + 'static,
    L::Error: Into<BoxError>,
    L::Future: Send + 'static,
    N: Service<Request<B>, Response = Response<NB>> + Clone + Send + 'static,
    N::Error: Into<BoxError>,
    N::Future: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    LB: Body<Data = Bytes> + Send + 'static,
    LB::Error: Into<BoxError>,
    NB: Body<Data = Bytes> + Send + 'static,
    NB::Error: Into<BoxError>,
{
    let Some(mirror) = svc.table.shadow.clone() else {
        return Err(req);
    };
    let s = &mirror.settings;
    let size = req.body().size_hint().exact();
    if (!s.writes && !req.method().is_safe()) || size.is_none_or(|n| n > s.max_body as u64) {
        mirror.count(SKIPPED);
        return Err(req);
    }
    let Ok(permit) = mirror.permits.clone().try_acquire_owned() else {
        mirror.count(DROPPED);
        return Err(req);
    };
    // The ready legacy service serves this request; a fresh clone takes its place.
    let fresh = svc.legacy.clone();
    let mut legacy = std::mem::replace(&mut svc.legacy, fresh);
    let noise = (s.noise && req.method().is_safe()).then(|| svc.legacy.clone());
    let new = svc.new.clone();
    Ok(Box::pin(async move {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
        let copy = |marker: Option<&HeaderName>| {
            let mut r = Request::new(B::from(bytes.clone()));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.version_mut() = parts.version;
            *r.headers_mut() = parts.headers.clone();
            if let Some(m) = marker {
                r.headers_mut()
                    .insert(m.clone(), HeaderValue::from_static("1"));
            }
            r
        };
        let marker = mirror.settings.marker.clone();
        let shadow_req = copy(Some(&marker));
        let noise_req = noise.as_ref().map(|_| copy(Some(&marker)));
        let request = format!("{} {}", parts.method, parts.uri.path());
        let legacy_req = Request::from_parts(parts, B::from(bytes));
        let (tx, rx) = oneshot::channel();
        tokio::spawn(compare(
            mirror.clone(),
            permit,
            request,
            new,
            shadow_req,
            noise.zip(noise_req),
            rx,
        ));
        let res = legacy.call(legacy_req).await.map_err(Into::into)?;
        let (head, body) = res.into_parts();
        let tee = Tee::new(
            body,
            head.status,
            head.headers.clone(),
            mirror.settings.max_body,
            tx,
        );
        Ok(Response::from_parts(head, tee))
    }))
}

/// An answer read whole (up to the limit).
struct Read {
    status: StatusCode,
    headers: HeaderMap,
    body: Option<Bytes>,
}

async fn read<S, B, RB>(svc: S, req: Request<B>, max: usize) -> Result<Read, BoxError>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    use tower::ServiceExt;
    let res = svc.oneshot(req).await.map_err(Into::into)?;
    let (head, body) = res.into_parts();
    let body = http_body_util::Limited::new(body, max).collect().await;
    Ok(Read {
        status: head.status,
        headers: head.headers,
        body: body.ok().map(|c| c.to_bytes()),
    })
}

async fn compare<N, L, B, NB, LB>(
    mirror: Arc<Mirror>,
    _permit: OwnedSemaphorePermit,
    request: String,
    new: N,
    shadow_req: Request<B>,
    noise: Option<(L, Request<B>)>,
    legacy: oneshot::Receiver<Captured>,
) where
    N: Service<Request<B>, Response = Response<NB>>,
    N::Error: Into<BoxError>,
    NB: Body<Data = Bytes>,
    NB::Error: Into<BoxError>,
    L: Service<Request<B>, Response = Response<LB>>,
    L::Error: Into<BoxError>,
    LB: Body<Data = Bytes>,
    LB::Error: Into<BoxError>,
{
    let s = &mirror.settings;
    let max = s.max_body;
    let work = async {
        let noise = async {
            match noise {
                Some((svc, req)) => Some(read(svc, req, max).await),
                None => None,
            }
        };
        let (new, noise, legacy) = tokio::join!(read(new, shadow_req, max), noise, legacy);
        (new, noise, legacy)
    };
    let Ok((new, noise, legacy)) = tokio::time::timeout(s.timeout, work).await else {
        mirror.failed(&request, "timed out");
        return;
    };
    let new = match new {
        Ok(new) => new,
        Err(e) => {
            mirror.failed(&request, &format!("the new side failed: {e}"));
            return;
        }
    };
    let Ok(legacy) = legacy else {
        mirror.failed(&request, "legacy's answer was not read to its end");
        return;
    };
    let (Some(legacy_body), Some(new_body)) = (&legacy.body, &new.body) else {
        // An answer longer than the limit: not compared.
        mirror.count(SKIPPED);
        return;
    };
    let l = Answer::new(legacy.status, &legacy.headers, legacy_body);
    let n = Answer::new(new.status, &new.headers, new_body);
    let mut diff = s.compare.compare(&l, &n);
    if !diff.is_empty()
        && let Some(Ok(noise)) = noise
        && let Some(noise_body) = &noise.body
    {
        let base = Answer::new(noise.status, &noise.headers, noise_body);
        diff = diff.without_noise(&s.compare.compare(&l, &base));
    }
    if diff.is_empty() {
        mirror.count(MATCH);
    } else {
        let mut lines: Vec<String> = diff.iter().map(|d| d.to_string()).collect();
        if diff.omitted() > 0 {
            lines.push(format!("and {} more", diff.omitted()));
        }
        mirror.mismatch(request, lines);
    }
}
