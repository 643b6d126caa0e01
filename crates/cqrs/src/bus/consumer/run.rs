//! The consumer's loop: pull, decode, call the handler, then ack, nak with a delay, or
//! dead-letter and terminate.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::{StreamExt as _, future::poll_fn};
use tokio::sync::watch;
use tower_patterns_core::{BoxError, rng::SplitMix64};
use tower_service::Service;

use super::{DEAD_LETTERED, Delivery, HANDLED, REDELIVERED, RUNNING, STOPPED, Settings, Shared};
use crate::{
    bus::nats::{
        BusError, BusErrorKind, HEADER_CONSUMER, HEADER_DELIVERIES, HEADER_ERROR,
        HEADER_SOURCE_SEQUENCE, HEADER_SOURCE_STREAM, MSG_ID, decode_event, one_line,
    },
    projection::ApplyError,
};

pub(crate) struct Runner<H> {
    pub(crate) settings: Settings,
    pub(crate) stream: jetstream::stream::Stream,
    pub(crate) handler: H,
    pub(crate) rng: SplitMix64,
    pub(crate) shared: Arc<Shared>,
}

/// What to do with a message whose handler failed.
enum Outcome {
    Ack,
    Retry(String),
    DeadLetter(String),
}

impl<H> Runner<H>
where
    H: Service<Delivery, Response = ()> + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send,
{
    pub(crate) async fn run(mut self) -> Result<(), BusError> {
        let result = self.run_inner().await;
        self.shared.status.store(STOPPED, Ordering::Relaxed);
        result
    }

    fn error(&self, what: &str, e: impl Into<BoxError>) -> BusError {
        BusError::with(
            BusErrorKind::Consumer,
            format!("consumer {}: {what}", self.settings.name),
            e,
        )
    }

    async fn run_inner(&mut self) -> Result<(), BusError> {
        let s = &self.settings;
        let config = pull::Config {
            durable_name: Some(s.name.to_string()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: s.ack_wait,
            max_deliver: i64::from(s.max_deliver),
            filter_subject: s.filter.clone().unwrap_or_default(),
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(&s.name, config)
            .await
            .map_err(|e| self.error("create the durable consumer", e))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(s.batch)
            .messages()
            .await
            .map_err(|e| self.error("pull messages", e))?;
        self.shared.status.store(RUNNING, Ordering::Relaxed);
        let mut stop = self.shared.stop.subscribe();
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match next {
                None => {
                    return Err(BusError::new(
                        BusErrorKind::Consumer,
                        format!("consumer {}: the message stream ended", self.settings.name),
                    ));
                }
                // Missed heartbeats, a lost connection: the stream pulls again by itself;
                // back off so that a server away for long is not asked in a tight loop.
                Some(Err(e)) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, error = %e, failures, "pulling messages failed");
                    let delay = self.settings.backoff.delay(
                        failures,
                        Duration::ZERO,
                        self.settings.cap,
                        &mut self.rng,
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
                Some(Ok(message)) => {
                    failures = 0;
                    self.handle(message, &mut stop).await?;
                }
            }
        }
    }

    async fn handle(
        &mut self,
        message: jetstream::Message,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), BusError> {
        let (stream_sequence, delivered) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(0),
            ),
            Err(_) => (0, 1),
        };
        let name = self.settings.name.to_string();
        if delivered > 1 {
            self.shared.redelivered.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(REDELIVERED, "name" => name.clone()).increment(1);
        }
        let outcome = match decode_event(message.headers.as_ref(), &message.payload) {
            Err(e) => Outcome::DeadLetter(e),
            Ok(event) => {
                let delivery = Delivery {
                    event,
                    subject: message.subject.to_string(),
                    stream_sequence,
                    delivered,
                };
                match self.call(delivery).await {
                    Ok(()) => Outcome::Ack,
                    Err(e) => {
                        self.shared.failures.fetch_add(1, Ordering::Relaxed);
                        let permanent = e
                            .downcast_ref::<ApplyError>()
                            .is_some_and(|a| !a.is_transient());
                        let text = e.to_string();
                        if permanent || delivered >= u64::from(self.settings.max_deliver) {
                            Outcome::DeadLetter(text)
                        } else {
                            Outcome::Retry(text)
                        }
                    }
                }
            }
        };
        match outcome {
            Outcome::Ack => {
                // A lost ack only redelivers: the handler's Inbox drops the repeat.
                if let Err(e) = message.ack().await {
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %name, error = %e, "ack failed");
                }
                self.shared.handled.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(HANDLED, "name" => name).increment(1);
            }
            Outcome::Retry(error) => {
                let attempt = u32::try_from(delivered).unwrap_or(u32::MAX);
                let delay = self.settings.backoff.delay(
                    attempt,
                    Duration::ZERO,
                    self.settings.cap,
                    &mut self.rng,
                );
                tracing::debug!(target: "tower_patterns::cqrs", consumer = %name, delivered, %error, ?delay, "handler failed, delivering again");
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %name, error = %e, "nak failed");
                }
            }
            Outcome::DeadLetter(error) => {
                self.dead_letter(&message, stream_sequence, delivered, &error, stop)
                    .await;
            }
        }
        Ok(())
    }

    async fn call(&mut self, delivery: Delivery) -> Result<(), BoxError> {
        poll_fn(|cx| self.handler.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        self.handler.call(delivery).await.map_err(Into::into)
    }

    /// Publishes the message to the dead-letter subject (retrying until JetStream stores
    /// it, keeping the message in progress meanwhile), then terminates it.
    async fn dead_letter(
        &mut self,
        message: &jetstream::Message,
        stream_sequence: u64,
        delivered: u64,
        error: &str,
        stop: &mut watch::Receiver<bool>,
    ) {
        let info = message.info().ok();
        let source = info.as_ref().map_or("", |i| i.stream).to_owned();
        let subject = self
            .settings
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("tp.dead_letter.{source}.{}", self.settings.name));
        let mut headers = message.headers.clone().unwrap_or_default();
        // Its own id, so a dead letter set aside twice (a crash before the Term) is stored
        // once, and never taken for the original when both land in one stream.
        let id = headers
            .get(MSG_ID)
            .map_or_else(|| stream_sequence.to_string(), |v| v.as_str().to_owned());
        headers.insert(MSG_ID, format!("{id}:dead:{}", self.settings.name));
        headers.insert(HEADER_SOURCE_STREAM, source);
        headers.insert(HEADER_SOURCE_SEQUENCE, stream_sequence.to_string());
        headers.insert(HEADER_CONSUMER, self.settings.name.to_string());
        headers.insert(HEADER_DELIVERIES, delivered.to_string());
        headers.insert(HEADER_ERROR, one_line(error));
        let mut attempt = 0u32;
        loop {
            let stored = match message
                .context
                .publish_with_headers(subject.clone(), headers.clone(), message.payload.clone())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(BoxError::from),
                Err(e) => Err(e.into()),
            };
            match stored {
                Ok(()) => break,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, %subject, error = %e, attempt, "dead letter not stored, retrying");
                    let _ = message.ack_with(AckKind::Progress).await;
                    let delay = self.settings.backoff.delay(
                        attempt,
                        Duration::ZERO,
                        self.settings.cap,
                        &mut self.rng,
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        // Left unacknowledged: JetStream delivers it again after ack_wait.
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
        if let Err(e) = message.ack_with(AckKind::Term).await {
            tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, error = %e, "term failed");
        }
        self.shared.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DEAD_LETTERED, "name" => self.settings.name.to_string()).increment(1);
    }
}
