//! `Projection::builder(name)`: the source store and the target are required parts.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use tokio::task::JoinHandle;
use tower_patterns_core::ConfigError;
use tower_patterns_eventstore::EventStore;

use super::{FailurePolicy, ProjectionError, ProjectionHandle, handle::Shared, runner};
use crate::target::Target;

/// Marker: no source store set yet (`.source(store)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSource;

/// Marker: no target set yet (`.sqlite(..)`, `.postgres(..)` or `.external(..)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTarget;

/// The event store a projection reads.
#[derive(Debug)]
pub struct Source<S>(pub(crate) Arc<S>);

/// Settings every target shares.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) batch: usize,
    pub(crate) policy: FailurePolicy,
    pub(crate) seed: u64,
}

/// Builds a [`Projection`]: `Projection::builder(name).source(store).sqlite(path, model)`
/// (or `.postgres(pool, model)`, `.external(checkpoints, effect)`), then optional settings,
/// then `build()`.
pub struct ProjectionBuilder<Src = NoSource, Tgt = NoTarget> {
    pub(crate) settings: Settings,
    pub(crate) source: Src,
    pub(crate) target: Tgt,
}

impl<Src, Tgt> fmt::Debug for ProjectionBuilder<Src, Tgt> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<Src, Tgt> ProjectionBuilder<Src, Tgt> {
    /// Events applied per transaction (default 256): larger batches cost fewer commits,
    /// smaller ones show effects sooner under load.
    #[must_use]
    pub fn batch(mut self, events: usize) -> Self {
        self.settings.batch = events;
        self
    }

    /// What happens when an event fails (default: [`FailurePolicy::default`], 10 attempts
    /// then stop).
    #[must_use]
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.settings.policy = policy;
        self
    }

    /// Seeds the backoff's jitter, for repeatable tests (by default a value derived from the name).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = seed;
        self
    }

    /// Replaces the target (used by the target setters of each kind).
    pub(crate) fn with_target<T>(self, target: T) -> ProjectionBuilder<Src, T> {
        ProjectionBuilder {
            settings: self.settings,
            source: self.source,
            target,
        }
    }
}

impl<Tgt> ProjectionBuilder<NoSource, Tgt> {
    /// The event store whose global log the projection reads (required).
    pub fn source<S: EventStore>(self, store: Arc<S>) -> ProjectionBuilder<Source<S>, Tgt> {
        ProjectionBuilder {
            settings: self.settings,
            source: Source(store),
            target: self.target,
        }
    }
}

impl<S: EventStore, T: Target> ProjectionBuilder<Source<S>, T> {
    /// Checks the settings and makes the projection, ready to run.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` (see [`Projection::builder`] for what it may be),
    /// `batch` (zero) or `policy`.
    pub fn build(self) -> Result<Projection, ConfigError> {
        let name = &self.settings.name;
        check_name(name)?;
        if self.settings.batch == 0 {
            return Err(ConfigError::new("batch", "must be at least 1"));
        }
        self.settings.policy.validate()?;
        crate::metrics::register(name);
        let shared = Shared::new(self.settings.name.clone(), self.source.0.clone());
        let handle = ProjectionHandle::new(shared.clone());
        let run = runner::run(self.source.0, self.target, self.settings, shared);
        Ok(Projection {
            handle,
            run: Box::pin(run),
        })
    }
}

/// The longest projection name, in bytes. A table's name is `{name}_v{version}_{table}`, and
/// PostgreSQL cuts identifiers at 63 bytes: with at most 32 here and `_v` plus up to 10
/// digits plus `_`, at least 18 bytes are left for the table's own name.
pub(crate) const MAX_NAME: usize = 32;

/// Refuses a name that cannot prefix tables on every target: it must be lowercase ASCII
/// letters, digits and `_`, start with a letter (PostgreSQL folds unquoted names to
/// lowercase: a name with capitals would name tables that the name no longer matches), be
/// at most [`MAX_NAME`] bytes, and carry no version marker.
fn check_name(name: &str) -> Result<(), ConfigError> {
    let b = name.as_bytes();
    if !b.first().is_some_and(u8::is_ascii_lowercase)
        || b.len() > MAX_NAME
        || !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
    {
        return Err(ConfigError::new(
            "name",
            "must be 1 to 32 lowercase ASCII letters, digits or underscores, starting with a \
             letter (it prefixes the read model's tables)",
        ));
    }
    if has_version_marker(name) {
        return Err(ConfigError::new(
            "name",
            "must not contain `_v` and digits followed by `_` or the end (a copy's tables \
             are `{name}_v{n}_`: such a name would share another projection's prefix)",
        ));
    }
    Ok(())
}

/// Whether `name` contains `_v<digits>` followed by `_` or the end: the marker of a copy's
/// version in table names.
fn has_version_marker(name: &str) -> bool {
    let b = name.as_bytes();
    (0..b.len()).any(|i| {
        if !b[i..].starts_with(b"_v") {
            return false;
        }
        let digits = b[i + 2..].iter().take_while(|c| c.is_ascii_digit()).count();
        digits > 0 && matches!(b.get(i + 2 + digits), None | Some(b'_'))
    })
}

type RunFuture = Pin<Box<dyn Future<Output = Result<(), ProjectionError>> + Send>>;

/// A built projection: run it (or spawn it) and watch it through its handle.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tower_patterns_cqrs::{ApplyError, ExternalProjection, MemoryCheckpoints, Projection, Status};
/// use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent};
///
/// /// Sends each product to a search service (here: nowhere).
/// struct SearchIndex;
///
/// impl ExternalProjection for SearchIndex {
///     async fn apply(&self, _event: &RecordedEvent) -> Result<(), ApplyError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_patterns_core::BoxError> {
/// let store = Arc::new(InMemoryStore::new());
/// let (handle, task) = Projection::builder("search")
///     .source(store.clone())
///     .external(MemoryCheckpoints::new(), SearchIndex)
///     .build()?
///     .spawn();
/// let appended = store
///     .append("product-1", ExpectedVersion::Any, vec![EventData::json("Created", &"lamp")?])
///     .await?;
/// // Read-your-writes: wait until the projection has applied the append.
/// assert!(handle.wait_for(appended.positions[0], Duration::from_secs(5)).await);
/// handle.shutdown();
/// task.await??;
/// assert_eq!(handle.status(), Status::ShutDown);
/// # Ok(())
/// # }
/// ```
pub struct Projection {
    handle: ProjectionHandle,
    run: RunFuture,
}

impl fmt::Debug for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Projection {
    /// A builder for the projection named `name`: it names the checkpoint row and prefixes
    /// the read model's tables (`{name}_v{version}_{table}`), so `build()` refuses a name
    /// that is not 1 to 32 lowercase ASCII letters, digits and `_` starting with a letter
    /// (PostgreSQL folds unquoted names to lowercase and cuts them at 63 bytes), or that
    /// contains `_v` and digits followed by `_` or the end (`search_v2`: another projection's
    /// copy would share its prefix).
    pub fn builder(name: impl Into<Arc<str>>) -> ProjectionBuilder {
        let name = name.into();
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        ProjectionBuilder {
            settings: Settings {
                name,
                batch: 256,
                policy: FailurePolicy::default(),
                seed,
            },
            source: NoSource,
            target: NoTarget,
        }
    }

    /// The projection's handle (position, lag, status, rebuild).
    pub fn handle(&self) -> ProjectionHandle {
        self.handle.clone()
    }

    /// Runs the projection until it is shut down through its handle (`Ok`). A failure policy
    /// that stops parks it ([`Status::Stopped`](super::Status::Stopped), until
    /// [`resume`](ProjectionHandle::resume)); errors of the store or the read model's
    /// database between events are retried with a backoff ([`Status::Retrying`](super::Status::Retrying)).
    ///
    /// # Errors
    ///
    /// The [`ProjectionError`] that kept it from starting: the target could not be opened,
    /// or the projection's `create` failed.
    pub async fn run(self) -> Result<(), ProjectionError> {
        self.run.await
    }

    /// Runs the projection on a Tokio task.
    pub fn spawn(self) -> (ProjectionHandle, JoinHandle<Result<(), ProjectionError>>) {
        (self.handle, tokio::spawn(self.run))
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_NAME, check_name, has_version_marker};

    #[test]
    fn names_are_lowercase_identifiers_of_at_most_32_bytes() {
        let longest = format!("a{}", "b".repeat(MAX_NAME - 1));
        for name in ["search", "photo_feed2", "a", "a_", longest.as_str()] {
            assert!(check_name(name).is_ok(), "{name}");
        }
        let too_long = format!("{longest}c");
        for name in [
            "",
            "Catalog",
            "catalogV",
            "_search",
            "2search",
            "search-feed",
            "s\u{e9}ance",
            "search feed",
            too_long.as_str(),
            "search_v2",
        ] {
            let err = check_name(name).expect_err(name);
            assert_eq!(err.field(), "name", "{name}");
        }
    }

    #[test]
    fn names_with_a_version_marker_are_found() {
        for name in ["search_v2", "a_v1_b", "x_v10", "feed_v3_"] {
            assert!(has_version_marker(name), "{name}");
        }
        for name in [
            "search",
            "photo_feed",
            "v2",
            "search_v",
            "search_vx_1",
            "a_v1b",
            "_version",
        ] {
            assert!(!has_version_marker(name), "{name}");
        }
    }
}
