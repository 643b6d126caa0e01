//! Whether and how long the HTTP cache stores a response (RFC 9111 §3 and §4.2): pure, from
//! the request and response heads.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, StatusCode, header};

use super::{
    cache_control::{CacheControl, http_date},
    stored::VaryValues,
};

/// The cache's limits that decide storing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The largest body stored.
    pub(crate) max_body: usize,
    /// Heuristic freshness for responses that give none.
    pub(crate) default_ttl: Option<Duration>,
}

/// How a storable response is stored.
#[derive(Debug)]
pub(crate) struct Storage {
    /// Its `Cache-Control`.
    pub(crate) cc: CacheControl,
    /// Its freshness lifetime.
    pub(crate) lifetime: Duration,
    /// The request headers its `Vary` names, as sent.
    pub(crate) vary: VaryValues,
}

/// Decides whether and how long to store a response of `status` and `res_headers` whose body
/// is `body_size` bytes (`None`: unknown), fetched for `req_headers`; `None`: not stored.
pub(crate) fn storable(
    limits: Limits,
    req_headers: &HeaderMap,
    status: StatusCode,
    res_headers: &HeaderMap,
    body_size: Option<u64>,
) -> Option<Storage> {
    let cc = CacheControl::parse(res_headers);
    if cc.no_store || cc.private || res_headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    if status == StatusCode::PARTIAL_CONTENT || status.is_informational() {
        return None;
    }
    if req_headers.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return None;
    }
    let size = body_size?;
    if usize::try_from(size).map_or(true, |s| s > limits.max_body) {
        return None;
    }
    let mut vary = Vec::new();
    for value in res_headers.get_all(header::VARY) {
        let value = value.to_str().ok()?;
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let sent = req_headers.get(&name).cloned();
            vary.push((name, sent));
        }
    }
    let explicit = cc
        .s_maxage
        .or(cc.max_age)
        .map(Duration::from_secs)
        .or_else(|| {
            let expires = http_date(res_headers, header::EXPIRES)?;
            let date = http_date(res_headers, header::DATE).unwrap_or_else(SystemTime::now);
            Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
        });
    let heuristic = || {
        matches!(
            status.as_u16(),
            200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
        )
        .then_some(limits.default_ttl)
        .flatten()
    };
    let lifetime = explicit.or_else(heuristic)?;
    // A response that is stale on arrival and cannot be revalidated is not worth storing.
    let has_validator =
        res_headers.contains_key(header::ETAG) || res_headers.contains_key(header::LAST_MODIFIED);
    if lifetime.is_zero() && !has_validator && !cc.no_cache {
        return None;
    }
    Some(Storage { cc, lifetime, vary })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h
    }

    const LIMITS: Limits = Limits {
        max_body: 10,
        default_ttl: None,
    };

    #[test]
    fn storable_follows_the_response_directives() {
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        let s = storable(
            LIMITS,
            &none,
            ok,
            &headers(&[("cache-control", "max-age=60, s-maxage=5")]),
            Some(3),
        )
        .unwrap();
        assert_eq!(s.lifetime, 5 * SEC, "s-maxage wins");
        for refused in ["no-store, max-age=60", "private, max-age=60"] {
            let h = headers(&[("cache-control", refused)]);
            assert!(
                storable(LIMITS, &none, ok, &h, Some(3)).is_none(),
                "{refused}"
            );
        }
        let cookie = headers(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]);
        assert!(storable(LIMITS, &none, ok, &cookie, Some(3)).is_none());
        let fresh = headers(&[("cache-control", "max-age=60")]);
        assert!(storable(LIMITS, &none, StatusCode::PARTIAL_CONTENT, &fresh, Some(3)).is_none());
        assert!(
            storable(LIMITS, &none, ok, &fresh, None).is_none(),
            "unknown size"
        );
        assert!(
            storable(LIMITS, &none, ok, &fresh, Some(11)).is_none(),
            "too big"
        );
        assert!(storable(LIMITS, &none, ok, &fresh, Some(10)).is_some());
        let star = headers(&[("cache-control", "max-age=60"), ("vary", "*")]);
        assert!(storable(LIMITS, &none, ok, &star, Some(3)).is_none());
        let vary = headers(&[("cache-control", "max-age=60"), ("vary", "accept, x-a")]);
        let req = headers(&[("accept", "text/html")]);
        let s = storable(LIMITS, &req, ok, &vary, Some(3)).unwrap();
        assert_eq!(
            s.vary,
            vec![
                (header::ACCEPT, Some(HeaderValue::from_static("text/html"))),
                (HeaderName::from_static("x-a"), None)
            ]
        );
    }

    #[test]
    fn storable_with_authorization_needs_a_shared_directive() {
        let auth = headers(&[("authorization", "Bearer x")]);
        let ok = StatusCode::OK;
        let plain = headers(&[("cache-control", "max-age=60")]);
        assert!(storable(LIMITS, &auth, ok, &plain, Some(1)).is_none());
        for allowed in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            let h = headers(&[("cache-control", allowed)]);
            assert!(
                storable(LIMITS, &auth, ok, &h, Some(1)).is_some(),
                "{allowed}"
            );
        }
    }

    #[test]
    fn storable_freshness_from_expires_or_the_heuristic() {
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        let expires = headers(&[
            ("date", "Tue, 01 Dec 2026 00:00:00 GMT"),
            ("expires", "Tue, 01 Dec 2026 00:02:00 GMT"),
        ]);
        assert_eq!(
            storable(LIMITS, &none, ok, &expires, Some(1))
                .unwrap()
                .lifetime,
            120 * SEC
        );
        assert!(
            storable(LIMITS, &none, ok, &none, Some(1)).is_none(),
            "no freshness, no default"
        );
        let heuristic = Limits {
            default_ttl: Some(7 * SEC),
            ..LIMITS
        };
        assert_eq!(
            storable(heuristic, &none, ok, &none, Some(1))
                .unwrap()
                .lifetime,
            7 * SEC
        );
        assert!(storable(heuristic, &none, StatusCode::CREATED, &none, Some(1)).is_none());
        // Stale on arrival: kept only with a validator or no-cache.
        let zero = headers(&[("cache-control", "max-age=0")]);
        assert!(storable(LIMITS, &none, ok, &zero, Some(1)).is_none());
        let zero_etag = headers(&[("cache-control", "max-age=0"), ("etag", "\"a\"")]);
        assert!(storable(LIMITS, &none, ok, &zero_etag, Some(1)).is_some());
        let no_cache = headers(&[("cache-control", "no-cache, max-age=0")]);
        assert!(storable(LIMITS, &none, ok, &no_cache, Some(1)).is_some());
    }
}
