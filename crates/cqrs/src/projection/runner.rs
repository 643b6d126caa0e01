//! The loop that drives one projection. (Skeleton: the runner's owner writes it.)

use std::sync::Arc;

use tower_patterns_eventstore::EventStore;

use super::{ProjectionError, builder::Settings, handle::Shared};
use crate::target::Target;

/// Runs the projection until shut down or stopped by its policy.
pub(crate) async fn run<S: EventStore, T: Target>(
    store: Arc<S>,
    target: T,
    settings: Settings,
    shared: Arc<Shared>,
) -> Result<(), ProjectionError> {
    let _ = (store, target, settings, shared);
    Ok(())
}
