//! Upstream groups: several addresses behind one name, each group with its own resilience
//! stack, outermost first: retry (idempotent requests only, within a budget) → circuit
//! breaker (5xx and errors fail) → bulkhead → timeout per attempt → the balancer with outlier
//! ejection.

pub(crate) mod balance;
pub(crate) mod outlier;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, util::BoxCloneSyncService};
use tower_patterns_breaker::CircuitBreakerLayer;
use tower_patterns_bulkhead::BulkheadLayer;
use tower_patterns_core::{
    BoxError, ConfigError, Rejected,
    classify::{Outcome, predicate},
    observe::{Health, Report, StateHandle},
};
use tower_patterns_retry::{Backoff, RetryBudget, RetryPolicy};

use crate::{GatewayBody, config::schema};
use balance::{Pick, Pool};
use outlier::OutlierPolicy;

/// The service of a group (or of a route): boxed, `Clone`, `Sync`.
pub(crate) type GroupService =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<GatewayBody>, BoxError>;

/// One `[upstreams.<name>]`, built: its service and the handles of its parts.
pub(crate) struct Group {
    pub(crate) settings: schema::Upstream,
    pub(crate) service: GroupService,
    pub(crate) pool: Arc<Pool>,
    pub(crate) handles: Vec<Arc<dyn StateHandle>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Group {
    pub(crate) fn build(
        gateway: &str,
        name: &str,
        settings: &schema::Upstream,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        let full: Arc<str> = format!("{gateway}.{name}").into();
        let addrs: Vec<SocketAddr> = settings
            .addresses
            .iter()
            .filter_map(|a| a.get_ref().parse().ok())
            .collect();
        let outlier = settings
            .outlier
            .as_ref()
            .map_or_else(OutlierPolicy::default, |o| {
                let d = OutlierPolicy::default();
                OutlierPolicy {
                    consecutive_failures: o.consecutive_failures.unwrap_or(d.consecutive_failures),
                    base_ejection: o.base_ejection.map_or(d.base_ejection, |b| b.0),
                    max_ejected_percent: o.max_ejected_percent.unwrap_or(d.max_ejected_percent),
                }
            });
        let connect = settings
            .connect_timeout
            .map_or(Duration::from_secs(1), |d| d.0);
        let pool = Arc::new(Pool::new(full.clone(), &addrs, connect, outlier, seed));
        let mut handles: Vec<Arc<dyn StateHandle>> =
            vec![Arc::new(GroupHandle { pool: pool.clone() })];

        let timeout = settings.timeout.map_or(Duration::from_secs(30), |d| d.0);
        let b = settings.breaker.as_ref();
        // 5xx answers and errors fail, as tower-http's `ServerErrorsAsFailures` says, decided on
        // the status alone so the body streams through unwrapped; a rejection from below (the
        // bulkhead full) says nothing about the upstream and counts neither way.
        let breaker = CircuitBreakerLayer::builder(full.clone())
            .count_window(b.and_then(|b| b.window).unwrap_or(100))
            .minimum_calls(b.and_then(|b| b.minimum_calls).unwrap_or(20))
            .failure_rate(b.and_then(|b| b.failure_rate).unwrap_or(0.5))
            .open_duration(
                b.and_then(|b| b.open_for)
                    .map_or(Duration::from_secs(10), |d| d.0),
            )
            .classifier(predicate(
                |res: &Result<Response<GatewayBody>, BoxError>| match res {
                    Ok(res) if res.status().is_server_error() => Outcome::Failure,
                    Ok(_) => Outcome::Success,
                    Err(e) if Rejected::find(&**e).is_some() => Outcome::Ignored,
                    Err(_) => Outcome::Failure,
                },
            ))
            .build()?;
        handles.push(Arc::new(breaker.handle()));
        let max_concurrent = settings
            .bulkhead
            .as_ref()
            .map_or(1024, |b| b.max_concurrent);
        let mut bulkhead = BulkheadLayer::builder(full.clone()).max_concurrent(max_concurrent);
        if let Some(wait) = settings.bulkhead.as_ref().and_then(|b| b.max_wait) {
            bulkhead = bulkhead.max_wait(wait.0);
        }
        let bulkhead = bulkhead.build()?;
        handles.push(Arc::new(bulkhead.handle()));

        let inner = ServiceBuilder::new()
            .layer(breaker)
            .layer(bulkhead)
            .service(Pick::new(pool.clone(), timeout));
        let service = match &settings.retry {
            Some(r) if r.attempts > 1 => {
                let budget = RetryBudget::new(
                    r.budget_tokens.unwrap_or(10.0),
                    r.budget_ratio.unwrap_or(0.1),
                )?;
                let policy = RetryPolicy::builder(full.clone())
                    .http()
                    .max_attempts(r.attempts)
                    .backoff(Backoff::FullJitter {
                        base: r.backoff.map_or(Duration::from_millis(25), |d| d.0),
                    })
                    .budget(budget)
                    .seed(seed)
                    .build()?;
                handles.push(Arc::new(policy.handle()));
                BoxCloneSyncService::new(ServiceBuilder::new().layer(policy.layer()).service(inner))
            }
            _ => BoxCloneSyncService::new(inner),
        };
        Ok(Self {
            settings: settings.clone(),
            service,
            pool,
            handles,
        })
    }
}

/// The state of one group's addresses (pattern `gateway`): requests, failures, in flight and
/// ejected per address.
#[derive(Clone, Debug)]
pub(crate) struct GroupHandle {
    pool: Arc<Pool>,
}

impl StateHandle for GroupHandle {
    fn pattern(&self) -> &'static str {
        "gateway"
    }

    fn name(&self) -> &str {
        &self.pool.name
    }

    fn report(&self) -> Report {
        let total = self.pool.endpoints.len();
        let ejected = (0..total).filter(|&i| self.pool.is_ejected(i)).count();
        let health = match ejected {
            0 => Health::Ready,
            n if n < total => Health::Degraded,
            _ => Health::Unavailable,
        };
        let state = match health {
            Health::Ready => "all_in",
            Health::Degraded => "some_ejected",
            Health::Unavailable => "all_ejected",
        };
        let mut report = Report::new("gateway", self.pool.name.to_string(), health, state)
            .with_value("addresses", total as f64)
            .with_value("ejected", ejected as f64);
        let (mut requests, mut failures, mut in_flight, mut ejections) = (0, 0, 0, 0);
        for e in &self.pool.endpoints {
            requests += e.requests();
            failures += e.failures();
            in_flight += e.in_flight();
            ejections += e.ejections.load(std::sync::atomic::Ordering::Relaxed);
        }
        report = report
            .with_value("requests", requests as f64)
            .with_value("failures", failures as f64)
            .with_value("in_flight", in_flight as f64)
            .with_value("ejections", ejections as f64);
        report
    }
}
