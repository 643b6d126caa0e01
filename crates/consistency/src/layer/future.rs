//! The response future of [`Consistency`](super::Consistency).

use std::convert::Infallible;

use futures_util::future::Map;
use tower_patterns_core::check::CheckThenCall;

use super::service::SessionGate;
use crate::read_side::ReadSide;

/// The wait for the read side, as a check that cannot fail.
pub type Wait<R> = Map<<R as ReadSide>::Wait, fn(bool) -> Result<bool, Infallible>>;

/// Response future of [`Consistency`](super::Consistency): core's check-then-call future,
/// whose check is the wait for the read side (decided at once, with no allocation, when the
/// read side has already reached the token or the request carries none).
pub type ResponseFuture<S, Req, R, C> = CheckThenCall<S, Req, Wait<R>, SessionGate<R, C>>;
