//! Calls to the addresses of one upstream group: the power of two choices by requests in
//! flight (tower's `PendingRequests` measure), over one keep-alive pool, with outlier ejection.
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
        choose(
            n,
            self.random(),
            |i| self.endpoints[i].ejected_until.load(Ordering::Relaxed) <= now,
            |i| self.endpoints[i].in_flight(),
        )
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

/// The power of two choices among `n` addresses with the random word `r`: the first healthy
/// address from a random start, and a second healthy one at a random offset from it; the one
/// with the smaller `load` (the first on a tie). With no healthy address (the policy never
/// ejects the last one; a race can), any.
fn choose(
    n: usize,
    r: u64,
    healthy: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> usize,
) -> usize {
    let start = (r % n as u64) as usize;
    let Some(a) = (0..n).map(|k| (start + k) % n).find(|&i| healthy(i)) else {
        return start;
    };
    if n == 1 {
        return a;
    }
    let offset = 1 + ((r >> 32) % (n as u64 - 1)) as usize;
    let second = (0..n - 1)
        .map(|k| (a + offset + k) % n)
        .find(|&i| i != a && healthy(i));
    match second {
        Some(b) if load(b) < load(a) => b,
        _ => a,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pool(n: usize) -> Pool {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
            .collect();
        Pool::new(
            "t".into(),
            &addrs,
            Duration::from_secs(1),
            OutlierPolicy::default(),
            7,
        )
    }

    #[tokio::test]
    async fn picks_spread_evenly_over_equal_addresses() {
        let pool = pool(4);
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            counts[pool.pick()] += 1;
        }
        for c in counts {
            assert!((2_200..=2_800).contains(&c), "{counts:?}");
        }
        // The randomness itself: successive words differ and fill both halves.
        let words: Vec<u64> = (0..64).map(|_| pool.random()).collect();
        let distinct: std::collections::HashSet<_> = words.iter().collect();
        assert_eq!(distinct.len(), 64);
        assert!(words.iter().any(|w| w >> 63 == 1) && words.iter().any(|w| w >> 63 == 0));
        assert!(words.iter().any(|w| w & 1 == 1) && words.iter().any(|w| w & 1 == 0));
    }

    #[test]
    fn the_less_loaded_of_two_and_never_an_ejected_one() {
        // Two addresses: both are always the candidates, so the less loaded wins every time.
        for r in 0..200u64 {
            let r = r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(choose(2, r, |_| true, |i| [5, 1][i]), 1);
            assert_eq!(choose(2, r, |_| true, |i| [0, 3][i]), 0);
            assert_eq!(
                choose(2, r, |i| i == 0, |i| [5, 1][i]),
                0,
                "the other is ejected"
            );
            assert_eq!(choose(3, r, |i| i == 2, |_| 0), 2);
            assert!(
                choose(3, r, |_| false, |_| 0) < 3,
                "all ejected: still an address"
            );
        }
        // Among many, the least loaded of its pair: the most loaded is picked only when it is
        // both candidates, which it never is.
        let mut picked = [0usize; 5];
        for r in 0..5_000u64 {
            let r = r.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (r << 32);
            picked[choose(5, r, |_| true, |i| i)] += 1;
        }
        assert_eq!(picked[4], 0, "{picked:?}");
        assert!(
            picked[0] > picked[1] && picked[1] > picked[2] && picked[2] > picked[3],
            "{picked:?}"
        );
        // Every pair is reachable: each address is picked over a more loaded one sometimes.
        assert!(picked.iter().take(4).all(|&c| c > 0), "{picked:?}");
    }

    #[tokio::test]
    async fn failures_eject_within_the_allowed_share() {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(1)).await;
        let pool = pool(2); // at most 50% ejected, after 5 failures in a row
        for _ in 0..4 {
            pool.record(0, true);
        }
        assert!(!pool.is_ejected(0), "four are not enough");
        pool.record(0, false);
        for _ in 0..4 {
            pool.record(0, true);
        }
        assert!(!pool.is_ejected(0), "a success starts the run again");
        pool.record(0, true);
        assert!(pool.is_ejected(0));
        for _ in 0..10 {
            pool.record(1, true);
        }
        assert!(
            !pool.is_ejected(1),
            "the other half stays: half are out already"
        );
        assert_eq!(pool.endpoints[1].failures(), 10);
    }

    #[tokio::test]
    async fn an_ejection_lasts_its_time() {
        tokio::time::pause();
        let pool = pool(2);
        pool.endpoints[0]
            .ejected_until
            .store(pool.now_ms() + 1_000, Ordering::Relaxed);
        assert!(pool.is_ejected(0) && !pool.is_ejected(1));
        for _ in 0..20 {
            assert_eq!(pool.pick(), 1);
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(pool.is_ejected(0));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!pool.is_ejected(0), "over at its instant");
    }
}
