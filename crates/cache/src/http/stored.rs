//! What the cache stores for a URL, and the answers it builds from a stored variant.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tokio::time::Instant;

use super::{HttpCacheBody, X_CACHE, cache_control::http_date};
use crate::Entry;

/// A stored response: one variant of a URL.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The request headers named by `Vary`, as the request that fetched this variant sent them.
    pub(crate) vary: VaryValues,
    /// Age the origin reported (the `Age` header) when it was received.
    pub(crate) initial_age: Duration,
    /// Freshness lifetime.
    pub(crate) lifetime: Duration,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    /// `no-cache`: revalidate before every use.
    pub(crate) no_cache: bool,
    /// `must-revalidate`: never serve stale, whatever the other directives say.
    pub(crate) must_revalidate: bool,
    /// May answer requests with `Authorization`.
    pub(crate) shareable_with_auth: bool,
}

impl Stored {
    pub(crate) fn matches(&self, req: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| req.get(name) == value.as_ref())
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }
}

/// The request headers a variant was chosen by.
pub(crate) type VaryValues = Vec<(HeaderName, Option<HeaderValue>)>;

/// The variants stored for one URL (few: one per distinct set of `Vary` header values).
pub(crate) type Variants = Arc<Vec<Arc<Entry<Stored>>>>;

pub(crate) const MAX_VARIANTS: usize = 8;

fn age_of(entry: &Entry<Stored>, now: Instant) -> Duration {
    entry.value().initial_age + entry.age(now)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Hit,
    Miss,
    Stale,
}

impl Verdict {
    pub(crate) fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
        })
    }
}

/// Builds the answer from a stored variant: `Age`, `x-cache`, and 304 to a matching
/// conditional request; no body for HEAD.
pub(crate) fn answer<B>(
    entry: &Entry<Stored>,
    verdict: Verdict,
    conditional: &Conditional,
    head: bool,
    now: Instant,
) -> Response<HttpCacheBody<B>> {
    let stored = entry.value();
    let not_modified = conditional.matches(stored);
    let mut res = Response::new(Either::Left(if not_modified || head {
        Full::new(Bytes::new())
    } else {
        Full::new(stored.body.clone())
    }));
    *res.status_mut() = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        stored.status
    };
    *res.headers_mut() = stored.headers.clone();
    if not_modified {
        res.headers_mut().remove(header::CONTENT_LENGTH);
    }
    res.headers_mut()
        .insert(header::AGE, HeaderValue::from(age_of(entry, now).as_secs()));
    res.headers_mut().insert(X_CACHE, verdict.header());
    res
}

/// The client's own validators, taken off the request so the cache can send its own.
#[derive(Default)]
pub(crate) struct Conditional {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<SystemTime>,
}

impl Conditional {
    pub(crate) fn take(headers: &mut HeaderMap) -> Self {
        let if_none_match = headers.remove(header::IF_NONE_MATCH);
        let if_modified_since = headers
            .remove(header::IF_MODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        Self {
            if_none_match,
            if_modified_since,
        }
    }

    pub(crate) fn matches(&self, stored: &Stored) -> bool {
        if stored.status != StatusCode::OK {
            return false;
        }
        if let Some(inm) = &self.if_none_match {
            // Weak comparison (RFC 9110 §13.1.2): W/ prefixes are ignored.
            let Some(etag) = stored.etag().and_then(|e| e.to_str().ok()) else {
                return false;
            };
            let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
            return inm.to_str().is_ok_and(|list| {
                list.trim() == "*" || list.split(',').any(|t| strip(t) == strip(etag))
            });
        }
        match (
            self.if_modified_since,
            http_date(&stored.headers, header::LAST_MODIFIED),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}
