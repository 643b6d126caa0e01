//! What a read side must tell the consistency layer: whether it has reached a mark, and a way
//! to wait until it does.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::watch;
use tower_patterns_cqrs::ProjectionHandle;

use crate::mark::{Distance, Mark, MarkKind};

/// A boxed wait, for read sides whose wait is an `async fn`.
pub type BoxWait = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// A read side that follows a write side with some delay: CQRS read models (a
/// [`ProjectionHandle`], several with [`AllOf`]), PostgreSQL replicas (the `replica` module's
/// `ReplicaSet`), or any model that publishes its progress through [`Progress`].
///
/// [`reached`](Self::reached) is on every read that carries a token, so it must be cheap (an
/// atomic or a `watch` read); [`wait`](Self::wait) only runs when it said no.
pub trait ReadSide: Clone + Send + Sync + 'static {
    /// The future of [`wait`](Self::wait).
    type Wait: Future<Output = bool> + Send + 'static;

    /// The kind of marks this read side follows; tokens of the other kind are refused.
    fn kind(&self) -> MarkKind;

    /// True when a read now would see everything up to `mark`.
    fn reached(&self, mark: Mark) -> bool;

    /// Resolves to true once [`reached`](Self::reached) would say so, or false after `within`.
    fn wait(&self, mark: Mark, within: Duration) -> Self::Wait;

    /// How far behind `mark` the read side is now, for the stale marker (`None` when unknown
    /// or not behind).
    fn distance(&self, mark: Mark) -> Option<Distance>;

    /// True when the service behind the layer chooses where to read from by the request's
    /// [`ReadConcern`](crate::ReadConcern) (a replica router): the layer then puts one in every
    /// read's extensions. False (the default) saves that insert.
    fn routes(&self) -> bool {
        false
    }
}

/// A CQRS read model: its live copy has reached a position once the projection has applied
/// (and committed) every event up to it.
impl ReadSide for ProjectionHandle {
    type Wait = BoxWait;

    fn kind(&self) -> MarkKind {
        MarkKind::Position
    }

    fn reached(&self, mark: Mark) -> bool {
        matches!(mark, Mark::Position(p) if self.position() >= p)
    }

    fn wait(&self, mark: Mark, within: Duration) -> BoxWait {
        let handle = self.clone();
        Box::pin(async move {
            match mark {
                Mark::Position(p) => handle.wait_for(p, within).await,
                Mark::Lsn(_) => false,
            }
        })
    }

    fn distance(&self, mark: Mark) -> Option<Distance> {
        Mark::Position(self.position()).distance_to(mark)
    }
}

/// Several read sides of one kind that must all have reached a mark: the read models one
/// query joins, say.
///
/// ```
/// use tower_patterns_consistency::{AllOf, Mark, MarkKind, Progress, ReadSide};
/// use tower_patterns_eventstore::GlobalPosition;
///
/// let at = |i| Mark::Position(GlobalPosition::new(0, i));
/// let (a, b) = (Progress::new(at(5)), Progress::new(at(3)));
/// let both = AllOf::new([a.clone(), b.clone()]);
/// assert!(both.reached(at(3)));
/// assert!(!both.reached(at(4)));
/// b.advance(at(9));
/// assert!(both.reached(at(5)));
/// ```
#[derive(Clone)]
pub struct AllOf<R> {
    sides: Arc<[R]>,
}

impl<R> AllOf<R> {
    /// All of `sides` (an empty set has reached every mark).
    pub fn new(sides: impl IntoIterator<Item = R>) -> Self {
        Self {
            sides: sides.into_iter().collect(),
        }
    }
}

impl<R> fmt::Debug for AllOf<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllOf")
            .field("sides", &self.sides.len())
            .finish()
    }
}

impl<R: ReadSide> ReadSide for AllOf<R> {
    type Wait = BoxWait;

    fn kind(&self) -> MarkKind {
        self.sides.first().map_or(MarkKind::Position, R::kind)
    }

    fn reached(&self, mark: Mark) -> bool {
        self.sides.iter().all(|s| s.reached(mark))
    }

    fn wait(&self, mark: Mark, within: Duration) -> BoxWait {
        let sides = self.sides.clone();
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            for side in sides.iter() {
                let left = within.saturating_sub(start.elapsed());
                if !side.reached(mark) && !side.wait(mark, left).await {
                    return false;
                }
            }
            true
        })
    }

    fn distance(&self, mark: Mark) -> Option<Distance> {
        self.sides
            .iter()
            .filter_map(|s| s.distance(mark))
            .max_by_key(|d| match d {
                Distance::Events(n) | Distance::WalBytes(n) => *n,
            })
    }
}

/// A read side that publishes its own progress: a search index, a cache warmer, any read
/// model this crate does not run. Its writer calls [`advance`](Self::advance) after each
/// batch it has made visible; clones share the progress.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use tower_patterns_consistency::{Mark, Progress, ReadSide};
/// use tower_patterns_eventstore::GlobalPosition;
///
/// let at = |i| Mark::Position(GlobalPosition::new(0, i));
/// let index = Progress::new(at(0));
/// let waiting = index.wait(at(2), Duration::from_secs(5));
/// index.advance(at(2));
/// assert!(waiting.await);
/// index.advance(at(1)); // never goes back
/// assert_eq!(index.current(), at(2));
/// # }
/// ```
#[derive(Clone)]
pub struct Progress {
    tx: Arc<watch::Sender<Mark>>,
}

impl Progress {
    /// A read side that has reached `start` (its kind is `start`'s).
    pub fn new(start: Mark) -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Records that everything up to `mark` is visible; a mark not later than the current one
    /// (or of the other kind) changes nothing.
    pub fn advance(&self, mark: Mark) {
        self.tx.send_if_modified(|now| {
            if mark > *now {
                *now = mark;
                true
            } else {
                false
            }
        });
    }

    /// The mark reached so far.
    pub fn current(&self) -> Mark {
        *self.tx.borrow()
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("current", &self.current())
            .finish()
    }
}

impl ReadSide for Progress {
    type Wait = BoxWait;

    fn kind(&self) -> MarkKind {
        self.current().kind()
    }

    fn reached(&self, mark: Mark) -> bool {
        matches!(self.tx.borrow().partial_cmp(&mark), Some(o) if o.is_ge())
    }

    fn wait(&self, mark: Mark, within: Duration) -> BoxWait {
        let mut rx = self.tx.subscribe();
        Box::pin(async move {
            let reached = |m: &Mark| matches!(m.partial_cmp(&mark), Some(o) if o.is_ge());
            if reached(&rx.borrow_and_update()) {
                return true;
            }
            matches!(
                tokio::time::timeout(within, rx.wait_for(reached)).await,
                Ok(Ok(_))
            )
        })
    }

    fn distance(&self, mark: Mark) -> Option<Distance> {
        self.current().distance_to(mark)
    }
}
