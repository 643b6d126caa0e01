//! The semaphore bulkhead: a pool of permits (max concurrent calls) with an optional FIFO
//! wait; see the [crate docs](crate) for an example.
//!
//! - `layer.rs`: [`BulkheadLayer`]; `builder.rs`: [`BulkheadBuilder`] (both modes, one pool
//!   or a pool per key); `service.rs`: [`Bulkhead`]; `future.rs`: [`ResponseFuture`];
//!   `handle.rs`: [`BulkheadHandle`]; `hold.rs`: how long a permit is held; `pool.rs`: what every service of one pool shares.

mod builder;
pub mod future;
mod handle;
mod hold;
mod layer;
pub(crate) mod pool;
mod service;

pub use builder::{BulkheadBuilder, ByKey, KeyedBulkheadBuilder, NoKey, Unkeyed};
pub use future::ResponseFuture;
pub use handle::BulkheadHandle;
pub use hold::{BodyEnded, Hold, UntilBodyEnd, UntilResponse};
pub use layer::BulkheadLayer;
pub use service::Bulkhead;
pub(crate) use service::admit;
