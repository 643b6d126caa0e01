//! `ConsistencyLayer::builder(name)`: the token key and the read side are required parts.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue};
use tower_layer::Layer;
use tower_patterns_core::ConfigError;
use tower_patterns_cqrs::layer::HttpClassifier;

use super::{
    handle::{ConsistencyHandle, Stats},
    service::Consistency,
};
use crate::{read_side::ReadSide, token::TokenKey, token::Tokens};

/// The header that carries a session's token, both ways: `tp-consistency`.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("tp-consistency");

/// The header that marks a stale answer and says how far behind it is: `tp-stale`
/// (`events=12`, `wal-bytes=4096`, or `unknown`).
pub const STALE_HEADER: HeaderName = HeaderName::from_static("tp-stale");

/// The start of the cookie that carries a session's token: by default the cookie is
/// `tp_consistency_<name>` (the layer's name, characters other than ASCII letters, digits,
/// `-` and `_` as `_`), so two apps on one host (cookies ignore ports) never read each
/// other's.
pub const COOKIE_PREFIX: &str = "tp_consistency_";

/// What a read gets when the read side has not reached its token by the end of the wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Behind {
    /// Refuse with `503 Service Unavailable` and `Retry-After` (the default): the client
    /// never sees data older than its own writes.
    #[default]
    Unavailable,
    /// Read from the primary: the request carries a [`ReadConcern`](crate::ReadConcern)
    /// with `from_primary` set, which a replica router follows. Fresh, at the primary's
    /// cost. Only for a read side that routes (`build()` refuses it otherwise).
    Primary,
    /// Answer from the read side anyway, marked with the [`STALE_HEADER`] saying how far
    /// behind it is.
    Stale,
}

/// Marker: no token key set yet (`.key(k)` or `.tokens(t)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

/// Marker: no read side set yet (`.read_side(r)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReadSide;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) wait: Duration,
    pub(crate) behind: Behind,
    pub(crate) retry_after: Duration,
    pub(crate) header: HeaderName,
    pub(crate) cookie: Option<Arc<str>>,
    pub(crate) secure: bool,
}

/// Builds a [`ConsistencyLayer`]: `ConsistencyLayer::builder(name).key(k).read_side(r)`, the
/// options, then `build()`.
pub struct ConsistencyBuilder<T = NoKey, R = NoReadSide, C = HttpClassifier> {
    name: Arc<str>,
    tokens: T,
    read_side: R,
    classify: C,
    settings: Settings,
}

impl<T, R, C> fmt::Debug for ConsistencyBuilder<T, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsistencyBuilder")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<R, C> ConsistencyBuilder<NoKey, R, C> {
    /// The key that signs and verifies tokens (required, or [`tokens`](Self::tokens)):
    /// tokens are scoped to the layer's name.
    pub fn key(self, key: TokenKey) -> ConsistencyBuilder<Tokens, R, C> {
        let tokens = Tokens::new(self.name.clone(), key);
        self.tokens(tokens)
    }

    /// Tokens made apart (another scope, shared by two layers; older keys still accepted).
    pub fn tokens(self, tokens: Tokens) -> ConsistencyBuilder<Tokens, R, C> {
        ConsistencyBuilder {
            name: self.name,
            tokens,
            read_side: self.read_side,
            classify: self.classify,
            settings: self.settings,
        }
    }
}

impl<T, C> ConsistencyBuilder<T, NoReadSide, C> {
    /// The read side the layer's reads are answered by (required): a `ProjectionHandle`,
    /// an [`AllOf`](crate::AllOf), a replica set, a [`Progress`](crate::Progress).
    pub fn read_side<R: ReadSide>(self, read_side: R) -> ConsistencyBuilder<T, R, C> {
        ConsistencyBuilder {
            name: self.name,
            tokens: self.tokens,
            read_side,
            classify: self.classify,
            settings: self.settings,
        }
    }
}

impl<T, R, C> ConsistencyBuilder<T, R, C> {
    /// Which requests are reads (`Side::Query`) and which are writes (`Side::Command`):
    /// default [`HttpClassifier::new()`], safe methods read.
    pub fn classify<C2>(self, classify: C2) -> ConsistencyBuilder<T, R, C2> {
        ConsistencyBuilder {
            name: self.name,
            tokens: self.tokens,
            read_side: self.read_side,
            classify,
            settings: self.settings,
        }
    }

    /// How long a read waits for the read side to reach its token (default 1 s; zero never
    /// waits).
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.settings.wait = wait;
        self
    }

    /// What a read gets when the wait runs out (default [`Behind::Unavailable`]).
    #[must_use]
    pub fn when_behind(mut self, behind: Behind) -> Self {
        self.settings.behind = behind;
        self
    }

    /// The `Retry-After` of a 503 (default 1 s; whole seconds, at least 1).
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.settings.retry_after = retry_after;
        self
    }

    /// The header that carries the token (default [`TOKEN_HEADER`]).
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.settings.header = header;
        self
    }

    /// The cookie that carries the token (default `tp_consistency_<name>`, see
    /// [`COOKIE_PREFIX`]): a token in it is read when the header has none (the header is the
    /// client's own statement of its session), and every new token is set in it (`Path=/; HttpOnly;
    /// SameSite=Lax`). A cookie whose token does not verify (signed with a key since rotated,
    /// or by a process with a random key that restarted) is ignored and cleared, since the
    /// client can neither see nor fix it; a bad token in the header is a 400.
    #[must_use]
    pub fn cookie(mut self, name: impl Into<Arc<str>>) -> Self {
        self.settings.cookie = Some(name.into());
        self
    }

    /// Tokens travel in the header only.
    #[must_use]
    pub fn no_cookie(mut self) -> Self {
        self.settings.cookie = None;
        self
    }

    /// Adds `Secure` to the cookie (default off: the token is a position, not a credential,
    /// but a site served over HTTPS only should set it).
    #[must_use]
    pub fn secure_cookie(mut self, secure: bool) -> Self {
        self.settings.secure = secure;
        self
    }
}

impl<R: ReadSide, C: Send + Sync + 'static> ConsistencyBuilder<Tokens, R, C> {
    /// Makes the layer, registers its errors with core's HTTP mapping
    /// ([`TokenError`](crate::TokenError) → 400, [`NotCaughtUp`](super::NotCaughtUp) → 503
    /// with `Retry-After`) and its counters.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` when it is empty, `retry_after` when it is under a
    /// second (`Retry-After` counts whole seconds), `cookie` when the name is not a cookie
    /// name (a token of ASCII letters, digits, `-` and `_`), `when_behind` for
    /// [`Behind::Primary`] over a read side that does not route (a projection's handle has
    /// no primary to send the read to: the read would be answered stale, unmarked).
    pub fn build(self) -> Result<ConsistencyLayer<R, C>, ConfigError> {
        if self.settings.behind == Behind::Primary && !self.read_side.routes() {
            return Err(ConfigError::new(
                "when_behind",
                "Primary needs a read side that routes reads (a replica set)",
            ));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.settings.retry_after < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "retry_after",
                "must be at least one second",
            ));
        }
        if let Some(cookie) = &self.settings.cookie {
            let ok = !cookie.is_empty()
                && cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ConfigError::new(
                    "cookie",
                    "must be ASCII letters, digits, '-' and '_'",
                ));
            }
        }
        super::error::register();
        let stats = Stats::new(self.name, self.read_side.kind());
        Ok(ConsistencyLayer {
            shared: Arc::new(Shared {
                tokens: self.tokens,
                kind: self.read_side.kind(),
                routes: self.read_side.routes(),
                read_side: self.read_side,
                classify: self.classify,
                settings: self.settings,
                stats,
            }),
        })
    }
}

/// What every service of one layer shares.
pub(crate) struct Shared<R, C> {
    pub(crate) tokens: Tokens,
    pub(crate) read_side: R,
    pub(crate) kind: crate::MarkKind,
    pub(crate) routes: bool,
    pub(crate) classify: C,
    pub(crate) settings: Settings,
    pub(crate) stats: Arc<Stats>,
}

impl<R, C> Shared<R, C> {
    /// The `Set-Cookie` value that removes the session's cookie.
    pub(crate) fn clear_cookie(&self) -> Option<HeaderValue> {
        let name = self.settings.cookie.as_deref()?;
        let secure = if self.settings.secure { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}"
        ))
        .ok()
    }

    /// The `Set-Cookie` value for `token`, when the layer uses a cookie.
    pub(crate) fn set_cookie(&self, token: &HeaderValue) -> Option<HeaderValue> {
        let name = self.settings.cookie.as_deref()?;
        let token = token.to_str().ok()?;
        let secure = if self.settings.secure { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{name}={token}; Path=/; HttpOnly; SameSite=Lax{secure}"
        ))
        .ok()
    }
}

/// Layer that gives clients read-your-writes and monotonic reads over an eventually
/// consistent read side. See the [module docs](super).
pub struct ConsistencyLayer<R, C = HttpClassifier> {
    shared: Arc<Shared<R, C>>,
}

impl ConsistencyLayer<NoReadSide> {
    /// A builder for the layer named `name`.
    pub fn builder(name: impl Into<Arc<str>>) -> ConsistencyBuilder {
        let name: Arc<str> = name.into();
        // `tp_consistency_<name>`, with what a cookie name cannot hold as `_`.
        let cookie: String = COOKIE_PREFIX
            .chars()
            .chain(name.chars().map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            }))
            .collect();
        ConsistencyBuilder {
            name,
            tokens: NoKey,
            read_side: NoReadSide,
            classify: HttpClassifier::new(),
            settings: Settings {
                wait: Duration::from_secs(1),
                behind: Behind::Unavailable,
                retry_after: Duration::from_secs(1),
                header: TOKEN_HEADER,
                cookie: Some(cookie.into()),
                secure: false,
            },
        }
    }
}

impl<R, C> ConsistencyLayer<R, C> {
    /// The layer's handle.
    pub fn handle(&self) -> ConsistencyHandle {
        ConsistencyHandle::new(self.shared.stats.clone())
    }

    /// The layer's tokens: to issue one outside a request (a write made by a background job
    /// the user should read back).
    pub fn tokens(&self) -> &Tokens {
        &self.shared.tokens
    }
}

impl<R, C> Clone for ConsistencyLayer<R, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<R, C> fmt::Debug for ConsistencyLayer<R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsistencyLayer")
            .field("name", &self.shared.stats.name)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl<S, R, C> Layer<S> for ConsistencyLayer<R, C> {
    type Service = Consistency<S, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Consistency::new(inner, self.shared.clone())
    }
}
