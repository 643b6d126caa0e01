//! The strangler fig pattern for tower: move a monolith's traffic to new services route by
//! route and percentage by percentage, with easy rollback.
//!
//! (Module documentation is completed with the crate.)

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod compare;
#[cfg(feature = "wip-dual")]
pub mod dual;
mod error;
mod handle;
pub mod key;
mod layer;
pub mod ramp;
pub mod shadow;
pub mod share;
mod state;
mod table;

pub use error::StranglerError;
pub use handle::{RampState, RouteState, SideCounts, StranglerHandle};
pub use layer::{
    NoKey, NoNew, StranglerBuilder, StranglerLayer, body::StranglerBody, service::Strangler,
};
pub use ramp::{Ramp, RampAction, RampEvent, RampStatus, Sample};
pub use shadow::{Mismatch, Shadow, ShadowCounts};
pub use share::Share;
pub use table::{Decision, Mode, Reason, Route, Side, decide};

/// The response future of [`Strangler`].
pub mod future {
    pub use crate::layer::future::ResponseFuture;
}
