//! Compares the legacy side's answer with the new side's, for shadow mode: the status, chosen
//! headers, and JSON bodies structurally, with ignored paths, normalisers and a noise baseline.
//!
//! ```
//! use http::{header, HeaderMap, HeaderValue, StatusCode};
//! use tower_patterns_strangler::compare::{Answer, Comparator, Normaliser};
//!
//! # fn main() -> Result<(), tower_patterns_core::ConfigError> {
//! let mut json = HeaderMap::new();
//! json.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
//! let ok = |body: &'static str| (StatusCode::OK, body);
//!
//! let (legacy, again) = (
//!     ok(r#"{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","price":10,"at":"2024-05-01T12:00:00Z"}"#),
//!     ok(r#"{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","price":10,"at":"2024-05-01T12:00:04Z"}"#),
//! );
//! // Another id, the same price written differently, keys in another order, and a late clock.
//! let new = ok(r#"{"price":10.0,"at":"2024-05-01T12:00:07Z","id":"0b8a4a3e-5f7c-4d7e-9c55-2f1e7c1d0a11"}"#);
//! let answer = |(status, body): (StatusCode, &'static str)| Answer::new(status, &json, body.as_bytes());
//!
//! // By default: the status and the whole body.
//! let plain = Comparator::default();
//! let diff = plain.compare(&answer(legacy), &answer(new));
//! assert_eq!(diff.len(), 2); // /at and /id; the price is equal as a number
//!
//! // Ids are the new service's own: any UUID will do. The timestamp is noise: legacy does not
//! // agree with itself on it, so a second legacy call's answer removes it.
//! let cmp = Comparator::builder()
//!     .header(header::CONTENT_TYPE)
//!     .normalise("/id", Normaliser::Uuid)
//!     .ignore("/debug")
//!     .build()?;
//! let diff = cmp.compare(&answer(legacy), &answer(new));
//! assert_eq!(
//!     diff.to_string(),
//!     r#"1 difference: body /at value: "2024-05-01T12:00:00Z" -> "2024-05-01T12:00:07Z""#
//! );
//! let noise = cmp.compare(&answer(legacy), &answer(again));
//! assert!(diff.without_noise(&noise).is_empty());
//!
//! // A real mismatch stays.
//! let wrong = ok(r#"{"price":12,"at":"2024-05-01T12:00:07Z","id":"0b8a4a3e-5f7c-4d7e-9c55-2f1e7c1d0a11"}"#);
//! let real = cmp.compare(&answer(legacy), &answer(wrong)).without_noise(&noise);
//! assert_eq!(real.to_string(), "1 difference: body /price value: 10 -> 12");
//! # Ok(())
//! # }
//! ```
//!
//! # What is compared
//!
//! - **The status**, always.
//! - **Headers** named with [`ComparatorBuilder::header`], all values in order; none by
//!   default.
//! - **The bodies.** Equal bytes are equal, and nothing is parsed. Otherwise, when both are
//!   JSON, they are compared structurally: object keys in any order, numbers as numbers (`1`
//!   and `1.0` are equal), each difference at its JSON Pointer path ([`BodyChange`]: a missing
//!   or extra key, a type, a value, an array's length). Arrays are compared by position. A
//!   body is taken for JSON when its `Content-Type` is `application/json`, another `*/json`
//!   or a `*/*+json` type, or, with no `Content-Type`, when it starts (after whitespace) with
//!   `{` or `[`; then it must parse. Otherwise (either body is not JSON, does not parse, is
//!   nested 128 levels deep or more, or is longer than [`ComparatorBuilder::max_body`]) the
//!   bodies are compared as bytes: one [`DifferenceKind::Bytes`] difference with both lengths
//!   and the first differing offset.
//!
//! Paths given to [`ComparatorBuilder::ignore`] are skipped; those given to
//! [`ComparatorBuilder::normalise`] are compared after a [`Normaliser`] (any UUID, any
//! timestamp, numbers within a tolerance, or a function of yours). Both take JSON Pointers
//! with `*` for any key or index: `/items/*/id`.
//!
//! # The noise baseline
//!
//! Some fields differ on every call, even from the same service: timestamps, nonces, request
//! ids, cache ages. Rather than listing them all, send the request to the legacy side twice
//! and compare the two legacy answers: what differs there is noise, and
//! [`Differences::without_noise`] drops it from the comparison with the new side (as
//! Twitter's Diffy does). Noise in one array element counts for every element.
//!
//! # Cost
//!
//! Equal answers (the common case) cost a byte comparison of the bodies and allocate nothing;
//! an empty [`Differences`] holds no allocation. Differing JSON bodies are parsed (memory a few
//! times their size) and walked once; a path is written out only where a difference is found,
//! and at most [`ComparatorBuilder::max_differences`] are kept.
//!
//! # When not to compare bodies
//!
//! Ignore the whole body (`.ignore("")`, the status and headers are still compared) or do not
//! mirror the route at all when its bodies
//! - are large or streamed (downloads, exports, server-sent events): buffering them for a
//!   comparison costs memory on every request, and bytes over `max_body` only say *that* they
//!   differ;
//! - are different on every call by design (signed or encrypted payloads, HTML with CSRF
//!   tokens, random samples), so that the noise baseline would mark everything;
//! - carry personal or secret data: a [`Difference`] shows both values and is meant for a log
//!   line;
//! - come from a request that is not idempotent: the comparison is only as good as two calls
//!   being the same call.
//!
//! A comparison never panics on what the answers hold: invalid UTF-8 or JSON, deep nesting or
//! huge bodies end in a bytes comparison.

mod builder;
mod diff;
mod json;
mod normalise;
mod path;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bytes;
#[cfg(test)]
mod tests_prop;

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, StatusCode, header};

pub use builder::{ComparatorBuilder, DEFAULT_MAX_BODY, DEFAULT_MAX_DIFFERENCES};
pub use diff::{BodyChange, Difference, DifferenceKind, Differences};
pub use normalise::{NormaliseFn, Normaliser};

use diff::{Sink, shorten};
use path::{PathBuf, Rules};

/// One side's answer to a request, borrowed for a comparison.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl<'a> Answer<'a> {
    /// An answer with this status, these headers and this whole body.
    pub fn new(status: StatusCode, headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        Self {
            status,
            headers,
            body,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// Compares two [`Answer`]s (see the [module docs](self)). Cheap to clone and share: the
/// settings are behind an [`Arc`].
#[derive(Clone)]
pub struct Comparator {
    inner: Arc<Inner>,
}

struct Inner {
    headers: Vec<HeaderName>,
    /// The path settings as given, for `Debug`.
    paths: Vec<String>,
    rules: Rules,
    customs: Vec<Arc<NormaliseFn>>,
    body_ignored: bool,
    max_body: usize,
    max_differences: usize,
}

impl Comparator {
    /// A builder with the defaults: the status and the body compared, no header, bodies up to
    /// [`DEFAULT_MAX_BODY`] parsed, up to [`DEFAULT_MAX_DIFFERENCES`] differences kept.
    pub fn builder() -> ComparatorBuilder {
        ComparatorBuilder::default()
    }

    /// The differences between the legacy answer and the new one, empty when they agree.
    pub fn compare(&self, legacy: &Answer<'_>, new: &Answer<'_>) -> Differences {
        let inner = &*self.inner;
        let mut sink = Sink::new(inner.max_differences);
        if legacy.status != new.status {
            sink.push(|| {
                Difference::make(
                    DifferenceKind::Status,
                    PathBuf::default(),
                    legacy.status.as_str().to_owned(),
                    new.status.as_str().to_owned(),
                )
            });
        }
        for name in &inner.headers {
            let (a, b) = (legacy.headers.get_all(name), new.headers.get_all(name));
            if !a.iter().eq(b.iter()) {
                sink.push(|| {
                    Difference::make(
                        DifferenceKind::Header(name.clone()),
                        PathBuf::default(),
                        show_header(legacy.headers, name),
                        show_header(new.headers, name),
                    )
                });
            }
        }
        if !inner.body_ignored && legacy.body != new.body {
            self.bodies(legacy, new, &mut sink);
        }
        sink.finish()
    }

    fn bodies(&self, legacy: &Answer<'_>, new: &Answer<'_>, sink: &mut Sink) {
        let inner = &*self.inner;
        let parsed = |answer: &Answer<'_>| {
            (answer.body.len() <= inner.max_body && looks_json(answer))
                .then(|| serde_json::from_slice::<serde_json::Value>(answer.body).ok())
                .flatten()
        };
        if let Some(a) = parsed(legacy)
            && let Some(b) = parsed(new)
        {
            json::Walk {
                rules: &inner.rules,
                customs: &inner.customs,
                sink,
            }
            .documents(&a, &b);
            return;
        }
        let offset = legacy
            .body
            .iter()
            .zip(new.body)
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| legacy.body.len().min(new.body.len()));
        let hashed = legacy.body.len() > inner.max_body || new.body.len() > inner.max_body;
        sink.push(|| {
            Difference::make(
                DifferenceKind::Bytes { offset },
                PathBuf::default(),
                show_bytes(legacy.body, offset, hashed),
                show_bytes(new.body, offset, hashed),
            )
        });
    }
}

impl Default for Comparator {
    /// Compares the status and the body, as [`Comparator::builder`] without settings does.
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                headers: Vec::new(),
                paths: Vec::new(),
                rules: Rules::default(),
                customs: Vec::new(),
                body_ignored: false,
                max_body: DEFAULT_MAX_BODY,
                max_differences: DEFAULT_MAX_DIFFERENCES,
            }),
        }
    }
}

impl fmt::Debug for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Comparator")
            .field("headers", &inner.headers)
            .field("paths", &inner.paths)
            .field("max_body", &inner.max_body)
            .field("max_differences", &inner.max_differences)
            .finish()
    }
}

/// Whether an answer's body is to be read as JSON (see the module docs).
fn looks_json(answer: &Answer<'_>) -> bool {
    match answer.headers.get(header::CONTENT_TYPE) {
        Some(value) => {
            let v = value.as_bytes();
            let essence = v.split(|&c| c == b';').next().unwrap_or(v).trim_ascii();
            let ends = |suffix: &[u8]| {
                essence.len() > suffix.len()
                    && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            };
            ends(b"/json") || ends(b"+json")
        }
        None => matches!(answer.body.trim_ascii_start().first(), Some(b'{' | b'[')),
    }
}

/// A header's values joined by `, `, or `(missing)`.
fn show_header(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for (i, value) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    if out.is_empty() && headers.get(name).is_none() {
        return "(missing)".to_owned();
    }
    shorten(out)
}

/// How many bytes of a body a bytes difference shows, from the first differing one.
const SHOWN_BYTES: usize = 48;

/// `N bytes: <the bytes from offset, escaped>` (with the body's hash when it was over
/// `max_body`).
fn show_bytes(body: &[u8], offset: usize, hashed: bool) -> String {
    let shown = body.get(offset..).unwrap_or_default();
    let cut = shown.len() > SHOWN_BYTES;
    let shown = &shown[..shown.len().min(SHOWN_BYTES)];
    let hash = if hashed {
        format!(", xxh3 {:016x}", twox_hash::XxHash3_64::oneshot(body))
    } else {
        String::new()
    };
    format!(
        "{} {}{hash}: \"{}{}\"",
        body.len(),
        if body.len() == 1 { "byte" } else { "bytes" },
        shown.escape_ascii(),
        if cut { "…" } else { "" }
    )
}
