//! The status page: `/admin` (plain HTML and a little JavaScript, no build step) polls
//! `/admin/patterns` twice a second and shows every pattern's report as a card, coloured by its
//! health, beside the payment breaker's recent transitions.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use axum::{
    http::header,
    response::{Html, IntoResponse, Response},
};
use serde_json::{Value, json};
use tower_patterns::breaker::CircuitBreakerHandle;

/// How many transitions the page keeps.
const KEEP: usize = 50;

/// The page itself.
pub(crate) async fn page() -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(include_str!("admin.html")),
    )
        .into_response()
}

/// The payment breaker's last transitions, newest last, for the status page.
#[derive(Clone, Default)]
pub(crate) struct Transitions(Arc<Mutex<VecDeque<Value>>>);

impl Transitions {
    /// Follows `breaker` until `stop` says so.
    pub(crate) fn follow(
        breaker: &CircuitBreakerHandle,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let log = Self::default();
        let mut events = breaker.subscribe();
        let kept = log.clone();
        tokio::spawn(async move {
            loop {
                let t = tokio::select! {
                    t = events.recv() => t,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Ok(t) = t else { continue };
                let unix_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                tracing::info!(breaker = %t.name, from = t.from.as_str(), to = t.to.as_str(), reason = ?t.reason, "breaker transition");
                let mut log = kept.0.lock().unwrap_or_else(PoisonError::into_inner);
                if log.len() == KEEP {
                    log.pop_front();
                }
                log.push_back(json!({
                    "breaker": &*t.name,
                    "from": t.from.as_str(),
                    "to": t.to.as_str(),
                    "reason": format!("{:?}", t.reason),
                    "unix_ms": unix_ms,
                }));
            }
        });
        log
    }

    /// The transitions kept, oldest first.
    pub(crate) fn list(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}
