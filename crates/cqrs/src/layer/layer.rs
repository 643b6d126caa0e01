//! `CqrsLayer::builder(name)`: the write side and the classifier are required parts.

use std::{fmt, sync::Arc};

use tower_layer::Layer;
use tower_patterns_core::ConfigError;

use super::{
    adapter::Direct,
    handle::{CqrsHandle, Stats},
    service::{Cqrs, Shared},
};

/// Marker: no write side set yet (`.commands(service)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCommands;

/// Marker: no classifier set yet (`.classify(f)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClassifier;

/// Builds a [`CqrsLayer`]: `CqrsLayer::builder(name).commands(service).classify(f)`, an
/// optional `.adapter(a)` (default [`Direct`]), then `build()`.
pub struct CqrsBuilder<C = NoCommands, F = NoClassifier, A = Direct> {
    name: Arc<str>,
    commands: C,
    classify: F,
    adapter: A,
}

impl<C, F, A> fmt::Debug for CqrsBuilder<C, F, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqrsBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<F, A> CqrsBuilder<NoCommands, F, A> {
    /// The write side (required): an aggregate's `CommandService`, or any `Clone` service
    /// answering [`Committed`](tower_patterns_eventstore::Committed), with its own layers
    /// (timeouts, a breaker, a bulkhead) already applied.
    pub fn commands<C>(self, commands: C) -> CqrsBuilder<C, F, A> {
        CqrsBuilder {
            name: self.name,
            commands,
            classify: self.classify,
            adapter: self.adapter,
        }
    }
}

impl<C, A> CqrsBuilder<C, NoClassifier, A> {
    /// Which side a request belongs to (required): a `Fn(&Req) -> Side`, or an
    /// [`HttpClassifier`](super::HttpClassifier).
    pub fn classify<F>(self, classify: F) -> CqrsBuilder<C, F, A> {
        CqrsBuilder {
            name: self.name,
            commands: self.commands,
            classify,
            adapter: self.adapter,
        }
    }
}

impl<C, F, A> CqrsBuilder<C, F, A> {
    /// How a command request becomes the write side's request and a commit the response
    /// (default [`Direct`]: as it is, and `Res: From<Committed>`; for HTTP,
    /// [`HttpCommands`](super::HttpCommands)).
    pub fn adapter<A2>(self, adapter: A2) -> CqrsBuilder<C, F, A2> {
        CqrsBuilder {
            name: self.name,
            commands: self.commands,
            classify: self.classify,
            adapter,
        }
    }
}

impl<C, F, A> CqrsBuilder<C, F, A>
where
    C: Clone,
    F: Send + Sync + 'static,
    A: Send + Sync + 'static,
{
    /// Makes the layer, registers its errors with core's HTTP mapping
    /// ([`BadCommand`](super::BadCommand) → its 4xx, [`PositionError`](super::PositionError)
    /// → 400; the write side's `RepositoryError` is registered by its repository: a version
    /// conflict is 409) and its counters.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` when the name is empty.
    pub fn build(self) -> Result<CqrsLayer<C, F, A>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        super::error::register();
        let stats = Stats::new(self.name);
        Ok(CqrsLayer {
            commands: self.commands,
            shared: Arc::new(Shared {
                classify: self.classify,
                adapter: self.adapter,
                stats,
            }),
        })
    }
}

/// Layer that splits requests between a write side (commands) and the service it wraps, the
/// read side (queries). See the [module docs](super).
pub struct CqrsLayer<C = NoCommands, F = NoClassifier, A = Direct> {
    commands: C,
    shared: Arc<Shared<F, A>>,
}

impl CqrsLayer {
    /// A builder for the layer named `name`.
    pub fn builder(name: impl Into<Arc<str>>) -> CqrsBuilder {
        CqrsBuilder {
            name: name.into(),
            commands: NoCommands,
            classify: NoClassifier,
            adapter: Direct,
        }
    }
}

impl<C, F, A> CqrsLayer<C, F, A> {
    /// The layer's handle.
    pub fn handle(&self) -> CqrsHandle {
        CqrsHandle::new(self.shared.stats.clone())
    }
}

impl<C: Clone, F, A> Clone for CqrsLayer<C, F, A> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<C, F, A> fmt::Debug for CqrsLayer<C, F, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqrsLayer")
            .field("name", &self.shared.stats.name)
            .finish_non_exhaustive()
    }
}

impl<Q, C: Clone, F, A> Layer<Q> for CqrsLayer<C, F, A> {
    type Service = Cqrs<Q, C, F, A>;

    fn layer(&self, queries: Q) -> Self::Service {
        Cqrs::new(queries, self.commands.clone(), self.shared.clone())
    }
}
