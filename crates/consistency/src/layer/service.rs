//! The service: reads the session's token, waits for the read side, issues the next token.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, header};
use tower_patterns_core::{BoxError, check::Gate};
use tower_patterns_cqrs::layer::{Classify, Side};
use tower_patterns_eventstore::Committed;
use tower_service::Service;

use super::{
    error::NotCaughtUp,
    future::{ResponseFuture, Wait},
    handle::ConsistencyHandle,
    layer::{Behind, STALE_HEADER, Shared},
};
use crate::{concern::ReadConcern, mark::Mark, read_side::ReadSide, token::TokenError};

/// Service that answers reads only from a read side that has reached the session's token, and
/// gives every write's response the token of what it wrote. Made by
/// [`ConsistencyLayer`](super::ConsistencyLayer).
pub struct Consistency<S, R, C> {
    inner: S,
    shared: Arc<Shared<R, C>>,
}

impl<S, R, C> Consistency<S, R, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<R, C>>) -> Self {
        Self { inner, shared }
    }

    /// The layer's handle.
    pub fn handle(&self) -> ConsistencyHandle {
        ConsistencyHandle::new(self.shared.stats.clone())
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, R, C> Clone for Consistency<S, R, C> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S, R, C> fmt::Debug for Consistency<S, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consistency")
            .field("name", &self.shared.stats.name)
            .finish_non_exhaustive()
    }
}

impl<R: ReadSide, C> Shared<R, C> {
    /// The session's mark: the later of the header's and the cookie's tokens, each verified.
    fn session_mark<B>(&self, req: &Request<B>) -> Result<Option<Mark>, TokenError> {
        let mut mark: Option<Mark> = None;
        let mut take = |bytes: &[u8]| -> Result<(), TokenError> {
            let m = self.tokens.verify_kind(bytes, self.kind)?;
            mark = Some(mark.map_or(m, |old| old.max_with(m)));
            Ok(())
        };
        for value in req.headers().get_all(&self.settings.header) {
            take(value.as_bytes())?;
        }
        if let Some(name) = self.settings.cookie.as_deref() {
            for value in req.headers().get_all(header::COOKIE) {
                for pair in value.as_bytes().split(|&b| b == b';') {
                    let pair = pair.trim_ascii();
                    if let Some(v) = pair
                        .strip_prefix(name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                    {
                        take(v.trim_ascii())?;
                    }
                }
            }
        }
        Ok(mark)
    }
}

impl<S, R, C, B, ResB> Service<Request<B>> for Consistency<S, R, C>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    R: ReadSide,
    C: Classify<Request<B>>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<B>, R, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let mark = match shared.session_mark(&req) {
            Ok(mark) => mark,
            Err(e) => {
                shared.stats.bad_tokens.fetch_add(1, Relaxed);
                return ResponseFuture::failed(e);
            }
        };
        let read = shared.classify.classify(&req) == Side::Query;
        if !read {
            let gate = SessionGate(GateState::Full {
                shared: shared.clone(),
                mark,
                read,
            });
            return ResponseFuture::decided(Ok::<_, BoxError>(true), &mut self.inner, req, gate);
        }
        let reached = mark.is_none_or(|m| shared.read_side.reached(m));
        // A read that reached its token needs nothing after the call unless a router behind
        // the layer may report where it read (a replica's replay position).
        let gate = SessionGate(if reached && !shared.routes {
            GateState::Pass
        } else {
            GateState::Full {
                shared: shared.clone(),
                mark,
                read,
            }
        });
        match mark {
            Some(m) if !reached && !shared.settings.wait.is_zero() => {
                shared.stats.waits.fetch_add(1, Relaxed);
                let wait: Wait<R> = shared
                    .read_side
                    .wait(m, shared.settings.wait)
                    .map(Ok as fn(bool) -> _);
                ResponseFuture::checking(wait, &mut self.inner, req, gate)
            }
            _ => ResponseFuture::decided(Ok::<_, BoxError>(reached), &mut self.inner, req, gate),
        }
    }
}

/// What the layer does around one call (core's [`Gate`]): refuse or route a read the read
/// side has not caught up with, and set the session's next token on the response.
pub struct SessionGate<R, C>(GateState<R, C>);

enum GateState<R, C> {
    /// A read that reached its token (or carried none) and whose answer moves nothing.
    Pass,
    /// A write, or a read whose token or answer matters.
    Full {
        shared: Arc<Shared<R, C>>,
        mark: Option<Mark>,
        read: bool,
    },
}

impl<R, C> fmt::Debug for SessionGate<R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            GateState::Pass => f.write_str("SessionGate::Pass"),
            GateState::Full { mark, read, .. } => f
                .debug_struct("SessionGate")
                .field("mark", mark)
                .field("read", read)
                .finish_non_exhaustive(),
        }
    }
}

/// What the gate keeps for the response.
pub struct After<R, C> {
    shared: Option<Arc<Shared<R, C>>>,
    mark: Option<Mark>,
    stale: Option<HeaderValue>,
}

impl<R, C> fmt::Debug for After<R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("After")
            .field("mark", &self.mark)
            .field("stale", &self.stale)
            .finish_non_exhaustive()
    }
}

impl<R: ReadSide, C, B, ResB> Gate<Request<B>, Response<ResB>> for SessionGate<R, C> {
    type Checked = bool;
    type After = After<R, C>;

    fn before(self, reached: bool, req: &mut Request<B>) -> Result<Self::After, BoxError> {
        let (shared, mark, read) = match self.0 {
            GateState::Pass => {
                return Ok(After {
                    shared: None,
                    mark: None,
                    stale: None,
                });
            }
            GateState::Full { shared, mark, read } => (shared, mark, read),
        };
        let mut stale = None;
        if read {
            let mut concern = ReadConcern {
                at_least: mark,
                from_primary: false,
            };
            if !reached {
                match shared.settings.behind {
                    Behind::Unavailable => {
                        shared.stats.behind[0].fetch_add(1, Relaxed);
                        return Err(NotCaughtUp::new(shared.settings.retry_after).into());
                    }
                    Behind::Primary => {
                        shared.stats.behind[1].fetch_add(1, Relaxed);
                        concern.from_primary = true;
                    }
                    Behind::Stale => {
                        shared.stats.behind[2].fetch_add(1, Relaxed);
                        let distance = mark.and_then(|m| shared.read_side.distance(m));
                        stale = Some(distance.map_or(HeaderValue::from_static("unknown"), |d| {
                            HeaderValue::try_from(d.to_string())
                                .unwrap_or(HeaderValue::from_static("unknown"))
                        }));
                        // A stale read is not the read the token asked for: the router
                        // may read anywhere.
                        concern.at_least = None;
                    }
                }
            }
            if shared.routes {
                req.extensions_mut().insert(concern);
            }
        }
        Ok(After {
            shared: Some(shared),
            mark,
            stale,
        })
    }

    fn after(after: Self::After, res: &mut Response<ResB>) {
        let After {
            shared,
            mark,
            stale,
        } = after;
        if let Some(stale) = stale {
            res.headers_mut().insert(STALE_HEADER, stale);
        }
        let Some(shared) = shared else { return };
        let reached = res.extensions().get::<Mark>().copied().or_else(|| {
            res.extensions()
                .get::<Committed>()
                .and_then(|c| c.positions.last().copied())
                .map(Mark::Position)
        });
        let Some(reached) = reached.filter(|m| m.kind() == shared.kind) else {
            return;
        };
        let next = mark.map_or(reached, |m| m.max_with(reached));
        if Some(next) == mark {
            return;
        }
        let token = shared.tokens.header_value(next);
        if let Some(cookie) = shared.set_cookie(&token) {
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
        res.headers_mut()
            .insert(shared.settings.header.clone(), token);
        shared.stats.issued.fetch_add(1, Relaxed);
    }
}
