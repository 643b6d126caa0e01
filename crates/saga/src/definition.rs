//! A saga's shape: [`Step`]s in order, parallel branches, and what a failure means.

use std::{collections::HashSet, fmt, sync::Arc, time::Duration};

use serde_json::Value;
use tower::{ServiceExt as _, util::BoxCloneSyncService};
use tower_patterns_core::{BoxError, ConfigError, backoff::Backoff};
use tower_service::Service;

use crate::step::StepRequest;

/// A step's action or compensation, boxed: any `Service<StepRequest>` answering a JSON output,
/// with breakers, retries, timeouts and bulkheads stacked on it as on any call.
pub type StepService = BoxCloneSyncService<StepRequest, Value, BoxError>;

pub(crate) fn boxed<S, E>(service: S) -> StepService
where
    S: Service<StepRequest, Response = Value, Error = E> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    E: Into<BoxError> + 'static,
{
    BoxCloneSyncService::new(service.map_err(Into::into))
}

/// Attempts and the delays between them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attempts {
    /// Attempts in all, the first included (at least 1).
    pub max: u32,
    /// The delay before each retry.
    pub backoff: Backoff,
    /// The longest delay.
    pub cap: Duration,
}

impl Attempts {
    /// `max` attempts with `backoff` between them, capped at 30 s.
    pub const fn new(max: u32, backoff: Backoff) -> Self {
        Self {
            max,
            backoff,
            cap: Duration::from_secs(30),
        }
    }

    /// One attempt.
    pub const fn once() -> Self {
        Self::new(1, Backoff::Constant(Duration::ZERO))
    }
}

/// One step: an action, its compensation, and how it fails. A value, built with
/// [`new`](Self::new) and settings.
#[derive(Clone)]
pub struct Step {
    pub(crate) name: Arc<str>,
    pub(crate) action: StepService,
    pub(crate) compensation: Option<StepService>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) attempts: Attempts,
    pub(crate) compensation_attempts: Attempts,
    pub(crate) reason: Option<Arc<str>>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensation", &self.compensation.is_some())
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("compensation_attempts", &self.compensation_attempts)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A step named `name` whose action is `action`. By default: no compensation (a step
    /// with nothing to undo, such as a final notification), no timeout, one attempt (a
    /// failure compensates at once), and compensations tried 8 times with exponential backoff
    /// from 100 ms.
    pub fn new<S, E>(name: impl Into<Arc<str>>, action: S) -> Self
    where
        S: Service<StepRequest, Response = Value, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self {
            name: name.into(),
            action: boxed(action),
            compensation: None,
            timeout: None,
            attempts: Attempts::once(),
            compensation_attempts: Attempts::new(
                8,
                Backoff::Exponential {
                    base: Duration::from_millis(100),
                    multiplier: 2.0,
                },
            ),
            reason: None,
        }
    }

    /// The service that undoes the action. It receives the action's output (when the
    /// action succeeded) and must accept an action that never took effect.
    #[must_use]
    pub fn compensate_with<S, E>(mut self, compensation: S) -> Self
    where
        S: Service<StepRequest, Response = Value, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.compensation = Some(boxed(compensation));
        self
    }

    /// How long one attempt of the action or of the compensation may take; past it the
    /// attempt's outcome is unknown (retried with the same key, or compensated).
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// On an error whose outcome is unknown, retry the action up to `attempts.max` attempts
    /// in all, then compensate. A [`StepError`](crate::StepError) is never retried.
    #[must_use]
    pub const fn retry(mut self, attempts: Attempts) -> Self {
        self.attempts = attempts;
        self
    }

    /// On any failure, compensate at once (the default: one attempt).
    #[must_use]
    pub const fn compensate_at_once(mut self) -> Self {
        self.attempts = Attempts::once();
        self
    }

    /// How the compensation is retried; past the last attempt the saga is stuck, waiting
    /// for an operator.
    #[must_use]
    pub const fn compensation_retry(mut self, attempts: Attempts) -> Self {
        self.compensation_attempts = attempts;
        self
    }

    /// The saga's failure reason when this step fails (`"payment failed"`); without one the
    /// reason is the refusal's, or `"<step> failed"`.
    #[must_use]
    pub fn failure_reason(mut self, reason: impl Into<Arc<str>>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A saga definition: stages run in order, each one step or several independent steps run in
/// parallel. Built with [`SagaDefinition::builder`]; cloning shares the services.
#[derive(Clone, Debug)]
pub struct SagaDefinition {
    pub(crate) name: Arc<str>,
    pub(crate) stages: Arc<[Vec<Step>]>,
    pub(crate) deadline: Option<Duration>,
}

impl SagaDefinition {
    /// A definition named `name` (the saga type, in logs and metrics).
    pub fn builder(name: impl Into<Arc<str>>) -> SagaDefinitionBuilder {
        SagaDefinitionBuilder {
            name: name.into(),
            stages: Vec::new(),
            deadline: None,
        }
    }

    /// The saga type.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Vec<Step>] {
        &self.stages
    }
}

/// Builds a [`SagaDefinition`]; see [`SagaDefinition::builder`].
#[derive(Debug)]
pub struct SagaDefinitionBuilder {
    name: Arc<str>,
    stages: Vec<Vec<Step>>,
    deadline: Option<Duration>,
}

impl SagaDefinitionBuilder {
    /// Appends a stage of one step.
    #[must_use]
    pub fn step(mut self, step: Step) -> Self {
        self.stages.push(vec![step]);
        self
    }

    /// Appends a stage of independent steps run at once; the saga moves on when all have
    /// succeeded, and compensates when one fails (after the others have answered).
    #[must_use]
    pub fn parallel(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.stages.push(steps.into_iter().collect());
        self
    }

    /// The time from start after which a saga still running is compensated (each start can
    /// set its own). Durable: a restarted orchestrator keeps it; ignored once the saga ended.
    #[must_use]
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Checks the definition.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `steps` (none, an empty parallel stage, a name used twice or
    /// not a plain identifier), `attempts` (zero) or `backoff`.
    pub fn build(self) -> Result<SagaDefinition, ConfigError> {
        if self.stages.is_empty() {
            return Err(ConfigError::new("steps", "a saga needs at least one step"));
        }
        let mut names = HashSet::new();
        for stage in &self.stages {
            if stage.is_empty() {
                return Err(ConfigError::new("steps", "an empty parallel stage"));
            }
            for s in stage {
                let plain = !s.name.is_empty()
                    && s.name.len() <= 64
                    && s.name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !plain {
                    return Err(ConfigError::new(
                        "steps",
                        "a step name is 1 to 64 letters, digits, '-' or '_'",
                    ));
                }
                if !names.insert(s.name.clone()) {
                    return Err(ConfigError::new("steps", "two steps have the same name"));
                }
                for a in [s.attempts, s.compensation_attempts] {
                    if a.max == 0 {
                        return Err(ConfigError::new("attempts", "at least one attempt"));
                    }
                    a.backoff.validate()?;
                }
            }
        }
        if self.deadline == Some(Duration::ZERO) {
            return Err(ConfigError::new("deadline", "must be more than zero"));
        }
        Ok(SagaDefinition {
            name: self.name,
            stages: self.stages.into(),
            deadline: self.deadline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Step {
        Step::new(
            "a",
            tower::service_fn(|_r: StepRequest| async { Ok::<_, BoxError>(Value::Null) }),
        )
    }

    fn named(name: &str) -> Step {
        let mut s = ok();
        s.name = name.into();
        s
    }

    #[test]
    fn build_checks_the_steps() {
        let field = |b: SagaDefinitionBuilder| b.build().unwrap_err().field();
        assert_eq!(field(SagaDefinition::builder("t")), "steps");
        assert_eq!(field(SagaDefinition::builder("t").parallel([])), "steps");
        assert_eq!(
            field(SagaDefinition::builder("t").step(ok()).step(ok())),
            "steps"
        );
        assert_eq!(
            field(SagaDefinition::builder("t").step(named("a b"))),
            "steps"
        );
        assert_eq!(field(SagaDefinition::builder("t").step(named(""))), "steps");
        assert_eq!(
            field(SagaDefinition::builder("t").step(named(&"x".repeat(65)))),
            "steps"
        );
        assert!(
            SagaDefinition::builder("t")
                .step(named(&"x".repeat(64)))
                .build()
                .is_ok()
        );
        assert_eq!(
            field(
                SagaDefinition::builder("t").step(ok().retry(Attempts::new(0, Backoff::default())))
            ),
            "attempts"
        );
        assert_eq!(
            field(
                SagaDefinition::builder("t").step(ok().compensation_retry(Attempts::new(
                    3,
                    Backoff::Exponential {
                        base: Duration::from_millis(1),
                        multiplier: 0.5
                    }
                )))
            ),
            "backoff"
        );
        assert_eq!(
            field(
                SagaDefinition::builder("t")
                    .step(ok())
                    .deadline(Duration::ZERO)
            ),
            "deadline"
        );
        let def = SagaDefinition::builder("trip")
            .step(named("flight"))
            .parallel([named("hotel"), named("car_1")])
            .build()
            .unwrap();
        assert_eq!(def.name(), "trip");
        assert_eq!(def.stages().len(), 2);
        assert_eq!(def.stages()[1][1].name(), "car_1");
    }
}
