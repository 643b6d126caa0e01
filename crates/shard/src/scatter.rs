//! Cross-shard queries: send a request to all (or some) shards, merge what comes back.
//!
//! At most `concurrency` shards are asked at once, each within an optional timeout. A shard
//! that fails or times out either fails the whole query ([`Partial::Fail`]) or is listed in
//! [`Gathered::missing`] while the others' answers are merged ([`Partial::Allow`], for searches
//! where some results beat none). Merging is a [`Merge`]: [`Concat`], [`SortLimit`], or your
//! own.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceExt};
//! use tower_patterns_core::BoxError;
//! use tower_patterns_shard::{Partial, ScatterGather, SortLimit};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Each shard answers its users whose name matches; we want the 3 youngest overall.
//! let shards: Vec<_> = (0..4u32)
//!     .map(|s| service_fn(move |_q: &'static str| async move {
//!         Ok::<_, BoxError>(vec![(20 + s, format!("ann@{s}")), (40 + s, format!("anna@{s}"))])
//!     }))
//!     .collect();
//! let search = ScatterGather::new(shards, SortLimit::new(3, |u: &(u32, String)| u.0))
//!     .concurrency(2)
//!     .timeout(Duration::from_secs(1))
//!     .partial(Partial::Allow);
//! let found = search.oneshot("ann").await.unwrap();
//! assert_eq!(found.value.iter().map(|u| u.0).collect::<Vec<_>>(), [20, 21, 22]);
//! assert!(found.missing.is_empty());
//! # }
//! ```

use std::{
    collections::VecDeque,
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::util::Oneshot;
use tower_patterns_core::BoxError;
use tower_service::Service;

/// What to do when a shard fails or times out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Partial {
    /// Fail the whole query with a [`ShardError`] naming the shard (default).
    #[default]
    Fail,
    /// Return what the other shards answered, listing the missing ones.
    Allow,
}

/// The merged answer of a scatter-gather, and the shards that did not answer.
#[derive(Debug)]
pub struct Gathered<T> {
    /// The merged answers.
    pub value: T,
    /// The shards that failed or timed out, with why (empty unless [`Partial::Allow`]).
    pub missing: Vec<(usize, BoxError)>,
}

/// A shard failed a scatter-gather under [`Partial::Fail`].
#[derive(Debug)]
pub struct ShardError {
    shard: usize,
    source: BoxError,
}

impl ShardError {
    /// The shard that failed.
    pub const fn shard(&self) -> usize {
        self.shard
    }
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {} failed: {}", self.shard, self.source)
    }
}

impl Error for ShardError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// A shard did not answer within the scatter-gather's timeout.
#[derive(Debug, Clone, Copy)]
pub struct ShardTimeout;

impl fmt::Display for ShardTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("shard timed out")
    }
}

impl Error for ShardTimeout {}

/// Folds shards' answers into one.
pub trait Merge<Res> {
    /// The merged answer.
    type Output;
    /// The answer before any shard has answered.
    fn empty(&self) -> Self::Output;
    /// Adds one shard's answer.
    fn add(&self, merged: &mut Self::Output, shard: usize, answer: Res);
}

/// Concatenates the shards' lists (in the order they answer).
#[derive(Clone, Copy, Debug, Default)]
pub struct Concat;

impl<T> Merge<Vec<T>> for Concat {
    type Output = Vec<T>;

    fn empty(&self) -> Vec<T> {
        Vec::new()
    }

    fn add(&self, merged: &mut Vec<T>, _shard: usize, answer: Vec<T>) {
        merged.extend(answer);
    }
}

/// Keeps the `limit` smallest items by `key` across all shards' lists (a top-k).
#[derive(Clone, Copy)]
pub struct SortLimit<F> {
    limit: usize,
    key: F,
}

impl<F> SortLimit<F> {
    /// The `limit` smallest by `key`.
    pub const fn new(limit: usize, key: F) -> Self {
        Self { limit, key }
    }
}

impl<F> fmt::Debug for SortLimit<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SortLimit")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<T, F, O> Merge<Vec<T>> for SortLimit<F>
where
    F: Fn(&T) -> O,
    O: Ord,
{
    type Output = Vec<T>;

    fn empty(&self) -> Vec<T> {
        Vec::new()
    }

    fn add(&self, merged: &mut Vec<T>, _shard: usize, answer: Vec<T>) {
        merged.extend(answer);
        merged.sort_by_key(|t| (self.key)(t));
        merged.truncate(self.limit);
    }
}

/// A service that asks many shards and merges their answers; see the [module docs](self).
pub struct ScatterGather<S, M> {
    shards: Arc<[S]>,
    merge: Arc<M>,
    concurrency: usize,
    timeout: Option<Duration>,
    partial: Partial,
}

impl<S, M> Clone for ScatterGather<S, M> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            merge: self.merge.clone(),
            concurrency: self.concurrency,
            timeout: self.timeout,
            partial: self.partial,
        }
    }
}

impl<S, M> fmt::Debug for ScatterGather<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScatterGather")
            .field("shards", &self.shards.len())
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("partial", &self.partial)
            .finish()
    }
}

impl<S, M> ScatterGather<S, M> {
    /// Asks every one of `shards`, merging with `merge`; all at once, no timeout, failing
    /// on any failure.
    pub fn new(shards: Vec<S>, merge: M) -> Self {
        Self {
            concurrency: shards.len().max(1),
            shards: shards.into(),
            merge: Arc::new(merge),
            timeout: None,
            partial: Partial::Fail,
        }
    }

    /// Asks at most `n` shards at once (at least 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Gives each shard at most `timeout` (a timed-out shard is a failed one).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// What a failed shard does to the query.
    #[must_use]
    pub fn partial(mut self, partial: Partial) -> Self {
        self.partial = partial;
        self
    }

    /// Asks only `shards` (by index) with `req`, instead of every shard.
    pub fn call_some<Req>(
        &self,
        shards: impl IntoIterator<Item = usize>,
        req: Req,
    ) -> GatherFuture<S, Req, M>
    where
        S: Service<Req> + Clone,
        M: Merge<S::Response>,
    {
        GatherFuture {
            pending: shards
                .into_iter()
                .filter(|s| *s < self.shards.len())
                .collect(),
            running: FuturesUnordered::new(),
            shards: self.shards.clone(),
            req,
            merged: Some(self.merge.empty()),
            merge: self.merge.clone(),
            missing: Vec::new(),
            concurrency: self.concurrency,
            timeout: self.timeout,
            partial: self.partial,
        }
    }
}

impl<S, M, Req> Service<Req> for ScatterGather<S, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    M: Merge<S::Response>,
    Req: Clone,
{
    type Response = Gathered<M::Output>;
    type Error = BoxError;
    type Future = GatherFuture<S, Req, M>;

    /// Always ready: each shard is made ready when it is asked.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.call_some(0..self.shards.len(), req)
    }
}

pin_project! {
    /// One shard's call, tagged with its index, within an optional deadline.
    struct Tagged<S, Req>
    where
        S: Service<Req>,
    {
        shard: usize,
        #[pin]
        fut: Oneshot<S, Req>,
        #[pin]
        deadline: Option<Sleep>,
    }
}

impl<S, Req> Future for Tagged<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = (usize, Result<S::Response, BoxError>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.fut.poll(cx) {
            return Poll::Ready((*this.shard, result.map_err(Into::into)));
        }
        match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready((*this.shard, Err(ShardTimeout.into()))),
            _ => Poll::Pending,
        }
    }
}

pin_project! {
    /// Response future of [`ScatterGather`].
    pub struct GatherFuture<S, Req, M>
    where
        S: Service<Req>,
        M: Merge<S::Response>,
    {
        pending: VecDeque<usize>,
        running: FuturesUnordered<Pin<Box<Tagged<S, Req>>>>,
        shards: Arc<[S]>,
        req: Req,
        merged: Option<M::Output>,
        merge: Arc<M>,
        missing: Vec<(usize, BoxError)>,
        concurrency: usize,
        timeout: Option<Duration>,
        partial: Partial,
    }
}

impl<S: Service<Req>, Req, M: Merge<S::Response>> fmt::Debug for GatherFuture<S, Req, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatherFuture")
            .field("pending", &self.pending.len())
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl<S, Req, M> Future for GatherFuture<S, Req, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    M: Merge<S::Response>,
    Req: Clone,
{
    type Output = Result<Gathered<M::Output>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        loop {
            while this.running.len() < *this.concurrency {
                let Some(shard) = this.pending.pop_front() else {
                    break;
                };
                this.running.push(Box::pin(Tagged {
                    shard,
                    fut: Oneshot::new(this.shards[shard].clone(), this.req.clone()),
                    deadline: this.timeout.map(tokio::time::sleep),
                }));
            }
            match std::task::ready!(this.running.poll_next_unpin(cx)) {
                Some((shard, Ok(answer))) => {
                    if let Some(merged) = this.merged.as_mut() {
                        this.merge.add(merged, shard, answer);
                    }
                }
                Some((shard, Err(source))) => {
                    if *this.partial == Partial::Fail {
                        return Poll::Ready(Err(ShardError { shard, source }.into()));
                    }
                    this.missing.push((shard, source));
                }
                None => {
                    return Poll::Ready(match this.merged.take() {
                        Some(value) => Ok(Gathered {
                            value,
                            missing: std::mem::take(this.missing),
                        }),
                        None => Err("scatter-gather polled after completion".into()),
                    });
                }
            }
        }
    }
}
