//! The HTTP cache's decisions, apart from the service that carries them out: from the request,
//! the stored variant and the time, what to do ([`decide`] returns an [`Action`]); whether a
//! stale variant may stand in for a failed origin ([`within_stale_if_error`]); whether an
//! origin response shared by a flight suits a waiting request ([`suits`]); (and, in
//! [`storable`](super::storable), whether and how long to store a response). Pure: no store,
//! no clock, no I/O.

use http::{HeaderMap, Method, Request, header};
use tokio::time::Instant;

use super::{cache_control::CacheControl, stored::Stored};
use crate::Entry;

/// What the request asks of the cache, read once from its head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestFacts {
    /// GET or HEAD: the methods this cache answers.
    pub(crate) cacheable_method: bool,
    /// Not a safe method: a success invalidates the URL (RFC 9111 §4.4).
    pub(crate) unsafe_method: bool,
    /// HEAD: answered from a fresh GET variant only, never stored.
    pub(crate) head: bool,
    /// The request's `no-store`.
    pub(crate) no_store: bool,
    /// The request's `no-cache` or `max-age=0`: the origin must confirm a stored variant.
    pub(crate) must_revalidate: bool,
    /// The request carries `Authorization`.
    pub(crate) has_auth: bool,
}

impl RequestFacts {
    /// Reads the facts off `req` (its `Cache-Control` only for GET and HEAD).
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        let method = req.method();
        let head = method == Method::HEAD;
        if method != Method::GET && !head {
            return Self {
                unsafe_method: !method.is_safe(),
                ..Self::default()
            };
        }
        let cc = CacheControl::parse(req.headers());
        Self {
            cacheable_method: true,
            unsafe_method: false,
            head,
            no_store: cc.no_store,
            must_revalidate: cc.no_cache || cc.max_age == Some(0),
            has_auth: req.headers().contains_key(header::AUTHORIZATION),
        }
    }

    /// Whether the store is looked up for this request.
    pub(crate) fn consults_store(&self) -> bool {
        self.cacheable_method && !self.no_store
    }
}

/// What the service does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// To the origin, uncached (other methods, the request's `no-store`); `invalidates`: a
    /// success or redirect drops the URL's stored variants.
    PassThrough {
        /// An unsafe method.
        invalidates: bool,
    },
    /// Answer the stored variant: fresh and usable.
    ServeFresh,
    /// Answer the stale variant within its `stale-while-revalidate` and revalidate it in the
    /// background.
    ServeStaleAndRevalidate,
    /// Revalidate the stored variant with the origin (`If-None-Match` / `If-Modified-Since`)
    /// before answering; on a failure within `stale-if-error`, answer it stale.
    Revalidate,
    /// A HEAD that no fresh variant answers: to the origin, not stored.
    FetchHead,
    /// A miss (or a stale variant with no validator): one origin request per URL (single
    /// flight), stored when storable. `stale_fallback`: the stored variant is within its
    /// `stale-if-error` and answers if the origin fails.
    Fetch {
        /// A stale variant stands in for a failure.
        stale_fallback: bool,
    },
}

/// Decides what to do with a request of `facts` given the variant `found` for it (already
/// matched on `Vary`), at `now`. `can_spawn` says whether a background revalidation can start
/// (a Tokio runtime is there); it is asked only when a stale variant could be served.
pub(crate) fn decide(
    facts: &RequestFacts,
    found: Option<&Entry<Stored>>,
    now: Instant,
    can_spawn: impl FnOnce() -> bool,
) -> Action {
    if !facts.cacheable_method {
        return Action::PassThrough {
            invalidates: facts.unsafe_method,
        };
    }
    if facts.no_store {
        return Action::PassThrough { invalidates: false };
    }
    let Some(entry) = found.filter(|e| !facts.has_auth || e.value().shareable_with_auth) else {
        return if facts.head {
            Action::FetchHead
        } else {
            Action::Fetch {
                stale_fallback: false,
            }
        };
    };
    let stored = entry.value();
    let usable_fresh = !stored.no_cache && !facts.must_revalidate;
    if usable_fresh && now < entry.fresh_until() {
        return Action::ServeFresh;
    }
    // HEAD is answered from a fresh GET variant only; anything else goes to the origin,
    // unstored (a HEAD response has no body to store).
    if facts.head {
        return Action::FetchHead;
    }
    let stale_for = now.saturating_duration_since(entry.fresh_until());
    if usable_fresh && !stored.must_revalidate && stale_for < stored.swr && can_spawn() {
        return Action::ServeStaleAndRevalidate;
    }
    if stored.etag().is_some() || stored.last_modified().is_some() {
        return Action::Revalidate;
    }
    Action::Fetch {
        stale_fallback: within_stale_if_error(entry, now),
    }
}

/// Whether `entry` may answer for an origin that failed (an error or a server error) at
/// `now`: it is within its `stale-if-error` window (RFC 5861).
pub(crate) fn within_stale_if_error(entry: &Entry<Stored>, now: Instant) -> bool {
    now.saturating_duration_since(entry.fresh_until()) < entry.value().sie
}

/// Whether the variant another request's origin request stored answers a request that waited
/// for it: the request's headers match its `Vary`, and `Authorization` is allowed.
pub(crate) fn suits(stored: &Stored, req_headers: &HeaderMap, has_auth: bool) -> bool {
    stored.matches(req_headers) && (!has_auth || stored.shareable_with_auth)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderName, HeaderValue, StatusCode};

    use super::*;

    fn stored(f: impl FnOnce(&mut Stored)) -> Stored {
        let mut s = Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            vary: Vec::new(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            swr: Duration::ZERO,
            sie: Duration::ZERO,
            no_cache: false,
            must_revalidate: false,
            shareable_with_auth: false,
        };
        f(&mut s);
        s
    }

    /// An entry stored at `at`, fresh for 60 s, kept 600 s past that.
    fn entry(at: Instant, s: Stored) -> Entry<Stored> {
        Entry::new(s, at, Duration::from_secs(60), Duration::from_secs(600))
    }

    fn get() -> RequestFacts {
        RequestFacts::of(&Request::get("/").body(()).unwrap())
    }

    fn with_etag(s: &mut Stored) {
        s.headers
            .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn request_facts_read_the_method_and_the_request_directives() {
        let post = RequestFacts::of(&Request::post("/").body(()).unwrap());
        assert!(!post.cacheable_method && post.unsafe_method && !post.consults_store());
        let options = RequestFacts::of(&Request::options("/").body(()).unwrap());
        assert!(!options.cacheable_method && !options.unsafe_method);
        let head = RequestFacts::of(&Request::head("/").body(()).unwrap());
        assert!(head.cacheable_method && head.head && head.consults_store());
        let req = Request::get("/")
            .header("cache-control", "max-age=0")
            .header("authorization", "Bearer x")
            .body(())
            .unwrap();
        let facts = RequestFacts::of(&req);
        assert!(facts.must_revalidate && facts.has_auth && !facts.no_store);
        let no_cache = Request::get("/")
            .header("cache-control", "no-cache")
            .body(())
            .unwrap();
        assert!(RequestFacts::of(&no_cache).must_revalidate);
        let no_store = Request::get("/")
            .header("cache-control", "no-store")
            .body(())
            .unwrap();
        let facts = RequestFacts::of(&no_store);
        assert!(facts.no_store && !facts.consults_store());
        assert!(get().consults_store() && !get().must_revalidate);
    }

    #[test]
    fn other_methods_and_no_store_pass_through() {
        let now = Instant::now();
        let post = RequestFacts::of(&Request::post("/").body(()).unwrap());
        assert_eq!(
            decide(&post, None, now, || true),
            Action::PassThrough { invalidates: true }
        );
        let options = RequestFacts::of(&Request::options("/").body(()).unwrap());
        assert_eq!(
            decide(&options, None, now, || true),
            Action::PassThrough { invalidates: false }
        );
        let facts = RequestFacts {
            no_store: true,
            ..get()
        };
        let e = entry(now, stored(|_| {}));
        assert_eq!(
            decide(&facts, Some(&e), now, || true),
            Action::PassThrough { invalidates: false }
        );
    }

    #[test]
    fn a_fresh_variant_is_served_until_its_freshness_ends() {
        let t0 = Instant::now();
        let e = entry(t0, stored(|_| {}));
        assert_eq!(decide(&get(), Some(&e), t0, || true), Action::ServeFresh);
        let almost = t0 + Duration::from_secs(60) - Duration::from_millis(1);
        assert_eq!(
            decide(&get(), Some(&e), almost, || true),
            Action::ServeFresh
        );
        let head = RequestFacts {
            head: true,
            ..get()
        };
        assert_eq!(decide(&head, Some(&e), t0, || true), Action::ServeFresh);
        // At its end, with no validator and no stale windows: a fetch with nothing to fall
        // back on.
        assert_eq!(
            decide(&get(), Some(&e), t0 + 60 * SEC, || true),
            Action::Fetch {
                stale_fallback: false
            }
        );
    }

    #[test]
    fn misses_fetch_and_head_misses_go_unstored() {
        let now = Instant::now();
        assert_eq!(
            decide(&get(), None, now, || true),
            Action::Fetch {
                stale_fallback: false
            }
        );
        let head = RequestFacts {
            head: true,
            ..get()
        };
        assert_eq!(decide(&head, None, now, || true), Action::FetchHead);
        let stale = entry(now, stored(with_etag));
        assert_eq!(
            decide(&head, Some(&stale), now + 61 * SEC, || true),
            Action::FetchHead
        );
    }

    #[test]
    fn authorization_is_answered_only_by_shareable_variants() {
        let now = Instant::now();
        let auth = RequestFacts {
            has_auth: true,
            ..get()
        };
        let private = entry(now, stored(|_| {}));
        assert_eq!(
            decide(&auth, Some(&private), now, || true),
            Action::Fetch {
                stale_fallback: false
            }
        );
        let shared = entry(now, stored(|s| s.shareable_with_auth = true));
        assert_eq!(
            decide(&auth, Some(&shared), now, || true),
            Action::ServeFresh
        );
    }

    #[test]
    fn no_cache_either_side_revalidates_a_fresh_variant() {
        let now = Instant::now();
        let e = entry(now, stored(with_etag));
        let facts = RequestFacts {
            must_revalidate: true,
            ..get()
        };
        assert_eq!(decide(&facts, Some(&e), now, || true), Action::Revalidate);
        let no_cache = entry(
            now,
            stored(|s| {
                with_etag(s);
                s.no_cache = true;
                s.swr = 30 * SEC;
            }),
        );
        assert_eq!(
            decide(&get(), Some(&no_cache), now, || true),
            Action::Revalidate,
            "no-cache is never served stale either"
        );
    }

    #[test]
    fn stale_while_revalidate_needs_its_window_a_runtime_and_no_must_revalidate() {
        let t0 = Instant::now();
        let e = entry(
            t0,
            stored(|s| {
                with_etag(s);
                s.swr = 30 * SEC;
            }),
        );
        let stale = t0 + 60 * SEC;
        assert_eq!(
            decide(&get(), Some(&e), stale, || true),
            Action::ServeStaleAndRevalidate
        );
        let last = t0 + 90 * SEC - Duration::from_millis(1);
        assert_eq!(
            decide(&get(), Some(&e), last, || true),
            Action::ServeStaleAndRevalidate
        );
        assert_eq!(
            decide(&get(), Some(&e), t0 + 90 * SEC, || true),
            Action::Revalidate,
            "past the window: revalidate in the foreground"
        );
        assert_eq!(
            decide(&get(), Some(&e), stale, || false),
            Action::Revalidate,
            "no runtime to revalidate in: in the foreground"
        );
        let must = entry(
            t0,
            stored(|s| {
                with_etag(s);
                s.swr = 30 * SEC;
                s.must_revalidate = true;
            }),
        );
        assert_eq!(
            decide(&get(), Some(&must), stale, || true),
            Action::Revalidate
        );
        let mut asked = false;
        decide(&get(), Some(&e), t0, || {
            asked = true;
            true
        });
        assert!(!asked, "the runtime is not looked for on a fresh hit");
    }

    #[test]
    fn stale_without_validator_fetches_with_a_fallback_inside_stale_if_error() {
        let t0 = Instant::now();
        let e = entry(t0, stored(|s| s.sie = 30 * SEC));
        assert_eq!(
            decide(&get(), Some(&e), t0 + 70 * SEC, || true),
            Action::Fetch {
                stale_fallback: true
            }
        );
        assert!(within_stale_if_error(&e, t0 + 89 * SEC));
        assert!(!within_stale_if_error(&e, t0 + 90 * SEC));
        assert!(within_stale_if_error(&e, t0), "fresh is within too");
        assert_eq!(
            decide(&get(), Some(&e), t0 + 90 * SEC, || true),
            Action::Fetch {
                stale_fallback: false
            }
        );
        let last_modified = entry(
            t0,
            stored(|s| {
                s.headers.insert(
                    header::LAST_MODIFIED,
                    HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
                );
            }),
        );
        assert_eq!(
            decide(&get(), Some(&last_modified), t0 + 61 * SEC, || true),
            Action::Revalidate
        );
    }

    #[test]
    fn a_shared_answer_suits_matching_vary_and_allowed_authorization() {
        let name = HeaderName::from_static("accept-language");
        let s = stored(|s| s.vary = vec![(name.clone(), Some(HeaderValue::from_static("fr")))]);
        let mut fr = HeaderMap::new();
        fr.insert(name.clone(), HeaderValue::from_static("fr"));
        let mut de = HeaderMap::new();
        de.insert(name, HeaderValue::from_static("de"));
        assert!(suits(&s, &fr, false));
        assert!(!suits(&s, &de, false));
        assert!(!suits(&s, &fr, true));
        let shared = stored(|s| s.shareable_with_auth = true);
        assert!(suits(&shared, &HeaderMap::new(), true));
    }
}
