//! The consumer's loop: pull, decode, call the handler, then ack, nak with a delay, or
//! dead-letter and terminate. Beside it, a task that dead-letters the messages JetStream
//! reports (by advisory) as out of deliveries without an answer.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::{
    HeaderMap, Subscriber,
    jetstream::{self, AckKind, consumer::pull, stream::LastRawMessageErrorKind},
};
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
    pub(crate) jetstream: jetstream::Context,
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
        // Listening before the first pull: JetStream gives up on a message (and says so)
        // only when it would deliver it again, which a pull request makes it try.
        let advisories = Self::advisories(
            &self.jetstream,
            &self.stream.cached_info().config.name,
            &self.settings.name,
        )
        .await?;
        let lost = Lost {
            jetstream: self.jetstream.clone(),
            stream: self.stream.clone(),
            settings: self.settings.clone(),
            shared: self.shared.clone(),
            rng: SplitMix64::new(self.settings.rng ^ 0x6c6f_7374),
        };
        let _lost = AbortOnDrop(tokio::spawn(lost.run(advisories)));
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

    /// Subscribes to JetStream's advisory that a message of this consumer ran out of
    /// deliveries; in a queue group, so one instance of the consumer takes each.
    async fn advisories(
        jetstream: &jetstream::Context,
        stream: &str,
        name: &str,
    ) -> Result<Subscriber, BusError> {
        let client = jetstream.client();
        let failed = |e: BoxError| {
            BusError::with(
                BusErrorKind::Consumer,
                format!("consumer {name}: subscribe to the max-deliveries advisory"),
                e,
            )
        };
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{name}");
        let queue = format!("tp_dead_letter_{name}");
        let advisories = client
            .queue_subscribe(subject, queue)
            .await
            .map_err(|e| failed(e.into()))?;
        client.flush().await.map_err(|e| failed(e.into()))?;
        Ok(advisories)
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
        // Sequence 0: no metadata to read it from, nothing to record.
        if stream_sequence != 0 && !self.shared.ledger().take(stream_sequence) {
            tracing::debug!(target: "tower_patterns::cqrs", consumer = %name, stream_sequence, delivered, "set aside from the max-deliveries advisory while it waited its turn: skipped");
            return Ok(());
        }
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
        // JetStream gave up on this message while the loop held it (its last delivery went
        // to an instance that then vanished): no delivery follows a nak, so a failure now is
        // dead-lettered here.
        let outcome = match outcome {
            Outcome::Retry(error) if self.shared.ledger().owed(stream_sequence) => {
                Outcome::DeadLetter(error)
            }
            other => other,
        };
        match outcome {
            Outcome::Ack => {
                // A lost ack only redelivers: the handler's Inbox drops the repeat.
                if let Err(e) = message.ack().await {
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %name, error = %e, "ack failed");
                }
                self.shared.ledger().answered(stream_sequence);
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
                self.shared.ledger().released(stream_sequence);
            }
            Outcome::DeadLetter(error) => {
                let stored = self
                    .dead_letter(&message, stream_sequence, delivered, &error, stop)
                    .await;
                let mut ledger = self.shared.ledger();
                if stored {
                    ledger.answered(stream_sequence);
                } else {
                    ledger.released(stream_sequence);
                }
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
    /// it, keeping the message in progress meanwhile: a progress ack before each wait, and
    /// no wait as long as half of `ack_wait`), then terminates it; `false` when stopped
    /// first.
    async fn dead_letter(
        &mut self,
        message: &jetstream::Message,
        stream_sequence: u64,
        delivered: u64,
        error: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let info = message.info().ok();
        let source = info.as_ref().map_or("", |i| i.stream).to_owned();
        let (subject, headers) = letter(
            &self.settings,
            message.headers.clone().unwrap_or_default(),
            source,
            stream_sequence,
            delivered,
            error,
        );
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
                    let cap = self
                        .settings
                        .cap
                        .min(self.settings.ack_wait / 2)
                        .max(Duration::from_millis(1));
                    let delay =
                        self.settings
                            .backoff
                            .delay(attempt, Duration::ZERO, cap, &mut self.rng);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        // Left unacknowledged: JetStream delivers it again after ack_wait.
                        _ = stop.wait_for(|s| *s) => return false,
                    }
                }
            }
        }
        if let Err(e) = message.ack_with(AckKind::Term).await {
            tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, error = %e, "term failed");
        }
        counted(&self.shared, &self.settings);
        true
    }
}

fn counted(shared: &Shared, settings: &Settings) {
    shared.dead_lettered.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(DEAD_LETTERED, "name" => settings.name.to_string()).increment(1);
}

/// The dead-letter subject, and the headers of the dead letter of the message that had
/// `headers`, from stream `source` at `sequence`.
fn letter(
    settings: &Settings,
    mut headers: HeaderMap,
    source: String,
    sequence: u64,
    delivered: u64,
    error: &str,
) -> (String, HeaderMap) {
    let subject = settings
        .dead_letter
        .clone()
        .unwrap_or_else(|| format!("tp.dead_letter.{source}.{}", settings.name));
    // Its own id, so a dead letter set aside twice (a crash before the Term, or both the
    // handler's last failure and the advisory) is stored once, and never taken for the
    // original when both land in one stream.
    let id = headers
        .get(MSG_ID)
        .map_or_else(|| sequence.to_string(), |v| v.as_str().to_owned());
    headers.insert(MSG_ID, format!("{id}:dead:{}", settings.name));
    headers.insert(HEADER_SOURCE_STREAM, source);
    headers.insert(HEADER_SOURCE_SEQUENCE, sequence.to_string());
    headers.insert(HEADER_CONSUMER, settings.name.to_string());
    headers.insert(HEADER_DELIVERIES, delivered.to_string());
    headers.insert(HEADER_ERROR, one_line(error));
    (subject, headers)
}

/// Aborts the task when the consumer's loop ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Dead-letters what JetStream gave up on without an answer from the handler: the last
/// delivery's `ack_wait` ran out (a handler slower than it, a consumer that crashed or
/// stopped in the middle). JetStream delivers such a message no more and publishes an
/// advisory with its stream sequence; this reads the message back from the stream.
struct Lost {
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
    settings: Settings,
    shared: Arc<Shared>,
    rng: SplitMix64,
}

impl Lost {
    async fn run(mut self, mut advisories: Subscriber) {
        let mut stop = self.shared.stop.subscribe();
        loop {
            let advisory = tokio::select! {
                a = advisories.next() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(advisory) = advisory else { return };
            let fields = serde_json::from_slice::<serde_json::Value>(&advisory.payload)
                .ok()
                .and_then(|v| Some((v["stream_seq"].as_u64()?, v["deliveries"].as_u64()?)));
            let Some((sequence, deliveries)) = fields else {
                tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, "a max-deliveries advisory without stream_seq or deliveries");
                continue;
            };
            if !self.set_aside(sequence, deliveries, &mut stop).await {
                return;
            }
        }
    }

    /// Reads message `sequence` back and publishes its dead letter, retrying until stored;
    /// `false` when stopped first.
    async fn set_aside(
        &mut self,
        sequence: u64,
        deliveries: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        // This instance's loop holds it or answered it lately: the loop deals with it (and
        // dead-letters it itself if the handler fails it, whichever delivery it holds).
        if !self.shared.ledger().claim(sequence) {
            tracing::debug!(target: "tower_patterns::cqrs", consumer = %self.settings.name, sequence, deliveries, "out of deliveries, but handled here: left to the consumer's loop");
            return true;
        }
        let source = self.stream.cached_info().config.name.clone();
        let error = format!(
            "no answer to delivery {deliveries} of {} within ack_wait (the consumer stopped, or it waited its turn too long)",
            self.settings.max_deliver
        );
        let mut attempt = 0u32;
        loop {
            let stored = match self.stream.get_raw_message(sequence).await {
                Ok(message) => {
                    let (subject, headers) = letter(
                        &self.settings,
                        message.headers,
                        source.clone(),
                        sequence,
                        deliveries,
                        &error,
                    );
                    match self
                        .jetstream
                        .publish_with_headers(subject, headers, message.payload)
                        .await
                    {
                        Ok(ack) => ack.await.map(|_| ()).map_err(BoxError::from),
                        Err(e) => Err(e.into()),
                    }
                }
                // Gone from the stream (its limits, or deleted): nothing left to set aside.
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, sequence, "out of deliveries, but no longer in the stream: no dead letter");
                    return true;
                }
                Err(e) => Err(e.into()),
            };
            match stored {
                Ok(()) => {
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, sequence, deliveries, "out of deliveries without an answer: dead-lettered");
                    counted(&self.shared, &self.settings);
                    return true;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(target: "tower_patterns::cqrs", consumer = %self.settings.name, sequence, error = %e, attempt, "dead letter not stored, retrying");
                    let delay = self.settings.backoff.delay(
                        attempt,
                        Duration::ZERO,
                        self.settings.cap,
                        &mut self.rng,
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return false,
                    }
                }
            }
        }
    }
}
