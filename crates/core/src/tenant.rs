//! The tenant identity every tenant-aware layer agrees on.
//!
//! Tenant resolution (the `tenant` crate) puts a validated [`TenantId`] in the request
//! extensions; layers that keep per-tenant state read it from there: the cache scopes its keys
//! by it so one tenant can never read another's entry, per-tenant bulkheads and rate limits key
//! on it. It lives here, in the shared vocabulary, so those layers need not depend on the
//! resolver.
//!
//! A tenant id is 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`, starting with a
//! letter or digit. The restricted alphabet makes it safe to put in metric labels, log lines,
//! cache and Redis keys (no `:` or `*`) and PostgreSQL settings, without escaping.
//!
//! ```
//! use tower_patterns_core::tenant::TenantId;
//!
//! let acme = TenantId::new("acme-eu.1").unwrap();
//! assert_eq!(acme.as_str(), "acme-eu.1");
//!
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(acme.clone());
//! assert_eq!(TenantId::of(&req), Some(&acme));
//!
//! assert!(TenantId::new("").is_err());
//! assert!(TenantId::new("acme:*").is_err());
//! assert!(TenantId::new("-acme").is_err());
//! ```

use std::{borrow::Borrow, borrow::Cow, error::Error, fmt, sync::Arc};

use crate::KeyError;

/// The longest tenant id, in bytes.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A validated tenant identifier. Cloning it is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates `id`.
    ///
    /// # Errors
    ///
    /// A [`KeyError`] of kind `Missing` when `id` is empty, `Malformed` when it is too long,
    /// starts with a punctuation mark or has a byte outside `[A-Za-z0-9._-]`.
    pub fn new(id: &str) -> Result<Self, KeyError> {
        Self::validate(id)?;
        Ok(Self(Arc::from(id)))
    }

    /// Checks `id` without building a `TenantId`.
    ///
    /// # Errors
    ///
    /// As [`TenantId::new`].
    pub fn validate(id: &str) -> Result<(), KeyError> {
        const SOURCE: &str = "tenant id";
        let bytes = id.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(KeyError::missing(SOURCE));
        };
        if bytes.len() > MAX_TENANT_ID_LEN {
            return Err(KeyError::malformed(SOURCE, "longer than 64 bytes"));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(KeyError::malformed(
                SOURCE,
                "does not start with a letter or digit",
            ));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(KeyError::malformed(
                SOURCE,
                "has a byte outside letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant an earlier layer put in `req`'s extensions, if any.
    pub fn of<B>(req: &http::Request<B>) -> Option<&Self> {
        req.extensions().get::<Self>()
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TenantId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Why a request's tenant could not be established; see [`TenantError`].
///
/// New kinds may be added in minor releases, so match with a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TenantErrorKind {
    /// A source was present but unreadable: a bad header, a malformed id or token (400).
    Malformed,
    /// No source named a tenant, or a required credential is absent (401).
    MissingCredentials,
    /// A token or API key failed verification: bad signature, expired, wrong audience,
    /// unknown key (401).
    InvalidCredentials,
    /// Two sources named different tenants, or a forwarded header from an untrusted peer
    /// disagreed with the connection (403).
    Conflict,
    /// The tenant is not in the registry (403, answered exactly as [`Self::Suspended`]: the
    /// caller must not learn which ids exist).
    Unknown,
    /// The tenant exists but is suspended (403, answered exactly as [`Self::Unknown`]).
    Suspended,
    /// The registry could not be reached (503).
    Unavailable,
}

impl TenantErrorKind {
    /// The HTTP status this kind maps to.
    pub const fn status(self) -> http::StatusCode {
        match self {
            Self::Malformed => http::StatusCode::BAD_REQUEST,
            Self::MissingCredentials | Self::InvalidCredentials => http::StatusCode::UNAUTHORIZED,
            Self::Conflict | Self::Unknown | Self::Suspended => http::StatusCode::FORBIDDEN,
            Self::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short phrase safe to show to clients (it names no tenant and no key). Unknown and
    /// suspended tenants share one phrase, so the answer does not tell which ids exist.
    pub const fn public_message(self) -> &'static str {
        match self {
            Self::Malformed => "malformed tenant or credentials",
            Self::MissingCredentials => "missing tenant or credentials",
            Self::InvalidCredentials => "invalid credentials",
            Self::Conflict => "conflicting tenant sources",
            Self::Unknown | Self::Suspended => "unknown or suspended tenant",
            Self::Unavailable => "tenant registry unavailable",
        }
    }
}

/// A request's tenant could not be established.
///
/// The HTTP mapping in [`crate::http`] turns it into the status of its
/// [`kind`](Self::kind) with the kind's public message; the [`detail`](Self::detail) (which
/// check failed, and on what) goes to logs only.
///
/// ```
/// use tower_patterns_core::tenant::{TenantError, TenantErrorKind};
///
/// let err = TenantError::new(TenantErrorKind::InvalidCredentials, "token expired");
/// assert_eq!(err.kind().status(), http::StatusCode::UNAUTHORIZED);
/// assert_eq!(err.to_string(), "invalid credentials: token expired");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantError {
    kind: TenantErrorKind,
    detail: Cow<'static, str>,
}

impl TenantError {
    /// An error of `kind`, with a detail for logs.
    pub fn new(kind: TenantErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// What went wrong, in the terms of the HTTP mapping.
    pub const fn kind(&self) -> TenantErrorKind {
        self.kind
    }

    /// Which check failed, and on what; for logs, never for clients.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for TenantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.public_message(), self.detail)
    }
}

impl Error for TenantError {}

impl From<KeyError> for TenantError {
    fn from(err: KeyError) -> Self {
        let kind = match err.kind() {
            crate::key::KeyErrorKind::Missing => TenantErrorKind::MissingCredentials,
            _ => TenantErrorKind::Malformed,
        };
        Self::new(kind, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyErrorKind;

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(TenantId::new("").unwrap_err().kind(), KeyErrorKind::Missing);
        let long = "a".repeat(65);
        assert_eq!(
            TenantId::new(&long).unwrap_err().kind(),
            KeyErrorKind::Malformed
        );
        assert!(TenantId::new(&long[..64]).is_ok());
        for bad in ["a b", "a:b", "a*", "é", ".a", "a\0", "a/b"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "A1", "acme-eu.prod_2", "0"] {
            assert_eq!(TenantId::new(good).unwrap().as_str(), good);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,80}") {
            if let Ok(id) = TenantId::new(&s) {
                proptest::prop_assert_eq!(id.as_str(), s.as_str());
                proptest::prop_assert!(!id.as_str().contains(':'));
            }
        }
    }
}
