//! Calls to the addresses of one upstream group: the power of two choices by in-flight
//! requests (tower's `Load` measure), over one keep-alive pool, with outlier ejection.
//!
//! Why not tower's `balance::p2c::Balance`: it is not `Clone`, so sharing one balancer across
//! connections takes a `Buffer` (a task and a channel hop per request), and its readiness
//! model would need an ejected address to stay pending with a timer. Picking here is a few
//! atomic reads, shared by every connection; the algorithm is the same (two random ready
//! candidates, the one with fewer requests in flight), and an ejected address is skipped
//! until its ejection ends.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Uri, uri::PathAndQuery};
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::time::Instant;
use tower::load::Load;
use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::{
    GatewayBody,
    error::{GatewayError, Kind},
    upstream::outlier::{Ejection, OutlierPolicy},
};

/// One address of a group, and what the group knows of it.
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    authority: http::uri::Authority,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the group's epoch until which the address is ejected (0: never).
    ejected_until: AtomicU64,
    pub(crate) ejections: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            authority: addr
                .to_string()
                .parse()
                .expect("a socket address is an authority"),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// The shared state of a group's balancer.
pub(crate) struct Pool {
    pub(crate) name: Arc<str>,
    pub(crate) endpoints: Vec<Endpoint>,
    client: Client<HttpConnector, Full<Bytes>>,
    outlier: OutlierPolicy,
    epoch: Instant,
    rng: AtomicU64,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<_> = self.endpoints.iter().map(|e| e.addr).collect();
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("addresses", &addrs)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(
        name: Arc<str>,
        addrs: &[SocketAddr],
        connect_timeout: Duration,
        outlier: OutlierPolicy,
        seed: u64,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            name,
            endpoints: addrs.iter().copied().map(Endpoint::new).collect(),
            client,
            outlier,
            epoch: Instant::now(),
            rng: AtomicU64::new(seed | 1),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn random(&self) -> u64 {
        // SplitMix64 over a shared counter: a different pair per request, no lock.
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn is_ejected(&self, i: usize) -> bool {
        self.endpoints[i].ejected_until.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Two random addresses that are not ejected; the one with fewer requests in flight.
    fn pick(&self) -> usize {
        let n = self.endpoints.len();
        if n == 1 {
            return 0;
        }
        let now = self.now_ms();
        let healthy = |i: usize| self.endpoints[i].ejected_until.load(Ordering::Relaxed) <= now;
        let r = self.random();
        let start = (r % n as u64) as usize;
        let first = (0..n).map(|k| (start + k) % n).find(|&i| healthy(i));
        let Some(a) = first else {
            // Everything ejected (the policy never ejects the last one; a race can): any.
            return start;
        };
        let offset = 1 + ((r >> 32) % (n as u64 - 1)) as usize;
        let second = (0..n - 1)
            .map(|k| (a + offset + k) % n)
            .find(|&i| i != a && healthy(i));
        match second {
            Some(b) if self.endpoints[b].in_flight() < self.endpoints[a].in_flight() => b,
            _ => a,
        }
    }

    fn record(&self, i: usize, failed: bool) {
        let endpoint = &self.endpoints[i];
        if !failed {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        endpoint.failures.fetch_add(1, Ordering::Relaxed);
        let run = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let now = self.now_ms();
        let ejected_now = (0..self.endpoints.len())
            .filter(|&j| self.endpoints[j].ejected_until.load(Ordering::Relaxed) > now)
            .count();
        let times = endpoint.ejections.load(Ordering::Relaxed);
        if let Ejection::For(d) = self
            .outlier
            .decide(run, ejected_now, self.endpoints.len(), times)
        {
            let until = now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            endpoint.ejected_until.store(until, Ordering::Relaxed);
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            endpoint.ejections.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tower_patterns_gateway_ejections_total", "name" => self.name.to_string()).increment(1);
            tracing::warn!(group = %self.name, address = %endpoint.addr, ejected_for_ms = d.as_millis() as u64, "address ejected after {run} failures in a row");
        }
    }
}

/// The innermost service of a group: picks an address and sends the request over the pool.
#[derive(Clone, Debug)]
pub(crate) struct Pick {
    pool: Arc<Pool>,
    timeout: Duration,
}

impl Pick {
    /// Calls through `pool`, each attempt limited to `timeout` (a timeout counts as the
    /// address's failure, so an address that accepts and never answers is ejected too).
    pub(crate) fn new(pool: Arc<Pool>, timeout: Duration) -> Self {
        Self { pool, timeout }
    }
}

/// Counts a request in flight on an address until dropped.
struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.endpoints[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Load for Pick {
    type Metric = usize;

    fn load(&self) -> usize {
        self.pool.endpoints.iter().map(Endpoint::in_flight).sum()
    }
}

impl Service<Request<Full<Bytes>>> for Pick {
    type Response = Response<GatewayBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let index = self.pool.pick();
        let endpoint = &self.pool.endpoints[index];
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.requests.fetch_add(1, Ordering::Relaxed);
        let authority = endpoint.authority.clone();
        let guard = InFlight {
            pool: self.pool.clone(),
            index,
        };
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path);
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        }
        *req.version_mut() = http::Version::HTTP_11;
        let fut = tokio::time::timeout(self.timeout, guard.pool.client.request(req));
        Box::pin(async move {
            match fut.await {
                Err(_elapsed) => {
                    guard.pool.record(guard.index, true);
                    Err(tower::timeout::error::Elapsed::new().into())
                }
                Ok(Ok(res)) => {
                    guard
                        .pool
                        .record(guard.index, res.status().is_server_error());
                    Ok(res.map(GatewayBody::new))
                }
                Ok(Err(e)) => {
                    guard.pool.record(guard.index, true);
                    let addr = guard.pool.endpoints[guard.index].addr;
                    Err(GatewayError::new(
                        Kind::Upstream,
                        format!("upstream {} ({addr}): {e}", guard.pool.name),
                    )
                    .into())
                }
            }
        })
    }
}
