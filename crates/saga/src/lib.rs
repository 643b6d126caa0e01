//! Sagas for tower services: multi-step transactions across services without distributed
//! locks, undone by compensating transactions when a step fails.
//!
//! (docs: to be written)

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod choreography;
mod definition;
mod error;
pub mod index;
mod log;
pub mod metrics;
mod orchestrator;
mod policy;
mod state;
mod step;

pub use definition::{Attempts, SagaDefinition, SagaDefinitionBuilder, Step, StepService};
pub use error::SagaError;
pub use log::SagaEvent;
pub use orchestrator::{
    LoggedEvent, NoIndex, NoStore, Orchestrator, OrchestratorBuilder, OrchestratorHandle,
    SagaService, StartSaga, StuckSaga,
};
pub use state::{Outcome, SagaState, SagaStatus, StepPhase};
pub use step::{IdempotencyKey, Phase, SagaId, StepError, StepRequest};
