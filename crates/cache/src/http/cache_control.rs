//! The `Cache-Control` directives the cache acts on, and HTTP dates.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, header};

/// The directives of a `Cache-Control` header that this cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` (or `proxy-revalidate`).
    pub must_revalidate: bool,
    /// `stale-while-revalidate`, seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error`, seconds.
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` header of `headers`. Unknown directives are ignored; a
    /// malformed number makes its directive count as absent, except `max-age` and `s-maxage`,
    /// which then count as 0 (stale at once: the safe reading of RFC 9111 §4.2.1).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => cc.max_age = Some(secs().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(secs().unwrap_or(0)),
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    "stale-if-error" => cc.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        cc
    }
}

pub(crate) fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn cache_control_parses_what_it_acts_on() {
        let mut h = HeaderMap::new();
        h.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        h.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static(
                "s-maxage=\"120\", stale-while-revalidate=30, Must-Revalidate",
            ),
        );
        let cc = CacheControl::parse(&h);
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(120));
        assert_eq!(cc.stale_while_revalidate, Some(30));
        assert!(cc.public && cc.must_revalidate && !cc.no_store);
        let mut bad = HeaderMap::new();
        bad.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=soon, no-store"),
        );
        let cc = CacheControl::parse(&bad);
        assert_eq!(cc.max_age, Some(0), "a malformed max-age is stale at once");
        assert!(cc.no_store);
    }
}
