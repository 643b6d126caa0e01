//! Taking a key (tenant, host, route, API key) from a request, for per-key layers.
//!
//! Per-key breakers, per-tenant bulkheads and per-key quotas all take their key through one
//! trait, [`KeyExtractor`]. A missing or malformed key is a [`KeyError`], never a panic; the
//! HTTP mapping in [`crate::http`] answers it with 400.
//!
//! - [`HeaderKey`]: one header's value, validated as visible ASCII within a length bound; a
//!   header sent twice is refused, since two values cannot name one key.
//! - [`PathKey`]: one segment of the request path.
//! - [`ExtensionKey`]: a value an earlier layer put in the request extensions (a resolved
//!   tenant, for example).
//! - [`key_fn`]: any closure.
//!
//! ```
//! use http::Request;
//! use tower_patterns_core::key::{HeaderKey, KeyErrorKind, KeyExtractor};
//!
//! let by_tenant = HeaderKey::new(http::HeaderName::from_static("x-tenant-id"));
//!
//! let req = Request::builder().header("x-tenant-id", "acme").body(()).unwrap();
//! assert_eq!(by_tenant.extract(&req).unwrap().as_str(), "acme");
//!
//! let missing = Request::new(());
//! assert_eq!(by_tenant.extract(&missing).unwrap_err().kind(), KeyErrorKind::Missing);
//!
//! let forged = Request::builder().header("x-tenant-id", "acme\tevil").body(()).unwrap();
//! assert_eq!(by_tenant.extract(&forged).unwrap_err().kind(), KeyErrorKind::Malformed);
//! ```

use std::{
    borrow::{Borrow, Cow},
    error::Error,
    fmt,
    hash::{Hash, Hasher},
    marker::PhantomData,
};

use http::{HeaderName, HeaderValue, Request};

/// Takes a key from a request.
pub trait KeyExtractor<Req> {
    /// The key. Per-key layers additionally require `Clone + Eq + Hash + Send + Sync + 'static`.
    type Key;

    /// Takes the key from `req`, or says why it cannot.
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError>;
}

/// What is wrong with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyErrorKind {
    /// The request carries no key.
    Missing,
    /// The request carries a key that is not acceptable (bad bytes, too long, sent twice).
    Malformed,
}

impl KeyErrorKind {
    /// A phrase that is safe to show to clients.
    pub const fn public_message(self) -> &'static str {
        match self {
            Self::Missing => "missing request key",
            Self::Malformed => "malformed request key",
        }
    }
}

/// A key could not be taken from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    kind: KeyErrorKind,
    source: Cow<'static, str>,
    reason: &'static str,
}

impl KeyError {
    /// The key is missing; `source` says where it was looked for (`"header x-tenant-id"`).
    pub fn missing(source: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: KeyErrorKind::Missing,
            source: source.into(),
            reason: "not present",
        }
    }

    /// The key is malformed; `reason` says how.
    pub fn malformed(source: impl Into<Cow<'static, str>>, reason: &'static str) -> Self {
        Self {
            kind: KeyErrorKind::Malformed,
            source: source.into(),
            reason,
        }
    }

    /// What is wrong.
    pub const fn kind(&self) -> KeyErrorKind {
        self.kind
    }

    /// Where the key was looked for.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// Why the key was refused.
    pub const fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            KeyErrorKind::Missing => "missing",
            KeyErrorKind::Malformed => "malformed",
        };
        write!(f, "{what} key in {}: {}", self.source, self.reason)
    }
}

impl Error for KeyError {}

/// A key of visible ASCII (`!` to `~`), non-empty, cheap to clone.
///
/// It hashes and compares like its `&str`, and borrows as one, so maps keyed by `AsciiKey`
/// can be searched with a plain `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AsciiKey(HeaderValue);

impl AsciiKey {
    /// Validates `bytes` as a key of at most `max_len` bytes.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, &'static str> {
        Self::validate(bytes, max_len)?;
        HeaderValue::from_bytes(bytes)
            .map(Self)
            .map_err(|_| "not a valid header value")
    }

    /// A key from a static string.
    ///
    /// # Panics
    ///
    /// When `key` is empty or not visible ASCII; meant for constants.
    pub fn from_static(key: &'static str) -> Self {
        match Self::validate(key.as_bytes(), usize::MAX) {
            Ok(()) => Self(HeaderValue::from_static(key)),
            Err(reason) => panic!("invalid static key {key:?}: {reason}"),
        }
    }

    fn from_header(value: &HeaderValue, max_len: usize) -> Result<Self, &'static str> {
        Self::validate(value.as_bytes(), max_len)?;
        // Cloning a parsed header value shares its buffer: no allocation.
        Ok(Self(value.clone()))
    }

    fn validate(bytes: &[u8], max_len: usize) -> Result<(), &'static str> {
        if bytes.is_empty() {
            Err("empty")
        } else if bytes.len() > max_len {
            Err("too long")
        } else if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
            Err("not visible ASCII")
        } else {
            Ok(())
        }
    }

    /// The key as a string.
    #[inline]
    pub fn as_str(&self) -> &str {
        // Validated as visible ASCII on construction, so this never falls back.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }
}

impl Hash for AsciiKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // What `str`'s `Hash` writes (`Hasher::write_str`'s default, which no hasher can
        // override on stable Rust): the bytes, then 0xff. Written directly, it skips the
        // text check of `as_str` on every lookup; `ascii_key_hashes_as_its_str` pins it.
        state.write(self.0.as_bytes());
        state.write_u8(0xff);
    }
}

impl Borrow<str> for AsciiKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for AsciiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Parses a key back from its text (as the cache's invalidation messages carry it), with the
/// default bound on its length.
impl std::str::FromStr for AsciiKey {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes(), HeaderKey::DEFAULT_MAX_LEN)
    }
}

impl fmt::Display for AsciiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<&str> for AsciiKey {
    type Error = KeyError;

    fn try_from(value: &str) -> Result<Self, KeyError> {
        Self::from_bytes(value.as_bytes(), usize::MAX).map_err(|r| KeyError::malformed("string", r))
    }
}

/// Takes the key from one request header; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
    max_len: usize,
    source: Cow<'static, str>,
}

impl HeaderKey {
    /// The default bound on a key's length, in bytes.
    pub const DEFAULT_MAX_LEN: usize = 128;

    /// Takes the key from the header `name`, at most [`Self::DEFAULT_MAX_LEN`] bytes long.
    pub fn new(name: HeaderName) -> Self {
        let source = Cow::Owned(format!("header {}", name.as_str()));
        Self {
            name,
            max_len: Self::DEFAULT_MAX_LEN,
            source,
        }
    }

    /// Sets the bound on a key's length, in bytes.
    #[must_use]
    pub const fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// The header read.
    pub const fn header_name(&self) -> &HeaderName {
        &self.name
    }

    /// Takes the key from a header map (for use outside of a request).
    pub fn extract_from(&self, headers: &http::HeaderMap) -> Result<AsciiKey, KeyError> {
        let mut values = headers.get_all(&self.name).iter();
        let value = values
            .next()
            .ok_or_else(|| KeyError::missing(self.source.clone()))?;
        if values.next().is_some() {
            return Err(KeyError::malformed(
                self.source.clone(),
                "sent more than once",
            ));
        }
        AsciiKey::from_header(value, self.max_len)
            .map_err(|reason| KeyError::malformed(self.source.clone(), reason))
    }
}

impl<B> KeyExtractor<Request<B>> for HeaderKey {
    type Key = AsciiKey;

    fn extract(&self, req: &Request<B>) -> Result<AsciiKey, KeyError> {
        self.extract_from(req.headers())
    }
}

/// Takes the key from one segment of the request path: `PathKey::segment(1)` reads `42` from
/// `/users/42/orders`. Empty segments are skipped; a missing segment is a missing key.
///
/// ```
/// use http::Request;
/// use tower_patterns_core::key::{KeyExtractor, PathKey};
///
/// let by_user = PathKey::segment(1);
/// let req = Request::get("/users/42/orders").body(()).unwrap();
/// assert_eq!(by_user.extract(&req).unwrap().as_str(), "42");
/// assert!(by_user.extract(&Request::get("/users").body(()).unwrap()).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    index: usize,
    max_len: usize,
}

impl PathKey {
    /// The `index`-th segment (0 for the first), at most [`HeaderKey::DEFAULT_MAX_LEN`] bytes.
    pub const fn segment(index: usize) -> Self {
        Self {
            index,
            max_len: HeaderKey::DEFAULT_MAX_LEN,
        }
    }

    /// Sets the bound on a key's length, in bytes.
    #[must_use]
    pub const fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }
}

impl<B> KeyExtractor<Request<B>> for PathKey {
    type Key = AsciiKey;

    fn extract(&self, req: &Request<B>) -> Result<AsciiKey, KeyError> {
        let segment = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .nth(self.index)
            .ok_or_else(|| KeyError::missing(format!("path segment {}", self.index)))?;
        AsciiKey::from_bytes(segment.as_bytes(), self.max_len)
            .map_err(|reason| KeyError::malformed(format!("path segment {}", self.index), reason))
    }
}

/// Takes the key from a value of type `T` in the request extensions.
pub struct ExtensionKey<T> {
    _marker: PhantomData<fn() -> T>,
}

impl<T> ExtensionKey<T> {
    /// Reads the extension of type `T`.
    pub const fn new() -> Self {
        Self {
            _marker: PhantomData,
        }
    }
}

impl<T> Default for ExtensionKey<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for ExtensionKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ExtensionKey<T> {}

impl<T> fmt::Debug for ExtensionKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtensionKey<{}>", std::any::type_name::<T>())
    }
}

impl<T, B> KeyExtractor<Request<B>> for ExtensionKey<T>
where
    T: Clone + Send + Sync + 'static,
{
    type Key = T;

    fn extract(&self, req: &Request<B>) -> Result<T, KeyError> {
        req.extensions()
            .get::<T>()
            .cloned()
            .ok_or_else(|| KeyError::missing(std::any::type_name::<T>()))
    }
}

/// A key extractor from a closure; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F> {
    f: F,
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn").finish_non_exhaustive()
    }
}

/// A key extractor from a closure.
///
/// ```
/// use tower_patterns_core::key::{key_fn, KeyError, KeyExtractor};
///
/// // Shard orders by customer id.
/// struct Order { customer: u64 }
/// let by_customer = key_fn(|o: &Order| Ok::<_, KeyError>(o.customer));
/// assert_eq!(by_customer.extract(&Order { customer: 42 }).unwrap(), 42);
/// ```
pub const fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn { f }
}

impl<F, Req, K> KeyExtractor<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Result<K, KeyError>,
{
    type Key = K;

    fn extract(&self, req: &Req) -> Result<K, KeyError> {
        (self.f)(req)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn tenant() -> HeaderKey {
        HeaderKey::new(HeaderName::from_static("x-tenant-id"))
    }

    #[test]
    fn header_sent_twice_is_malformed() {
        let req = Request::builder()
            .header("x-tenant-id", "a")
            .header("x-tenant-id", "b")
            .body(())
            .unwrap();
        let err = tenant().extract(&req).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Malformed);
        assert_eq!(
            err.to_string(),
            "malformed key in header x-tenant-id: sent more than once"
        );
    }

    #[test]
    fn length_bound_and_empty() {
        let long = "k".repeat(129);
        let req = Request::builder()
            .header("x-tenant-id", long.as_str())
            .body(())
            .unwrap();
        assert_eq!(tenant().extract(&req).unwrap_err().reason(), "too long");
        assert!(tenant().max_len(200).extract(&req).is_ok());
        let empty = Request::builder()
            .header("x-tenant-id", "")
            .body(())
            .unwrap();
        assert_eq!(tenant().extract(&empty).unwrap_err().reason(), "empty");
    }

    #[test]
    fn extension_key() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tenant(u32);
        let mut req = Request::new(());
        let key = ExtensionKey::<Tenant>::new();
        assert_eq!(key.extract(&req).unwrap_err().kind(), KeyErrorKind::Missing);
        req.extensions_mut().insert(Tenant(7));
        assert_eq!(key.extract(&req).unwrap(), Tenant(7));
    }

    #[test]
    fn ascii_key_hashes_as_its_str() {
        use std::hash::BuildHasher;
        let std_hasher = std::collections::hash_map::RandomState::new();
        // quick_cache's hasher (ahash), which the limiter's and the cache's maps use.
        let fold = quick_cache::DefaultHashBuilder::default();
        for text in ["acme", "a", "tenant-0042", "~!#"] {
            let key = AsciiKey::try_from(text).unwrap();
            assert_eq!(
                std_hasher.hash_one(&key),
                std_hasher.hash_one(text),
                "{text}"
            );
            assert_eq!(fold.hash_one(&key), fold.hash_one(text), "{text}");
        }
    }

    #[test]
    fn ascii_key_borrows_as_str() {
        let mut set = HashSet::new();
        set.insert(AsciiKey::from_static("acme"));
        assert!(set.contains("acme"));
        assert!(!set.contains("other"));
        assert!(AsciiKey::try_from("has space").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_header_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            twice in any::<bool>(),
        ) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                // http itself refuses these bytes, so no request can carry them.
                return Ok(());
            };
            let mut req = Request::new(());
            req.headers_mut().append("x-tenant-id", value.clone());
            if twice {
                req.headers_mut().append("x-tenant-id", value);
            }
            match tenant().extract(&req) {
                Ok(key) => {
                    prop_assert!(!twice);
                    prop_assert_eq!(key.as_str().as_bytes(), &bytes[..]);
                    prop_assert!(bytes.len() <= HeaderKey::DEFAULT_MAX_LEN);
                    prop_assert!(bytes.iter().all(|b| (0x21..=0x7e).contains(b)));
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), KeyErrorKind::Malformed);
                    prop_assert!(twice
                        || bytes.is_empty()
                        || bytes.len() > HeaderKey::DEFAULT_MAX_LEN
                        || bytes.iter().any(|b| !(0x21..=0x7e).contains(b)));
                }
            }
        }
    }
}
