//! The trip booking as a saga: book a flight, a hotel and the payment; a failed hotel cancels
//! the flight, a failed payment cancels both. Each saga's log is printed as a timeline. Also
//! the order saga (`--order`), and the trip choreographed over the event log
//! (`--choreography`).
//!
//! ```text
//! cargo run --example trip_booking --features saga                         # every step works
//! cargo run --example trip_booking --features saga -- --fail hotel         # the flight is cancelled
//! cargo run --example trip_booking --features saga -- --fail payment       # the hotel, then the flight
//! cargo run --example trip_booking --features saga -- --flaky hotel        # two errors, then retries win
//! cargo run --example trip_booking --features saga -- --hang hotel         # its timeout fires: compensated
//! cargo run --example trip_booking --features saga -- --fail payment --stuck flight
//!                                                                          # the flight cannot be cancelled:
//!                                                                          # stuck, then resolved by an operator
//! cargo run --example trip_booking --features saga -- --order --fail inventory
//! cargo run --example trip_booking --features saga -- --choreography --fail payment
//! ```
//!
//! `--trips N` books N trips (1 to 1000, default 1); `--data DIR` keeps the SQLite log
//! (`events.db`) and index (`sagas.db`) there (default: a fresh directory under the system's
//! temporary directory, removed at the end). `--fail`, `--flaky`, `--hang` and `--stuck` take
//! a step name and may be repeated. A command line that is not one of these prints the usage
//! and exits 2.
#![allow(
    clippy::print_stdout,
    reason = "a command-line example prints its answers"
)]

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use serde_json::{Value, json};
use tower::service_fn;
use tower_patterns::{
    BoxError,
    eventstore::{Direction, EventStore, GlobalPosition, sqlite::SqliteStore},
    saga::{
        Attempts, Backoff, Orchestrator, SagaDefinition, SagaId, SagaStatus, Step, StepError,
        StepRequest, StepService,
        choreography::{Choreography, Reaction},
        index::SqliteIndex,
    },
};

const USAGE: &str = "usage: trip_booking [--order | --choreography] [--trips N] [--data DIR] \
                     [--fail STEP] [--flaky STEP] [--hang STEP] [--stuck STEP]";

/// The command line, parsed.
#[derive(Debug, Default, PartialEq)]
struct Options {
    order: bool,
    choreography: bool,
    trips: usize,
    data: Option<PathBuf>,
    fail: Vec<String>,
    flaky: Vec<String>,
    hang: Vec<String>,
    stuck: Vec<String>,
}

fn parse(args: &[String]) -> Option<Options> {
    let steps = [
        "flight",
        "hotel",
        "payment",
        "order",
        "inventory",
        "shipping",
    ];
    let mut o = Options {
        trips: 1,
        ..Options::default()
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--order" => o.order = true,
            "--choreography" => o.choreography = true,
            "--trips" => {
                o.trips = args
                    .next()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))?;
            }
            "--data" => o.data = Some(PathBuf::from(args.next()?)),
            "--fail" | "--flaky" | "--hang" | "--stuck" => {
                let step = args.next().filter(|s| steps.contains(&s.as_str()))?.clone();
                match arg.as_str() {
                    "--fail" => o.fail.push(step),
                    "--flaky" => o.flaky.push(step),
                    "--hang" => o.hang.push(step),
                    _ => o.stuck.push(step),
                }
            }
            _ => return None,
        }
    }
    (!(o.order && o.choreography)).then_some(o)
}

/// A fake service behind one step: it books under the call's idempotency key (a repeat
/// answers the first booking), cancels a booking once, and remembers a cancellation that
/// came before its booking (a tombstone), so a late booking under that key is refused.
#[derive(Clone, Default)]
struct Provider {
    name: &'static str,
    state: Arc<Mutex<ProviderState>>,
}

#[derive(Default)]
struct ProviderState {
    /// Booking id by the saga and step (the key without its phase).
    booked: HashMap<String, String>,
    cancelled: HashMap<String, bool>,
    calls: HashMap<String, usize>,
}

fn booking_key(req: &StepRequest) -> String {
    format!("{}/{}", req.saga, req.step)
}

impl Provider {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProviderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The action; `options` says how it misbehaves.
    fn book(&self, options: &Options) -> StepService {
        let (fail, flaky, hang) = (
            options.fail.iter().any(|s| s == self.name),
            options.flaky.iter().any(|s| s == self.name),
            options.hang.iter().any(|s| s == self.name),
        );
        let this = self.clone();
        StepService::new(service_fn(move |req: StepRequest| {
            let this = this.clone();
            async move {
                let key = booking_key(&req);
                let n = {
                    let mut s = this.state();
                    let n = s.calls.entry(key.clone()).or_default();
                    *n += 1;
                    *n
                };
                if hang {
                    std::future::pending::<()>().await;
                }
                if fail {
                    return Err(StepError::refused(format!("{} unavailable", this.name)).into());
                }
                if flaky && n <= 2 {
                    return Err::<Value, BoxError>(format!("{} timed out", this.name).into());
                }
                let mut s = this.state();
                if s.cancelled.contains_key(&key) {
                    return Err(StepError::refused("cancelled before it was booked").into());
                }
                let id = s
                    .booked
                    .entry(key)
                    .or_insert_with(|| format!("{}-{}", this.name, req.saga))
                    .clone();
                Ok(json!({ "booking": id }))
            }
        }))
    }

    /// The compensation: cancels the booking once (a repeat changes nothing).
    fn cancel(&self, options: &Options) -> StepService {
        let stuck = options.stuck.iter().any(|s| s == self.name);
        let this = self.clone();
        StepService::new(service_fn(move |req: StepRequest| {
            let this = this.clone();
            async move {
                if stuck {
                    return Err::<Value, BoxError>(format!("{} cannot cancel", this.name).into());
                }
                let key = booking_key(&req);
                let mut s = this.state();
                let had = s.booked.contains_key(&key);
                s.cancelled.insert(key, had);
                Ok(json!({ "cancelled": had }))
            }
        }))
    }

    fn summary(&self) -> String {
        let s = self.state();
        let cancelled = s.cancelled.values().filter(|had| **had).count();
        format!(
            "{}: {} booked, {} cancelled",
            self.name,
            s.booked.len(),
            cancelled
        )
    }
}

fn step(p: &Provider, options: &Options) -> Step {
    Step::new(p.name, p.book(options))
        .compensate_with(p.cancel(options))
        .timeout(Duration::from_millis(500))
        .retry(Attempts::new(
            3,
            Backoff::Exponential {
                base: Duration::from_millis(50),
                multiplier: 2.0,
            },
        ))
        .compensation_retry(Attempts::new(
            3,
            Backoff::Constant(Duration::from_millis(50)),
        ))
}

/// Runs the example with `args` (without the program name), writing to `out`.
pub(crate) async fn run(args: Vec<String>, out: &mut (impl Write + Send)) -> ExitCode {
    let Some(options) = parse(&args) else {
        let _ = writeln!(out, "{USAGE}");
        return ExitCode::from(2);
    };
    let (dir, remove) = match &options.data {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("trip-booking-{}-{}", std::process::id(), nonce())),
            true,
        ),
    };
    let result = book(&options, &dir, out).await;
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn book(
    options: &Options,
    dir: &PathBuf,
    out: &mut (impl Write + Send),
) -> Result<(), BoxError> {
    std::fs::create_dir_all(dir)?;
    let store = Arc::new(SqliteStore::open(dir.join("events.db"))?);
    if options.choreography {
        return choreographed(options, store, out).await;
    }
    let providers: Vec<Provider> = if options.order {
        ["order", "payment", "inventory", "shipping"]
            .into_iter()
            .map(Provider::new)
            .collect()
    } else {
        ["flight", "hotel", "payment"]
            .into_iter()
            .map(Provider::new)
            .collect()
    };
    let (saga_type, definition) = if options.order {
        let reasons = [
            "order creation failed",
            "payment failed",
            "inventory unavailable",
            "shipment creation failed",
        ];
        let mut b = SagaDefinition::builder("order");
        for (p, reason) in providers.iter().zip(reasons) {
            b = b.step(step(p, options).failure_reason(reason));
        }
        // Marks the order complete: nothing to undo.
        let complete = StepService::new(service_fn(|_: StepRequest| async {
            Ok::<_, BoxError>(json!({ "order": "complete" }))
        }));
        ("order", b.step(Step::new("complete", complete)).build()?)
    } else {
        let mut b = SagaDefinition::builder("trip");
        for p in &providers {
            b = b.step(step(p, options));
        }
        ("trip", b.deadline(Duration::from_secs(30)).build()?)
    };
    let orchestrator = Orchestrator::builder("trip_booking")
        .store(store)
        .index(SqliteIndex::open(dir.join("sagas.db"))?)
        .saga(definition)
        .build()?;
    let recovered = orchestrator.recover().await?;
    if recovered > 0 {
        writeln!(
            out,
            "recovered {recovered} saga(s) left open by a previous run"
        )?;
    }
    let mut runs = Vec::new();
    for i in 1..=options.trips {
        let id =
            SagaId::new(format!("{saga_type}-{}-{i}", nonce() % 100_000)).ok_or("a saga id")?;
        let o = orchestrator.clone();
        runs.push(tokio::spawn(async move {
            o.run(saga_type, id, json!({ "traveller": "ada", "trip": i }))
                .await
        }));
    }
    for run in runs {
        let outcome = run.await??;
        let verdict = match (outcome.status, &outcome.reason) {
            (SagaStatus::Completed, _) => "SUCCESS".to_owned(),
            (status, Some(reason)) => format!("FAILED: {reason} ({status})"),
            (status, None) => format!("{status}"),
        };
        writeln!(out, "\n{}: {verdict}", outcome.id)?;
        timeline(&orchestrator, &outcome.id, out).await?;
        if outcome.status == SagaStatus::Stuck {
            for s in orchestrator.stuck(10).await? {
                writeln!(
                    out,
                    "  operator: {} is stuck: the compensation of {} failed: {}",
                    s.id, s.step, s.error
                )?;
            }
            let resolved = orchestrator
                .resolve(
                    &outcome.id,
                    "ops@example.com",
                    "cancelled by phone with the airline",
                )
                .await?;
            let last = orchestrator
                .history(&outcome.id)
                .await?
                .pop()
                .map(|e| e.event.describe());
            writeln!(
                out,
                "  operator: {} ({})",
                resolved.status,
                last.unwrap_or_default()
            )?;
        }
    }
    writeln!(out)?;
    for p in &providers {
        writeln!(out, "{}", p.summary())?;
    }
    Ok(())
}

async fn timeline<S: EventStore>(
    o: &Orchestrator<S, SqliteIndex>,
    id: &SagaId,
    out: &mut (impl Write + Send),
) -> Result<(), BoxError> {
    let log = o.history(id).await?;
    let start = log.first().map_or(0, |e| e.recorded_at_micros);
    for e in log {
        let ms = e.recorded_at_micros.saturating_sub(start) / 1_000;
        writeln!(out, "  {ms:>6} ms  {}", e.event.describe())?;
    }
    Ok(())
}

async fn choreographed(
    options: &Options,
    store: Arc<SqliteStore>,
    out: &mut (impl Write + Send),
) -> Result<(), BoxError> {
    let [flight, hotel, payment] = ["flight", "hotel", "payment"].map(Provider::new);
    let c = Choreography::builder("trip")
        .store(store.clone())
        .reaction(
            Reaction::new("flight", "TripRequested", flight.book(options))
                .emits("FlightBooked")
                .fails_with("FlightFailed")
                .compensate_on(
                    ["HotelFailed", "HotelCancelled"],
                    flight.cancel(options),
                    "FlightCancelled",
                ),
        )
        .reaction(
            Reaction::new("hotel", "FlightBooked", hotel.book(options))
                .emits("HotelBooked")
                .fails_with("HotelFailed")
                .timeout(Duration::from_millis(500))
                .retry(Attempts::new(
                    3,
                    Backoff::Constant(Duration::from_millis(50)),
                ))
                .compensate_on(["PaymentFailed"], hotel.cancel(options), "HotelCancelled"),
        )
        .reaction(
            Reaction::new("payment", "HotelBooked", payment.book(options))
                .emits("PaymentProcessed")
                .fails_with("PaymentFailed"),
        )
        .build()?;
    let mut after = store
        .head()
        .await?
        .map_or(GlobalPosition::START, |e| e.position);
    let mut ids = Vec::new();
    for i in 1..=options.trips {
        let id = SagaId::new(format!("{}-{i}", nonce() % 100_000)).ok_or("a saga id")?;
        c.begin(
            &id,
            "TripRequested",
            json!({ "traveller": "ada", "trip": i }),
        )
        .await?;
        ids.push(id);
    }
    // Each participant reacts to the log in turn (in production: a projection runner or a
    // JetStream consumer per service).
    loop {
        let page = store.read_all(after, 256).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            c.handle(e).await.map_err(|e| format!("{e}"))?;
        }
    }
    for id in ids {
        writeln!(out, "\n{}:", c.stream(&id))?;
        let log = store
            .read_stream(&c.stream(&id), 1, Direction::Forward, 100)
            .await?;
        for e in log {
            writeln!(out, "  {}", e.event_type)?;
        }
    }
    writeln!(out)?;
    for p in [&flight, &hotel, &payment] {
        writeln!(out, "{}", p.summary())?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    run(args, &mut out).await
}
