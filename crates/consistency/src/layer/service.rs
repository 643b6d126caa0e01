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
use crate::{
    concern::ReadConcern,
    mark::{Distance, Mark},
    read_side::ReadSide,
    token::TokenError,
};

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

/// What a request says about its session.
#[derive(Clone, Copy, Debug, Default)]
struct Session {
    /// The later of the verified tokens it carried.
    mark: Option<Mark>,
    /// Its cookie held a token that does not verify (another key, another app on the same
    /// host, a restart with a random key): ignored, and cleared on the response.
    clear_cookie: bool,
}

impl<R: ReadSide, C> Shared<R, C> {
    /// The session: the header's token (the later one if several), else the cookie's, each
    /// verified. A bad header is the client's error (a 400); a bad cookie is one this layer
    /// set under a key or for an app that no longer holds, which the client cannot see (it is
    /// `HttpOnly`) nor fix: it is ignored and cleared, so the session starts over rather than
    /// fail for good.
    fn session<B>(&self, req: &Request<B>) -> Result<Session, TokenError> {
        let mut session = Session::default();
        let add = |session: &mut Session, m: Mark| {
            session.mark = Some(session.mark.map_or(m, |old| old.max_with(m)));
        };
        for value in req.headers().get_all(&self.settings.header) {
            add(
                &mut session,
                self.tokens.verify_kind(value.as_bytes(), self.kind)?,
            );
        }
        // The header is the client's own statement of its session: with one, the cookie (the
        // browser's) is not read.
        if session.mark.is_some() {
            return Ok(session);
        }
        if let Some(name) = self.settings.cookie.as_deref() {
            for value in req.headers().get_all(header::COOKIE) {
                for pair in value.as_bytes().split(|&b| b == b';') {
                    let Some(v) = pair
                        .trim_ascii()
                        .strip_prefix(name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                    else {
                        continue;
                    };
                    match self.tokens.verify_kind(v.trim_ascii(), self.kind) {
                        Ok(m) => add(&mut session, m),
                        Err(_) => {
                            self.stats.bad_tokens.fetch_add(1, Relaxed);
                            session.clear_cookie = true;
                        }
                    }
                }
            }
        }
        Ok(session)
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
        let Session { mark, clear_cookie } = match shared.session(&req) {
            Ok(session) => session,
            Err(e) => {
                shared.stats.bad_tokens.fetch_add(1, Relaxed);
                return ResponseFuture::failed(e);
            }
        };
        let read = shared.classify.classify(&req) == Side::Query;
        let full = || {
            SessionGate(GateState::Full {
                shared: shared.clone(),
                mark,
                read,
                clear_cookie,
            })
        };
        if !read {
            let gate = full();
            return ResponseFuture::decided(Ok::<_, BoxError>(true), &mut self.inner, req, gate);
        }
        let reached = mark.is_none_or(|m| shared.read_side.reached(m));
        // A read that reached its token needs nothing after the call unless a router behind
        // the layer may report where it read (a replica's replay position), or a cookie must
        // be cleared.
        let gate = if reached && !shared.routes && !clear_cookie {
            SessionGate(GateState::Pass)
        } else {
            full()
        };
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
        clear_cookie: bool,
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
    /// A stale read: the mark it should have reached, and how far behind the read side was
    /// when the layer let it through.
    stale: Option<(Mark, Option<Distance>)>,
    clear_cookie: bool,
}

impl<R, C> fmt::Debug for After<R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("After")
            .field("mark", &self.mark)
            .field("stale", &self.stale)
            .field("clear_cookie", &self.clear_cookie)
            .finish_non_exhaustive()
    }
}

impl<R: ReadSide, C, B, ResB> Gate<Request<B>, Response<ResB>> for SessionGate<R, C> {
    type Checked = bool;
    type After = After<R, C>;

    fn before(self, reached: bool, req: &mut Request<B>) -> Result<Self::After, BoxError> {
        let (shared, mark, read, clear_cookie) = match self.0 {
            GateState::Pass => {
                return Ok(After {
                    shared: None,
                    mark: None,
                    stale: None,
                    clear_cookie: false,
                });
            }
            GateState::Full {
                shared,
                mark,
                read,
                clear_cookie,
            } => (shared, mark, read, clear_cookie),
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
                        stale = mark.map(|m| (m, shared.read_side.distance(m)));
                        // The token cannot be met: the read goes wherever reads go, and the
                        // response says how far behind what it got was.
                        concern.at_least = None;
                    }
                }
            }
            // No concern is the default one: a read without a token allocates no extension.
            if shared.routes && concern != ReadConcern::default() {
                req.extensions_mut().insert(concern);
            }
        }
        Ok(After {
            shared: Some(shared),
            mark,
            stale,
            clear_cookie,
        })
    }

    fn after(after: Self::After, res: &mut Response<ResB>) {
        let After {
            shared,
            mark,
            stale,
            clear_cookie,
        } = after;
        let Some(shared) = shared else { return };
        // Where the response says it read or wrote: a router's mark, or a commit's position.
        let reached = res
            .extensions()
            .get::<Mark>()
            .copied()
            .or_else(|| {
                res.extensions()
                    .get::<Committed>()
                    .and_then(|c| c.positions.last().copied())
                    .map(Mark::Position)
            })
            .filter(|m| m.kind() == shared.kind);
        if let Some((wanted, before)) = stale {
            // Measured from where the read was served when the response says so (a router's
            // replica), else from the read side when the layer let the read through.
            let distance = match reached {
                Some(seen) => seen.distance_to(wanted),
                None => before,
            };
            if reached.is_none() || distance.is_some() {
                let value = distance.map_or(HeaderValue::from_static("unknown"), |d| {
                    HeaderValue::try_from(d.to_string())
                        .unwrap_or(HeaderValue::from_static("unknown"))
                });
                res.headers_mut().insert(STALE_HEADER, value);
            }
        }
        let next = match (mark, reached) {
            (Some(m), Some(r)) => Some(m.max_with(r)),
            (m, r) => m.or(r),
        };
        if next.is_none() || next == mark {
            if clear_cookie && let Some(clear) = shared.clear_cookie() {
                res.headers_mut().append(header::SET_COOKIE, clear);
            }
            return;
        }
        let Some(next) = next else { return };
        let token = shared.tokens.header_value(next);
        if let Some(cookie) = shared.set_cookie(&token) {
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
        res.extensions_mut().insert(IssuedToken(token.clone()));
        res.headers_mut()
            .insert(shared.settings.header.clone(), token);
        shared.stats.issued.fetch_add(1, Relaxed);
    }
}

/// The token the layer issued, in the response's extensions too: for code in the same
/// process (a test, a gRPC interceptor, a service that is not HTTP-facing) that wants it
/// without reading headers. Its [`Mark`] is the response's own (or the session's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken(pub HeaderValue);
