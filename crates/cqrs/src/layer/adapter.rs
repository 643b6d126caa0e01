//! How a request becomes a command, and a [`Committed`] a response.

use std::{fmt, future::Future, marker::PhantomData};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Ready, ready};
use http::{HeaderValue, Request, Response, StatusCode, header, request::Parts};
use http_body_util::{BodyExt as _, Limited};
use tower_patterns_core::BoxError;
use tower_patterns_eventstore::Committed;

use super::{error::BadCommand, position::POSITION_HEADER, position::PositionToken};

/// Turns a request of the command side into the write side's request, and what the write side
/// committed into the service's response `Res`.
pub trait CommandAdapter<Req, Res>: Send + Sync + 'static {
    /// The write side's request (`Command<A::Command>` for an aggregate's `CommandService`).
    type Command: Send + 'static;
    /// The conversion (async: an HTTP body is read first).
    type Future: Future<Output = Result<Self::Command, BoxError>> + Send + 'static;

    /// The command `req` stands for, or why it stands for none ([`BadCommand`] for a client
    /// error).
    fn command(&self, req: Req) -> Self::Future;

    /// The response to a command that committed.
    fn respond(&self, committed: Committed) -> Res;
}

/// The default adapter: the request goes to the write side as it is, and the response is the
/// [`Committed`] itself (`Res: From<Committed>`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

impl<Req, Res> CommandAdapter<Req, Res> for Direct
where
    Req: Send + 'static,
    Res: From<Committed>,
{
    type Command = Req;
    type Future = Ready<Result<Req, BoxError>>;

    fn command(&self, req: Req) -> Self::Future {
        ready(Ok(req))
    }

    fn respond(&self, committed: Committed) -> Res {
        Res::from(committed)
    }
}

/// An adapter of two closures: `to_command(Req) -> Result<Cmd, BoxError>` and
/// `respond(Committed) -> Res`.
pub struct MapCommand<T, R, Cmd> {
    to_command: T,
    respond: R,
    _cmd: PhantomData<fn() -> Cmd>,
}

impl<T, R, Cmd> MapCommand<T, R, Cmd> {
    /// The adapter of `to_command` and `respond`.
    pub fn new(to_command: T, respond: R) -> Self {
        Self {
            to_command,
            respond,
            _cmd: PhantomData,
        }
    }
}

impl<T, R, Cmd> fmt::Debug for MapCommand<T, R, Cmd> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapCommand").finish_non_exhaustive()
    }
}

impl<Req, Res, T, R, Cmd> CommandAdapter<Req, Res> for MapCommand<T, R, Cmd>
where
    T: Fn(Req) -> Result<Cmd, BoxError> + Send + Sync + 'static,
    R: Fn(Committed) -> Res + Send + Sync + 'static,
    Cmd: Send + 'static,
{
    type Command = Cmd;
    type Future = Ready<Result<Cmd, BoxError>>;

    fn command(&self, req: Req) -> Self::Future {
        ready((self.to_command)(req))
    }

    fn respond(&self, committed: Committed) -> Res {
        (self.respond)(committed)
    }
}

/// Largest command body read by default (64 KiB).
const DEFAULT_LIMIT: usize = 64 * 1024;

/// The HTTP adapter: reads the body (up to a limit, else `413` "request body too large"),
/// hands the request's parts and body to a closure that makes the command or refuses with a
/// [`BadCommand`] (a 4xx with a fixed phrase), and answers a committed command with
/// `200 OK`, the [`POSITION_HEADER`] (`tp-position: v1.<commit>.<index>`, the position of its
/// last event; absent when it appended nothing), a JSON body
/// `{"version":3,"position":"v1.0.12"}` and the [`Committed`] in the response's extensions.
///
/// ```
/// use tower_patterns_cqrs::layer::{BadCommand, HttpCommands};
/// use tower_patterns_eventstore::Command;
///
/// let adapter = HttpCommands::new(|parts: &http::request::Parts, body: bytes::Bytes| {
///     let id = parts.uri.path().rsplit('/').next().unwrap_or_default().to_owned();
///     let cents: u64 = std::str::from_utf8(&body)
///         .ok()
///         .and_then(|s| s.trim().parse().ok())
///         .ok_or(BadCommand::new("price must be a whole number of cents"))?;
///     Ok::<_, BadCommand>(Command::<u64>::new(id, cents))
/// });
/// # let _ = adapter;
/// ```
pub struct HttpCommands<F> {
    to_command: F,
    limit: usize,
}

impl<F> HttpCommands<F> {
    /// The adapter whose commands `to_command` makes.
    pub fn new(to_command: F) -> Self {
        Self {
            to_command,
            limit: DEFAULT_LIMIT,
        }
    }

    /// The largest body read (default 64 KiB); a larger one is refused with `413`.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }
}

impl<F> fmt::Debug for HttpCommands<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCommands")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<F, Cmd, B, ResB> CommandAdapter<Request<B>, Response<ResB>> for HttpCommands<F>
where
    F: Fn(&Parts, Bytes) -> Result<Cmd, BadCommand> + Clone + Send + Sync + 'static,
    Cmd: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResB: From<String>,
{
    type Command = Cmd;
    type Future = BoxFuture<'static, Result<Cmd, BoxError>>;

    fn command(&self, req: Request<B>) -> Self::Future {
        let to_command = self.to_command.clone();
        let limit = self.limit;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(BadCommand::with_status(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    )
                    .into());
                }
                Err(e) => return Err(e),
            };
            Ok(to_command(&parts, body)?)
        })
    }

    fn respond(&self, committed: Committed) -> Response<ResB> {
        committed_response(committed)
    }
}

/// The response [`HttpCommands`] gives to a committed command.
pub fn committed_response<B: From<String>>(committed: Committed) -> Response<B> {
    let token = committed.positions.last().copied().map(PositionToken::from);
    let body = match token {
        Some(t) => format!(r#"{{"version":{},"position":"{t}"}}"#, committed.version),
        None => format!(r#"{{"version":{},"position":null}}"#, committed.version),
    };
    let mut res = Response::new(B::from(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(t) = token {
        res.headers_mut()
            .insert(POSITION_HEADER, t.to_header_value());
    }
    res.extensions_mut().insert(committed);
    res
}
