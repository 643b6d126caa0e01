//! The migration table: each route's mode (legacy, new, a sticky split, shadow), the
//! overrides, and the pure decision of which side serves a request.

use std::sync::atomic::{AtomicU32, Ordering};

use http::Method;

use crate::Share;

mod decide;

pub use decide::{Decision, Reason, decide};

/// Where a route's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Everything to the legacy side (the monolith).
    Legacy,
    /// Everything to the new side.
    New,
    /// A sticky split: a caller goes to the new side when its key's bucket is below the share.
    Split(Share),
    /// The legacy side answers; the new side gets a copy of the request and its answer is
    /// compared with legacy's (see [`Shadow`](crate::Shadow)).
    Shadow,
}

impl Mode {
    /// A split sending `percent` percent to the new side.
    pub fn percent(percent: u8) -> Result<Self, tower_patterns_core::ConfigError> {
        Share::percent(percent).map(Self::Split)
    }

    /// The share of callers this mode sends to the new side (shadow sends none: legacy answers).
    pub const fn share(self) -> Share {
        match self {
            Self::Legacy | Self::Shadow => Share::NONE,
            Self::New => Share::ALL,
            Self::Split(s) => s,
        }
    }

    /// `legacy`, `new`, `split` or `shadow`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::New => "new",
            Self::Split(_) => "split",
            Self::Shadow => "shadow",
        }
    }

    pub(crate) const fn encode(self) -> u32 {
        match self {
            Self::Legacy => 0,
            Self::New => 1 << 16,
            Self::Split(s) => (2 << 16) | s.basis_points() as u32,
            Self::Shadow => 3 << 16,
        }
    }

    pub(crate) const fn decode(bits: u32) -> Self {
        match bits >> 16 {
            1 => Self::New,
            2 => {
                let bp = (bits & 0xffff) as u16;
                Self::Split(Share::basis_points_clamped(bp))
            }
            3 => Self::Shadow,
            _ => Self::Legacy,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Split(s) => write!(f, "split {s}"),
            m => f.write_str(m.as_str()),
        }
    }
}

/// The side that serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The legacy side.
    Legacy,
    /// The new side.
    New,
    /// The legacy side answers, the new side gets a shadow copy.
    Shadow,
}

impl Side {
    /// `legacy`, `new` or `shadow`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::New => "new",
            Self::Shadow => "shadow",
        }
    }
}

/// A route of the migration table: the requests whose path starts with a prefix (on a segment
/// boundary: `/api/users` matches `/api/users`, `/api/users/7` and `/api/users?x=1`, not
/// `/api/usersx`), optionally only some methods, and the mode they start in.
///
/// The longest matching prefix wins; requests no route matches take the migration's fallback
/// mode (legacy unless set).
///
/// ```
/// use tower_patterns_strangler::{Mode, Route, Share};
///
/// let users = Route::prefix("/api/users").mode(Mode::Split(Share::HALF));
/// assert_eq!(users.name(), "/api/users");
/// assert!(users.matches("/api/users/7"));
/// assert!(!users.matches("/api/usersx"));
/// let search = Route::prefix("/search").named("search").methods([http::Method::GET]);
/// assert_eq!(search.name(), "search");
/// ```
#[derive(Clone, Debug)]
pub struct Route {
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) prefix: String,
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) mode: Mode,
    pub(crate) ramp: Option<crate::Ramp>,
}

impl Route {
    /// The requests under `prefix` (`/` for all), starting on the legacy side.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            name: prefix.as_str().into(),
            prefix,
            methods: None,
            mode: Mode::Legacy,
            ramp: None,
        }
    }

    /// Names the route (in the handle, logs and metrics); by default its prefix.
    pub fn named(mut self, name: impl Into<std::sync::Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Only these methods (by default all).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// The mode the route starts in.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Moves the route along a ramp (see [`Ramp`](crate::Ramp)); the route starts at the
    /// ramp's first step.
    pub fn ramp(mut self, ramp: crate::Ramp) -> Self {
        self.ramp = Some(ramp);
        self
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `path` is under the route's prefix (ignoring methods).
    pub fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }

    pub(crate) fn validate(&self) -> Result<(), tower_patterns_core::ConfigError> {
        use tower_patterns_core::ConfigError;
        if !self.prefix.starts_with('/') {
            return Err(ConfigError::new(
                "route",
                "a route's prefix starts with '/'",
            ));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("route", "a route's name is not empty"));
        }
        if self.methods.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::new(
                "route",
                "a route lists at least one method",
            ));
        }
        Ok(())
    }
}

/// Whether `path` is `prefix` or below it on a segment boundary.
#[inline]
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    trimmed_prefix_matches(prefix.trim_end_matches('/'), path)
}

/// As [`prefix_matches`], for a prefix without its trailing slashes (as the table keeps them).
#[inline]
pub(crate) fn trimmed_prefix_matches(p: &str, path: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// A route's mode, changed at runtime without a lock.
#[derive(Debug)]
pub(crate) struct ModeCell(AtomicU32);

impl ModeCell {
    pub(crate) fn new(mode: Mode) -> Self {
        Self(AtomicU32::new(mode.encode()))
    }

    #[inline]
    pub(crate) fn get(&self) -> Mode {
        Mode::decode(self.0.load(Ordering::Acquire))
    }

    pub(crate) fn set(&self, mode: Mode) -> Mode {
        Mode::decode(self.0.swap(mode.encode(), Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_through_their_encoding() {
        for mode in [
            Mode::Legacy,
            Mode::New,
            Mode::Shadow,
            Mode::Split(Share::NONE),
            Mode::Split(Share::HALF),
            Mode::Split(Share::ALL),
            Mode::Split(Share::basis_points_of(1).unwrap()),
        ] {
            assert_eq!(Mode::decode(mode.encode()), mode);
            let cell = ModeCell::new(Mode::Legacy);
            assert_eq!(cell.set(mode), Mode::Legacy);
            assert_eq!(cell.get(), mode);
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api/users", "/api/users"));
        assert!(prefix_matches("/api/users", "/api/users/7"));
        assert!(prefix_matches("/api/users/", "/api/users/7"));
        assert!(prefix_matches("/api/users", "/api/users?page=2"));
        assert!(!prefix_matches("/api/users", "/api/usersx"));
        assert!(!prefix_matches("/api/users", "/api/user"));
        assert!(!prefix_matches("/api/users", "/other"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/", "/"));
    }

    #[test]
    fn routes_are_validated() {
        assert!(Route::prefix("api").validate().is_err());
        assert!(Route::prefix("/a").named("").validate().is_err());
        assert!(Route::prefix("/a").methods([]).validate().is_err());
        assert!(Route::prefix("/a").validate().is_ok());
        assert_eq!(
            Mode::percent(25).unwrap(),
            Mode::Split(Share::percent(25).unwrap())
        );
        assert_eq!(Mode::Split(Share::HALF).to_string(), "split 50%");
        let names: Vec<_> = [
            Mode::Legacy,
            Mode::New,
            Mode::Split(Share::HALF),
            Mode::Shadow,
        ]
        .map(Mode::as_str)
        .into();
        assert_eq!(names, ["legacy", "new", "split", "shadow"]);
        assert_eq!(Mode::New.to_string(), "new");
        let sides: Vec<_> = [Side::Legacy, Side::New, Side::Shadow]
            .map(Side::as_str)
            .into();
        assert_eq!(sides, ["legacy", "new", "shadow"]);
        assert_eq!(Mode::New.share(), Share::ALL);
        assert_eq!(Mode::Shadow.share(), Share::NONE);
    }
}
