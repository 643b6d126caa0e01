//! The retry policy's handle: its name and the budget every request through it shares.

use std::{fmt, sync::Arc};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use crate::RetryBudget;

/// A handle on a [`RetryPolicy`](crate::RetryPolicy)'s shared state, from
/// [`RetryPolicy::handle`](crate::RetryPolicy::handle). Cheap to clone; reading it costs the
/// requests nothing.
///
/// Its [`StateHandle`] report has pattern `retry`, the policy's name, and:
/// - state `retrying` (health ready) while the budget allows retries, `throttled` (health
///   degraded) once it is spent and failures are no longer retried, `unbudgeted` (ready) for a
///   policy without a budget;
/// - values `max_attempts`, and with a budget `tokens`, `max_tokens` and `retries_in_flight`.
///
/// ```
/// use tower_patterns_core::observe::{Health, StateHandle};
/// use tower_patterns_retry::{RetryBudget, RetryPolicy};
///
/// let policy = RetryPolicy::builder("inventory")
///     .budget(RetryBudget::new(10.0, 0.1).unwrap())
///     .build()
///     .unwrap();
/// let handle = policy.handle();
/// assert_eq!((handle.pattern(), handle.name()), ("retry", "inventory"));
/// assert_eq!(handle.health(), Health::Ready);
/// for _ in 0..6 {
///     policy.budget().unwrap().failure();
/// }
/// assert_eq!(handle.health(), Health::Degraded);
/// assert_eq!(handle.report().value("tokens"), Some(4.0));
/// ```
#[derive(Clone)]
pub struct RetryPolicyHandle {
    name: Arc<str>,
    max_attempts: u32,
    budget: Option<Arc<RetryBudget>>,
}

impl RetryPolicyHandle {
    pub(crate) fn new(name: Arc<str>, max_attempts: u32, budget: Option<Arc<RetryBudget>>) -> Self {
        Self {
            name,
            max_attempts,
            budget,
        }
    }

    /// The shared budget, if the policy has one.
    pub fn budget(&self) -> Option<&Arc<RetryBudget>> {
        self.budget.as_ref()
    }
}

impl fmt::Debug for RetryPolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicyHandle")
            .field("name", &self.name)
            .field("tokens", &self.budget.as_ref().map(|b| b.tokens()))
            .finish_non_exhaustive()
    }
}

impl StateHandle for RetryPolicyHandle {
    fn pattern(&self) -> &'static str {
        "retry"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn health(&self) -> Health {
        match &self.budget {
            Some(b) if !b.can_retry() => Health::Degraded,
            _ => Health::Ready,
        }
    }

    fn report(&self) -> Report {
        let (health, state) = match &self.budget {
            None => (Health::Ready, "unbudgeted"),
            Some(b) if b.can_retry() => (Health::Ready, "retrying"),
            Some(_) => (Health::Degraded, "throttled"),
        };
        let report = Report::new("retry", self.name.to_string(), health, state)
            .with_value("max_attempts", f64::from(self.max_attempts));
        match &self.budget {
            None => report,
            Some(b) => report
                .with_value("tokens", b.tokens())
                .with_value("max_tokens", b.max_tokens())
                .with_value("retries_in_flight", f64::from(b.retries_in_flight())),
        }
    }
}
