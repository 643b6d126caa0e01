//! A participant's reaction: the event it listens for, its action and compensation, and the
//! events it answers with.

use std::{fmt, sync::Arc, time::Duration};

use serde_json::Value;
use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::{Attempts, StepRequest, StepService, definition::boxed};

/// One participant's reaction: on an event, an action and the event it answers with; on
/// failure events, a compensation. A value, built with [`new`](Self::new) and settings.
#[derive(Clone)]
pub struct Reaction {
    pub(super) name: Arc<str>,
    pub(super) on: String,
    pub(super) action: StepService,
    pub(super) emits: Option<String>,
    pub(super) fails_with: Option<String>,
    pub(super) undo_on: Vec<String>,
    pub(super) compensation: Option<(StepService, String)>,
    pub(super) attempts: Attempts,
    pub(super) timeout: Option<Duration>,
}

impl fmt::Debug for Reaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reaction")
            .field("name", &self.name)
            .field("on", &self.on)
            .field("emits", &self.emits)
            .field("fails_with", &self.fails_with)
            .field("undo_on", &self.undo_on)
            .finish_non_exhaustive()
    }
}

impl Reaction {
    /// Step `name`: on an event of type `on`, call `action`. Set what it answers with
    /// ([`emits`](Self::emits), [`fails_with`](Self::fails_with): both required).
    pub fn new<S, E>(name: impl Into<Arc<str>>, on: impl Into<String>, action: S) -> Self
    where
        S: Service<StepRequest, Response = Value, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self {
            name: name.into(),
            on: on.into(),
            action: boxed(action),
            emits: None,
            fails_with: None,
            undo_on: Vec::new(),
            compensation: None,
            attempts: Attempts::once(),
            timeout: None,
        }
    }

    /// The event appended when the action succeeds (`HotelBooked`).
    #[must_use]
    pub fn emits(mut self, event_type: impl Into<String>) -> Self {
        self.emits = Some(event_type.into());
        self
    }

    /// The event appended when it fails (`HotelFailed`).
    #[must_use]
    pub fn fails_with(mut self, event_type: impl Into<String>) -> Self {
        self.fails_with = Some(event_type.into());
        self
    }

    /// On any of `events` (failures further on), undo this step with `compensation` when its
    /// action took effect, then append `emits` (`HotelCancelled`), which the steps before
    /// listen for in turn.
    #[must_use]
    pub fn compensate_on<S, E>(
        mut self,
        events: impl IntoIterator<Item = impl Into<String>>,
        compensation: S,
        emits: impl Into<String>,
    ) -> Self
    where
        S: Service<StepRequest, Response = Value, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.undo_on = events.into_iter().map(Into::into).collect();
        self.compensation = Some((boxed(compensation), emits.into()));
        self
    }

    /// Attempts of the action (and of the compensation) on an error whose outcome is
    /// unknown; a [`StepError`](crate::StepError) is not retried. Default: one.
    #[must_use]
    pub const fn retry(mut self, attempts: Attempts) -> Self {
        self.attempts = attempts;
        self
    }

    /// How long one attempt may take.
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}
