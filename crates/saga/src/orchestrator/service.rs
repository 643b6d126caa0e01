//! The orchestrator as a tower `Service`: start a saga, answer its outcome.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tower_patterns_eventstore::EventStore;
use tower_service::Service;

use super::Orchestrator;
use crate::{Outcome, SagaError, SagaId, index::SagaIndex};

/// A request to run one saga.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StartSaga {
    /// The saga's id: a retried request with the same id runs nothing twice and answers the
    /// same outcome.
    pub id: SagaId,
    /// The input.
    pub input: Value,
    /// A deadline of its own, instead of the definition's.
    pub deadline: Option<Duration>,
}

impl StartSaga {
    /// Saga `id` with `input`.
    pub fn new(id: SagaId, input: Value) -> Self {
        Self {
            id,
            input,
            deadline: None,
        }
    }

    /// With a deadline of its own.
    #[must_use]
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// Runs sagas of one type as a `Service<StartSaga>` answering each one's [`Outcome`]; from
/// [`Orchestrator::service`]. Always ready; dropping the response future does not stop the
/// saga (it is in the log, and runs to its end).
pub struct SagaService<S, I> {
    orchestrator: Orchestrator<S, I>,
    saga_type: Arc<str>,
}

impl<S, I> Clone for SagaService<S, I> {
    fn clone(&self) -> Self {
        Self {
            orchestrator: self.orchestrator.clone(),
            saga_type: self.saga_type.clone(),
        }
    }
}

impl<S, I> std::fmt::Debug for SagaService<S, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaService")
            .field("saga_type", &self.saga_type)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, I: SagaIndex> Orchestrator<S, I> {
    /// Sagas of type `saga_type` as a tower `Service`.
    ///
    /// # Errors
    ///
    /// [`SagaError::UnknownType`] when no definition has this name.
    pub fn service(&self, saga_type: &str) -> Result<SagaService<S, I>, SagaError> {
        let (name, _) = self
            .inner
            .definitions
            .get_key_value(saga_type)
            .ok_or_else(|| SagaError::UnknownType(saga_type.to_owned()))?;
        Ok(SagaService {
            orchestrator: self.clone(),
            saga_type: name.clone(),
        })
    }
}

impl<S: EventStore, I: SagaIndex> Service<StartSaga> for SagaService<S, I> {
    type Response = Outcome;
    type Error = SagaError;
    type Future = BoxFuture<'static, Result<Outcome, SagaError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: StartSaga) -> Self::Future {
        let orchestrator = self.orchestrator.clone();
        let saga_type = self.saga_type.clone();
        Box::pin(async move {
            orchestrator
                .start(&saga_type, req.id.clone(), req.input, req.deadline)
                .await?;
            orchestrator.outcome(&req.id).await
        })
    }
}
