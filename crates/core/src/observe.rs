//! Names for metrics and tracing, and the trait every stateful layer's handle implements.
//!
//! # Conventions
//!
//! - **Metrics** (the `metrics` facade) are named `tower_patterns_<pattern>_<what>`, built at
//!   compile time with [`metric_name!`](crate::metric_name) so recording never formats a
//!   string. Labels come from [`labels`]: `name` (the instance), `key` (only where the key set
//!   is bounded, such as configured tenants), `outcome` ([`Outcome::label`]), `state` and
//!   `kind` ([`RejectionKind::label`]).
//! - **Counters** end in `_total`, durations are `_seconds` histograms, gauges have no suffix.
//! - **Tracing** targets are `tower_patterns::<pattern>`; transitions and rejections are
//!   events at `info` and `debug`, never per-call spans on the success path.
//! - A **state gauge** sets the old state to 0 when it sets the new one to 1, so a dashboard
//!   never shows two states at once.
//!
//! [`Outcome::label`]: crate::classify::Outcome::label
//! [`RejectionKind::label`]: crate::RejectionKind::label
//!
//! # State handles
//!
//! Every stateful layer (breaker, bulkhead, limiter, cache) gives out a handle that reads its
//! state for health endpoints and dashboards. Handles implement [`StateHandle`], so a service
//! can list all of them in one place:
//!
//! ```
//! use tower_patterns_core::observe::{Health, Report, StateHandle};
//!
//! struct Pool { in_flight: usize, max: usize }
//!
//! impl StateHandle for Pool {
//!     fn pattern(&self) -> &'static str { "bulkhead" }
//!     fn name(&self) -> &str { "payments" }
//!     fn report(&self) -> Report {
//!         let health = if self.in_flight < self.max { Health::Ready } else { Health::Degraded };
//!         Report::new("bulkhead", "payments", health, "open")
//!             .with_value("in_flight", self.in_flight as f64)
//!     }
//! }
//!
//! let handles: Vec<Box<dyn StateHandle>> = vec![Box::new(Pool { in_flight: 10, max: 10 })];
//! let worst = handles.iter().map(|h| h.health()).max().unwrap();
//! assert_eq!(worst, Health::Degraded);
//! assert_eq!(
//!     handles[0].report().to_json(),
//!     r#"{"pattern":"bulkhead","name":"payments","health":"degraded","state":"open","values":{"in_flight":10.0}}"#
//! );
//! assert_eq!(tower_patterns_core::metric_name!("bulkhead", "in_flight"),
//!            "tower_patterns_bulkhead_in_flight");
//! ```

use std::{borrow::Cow, fmt};

/// The prefix of every metric name.
pub const METRIC_PREFIX: &str = "tower_patterns";

/// Builds a metric name `tower_patterns_<pattern>_<what>` at compile time.
///
/// ```
/// assert_eq!(
///     tower_patterns_core::metric_name!("breaker", "calls_total"),
///     "tower_patterns_breaker_calls_total"
/// );
/// ```
#[macro_export]
macro_rules! metric_name {
    ($pattern:literal, $what:literal) => {
        concat!("tower_patterns_", $pattern, "_", $what)
    };
}

/// Label names shared by every layer's metrics.
pub mod labels {
    /// The instance's name.
    pub const NAME: &str = "name";
    /// The key of a per-key instance (only where the set of keys is bounded).
    pub const KEY: &str = "key";
    /// `success`, `failure` or `ignored`.
    pub const OUTCOME: &str = "outcome";
    /// A state machine's state.
    pub const STATE: &str = "state";
    /// The kind of a rejection.
    pub const KIND: &str = "kind";
}

/// How a component is doing, for readiness endpoints. Ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// Working normally.
    Ready,
    /// Working, but shedding or rejecting part of the traffic (half-open, pool saturated).
    Degraded,
    /// Rejecting everything (circuit open, forced open).
    Unavailable,
}

impl Health {
    /// `ready`, `degraded` or `unavailable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time report of one stateful component.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The pattern (`breaker`, `bulkhead`, ...).
    pub pattern: &'static str,
    /// The instance's name.
    pub name: Cow<'static, str>,
    /// How it is doing.
    pub health: Health,
    /// Its state, in the pattern's own words (`closed`, `open`, `half_open`, ...).
    pub state: &'static str,
    /// Numbers worth showing (`in_flight`, `failure_rate`, ...).
    pub values: Vec<(&'static str, f64)>,
}

impl Report {
    /// A report with no values.
    pub fn new(
        pattern: &'static str,
        name: impl Into<Cow<'static, str>>,
        health: Health,
        state: &'static str,
    ) -> Self {
        Self {
            pattern,
            name: name.into(),
            health,
            state,
            values: Vec::new(),
        }
    }

    /// Adds a value.
    #[must_use]
    pub fn with_value(mut self, what: &'static str, value: f64) -> Self {
        self.values.push((what, value));
        self
    }

    /// The value named `what`, if reported.
    pub fn value(&self, what: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, v)| *v)
    }
}

impl serde::Serialize for Health {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Serialises as `{"pattern", "name", "health", "state", "values": {what: number}}`; a value
/// that is not finite is `null`.
impl serde::Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        struct Values<'a>(&'a [(&'static str, f64)]);
        impl serde::Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(what, value)| (*what, *value)))
            }
        }

        let mut report = serializer.serialize_struct("Report", 5)?;
        report.serialize_field("pattern", self.pattern)?;
        report.serialize_field("name", &*self.name)?;
        report.serialize_field("health", &self.health)?;
        report.serialize_field("state", self.state)?;
        report.serialize_field("values", &Values(&self.values))?;
        report.end()
    }
}

impl Report {
    /// The report as one line of JSON (see the `Serialize` impl for its shape), for health
    /// and admin endpoints.
    pub fn to_json(&self) -> String {
        // Serialising strings and numbers into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A handle on a stateful layer's shared state: what health endpoints and dashboards read.
/// Object safe, so a service can keep every handle in one `Vec<Box<dyn StateHandle>>`.
pub trait StateHandle: Send + Sync {
    /// The pattern (`breaker`, `bulkhead`, `cache`, `ratelimit`, ...), as in metric names.
    fn pattern(&self) -> &'static str;

    /// The instance's name, as given to its builder.
    fn name(&self) -> &str;

    /// How it is doing now. The default reads the whole [`report`](Self::report); handles
    /// override it where that is cheaper.
    fn health(&self) -> Health {
        self.report().health
    }

    /// Reads the state now. Not for hot paths: it may allocate.
    fn report(&self) -> Report;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_orders_from_best_to_worst() {
        assert!(Health::Ready < Health::Degraded);
        assert!(Health::Degraded < Health::Unavailable);
        let r = Report::new("breaker", "db", Health::Unavailable, "open").with_value("x", 1.5);
        assert_eq!(r.value("x"), Some(1.5));
        assert_eq!(r.value("y"), None);
        assert_eq!(Health::Unavailable.to_string(), "unavailable");
    }

    #[test]
    fn reports_serialise_with_escaped_names_and_null_for_non_finite_values() {
        let r = Report::new("cache", "a \"quoted\" name", Health::Ready, "warm")
            .with_value("hits", 3.0)
            .with_value("ratio", f64::NAN);
        assert_eq!(
            r.to_json(),
            r#"{"pattern":"cache","name":"a \"quoted\" name","health":"ready","state":"warm","values":{"hits":3.0,"ratio":null}}"#
        );
    }
}
