//! What the consistency layer tells the service behind it, and what that service tells back.

use crate::mark::Mark;

/// How fresh a read must be, put in a read's request extensions by the consistency layer when
/// its read side routes (a replica router reads it to choose a replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadConcern {
    /// The read must see at least this mark (the session's token), if any.
    pub at_least: Option<Mark>,
    /// The read side had not reached the mark in time and the layer is configured to read
    /// from the primary then: read from the write side.
    pub from_primary: bool,
}

/// A request that may carry a [`ReadConcern`]. Implemented for `http::Request` (its
/// extensions); implement it for a request type of your own to route it without HTTP.
pub trait ConcernOf {
    /// The request's concern (the default, anything goes, when none was set).
    fn read_concern(&self) -> ReadConcern;
}

impl<B> ConcernOf for http::Request<B> {
    fn read_concern(&self) -> ReadConcern {
        self.extensions()
            .get::<ReadConcern>()
            .copied()
            .unwrap_or_default()
    }
}

/// A response that can carry the [`Mark`] its request reached (a write's commit, or the
/// position a replica read was answered at). Implemented for `http::Response` (its
/// extensions, where the consistency layer finds it); implement it for a response type of
/// your own.
pub trait MarkResponse {
    /// Records `mark` on the response.
    fn set_mark(&mut self, mark: Mark);

    /// Whether the response deserves a mark (finding one costs a query): default yes.
    fn wants_mark(&self) -> bool {
        true
    }
}

/// A server error (5xx) gets no mark: the write most likely did not commit, and the session
/// should not move for it. Other answers do, a 404 included (the absence of a row is state
/// too, which a session must not see come back).
impl<B> MarkResponse for http::Response<B> {
    fn set_mark(&mut self, mark: Mark) {
        self.extensions_mut().insert(mark);
    }

    fn wants_mark(&self) -> bool {
        !self.status().is_server_error()
    }
}
