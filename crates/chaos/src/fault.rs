//! The faults a chaos layer can inject, each with the share of selected calls it hits.

use std::{fmt, sync::Arc, time::Duration};

use http::StatusCode;
use tower_patterns_core::{BoxError, ConfigError};

/// What a fault does to a call. See [`Fault`] for each one's constructor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// The call waits, then goes on.
    Latency,
    /// The call is answered with a status (HTTP or gRPC) without reaching the inner service.
    Status,
    /// The call fails with an error without reaching the inner service.
    Error,
    /// The call never completes.
    Hang,
    /// The inner service is called, and its answer is thrown away.
    Abort,
}

impl FaultKind {
    /// Every kind, in the order of the metric labels.
    pub const ALL: [Self; 5] = [
        Self::Latency,
        Self::Status,
        Self::Error,
        Self::Hang,
        Self::Abort,
    ];

    /// `latency`, `status`, `error`, `hang` or `abort`: the `kind` label of the metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Status => "status",
            Self::Error => "error",
            Self::Hang => "hang",
            Self::Abort => "abort",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Self::Latency => 0,
            Self::Status => 1,
            Self::Error => 2,
            Self::Hang => 3,
            Self::Abort => 4,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The answer a status fault gives in place of the inner service's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// An HTTP response with this status and an empty body.
    Http(StatusCode),
    /// A gRPC trailers-only response: HTTP 200 whose headers carry `grpc-status` with this
    /// code (1 to 16) and `grpc-message: fault injected`.
    Grpc(u8),
}

/// Makes a custom error for [`Fault::error`].
type MakeError = Arc<dyn Fn() -> BoxError + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Effect {
    Latency(Duration),
    Answer(Answer),
    Error(MakeError),
    Hang,
    Abort(Option<Duration>),
}

impl Effect {
    pub(crate) const fn kind(&self) -> FaultKind {
        match self {
            Self::Latency(_) => FaultKind::Latency,
            Self::Answer(_) => FaultKind::Status,
            Self::Error(_) => FaultKind::Error,
            Self::Hang => FaultKind::Hang,
            Self::Abort(_) => FaultKind::Abort,
        }
    }
}

/// One fault and the share of selected calls it hits.
///
/// Built by its constructor (rate 1.0: every selected call) and given a share with
/// [`rate`](Self::rate). A layer draws once per selected call and applies at most one fault:
/// with faults of rates 0.1 and 0.2, a call has a 10% chance of the first, 20% of the second and
/// 70% of none, so the rates of one plan must add up to at most 1.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_patterns_chaos::{Fault, FaultKind};
///
/// let slow = Fault::latency(Duration::from_millis(300)).rate(0.25);
/// assert_eq!((slow.kind(), slow.share()), (FaultKind::Latency, 0.25));
/// let down = Fault::status(StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(down.share(), 1.0);
/// ```
#[derive(Clone)]
pub struct Fault {
    pub(crate) effect: Effect,
    pub(crate) rate: f64,
}

impl Fault {
    fn new(effect: Effect) -> Self {
        Self { effect, rate: 1.0 }
    }

    /// Waits `delay` before the inner service's future is first polled. The inner service's
    /// `call` runs at once (its readiness was reserved for this request); a lazy future, which
    /// is what `async` code and hyper's client return, does its work only after the wait.
    pub fn latency(delay: Duration) -> Self {
        Self::new(Effect::Latency(delay))
    }

    /// Answers with this HTTP status and an empty body, without calling the inner service.
    pub fn status(status: StatusCode) -> Self {
        Self::new(Effect::Answer(Answer::Http(status)))
    }

    /// Answers with this gRPC status code (1 to 16; 14 is UNAVAILABLE) in a trailers-only
    /// response, without calling the inner service.
    pub fn grpc(code: u8) -> Self {
        Self::new(Effect::Answer(Answer::Grpc(code)))
    }

    /// Fails with the error `make` returns, without calling the inner service.
    pub fn error(make: impl Fn() -> BoxError + Send + Sync + 'static) -> Self {
        Self::new(Effect::Error(Arc::new(make)))
    }

    /// Never answers and never calls the inner service: what a caller sees when a dependency
    /// accepts a connection and then says nothing. Pair it with a timeout above.
    pub fn hang() -> Self {
        Self::new(Effect::Hang)
    }

    /// Calls the inner service and lets it finish, then throws its answer away and fails with
    /// [`ChaosError`](crate::ChaosError) (aborted): the dependency did the work (charged the
    /// card, wrote the row) but the caller never heard, as when a connection drops after the
    /// request was sent. What retries with idempotency keys are for.
    pub fn abort() -> Self {
        Self::new(Effect::Abort(None))
    }

    /// Calls the inner service, drops its future after `after` if it has not finished, and
    /// fails with [`ChaosError`](crate::ChaosError) (aborted). An answer that comes sooner is
    /// thrown away too.
    pub fn abort_after(after: Duration) -> Self {
        Self::new(Effect::Abort(Some(after)))
    }

    /// The share of selected calls this fault hits, from 0 to 1 (checked when the plan is
    /// built or set). The default is 1: every selected call.
    #[must_use]
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = rate;
        self
    }

    /// The share of selected calls this fault hits.
    pub fn share(&self) -> f64 {
        self.rate
    }

    /// What the fault does.
    pub fn kind(&self) -> FaultKind {
        self.effect.kind()
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(ConfigError::new("fault.rate", "must be between 0 and 1"));
        }
        if let Effect::Answer(Answer::Grpc(code)) = self.effect
            && !(1..=16).contains(&code)
        {
            return Err(ConfigError::new(
                "fault.grpc",
                "must be a gRPC error code, 1 to 16",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Fault");
        d.field("kind", &self.kind());
        match &self.effect {
            Effect::Latency(delay) => d.field("delay", delay),
            Effect::Answer(answer) => d.field("answer", answer),
            Effect::Abort(after) => d.field("after", after),
            Effect::Error(_) | Effect::Hang => &mut d,
        };
        d.field("rate", &self.rate).finish()
    }
}
