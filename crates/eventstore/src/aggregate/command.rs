//! Commands as a tower `Service`.

use std::{
    fmt,
    task::{Context, Poll},
};

use futures_util::{FutureExt as _, future::BoxFuture};
use tower_service::Service;
use uuid::Uuid;

use super::{error::RepositoryError, model::Aggregate, model::Committed, repository::Repository};
use crate::{EventStore, Metadata};

/// A command for aggregate `id`, with the metadata its events will carry.
#[derive(Clone, Debug)]
pub struct Command<C> {
    /// The aggregate's id (its stream is the repository's prefix + id).
    pub id: String,
    /// The command.
    pub command: C,
    /// Correlation, causation and tenant for the resulting events.
    pub metadata: Metadata,
    /// An idempotency key: with one, a retry of the same command (a retry layer in front of the
    /// service, or a client) appends nothing twice. See [`Repository::execute_idempotent`].
    pub idempotency_key: Option<Uuid>,
}

impl<C> Command<C> {
    /// `command` for aggregate `id`, with empty metadata.
    pub fn new(id: impl Into<String>, command: C) -> Self {
        Self {
            id: id.into(),
            command,
            metadata: Metadata::default(),
            idempotency_key: None,
        }
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotent(mut self, key: Uuid) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// Commands as a tower `Service`: `Service<Command<A::Command>>` answering [`Committed`], so
/// breakers, timeouts, bulkheads and retries stack on command handling. Always ready.
pub struct CommandService<A, S> {
    repository: Repository<A, S>,
}

impl<A, S> Clone for CommandService<A, S> {
    fn clone(&self) -> Self {
        Self {
            repository: self.repository.clone(),
        }
    }
}

impl<A, S> fmt::Debug for CommandService<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandService")
            .field("repository", &self.repository)
            .finish()
    }
}

impl<A, S> CommandService<A, S> {
    /// Commands handled by `repository`.
    pub fn new(repository: Repository<A, S>) -> Self {
        Self { repository }
    }
}

impl<A: Aggregate, S: EventStore> Service<Command<A::Command>> for CommandService<A, S> {
    type Response = Committed;
    type Error = RepositoryError<A::Error>;
    type Future = BoxFuture<'static, Result<Committed, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Command<A::Command>) -> Self::Future {
        let repository = self.repository.clone();
        async move {
            repository
                .execute_keyed(&req.id, &req.command, req.metadata, req.idempotency_key)
                .await
        }
        .boxed()
    }
}
