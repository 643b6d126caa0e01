//! The tenant layer: resolve, verify, look up, then call the inner service.

use std::{
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, HeaderName, Request, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_patterns_core::{
    BoxError, ConfigError,
    tenant::{TenantError, TenantErrorKind, TenantId},
};
use tower_service::Service;

use crate::{
    JwtVerifier, Registry, TenantStatus, TenantStore,
    registry::{ApiKeyHash, TenantRecord, hash_api_key},
};

/// The resolved tenant, in the request extensions beside its [`TenantId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantContext {
    record: Arc<TenantRecord>,
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

    /// The context an earlier [`TenantLayer`] put in `req`'s extensions.
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

/// A network, `10.0.0.0/8` or `::1/128` or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            ConfigError::new(
                "trusted_proxies",
                format!("{s:?} is not an address or CIDR"),
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
enum Source {
    Header(HeaderName),
    Subdomain(String),
    PathPrefix(String),
    Jwt(JwtVerifier),
    ApiKey(HeaderName),
}

impl Source {
    /// Whether the source proves the tenant (a signed token, a registered key) rather than
    /// merely naming it.
    const fn is_verified(&self) -> bool {
        matches!(self, Self::Jwt(_) | Self::ApiKey(_))
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Header(_) => "header",
            Self::Subdomain(_) => "subdomain",
            Self::PathPrefix(_) => "path",
            Self::Jwt(_) => "token",
            Self::ApiKey(_) => "API key",
        }
    }
}

struct Resolver<S> {
    sources: Vec<Source>,
    registry: Registry<S>,
    trusted: Vec<Net>,
    /// Whether a request that carries no verified credential may be resolved by its
    /// unverified sources alone ([`TenantLayerBuilder::allow_unverified`]).
    allow_unverified: bool,
}

/// What the synchronous part of resolution found.
enum Found<'r> {
    Tenant(Named<'r>),
    /// An API key whose owner is not cached: the lookup must wait for the registry.
    Key(ApiKeyHash, Option<Named<'r>>),
}

/// A tenant id a source names, validated: borrowed from the request where it is written there
/// (a header, the host, the path), so a registry hit allocates nothing; owned where it was
/// decoded (a token's claim, a cached API key's owner).
enum Named<'r> {
    Borrowed(&'r str),
    Owned(TenantId),
}

impl<'r> Named<'r> {
    /// Validates `id` as a tenant id, without copying it.
    fn borrowed(id: &'r str) -> Result<Self, TenantError> {
        TenantId::validate(id)?;
        Ok(Self::Borrowed(id))
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Borrowed(id) => id,
            Self::Owned(id) => id.as_str(),
        }
    }

    fn into_owned(self) -> Result<TenantId, TenantError> {
        match self {
            Self::Borrowed(id) => Ok(TenantId::new(id)?),
            Self::Owned(id) => Ok(id),
        }
    }
}

impl<S: TenantStore> Resolver<S> {
    fn peer<B>(req: &Request<B>) -> Option<IpAddr> {
        if let Some(PeerAddr(addr)) = req.extensions().get::<PeerAddr>() {
            return Some(addr.ip());
        }
        #[cfg(feature = "axum")]
        if let Some(info) = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(info.0.ip());
        }
        None
    }

    fn trusted(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.trusted.iter().any(|net| net.contains(ip)))
    }

    /// The client address (see [`ClientIp`]).
    fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted(Some(peer)) {
            return Some(peer);
        }
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else {
                return Some(client);
            };
            for hop in value.rsplit(',') {
                let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                    return Some(client);
                };
                client = ip;
                if !self.trusted(Some(ip)) {
                    return Some(client);
                }
            }
        }
        Some(client)
    }

    /// The host the client asked for: `Host` (or the URI's authority), and from a trusted
    /// proxy its forwarded host. A forwarded host from an untrusted peer that disagrees with
    /// `Host` is a spoofing attempt, refused.
    fn host<'r, B>(
        &self,
        req: &'r Request<B>,
        trusted_peer: bool,
    ) -> Result<Option<&'r str>, TenantError> {
        let direct = match req.headers().get(header::HOST) {
            Some(v) => Some(v.to_str().map_err(|_| malformed("Host"))?),
            None => req.uri().authority().map(|a| a.as_str()),
        };
        let forwarded = forwarded_host(req.headers())?;
        match (forwarded, trusted_peer) {
            (Some(fwd), true) => Ok(Some(fwd)),
            (Some(fwd), false) if direct.is_some_and(|d| !d.eq_ignore_ascii_case(fwd)) => {
                Err(TenantError::new(
                    TenantErrorKind::Conflict,
                    "forwarded host from an untrusted peer differs from Host",
                ))
            }
            _ => Ok(direct),
        }
    }

    fn resolve<'r, B>(
        &self,
        req: &'r Request<B>,
        peer: Option<IpAddr>,
    ) -> Result<Found<'r>, TenantError> {
        let trusted_peer = self.trusted(peer);
        let mut found: Option<(Named<'r>, &'static str)> = None;
        let mut key: Option<ApiKeyHash> = None;
        // Whether a verified source (a token, an API key) named the tenant.
        let mut verified = false;
        let mut agree = |id: Named<'r>, source: &'static str| -> Result<(), TenantError> {
            match &found {
                Some((seen, first)) if seen.as_str() != id.as_str() => Err(TenantError::new(
                    TenantErrorKind::Conflict,
                    format!(
                        "{first} names {}, {source} names {}",
                        seen.as_str(),
                        id.as_str()
                    ),
                )),
                Some(_) => Ok(()),
                None => {
                    found = Some((id, source));
                    Ok(())
                }
            }
        };
        for source in &self.sources {
            match source {
                Source::Header(name) => {
                    if let Some(value) = single(req.headers(), name)? {
                        if value.is_empty() {
                            return Err(TenantError::new(TenantErrorKind::Malformed, "empty"));
                        }
                        let value = value.to_str().map_err(|_| {
                            TenantError::new(TenantErrorKind::Malformed, "not visible ASCII")
                        })?;
                        agree(Named::borrowed(value)?, source.name())?;
                    }
                }
                Source::Subdomain(base) => {
                    if let Some(host) = self.host(req, trusted_peer)?
                        && let Some(label) = subdomain(host, base)
                    {
                        agree(Named::borrowed(label)?, source.name())?;
                    }
                }
                Source::PathPrefix(prefix) => {
                    if let Some(rest) = req.uri().path().strip_prefix(prefix.as_str()) {
                        let segment = rest.split('/').next().unwrap_or_default();
                        agree(Named::borrowed(segment)?, source.name())?;
                    }
                }
                Source::Jwt(verifier) => {
                    if let Some(value) = single(req.headers(), &header::AUTHORIZATION)? {
                        let value = value.to_str().map_err(|_| malformed("Authorization"))?;
                        let token = value
                            .strip_prefix("Bearer ")
                            .or_else(|| value.strip_prefix("bearer "))
                            .ok_or_else(|| {
                                TenantError::new(
                                    TenantErrorKind::InvalidCredentials,
                                    "Authorization is not a bearer token",
                                )
                            })?;
                        agree(Named::Owned(verifier.verify(token.trim())?), source.name())?;
                        verified = true;
                    }
                }
                Source::ApiKey(name) => {
                    if let Some(value) = single(req.headers(), name)? {
                        let value = value.to_str().map_err(|_| malformed("API key"))?;
                        let hash = hash_api_key(value);
                        match self.registry.cached_key(&hash) {
                            Some(Some(id)) => agree(Named::Owned(id), source.name())?,
                            Some(None) => return Err(unknown_key()),
                            None => key = Some(hash),
                        }
                        verified = true;
                    }
                }
            }
        }
        match (found, key) {
            (found, Some(hash)) => Ok(Found::Key(hash, found.map(|(id, _)| id))),
            (Some((id, _)), None) if verified || self.allow_unverified => Ok(Found::Tenant(id)),
            // A header, host or path alone proves nothing: without the opt-in, a verified
            // credential is required and the others may only agree with it.
            (Some((_, source)), None) => Err(TenantError::new(
                TenantErrorKind::MissingCredentials,
                format!(
                    "only the unverified {source} names a tenant; a token or API key is required"
                ),
            )),
            (None, None) => Err(TenantError::new(
                TenantErrorKind::MissingCredentials,
                "no source names a tenant",
            )),
        }
    }
}

fn unknown_key() -> TenantError {
    TenantError::new(TenantErrorKind::InvalidCredentials, "unknown API key")
}

fn malformed(what: &'static str) -> TenantError {
    TenantError::new(
        TenantErrorKind::Malformed,
        format!("{what} is not visible ASCII"),
    )
}

/// The one value of `name`; a header sent twice names no single tenant.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h http::HeaderValue>, TenantError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(TenantError::new(
            TenantErrorKind::Malformed,
            format!("{name} sent more than once"),
        ));
    }
    Ok(first)
}

/// `X-Forwarded-Host`, or the `host=` of the first element of `Forwarded`.
fn forwarded_host(headers: &HeaderMap) -> Result<Option<&str>, TenantError> {
    if let Some(v) = single(headers, &HeaderName::from_static("x-forwarded-host"))? {
        let v = v.to_str().map_err(|_| malformed("X-Forwarded-Host"))?;
        return Ok(v.split(',').next().map(str::trim));
    }
    if let Some(v) = headers.get(header::FORWARDED) {
        let v = v.to_str().map_err(|_| malformed("Forwarded"))?;
        let first = v.split(',').next().unwrap_or_default();
        for pair in first.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=')
                && k.eq_ignore_ascii_case("host")
            {
                return Ok(Some(val.trim_matches('"')));
            }
        }
    }
    Ok(None)
}

/// The single label of `host` (port dropped) directly under `base`.
fn subdomain<'h>(host: &'h str, base: &str) -> Option<&'h str> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() <= base.len() + 1 {
        return None;
    }
    let (label, rest) = host.split_at(host.len() - base.len() - 1);
    let rest = rest.strip_prefix('.')?;
    (rest.eq_ignore_ascii_case(base) && !label.contains('.')).then_some(label)
}

/// Resolves the tenant of every request; build it with [`TenantLayer::builder`].
///
/// Sources are tried in the order they were added; every source present must name the same
/// tenant (else 403), at least one must be present (else 401), the tenant must be in the
/// registry and active (else 403, the same answer for both). A header, the host and the path
/// are unverified: unless the builder was told
/// [`allow_unverified`](TenantLayerBuilder::allow_unverified), a verified token or API key
/// must be present (else 401) and they may only agree with it. The request then carries a
/// [`TenantId`], a
/// [`TenantContext`] and, when the peer is known, a [`ClientIp`]. Failures are
/// [`TenantError`]s, which the HTTP mapping of `tower-patterns-core` answers with the right
/// status.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_patterns_tenant::{StaticTenants, TenantContext, TenantLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tenants = StaticTenants::from_toml("[[tenants]]\nid = \"acme\"\nplan = \"gold\"").unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(
///         TenantLayer::builder(tenants)
///             .header("x-tenant-id")
///             .subdomain("shop.example")
///             .allow_unverified() // trusted internal callers only: anyone can send these
///             .build()
///             .unwrap(),
///     )
///     .service(service_fn(|req: Request<()>| async move {
///         let plan = TenantContext::of(&req).unwrap().plan().to_owned();
///         Ok::<_, Infallible>(Response::new(plan))
///     }));
///
/// let req = Request::builder().header("host", "acme.shop.example").body(()).unwrap();
/// assert_eq!(svc.clone().oneshot(req).await.unwrap().into_body(), "gold");
///
/// let conflict = Request::builder()
///     .header("host", "acme.shop.example")
///     .header("x-tenant-id", "globex")
///     .body(())
///     .unwrap();
/// let err = svc.oneshot(conflict).await.unwrap_err();
/// assert!(err.to_string().starts_with("conflicting tenant sources"));
/// # }
/// ```
pub struct TenantLayer<S> {
    resolver: Arc<Resolver<S>>,
}

impl<S> Clone for TenantLayer<S> {
    fn clone(&self) -> Self {
        Self {
            resolver: self.resolver.clone(),
        }
    }
}

impl<S> fmt::Debug for TenantLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantLayer")
            .field("sources", &self.resolver.sources)
            .field("allow_unverified", &self.resolver.allow_unverified)
            .finish_non_exhaustive()
    }
}

impl<S: TenantStore> TenantLayer<S> {
    /// A builder over the tenant store (cached with [`Registry::new`]'s defaults).
    pub fn builder(store: S) -> TenantLayerBuilder<S> {
        Self::builder_with(Registry::new(store))
    }

    /// A builder over a registry with its own cache settings.
    pub fn builder_with(registry: Registry<S>) -> TenantLayerBuilder<S> {
        TenantLayerBuilder {
            sources: Vec::new(),
            registry,
            trusted: Vec::new(),
            allow_unverified: false,
            error: None,
        }
    }

    /// The registry (to invalidate a tenant after a change).
    pub fn registry(&self) -> &Registry<S> {
        &self.resolver.registry
    }
}

/// Builds a [`TenantLayer`].
pub struct TenantLayerBuilder<S> {
    sources: Vec<Source>,
    registry: Registry<S>,
    trusted: Vec<Net>,
    allow_unverified: bool,
    error: Option<ConfigError>,
}

impl<S> fmt::Debug for TenantLayerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantLayerBuilder")
            .field("sources", &self.sources)
            .field("allow_unverified", &self.allow_unverified)
            .finish_non_exhaustive()
    }
}

impl<S: TenantStore> TenantLayerBuilder<S> {
    fn header_name(&mut self, name: &str) -> Option<HeaderName> {
        match HeaderName::try_from(name) {
            Ok(name) => Some(name),
            Err(_) => {
                self.error.get_or_insert_with(|| {
                    ConfigError::new("header", format!("{name:?} is not a header name"))
                });
                None
            }
        }
    }

    /// The tenant id in a header (`x-tenant-id`, say). Unverified: anyone can send it, so
    /// pair it with a token or an API key, which it must then agree with, or opt in with
    /// [`allow_unverified`](Self::allow_unverified).
    #[must_use]
    pub fn header(mut self, name: &str) -> Self {
        if let Some(name) = self.header_name(name) {
            self.sources.push(Source::Header(name));
        }
        self
    }

    /// The tenant as the one label of the host under `base` (`acme.shop.example`).
    /// Unverified, like [`header`](Self::header).
    #[must_use]
    pub fn subdomain(mut self, base: &str) -> Self {
        self.sources.push(Source::Subdomain(
            base.trim_matches('.').to_ascii_lowercase(),
        ));
        self
    }

    /// The tenant as the path segment after `prefix` (`/t/` gives `acme` for `/t/acme/orders`).
    /// Unverified, like [`header`](Self::header).
    #[must_use]
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.sources.push(Source::PathPrefix(prefix.to_owned()));
        self
    }

    /// The tenant as a claim of a verified bearer token.
    #[must_use]
    pub fn jwt(mut self, verifier: JwtVerifier) -> Self {
        self.sources.push(Source::Jwt(verifier));
        self
    }

    /// The tenant that owns the API key in header `name` (looked up by its SHA-256).
    #[must_use]
    pub fn api_key(mut self, name: &str) -> Self {
        if let Some(name) = self.header_name(name) {
            self.sources.push(Source::ApiKey(name));
        }
        self
    }

    /// Proxies (addresses or CIDRs) whose `X-Forwarded-Host`, `Forwarded` and
    /// `X-Forwarded-For` are believed. From any other peer they are not.
    #[must_use]
    pub fn trusted_proxies<'a>(mut self, nets: impl IntoIterator<Item = &'a str>) -> Self {
        for net in nets {
            match Net::parse(net) {
                Ok(net) => self.trusted.push(net),
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
        self
    }

    /// Lets a request that carries no token and no API key be resolved by its unverified
    /// sources (header, subdomain, path) alone: any caller can then choose any tenant, so
    /// use it only behind a gateway that authenticates, or for trusted internal callers.
    ///
    /// Without it the layer is closed: a layer with only unverified sources does not build,
    /// and one with a [`jwt`](Self::jwt) or [`api_key`](Self::api_key) source refuses a
    /// request that lacks such a credential with 401, whatever its header says. With it or
    /// without it, a credential that is present must verify (else 401) and every other
    /// source present must name the same tenant (else 403): an unverified source never
    /// outranks a verified one.
    #[must_use]
    pub const fn allow_unverified(mut self) -> Self {
        self.allow_unverified = true;
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a bad header name or proxy address, no source at all, or only
    /// unverified sources without [`allow_unverified`](Self::allow_unverified).
    pub fn build(self) -> Result<TenantLayer<S>, ConfigError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        if self.sources.is_empty() {
            return Err(ConfigError::new("sources", "no tenant source"));
        }
        if !self.allow_unverified && !self.sources.iter().any(Source::is_verified) {
            return Err(ConfigError::new(
                "sources",
                "only unverified tenant sources (header, subdomain, path): add a token or an API \
                 key, or call allow_unverified() for trusted internal callers",
            ));
        }
        Ok(TenantLayer {
            resolver: Arc::new(Resolver {
                sources: self.sources,
                registry: self.registry,
                trusted: self.trusted,
                allow_unverified: self.allow_unverified,
            }),
        })
    }
}

impl<S, Svc> Layer<Svc> for TenantLayer<S> {
    type Service = Tenancy<Svc, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        Tenancy {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}

/// The service of [`TenantLayer`].
pub struct Tenancy<Svc, S> {
    inner: Svc,
    resolver: Arc<Resolver<S>>,
}

impl<Svc: Clone, S> Clone for Tenancy<Svc, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            resolver: self.resolver.clone(),
        }
    }
}

impl<Svc: fmt::Debug, S> fmt::Debug for Tenancy<Svc, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenancy")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Svc, S> Tenancy<Svc, S> {
    /// A reference to the inner service.
    pub const fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub const fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

fn admit<B>(req: &mut Request<B>, record: Option<Arc<TenantRecord>>) -> Result<(), TenantError> {
    let record =
        record.ok_or_else(|| TenantError::new(TenantErrorKind::Unknown, "not in the registry"))?;
    if record.status == TenantStatus::Suspended {
        return Err(TenantError::new(
            TenantErrorKind::Suspended,
            format!("{} is suspended", record.id),
        ));
    }
    req.extensions_mut().insert(record.id.clone());
    req.extensions_mut().insert(TenantContext { record });
    Ok(())
}

type Lookup = Pin<Box<dyn Future<Output = Result<Option<Arc<TenantRecord>>, TenantError>> + Send>>;

impl<Svc, S, B> Service<Request<B>> for Tenancy<Svc, S>
where
    Svc: Service<Request<B>> + Clone,
    Svc::Error: Into<BoxError>,
    S: TenantStore,
{
    type Response = Svc::Response;
    type Error = BoxError;
    type Future = ResponseFuture<Svc, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let peer = Resolver::<S>::peer(&req);
        if let Some(ip) = self.resolver.client_ip(peer, req.headers()) {
            req.extensions_mut().insert(ClientIp(ip));
        }
        let failed = |err: TenantError| ResponseFuture {
            state: State::Failed {
                err: Some(err.into()),
            },
        };
        let lookup: Lookup = match self.resolver.resolve(&req, peer) {
            Err(err) => return failed(err),
            Ok(Found::Tenant(id)) => match self.resolver.registry.cached(id.as_str()) {
                Some(record) => {
                    if let Err(err) = admit(&mut req, record) {
                        return failed(err);
                    }
                    return ResponseFuture {
                        state: State::Called {
                            fut: self.inner.call(req),
                        },
                    };
                }
                None => {
                    let id = match id.into_owned() {
                        Ok(id) => id,
                        Err(err) => return failed(err),
                    };
                    let registry = self.resolver.registry.clone();
                    Box::pin(async move { registry.get(&id).await })
                }
            },
            Ok(Found::Key(hash, named)) => {
                let named = match named.map(Named::into_owned).transpose() {
                    Ok(named) => named,
                    Err(err) => return failed(err),
                };
                let registry = self.resolver.registry.clone();
                Box::pin(async move {
                    let owner = registry.by_api_key(&hash).await?.ok_or_else(unknown_key)?;
                    if let Some(named) = named
                        && named != owner
                    {
                        return Err(TenantError::new(
                            TenantErrorKind::Conflict,
                            format!("API key belongs to {owner}, another source names {named}"),
                        ));
                    }
                    registry.get(&owner).await
                })
            }
        };
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Looking {
                lookup,
                pending: Some((svc, req)),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Tenancy`].
    pub struct ResponseFuture<Svc: Service<Req>, Req> {
        #[pin]
        state: State<Svc, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Svc: Service<Req>, Req> {
        Looking { lookup: Lookup, pending: Option<(Svc, Req)> },
        Called { #[pin] fut: Svc::Future },
        Failed { err: Option<BoxError> },
    }
}

impl<Svc: Service<Req>, Req> fmt::Debug for ResponseFuture<Svc, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<Svc, B> Future for ResponseFuture<Svc, Request<B>>
where
    Svc: Service<Request<B>>,
    Svc::Error: Into<BoxError>,
{
    type Output = Result<Svc::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Looking { lookup, pending } => {
                    let record = ready!(lookup.as_mut().poll(cx));
                    let Some((mut svc, mut req)) = pending.take() else {
                        return Poll::Ready(Err("tenant future polled after completion".into()));
                    };
                    if let Err(err) = record.and_then(|record| admit(&mut req, record)) {
                        return Poll::Ready(Err(err.into()));
                    }
                    this.state.set(State::Called { fut: svc.call(req) });
                }
                StateProj::Called { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or_else(|| "tenant future polled after completion".into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_and_networks() {
        assert_eq!(subdomain("acme.shop.example", "shop.example"), Some("acme"));
        assert_eq!(
            subdomain("ACME.Shop.Example:8443", "shop.example"),
            Some("ACME")
        );
        assert_eq!(subdomain("a.b.shop.example", "shop.example"), None);
        assert_eq!(subdomain("shop.example", "shop.example"), None);
        assert_eq!(subdomain("evilshop.example", "shop.example"), None);
        // A port is digits; anything else after a colon is no port, and no host of ours.
        assert_eq!(subdomain("acme.shop.example:x", "shop.example"), None);
        assert_eq!(
            subdomain("acme.shop.example:", "shop.example"),
            Some("acme")
        );
        // An empty label is no label.
        assert_eq!(subdomain(".shop.example", "shop.example"), None);
        assert_eq!(subdomain("x.shop.example", "shop.example"), Some("x"));
        assert_eq!(
            subdomain("acme.shop.example.", "shop.example"),
            Some("acme")
        );
        let net = Net::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(Net::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Net::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("nonsense").is_err());
    }

    #[test]
    fn networks_mask_exactly_their_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4 = Net::parse("10.1.2.0/24").unwrap();
        for inside in ["10.1.2.0", "10.1.2.1", "10.1.2.255", "::ffff:10.1.2.7"] {
            assert!(v4.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "10.1.3.0",
            "10.1.1.255",
            "11.1.2.1",
            "10.129.2.1",
            "::a01:207",
        ] {
            assert!(!v4.contains(ip(outside)), "{outside}");
        }
        let pair = Net::parse("192.0.2.6/31").unwrap();
        assert!(pair.contains(ip("192.0.2.7")) && pair.contains(ip("192.0.2.6")));
        assert!(!pair.contains(ip("192.0.2.5")) && !pair.contains(ip("192.0.2.8")));
        let one = Net::parse("192.0.2.6").unwrap();
        assert!(one.contains(ip("192.0.2.6")) && !one.contains(ip("192.0.2.7")));
        let all = Net::parse("0.0.0.0/0").unwrap();
        for any in ["8.8.8.8", "8.8.8.9", "255.255.255.255", "0.0.0.1"] {
            assert!(all.contains(ip(any)), "{any}");
        }
        assert!(
            !all.contains(ip("2001:db8::1")),
            "an IPv4 net holds no IPv6 address"
        );

        let v6 = Net::parse("2001:db8::/32").unwrap();
        for inside in ["2001:db8::", "2001:db8::1", "2001:db8:ffff:ffff::9"] {
            assert!(v6.contains(ip(inside)), "{inside}");
        }
        for outside in ["2001:db9::", "2001:db7:ffff::", "3001:db8::1", "10.0.0.1"] {
            assert!(!v6.contains(ip(outside)), "{outside}");
        }
        let host = Net::parse("2001:db8::7/128").unwrap();
        assert!(host.contains(ip("2001:db8::7")) && !host.contains(ip("2001:db8::6")));
        let every6 = Net::parse("::/0").unwrap();
        for any in ["::1", "::2", "ffff::"] {
            assert!(every6.contains(ip(any)), "{any}");
        }
        assert!(Net::parse("::/129").is_err());
        assert!(Net::parse("10.0.0.0/x").is_err());
        assert_eq!(
            Net::parse("10.0.0.0/32").unwrap(),
            Net::parse("10.0.0.0").unwrap()
        );
    }
}
