//! The hedging response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_patterns_core::BoxError;
use tower_service::Service;

use super::layer::Shared;

pub(crate) struct Backup<S, Req> {
    service: S,
    req: Option<Req>,
    timer: Pin<Box<Sleep>>,
    /// The budget let this copy go (and its slot is held).
    admitted: bool,
}

impl<S, Req> Backup<S, Req> {
    pub(crate) fn new(service: S, req: Req, timer: Sleep) -> Self {
        Self {
            service,
            req: Some(req),
            timer: Box::pin(timer),
            admitted: false,
        }
    }
}

pin_project! {
    /// Response future of [`Hedging`](super::Hedging).
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        #[pin]
        secondary: Option<S::Future>,
        backup: Option<Backup<S, Req>>,
        shared: Arc<Shared>,
        holds_slot: bool,
        start: Instant,
        first_error: Option<BoxError>,
    }

    impl<S, Req> PinnedDrop for ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.holds_slot && let Some(budget) = &this.shared.budget {
                budget.leave();
            }
        }
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(crate) fn new(
        primary: S::Future,
        backup: Option<Backup<S, Req>>,
        shared: Arc<Shared>,
        start: Instant,
    ) -> Self {
        Self {
            primary: Some(primary),
            secondary: None,
            backup,
            shared,
            holds_slot: false,
            start,
            first_error: None,
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("hedged", &self.secondary.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Either call: the first success wins; a failure waits for the other, if any.
        for secondary in [false, true] {
            let mut slot = if secondary {
                this.secondary.as_mut()
            } else {
                this.primary.as_mut()
            };
            let Some(fut) = slot.as_mut().as_pin_mut() else {
                continue;
            };
            if let Poll::Ready(result) = fut.poll(cx) {
                slot.set(None);
                match result {
                    Ok(res) => {
                        this.shared.latencies.record(this.start.elapsed());
                        return Poll::Ready(Ok(res));
                    }
                    Err(e) => {
                        this.first_error.get_or_insert(e.into());
                    }
                }
            }
        }
        let running = this.primary.is_some() || this.secondary.is_some();
        if let Some(backup) = this.backup.as_mut() {
            // Sent once, only while the first call still runs.
            let due = this.primary.is_some() && backup.timer.as_mut().poll(cx).is_ready();
            if due {
                if !backup.admitted {
                    let budget = this.shared.budget.as_deref();
                    backup.admitted = budget.is_none_or(|b| b.can_retry() && b.enter());
                    *this.holds_slot = backup.admitted && budget.is_some();
                }
                if !backup.admitted {
                    this.shared.declined_total.increment(1);
                    *this.backup = None;
                } else {
                    match backup.service.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => *this.backup = None,
                        Poll::Ready(Ok(())) => {
                            if let Some(req) = backup.req.take() {
                                this.secondary.set(Some(backup.service.call(req)));
                                this.shared.copies.fetch_add(1, Relaxed);
                                this.shared.copies_total.increment(1);
                            }
                            *this.backup = None;
                            // Poll the copy once so it registers its wake-up.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
        if running || this.backup.is_some() && this.primary.is_some() {
            return Poll::Pending;
        }
        Poll::Ready(Err(this
            .first_error
            .take()
            .unwrap_or_else(|| "hedged future polled after completion".into())))
    }
}
