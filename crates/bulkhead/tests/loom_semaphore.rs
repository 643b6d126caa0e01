//! Loom model of the bulkhead's permit accounting: permits in use never exceed the limit,
//! and none leak when holders or waiters are dropped. Run by `scripts/test` with
//! `--cfg loom`.
#![cfg(loom)]

use std::sync::Arc;

use loom::{
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};
use tower_patterns_bulkhead::__private::{Permit, Semaphore, Waiter};

/// Holds a permit while checking the count of holders against the limit.
fn hold(s: &Arc<Semaphore>, holders: &AtomicUsize, limit: usize) -> bool {
    let Some(permit) = Permit::try_new(s) else {
        return false;
    };
    let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(now <= limit, "{now} holders with a limit of {limit}");
    holders.fetch_sub(1, Ordering::SeqCst);
    drop(permit);
    true
}

#[test]
fn try_acquire_never_exceeds_the_limit_nor_leaks() {
    loom::model(|| {
        let s = Arc::new(Semaphore::new(1, 0));
        let holders = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (s, holders) = (s.clone(), holders.clone());
                thread::spawn(move || hold(&s, &holders, 1))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.in_flight(), 0, "every permit came back");
        assert_eq!(s.waiting(), 0);
    });
}

#[test]
fn a_waiter_is_handed_the_released_permit_and_drops_leak_nothing() {
    loom::model(|| {
        let s = Arc::new(Semaphore::new(1, 1));
        let first = Permit::try_new(&s).expect("free at the start");
        let releaser = thread::spawn(move || drop(first));
        let waiter = {
            let s = s.clone();
            thread::spawn(move || {
                let mut w = Waiter::new(s.clone());
                loom::future::block_on(std::future::poll_fn(|cx| w.poll_acquire(cx)))
                    .map(|permit| {
                        assert_eq!(s.in_flight(), 1, "the limit holds while it waits");
                        drop(permit);
                    })
                    .is_ok()
            })
        };
        releaser.join().unwrap();
        assert!(
            waiter.join().unwrap(),
            "the waiter gets the permit, never Full"
        );
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.waiting(), 0);
    });
}

#[test]
fn a_waiter_dropped_while_a_permit_is_released_leaks_nothing() {
    loom::model(|| {
        let s = Arc::new(Semaphore::new(1, 1));
        let first = Permit::try_new(&s).expect("free at the start");
        let mut w = Waiter::new(s.clone());
        let waker = futures_noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(w.poll_acquire(&mut cx).is_pending());
        let releaser = thread::spawn(move || drop(first));
        let dropper = thread::spawn(move || drop(w));
        releaser.join().unwrap();
        dropper.join().unwrap();
        assert_eq!(
            s.in_flight(),
            0,
            "a permit granted to the dropped waiter came back"
        );
        assert_eq!(s.waiting(), 0);
        assert!(Permit::try_new(&s).is_some());
    });
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}
