//! The strangler fig pattern for tower: move a monolith's traffic to new services route by
//! route and percentage by percentage, with easy rollback.
//!
//! (Module documentation is completed with the crate.)

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod share;

#[cfg(feature = "wip-shadow")]
pub mod compare;
#[cfg(feature = "wip-dual")]
pub mod dual;

pub use share::Share;
