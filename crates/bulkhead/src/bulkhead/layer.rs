//! The bulkhead's layer.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{Bulkhead, BulkheadHandle, hold::UntilResponse, pool::Shared};

/// Layer that wraps services in a [`Bulkhead`]; every service it makes, and every clone,
/// share one pool.
#[derive(Clone)]
pub struct BulkheadLayer<H = UntilResponse> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) hold: H,
}

impl<H> fmt::Debug for BulkheadLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("bulkhead", &self.shared)
            .finish()
    }
}

impl<H> BulkheadLayer<H> {
    /// A handle reading the pool: in flight, available, waiting, limit.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }
}

impl<S, H: Clone> Layer<S> for BulkheadLayer<H> {
    type Service = Bulkhead<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(inner, self.shared.clone(), self.hold.clone())
    }
}
