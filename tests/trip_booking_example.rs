//! The trip booking example (`examples/trip_booking.rs`) run as a user runs it, its output
//! captured: the trip booking's and the order saga's endings, the choreographed trip, the
//! operator resolving a stuck saga, and the usage on a bad command line.
#![cfg(feature = "saga")]

use std::process::ExitCode;

#[allow(dead_code, reason = "the example's `main`: the test calls `run`")]
#[path = "../examples/trip_booking.rs"]
mod trip_booking;

async fn run(args: &str) -> (ExitCode, String) {
    let mut out = Vec::new();
    let args = args.split_whitespace().map(str::to_owned).collect();
    let code = trip_booking::run(args, &mut out).await;
    (code, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_works() {
    let (code, out) = run("--trips 3").await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert_eq!(out.matches(": SUCCESS").count(), 3, "{out}");
    assert!(out.contains("flight: 3 booked, 0 cancelled"), "{out}");
    assert!(out.contains("payment: 3 booked, 0 cancelled"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_hotel_cancels_the_flight_and_a_failed_payment_both() {
    let (_, out) = run("--fail hotel").await;
    assert!(
        out.contains("FAILED: hotel unavailable (compensated)"),
        "{out}"
    );
    assert!(out.contains("flight: 1 booked, 1 cancelled"), "{out}");
    assert!(out.contains("hotel: 0 booked"), "{out}");
    let (_, out) = run("--fail payment").await;
    assert!(out.contains("flight: 1 booked, 1 cancelled"), "{out}");
    assert!(out.contains("hotel: 1 booked, 1 cancelled"), "{out}");
    let steps: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" compensated") && l.contains("step "))
        .collect();
    assert!(
        steps[0].contains("step hotel compensated") && steps[1].contains("step flight compensated"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_saga_fails_with_its_reasons() {
    for (step, reason, cancelled) in [
        (
            "payment",
            "payment failed",
            ["order: 1 booked, 1 cancelled", "payment: 0 booked"],
        ),
        (
            "inventory",
            "inventory unavailable",
            ["payment: 1 booked, 1 cancelled", "inventory: 0 booked"],
        ),
        (
            "shipping",
            "shipment creation failed",
            ["inventory: 1 booked, 1 cancelled", "shipping: 0 booked"],
        ),
    ] {
        let (_, out) = run(&format!("--order --fail {step}")).await;
        assert!(
            out.contains(&format!("FAILED: {reason} (compensated)")),
            "{out}"
        );
        for c in cancelled {
            assert!(out.contains(c), "{step}: {out}");
        }
    }
    let (_, out) = run("--order").await;
    assert!(
        out.contains(": SUCCESS") && out.contains("shipping: 1 booked, 0 cancelled"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_compensation_is_resolved_by_the_operator() {
    let (_, out) = run("--fail payment --stuck flight").await;
    assert!(out.contains("(stuck)"), "{out}");
    assert!(
        out.contains("is stuck: the compensation of flight failed"),
        "{out}"
    );
    assert!(
        out.contains("operator: resolved (resolved by ops@example.com"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choreographed_trip_cancels_back() {
    let (_, out) = run("--choreography --fail payment").await;
    let events: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with("ed") && !l.contains(' '))
        .collect();
    assert_eq!(
        events,
        [
            "TripRequested",
            "FlightBooked",
            "HotelBooked",
            "PaymentFailed",
            "HotelCancelled",
            "FlightCancelled"
        ],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_command_line_prints_the_usage() {
    for args in [
        "--bogus",
        "--fail",
        "--fail boat",
        "--trips 0",
        "--trips 1001",
        "--order --choreography",
    ] {
        let (code, out) = run(args).await;
        assert_eq!(code, ExitCode::from(2), "{args}");
        assert!(out.starts_with("usage: trip_booking"), "{args}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_keeps_the_log() {
    let dir = std::env::temp_dir().join(format!("tp-trip-booking-test-{}", std::process::id()));
    let path = dir.to_str().unwrap();
    let (code, _) = run(&format!("--data {path}")).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(dir.join("events.db").exists() && dir.join("sagas.db").exists());
    let (code, out) = run(&format!("--data {path} --fail hotel")).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(!out.contains("recovered"), "nothing was left open: {out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
