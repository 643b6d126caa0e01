//! The resolver: which tenant a request names, by every source the layer was built with, and
//! whether those sources agree.

use std::{net::IpAddr, sync::Arc};

use http::{HeaderMap, Request, header};
use tower_patterns_core::tenant::{TenantError, TenantErrorKind};

use super::{
    context::PeerAddr,
    net::Net,
    sources::{Found, Named, Source, forwarded_host, malformed, single, subdomain, unknown_key},
    stats::Stats,
};
use crate::{
    Registry, TenantStore,
    registry::{ApiKeyHash, hash_api_key},
};

/// What a built layer shares with its services, their futures and its handles.
pub(super) struct Resolver<S> {
    pub(super) name: Arc<str>,
    pub(super) sources: Vec<Source>,
    pub(super) registry: Registry<S>,
    pub(super) trusted: Vec<Net>,
    /// Whether a request that carries no verified credential may be resolved by its
    /// unverified sources alone ([`TenancyBuilder::allow_unverified`](super::TenancyBuilder::allow_unverified)).
    pub(super) allow_unverified: bool,
    pub(super) stats: Stats,
}

impl<S> Resolver<S> {
    pub(super) fn peer<B>(req: &Request<B>) -> Option<IpAddr> {
        if let Some(PeerAddr(addr)) = req.extensions().get::<PeerAddr>() {
            return Some(addr.ip());
        }
        #[cfg(feature = "axum")]
        if let Some(info) = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        {
            return Some(info.0.ip());
        }
        None
    }

    fn trusted(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.trusted.iter().any(|net| net.contains(ip)))
    }

    /// The client address (see [`ClientIp`](super::ClientIp)).
    pub(super) fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
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
}

impl<S: TenantStore> Resolver<S> {
    pub(super) fn resolve<'r, B>(
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
