//! Where a request names its tenant, and reading each place: headers, the host (with the
//! forwarded host), the path.
//!
//! # `Forwarded` (RFC 7239) is read here, not with a crate
//!
//! Only one thing is read from `Forwarded`: the `host=` of its first element, and only when
//! no `X-Forwarded-Host` is present. `forwarded-header-value` (0.1.1, its last release in
//! 2021) was weighed and not adopted: it parses every element of the header into owned
//! `String`s and a `Vec` on each request that carries one, and fails the whole header when any
//! element's `for=` or `proto=` does not parse (an obfuscated or quoted port form), which we
//! would have to turn into either a refusal or a silently ignored host; both change what the
//! trust rules say (a forwarded host from a trusted proxy wins, one from an untrusted peer
//! must agree with `Host`). It also splits on `,` and `;` without regard to quoting, as this
//! reader does, so it would add no correctness either. `rfc7239` (zero-copy) has the same
//! whole-value failure. The few lines below borrow from the header and allocate nothing.

use http::{HeaderMap, HeaderName, header};
use tower_patterns_core::tenant::{TenantError, TenantErrorKind, TenantId};

use crate::{JwtVerifier, registry::ApiKeyHash};

#[derive(Debug)]
pub(super) enum Source {
    Header(HeaderName),
    Subdomain(String),
    PathPrefix(String),
    Jwt(JwtVerifier),
    ApiKey(HeaderName),
}

impl Source {
    /// Whether the source proves the tenant (a signed token, a registered key) rather than
    /// merely naming it.
    pub(super) const fn is_verified(&self) -> bool {
        matches!(self, Self::Jwt(_) | Self::ApiKey(_))
    }

    pub(super) const fn name(&self) -> &'static str {
        match self {
            Self::Header(_) => "header",
            Self::Subdomain(_) => "subdomain",
            Self::PathPrefix(_) => "path",
            Self::Jwt(_) => "token",
            Self::ApiKey(_) => "API key",
        }
    }
}

/// What the synchronous part of resolution found.
pub(super) enum Found<'r> {
    Tenant(Named<'r>),
    /// An API key whose owner is not cached: the lookup must wait for the registry.
    Key(ApiKeyHash, Option<Named<'r>>),
}

/// A tenant id a source names, validated: borrowed from the request where it is written there
/// (a header, the host, the path), so a registry hit allocates nothing; owned where it was
/// decoded (a token's claim, a cached API key's owner).
pub(super) enum Named<'r> {
    Borrowed(&'r str),
    Owned(TenantId),
}

impl<'r> Named<'r> {
    /// Validates `id` as a tenant id, without copying it.
    pub(super) fn borrowed(id: &'r str) -> Result<Self, TenantError> {
        TenantId::validate(id)?;
        Ok(Self::Borrowed(id))
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            Self::Borrowed(id) => id,
            Self::Owned(id) => id.as_str(),
        }
    }

    pub(super) fn into_owned(self) -> Result<TenantId, TenantError> {
        match self {
            Self::Borrowed(id) => Ok(TenantId::new(id)?),
            Self::Owned(id) => Ok(id),
        }
    }
}

pub(super) fn unknown_key() -> TenantError {
    TenantError::new(TenantErrorKind::InvalidCredentials, "unknown API key")
}

pub(super) fn malformed(what: &'static str) -> TenantError {
    TenantError::new(
        TenantErrorKind::Malformed,
        format!("{what} is not visible ASCII"),
    )
}

/// The one value of `name`; a header sent twice names no single tenant.
pub(super) fn single<'h>(
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

/// `X-Forwarded-Host`, or the `host=` of the first element of `Forwarded` (see the module
/// docs for why no crate reads it).
pub(super) fn forwarded_host(headers: &HeaderMap) -> Result<Option<&str>, TenantError> {
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
pub(super) fn subdomain<'h>(host: &'h str, base: &str) -> Option<&'h str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
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
    }
}
