//! The comparator's builder.

use std::sync::Arc;

use http::HeaderName;
use tower_patterns_core::ConfigError;

use super::normalise::{NormaliseFn, Normaliser};
use super::path::{Rule, Rules, parse};
use super::{Comparator, Inner};

/// The default of [`ComparatorBuilder::max_body`]: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The default of [`ComparatorBuilder::max_differences`].
pub const DEFAULT_MAX_DIFFERENCES: usize = 100;

#[derive(Clone, Debug)]
enum Setting {
    Ignore,
    Normalise(Normaliser),
}

/// Builds a [`Comparator`]: [`Comparator::builder`], the settings, then
/// [`build`](Self::build), which checks the paths.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct ComparatorBuilder {
    headers: Vec<HeaderName>,
    paths: Vec<(String, Setting)>,
    max_body: usize,
    max_differences: usize,
}

impl Default for ComparatorBuilder {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            paths: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            max_differences: DEFAULT_MAX_DIFFERENCES,
        }
    }
}

impl ComparatorBuilder {
    /// Compares the values of header `name` (all of them, in order). No header is compared by
    /// default: most differ between two services for reasons nobody cares about (`Date`,
    /// `Server`, tracing ids). The status is always compared.
    pub fn header(mut self, name: HeaderName) -> Self {
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
        self
    }

    /// Skips the JSON bodies' values at `path` (and everything under it), whether they differ
    /// or are missing on either side.
    ///
    /// `path` is a JSON Pointer (RFC 6901): `""` is the whole body, `/meta/request_id` the key
    /// `request_id` of the key `meta`, `/items/0` the first element, `~0` and `~1` stand for
    /// `~` and `/` in a key. A segment that is exactly `*` matches any key or array index:
    /// `/items/*/etag`. (A key named `*` is matched by the wildcard like any other.) Ignoring
    /// `""` turns the body comparison off, bytes included.
    ///
    /// An invalid path makes [`build`](Self::build) fail, naming the setting `ignore`.
    pub fn ignore(mut self, path: impl Into<String>) -> Self {
        self.paths.push((path.into(), Setting::Ignore));
        self
    }

    /// Normalises the JSON bodies' values at `path` (a pointer with wildcards, as
    /// [`ignore`](Self::ignore) takes) on both sides before comparing them; see [`Normaliser`]
    /// for what each does. Several normalisers may apply at one place: the built-in ones all
    /// hold, custom ones run in the order given, and of two tolerances the later given wins.
    ///
    /// An invalid path, or a tolerance that is negative or not finite, makes
    /// [`build`](Self::build) fail, naming the setting `normalise`.
    pub fn normalise(mut self, path: impl Into<String>, normaliser: Normaliser) -> Self {
        self.paths
            .push((path.into(), Setting::Normalise(normaliser)));
        self
    }

    /// Bodies longer than `bytes` (either one) are not parsed: they are compared as bytes, and
    /// a difference shows their lengths and hashes. Default [`DEFAULT_MAX_BODY`] (1 MiB).
    /// Parsing is most of a comparison's cost, and its memory is a few times the body's size.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Keeps at most `n` differences of one comparison and only counts the rest
    /// ([`Differences::omitted`](super::Differences::omitted)): two lists that differ
    /// everywhere make one bounded report. Default [`DEFAULT_MAX_DIFFERENCES`] (100).
    pub fn max_differences(mut self, n: usize) -> Self {
        self.max_differences = n;
        self
    }

    /// The comparator, once every path is checked.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `ignore` or `normalise` for a path that is not a JSON Pointer
    /// (it must be empty or start with `/`, a `~` must be followed by `0` or `1`), or one deeper
    /// than 128 segments; naming `normalise` for a negative or infinite tolerance; and when the
    /// paths' wildcards combine into more than 4,096 cases.
    pub fn build(self) -> Result<Comparator, ConfigError> {
        let mut compiled = Vec::with_capacity(self.paths.len());
        let mut customs: Vec<Arc<NormaliseFn>> = Vec::new();
        let mut body_ignored = false;
        for (path, setting) in &self.paths {
            let field = match setting {
                Setting::Ignore => "ignore",
                Setting::Normalise(_) => "normalise",
            };
            let pattern = parse(path).map_err(|reason| ConfigError::new(field, reason))?;
            let rule = match setting {
                Setting::Ignore => {
                    body_ignored |= pattern.is_empty();
                    Rule::Ignore
                }
                Setting::Normalise(Normaliser::Uuid) => Rule::Uuid,
                Setting::Normalise(Normaliser::Timestamp) => Rule::Timestamp,
                Setting::Normalise(Normaliser::Tolerance(t)) => {
                    if !(t.is_finite() && *t >= 0.0) {
                        return Err(ConfigError::new(
                            field,
                            format!(
                                "the tolerance at {path:?} must be finite and not negative, not {t}"
                            ),
                        ));
                    }
                    Rule::Tolerance(*t)
                }
                Setting::Normalise(Normaliser::Custom(f)) => {
                    customs.push(Arc::clone(f));
                    Rule::Custom(customs.len() - 1)
                }
            };
            compiled.push((pattern, rule));
        }
        let rules = Rules::compile(&compiled)
            .map_err(|reason| ConfigError::new("ignore/normalise", reason))?;
        Ok(Comparator {
            inner: Arc::new(Inner {
                headers: self.headers,
                paths: self
                    .paths
                    .iter()
                    .map(|(path, setting)| match setting {
                        Setting::Ignore => format!("ignore {path:?}"),
                        Setting::Normalise(n) => format!("normalise {path:?} {n:?}"),
                    })
                    .collect(),
                rules,
                customs,
                body_ignored,
                max_body: self.max_body,
                max_differences: self.max_differences,
            }),
        })
    }
}
