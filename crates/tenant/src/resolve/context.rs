//! What the layer puts in a request's extensions, and the peer address it reads from them.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::Request;
use tower_patterns_core::tenant::TenantId;

use crate::registry::TenantRecord;

/// The resolved tenant, in the request extensions beside its [`TenantId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantContext {
    pub(super) record: Arc<TenantRecord>,
}

impl TenantContext {
    /// The tenant.
    pub fn id(&self) -> &TenantId {
        &self.record.id
    }

    /// The tenant's plan (`free`, `gold`...).
    pub fn plan(&self) -> &str {
        &self.record.plan
    }

    /// The registry's record.
    pub fn record(&self) -> &TenantRecord {
        &self.record
    }

    /// The context an earlier [`TenancyLayer`](super::TenancyLayer) put in `req`'s extensions.
    pub fn of<B>(req: &Request<B>) -> Option<&Self> {
        req.extensions().get::<Self>()
    }
}

/// The address of the connection's peer, for the trusted-proxy check. Insert it yourself with
/// hyper; with axum's `into_make_service_with_connect_info::<SocketAddr>()` the `axum`
/// feature reads `ConnectInfo` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address of `X-Forwarded-For` (walked from the right). A per-client rate limit
/// keys on it with `ExtensionKey::<ClientIp>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
