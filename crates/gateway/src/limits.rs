//! Per-consumer, per-tenant or per-client-address limits: the rate limit crate's limiters
//! (GCRA in process, or GCRA on Redis shared by every gateway instance), keyed by the
//! identity authentication found, with a rate per plan.

use std::{collections::HashMap, fmt, net::SocketAddr, sync::Arc};

use http::Request;
use tower_patterns_core::{BoxError, KeyError, key::KeyExtractor};
use tower_patterns_ratelimit::{
    Decision, GcraLimiter, HasHandle, KeyedRateLimitHandle, Limiter, PerRequest, Rate,
};

use crate::auth::Identity;

/// The peer address of the connection a request came on, in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// What a limit counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Consumer,
    Tenant,
    ClientIp,
}

impl KeyKind {
    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "tenant" => Self::Tenant,
            "client_ip" => Self::ClientIp,
            _ => Self::Consumer,
        }
    }
}

/// A limit's key: the consumer, the tenant or the client's IP address, tagged with which
/// (`c:`, `t:`, `ip:` in its text form), so no consumer id can stand for an address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LimitKey {
    tag: &'static str,
    id: Arc<str>,
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tag, self.id)
    }
}

/// Takes a [`LimitKey`] from the request's identity or peer address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdentityKey(pub(crate) KeyKind);

impl<B> KeyExtractor<Request<B>> for IdentityKey {
    type Key = LimitKey;

    /// The consumer or tenant; a request without one (anonymous, on a route whose auth is
    /// optional, or a consumer without a tenant) is counted by its client address instead,
    /// under a key of its own kind.
    fn extract(&self, req: &Request<B>) -> Result<LimitKey, KeyError> {
        let identity = req.extensions().get::<Identity>();
        let by_identity = match self.0 {
            KeyKind::Consumer => identity.map(|i| LimitKey {
                tag: "c",
                id: i.consumer_arc(),
            }),
            KeyKind::Tenant => identity.and_then(Identity::tenant).map(|t| LimitKey {
                tag: "t",
                id: t.as_str().into(),
            }),
            KeyKind::ClientIp => None,
        };
        if let Some(key) = by_identity {
            return Ok(key);
        }
        let addr = req
            .extensions()
            .get::<ClientAddr>()
            .ok_or_else(|| KeyError::missing("client address"))?;
        Ok(LimitKey {
            tag: "ip",
            id: addr.0.ip().to_string().into(),
        })
    }
}

/// The rate of the identity's plan, when the limit names one.
#[derive(Clone, Debug, Default)]
pub(crate) struct PlanRates(pub(crate) Arc<HashMap<String, Rate>>);

impl<B> PerRequest<Request<B>, Rate> for PlanRates {
    fn choose(&self, req: &Request<B>) -> Option<Rate> {
        if self.0.is_empty() {
            return None;
        }
        let plan = req.extensions().get::<Identity>()?.plan()?;
        self.0.get(plan).copied()
    }
}

type Gcra = GcraLimiter<IdentityKey, LimitKey, PlanRates>;
#[cfg(feature = "redis")]
type Redis = tower_patterns_ratelimit::redis::RedisLimiter<IdentityKey, PlanRates>;

/// One `[limits.<name>]`: in process or on Redis.
#[derive(Clone)]
pub(crate) enum RouteLimiter {
    Gcra(Arc<Gcra>),
    #[cfg(feature = "redis")]
    Redis(Arc<Redis>),
}

impl fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gcra(l) => l.fmt(f),
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.fmt(f),
        }
    }
}

/// The future of a limit decided over the network.
pub(crate) type LimitFuture = std::pin::Pin<
    Box<
        dyn Future<Output = Result<Option<tower_patterns_core::error::RateLimitInfo>, BoxError>>
            + Send,
    >,
>;

impl<B> Limiter<Request<B>> for RouteLimiter {
    type Future = LimitFuture;

    fn check(&self, req: &Request<B>) -> Decision<LimitFuture> {
        match self {
            Self::Gcra(l) => match l.check(req) {
                Decision::Now(d) => Decision::Now(d),
                Decision::Later(never) => Decision::Later(Box::pin(never)),
            },
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.check(req),
        }
    }
}

impl HasHandle for RouteLimiter {
    fn handle(&self) -> KeyedRateLimitHandle {
        match self {
            Self::Gcra(l) => l.handle(),
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.handle(),
        }
    }
}
