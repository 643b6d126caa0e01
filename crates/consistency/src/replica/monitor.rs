//! The monitor: one connection per node, a probe every `probe_every` (every `probe_fast` while
//! a request waits for a mark), results into the replicas' atomics and gauges.

use std::{
    sync::{
        Arc,
        atomic::Ordering::{Relaxed, Release},
    },
    time::Duration,
};

use deadpool_postgres::{ClientWrapper, Object, Pool};
use futures_util::future::join_all;
use tokio::time::{Instant, timeout};

use super::{
    state::{Behind, ClientSlot, Replica, Shared},
    wal::{self, ProbeError},
};
use crate::mark::Lsn;

/// When a node whose connection failed may be tried again: a node that is down is retried at
/// most every `probe_every`, even while the monitor probes at `probe_fast`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Schedule {
    next_connect: Option<Instant>,
    /// Since when (the primary's schedule only) a waited-for position has not been flushed.
    unflushed_since: Option<Instant>,
}

impl Schedule {
    /// No new connection to this node before `every` from now (measured after the failure,
    /// which may have taken the whole probe timeout).
    fn back_off(&mut self, every: Duration) {
        self.next_connect = Instant::now().checked_add(every);
    }
}

/// How long a waited-for WAL position may stay unflushed on the primary before the monitor
/// flushes it (a busy primary flushes on its next commit well before; an idle one, or one
/// committing with `synchronous_commit = off`, may not for a WAL writer round or longer).
const FLUSH_GRACE: Duration = Duration::from_millis(10);

/// The reconnect schedule of every node, each behind its own lock (a node's loop and
/// `refresh()` take turns on it; nodes never wait for each other).
#[derive(Debug)]
pub(crate) struct Prober {
    primary: tokio::sync::Mutex<Schedule>,
    replicas: Box<[tokio::sync::Mutex<Schedule>]>,
}

impl Prober {
    pub(crate) fn new(replicas: usize) -> Self {
        Self {
            primary: tokio::sync::Mutex::default(),
            replicas: (0..replicas)
                .map(|_| tokio::sync::Mutex::default())
                .collect(),
        }
    }
}

/// Runs until the set is dropped or shut down: one loop per node, so a node that hangs (a
/// stopped host, a black-holed address) delays only its own probes, never the others'.
pub(crate) async fn run(shared: Arc<Shared>) {
    tracing::debug!(target: "tower_patterns::consistency", set = %shared.name, "replica monitor started");
    let nodes = (0..=shared.replicas.len()).map(|node| {
        let shared = shared.clone();
        async move {
            let mut stop = shared.stop.subscribe();
            let mut wake = shared.wake.subscribe();
            while !*stop.borrow_and_update() {
                tokio::select! {
                    () = shared.probe_node(node) => {}
                    _ = stop.changed() => break,
                }
                let pause = if shared.waiters.load(Relaxed) > 0 {
                    shared.options.probe_fast
                } else {
                    shared.options.probe_every
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = wake.changed() => {}
                    changed = stop.changed() => if changed.is_err() { break },
                }
            }
        }
    });
    join_all(nodes).await;
    shared.primary.client.set(None);
    for replica in shared.replicas.iter() {
        replica.client.set(None);
    }
    tracing::debug!(target: "tower_patterns::consistency", set = %shared.name, "replica monitor ended");
}

/// A connection of `pool`, taken out of it for good (the pool makes another in its place).
async fn connect(pool: &Pool, within: Duration) -> Result<Arc<ClientWrapper>, ProbeError> {
    match timeout(within, pool.get()).await {
        Err(_) => Err(ProbeError::TimedOut),
        Ok(Err(e)) => Err(ProbeError::NoConnection(e.to_string())),
        Ok(Ok(object)) => Ok(Arc::new(Object::take(object))),
    }
}

impl Shared {
    /// Probes every node once (each after any probe of it under way): the primary first, so
    /// the replicas' lag is measured against a fresh position.
    pub(crate) async fn probe(&self) {
        self.probe_node(0).await;
        join_all((1..=self.replicas.len()).map(|node| self.probe_node(node))).await;
    }

    /// Probes node `node` (0: the primary; `i + 1`: replica `i`), then tells the waiters.
    async fn probe_node(&self, node: usize) {
        if node == 0 {
            let mut schedule = self.prober.primary.lock().await;
            self.probe_primary(&mut schedule).await;
        } else {
            let mut schedule = self.prober.replicas[node - 1].lock().await;
            self.probe_replica(&self.replicas[node - 1], &mut schedule)
                .await;
        }
        self.probed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The monitor's client of a node, connecting when it has none and the schedule allows:
    /// the client and whether it is new.
    async fn client(
        &self,
        slot: &ClientSlot,
        pool: &Pool,
        schedule: &mut Schedule,
        node: &str,
    ) -> Option<(Arc<ClientWrapper>, bool)> {
        if let Some(client) = slot.get() {
            return Some((client, false));
        }
        if schedule.next_connect.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        match connect(pool, self.options.probe_timeout).await {
            Ok(client) => {
                schedule.next_connect = None;
                Some((client, true))
            }
            Err(e) => {
                schedule.back_off(self.options.probe_every);
                tracing::debug!(target: "tower_patterns::consistency", set = %self.name, node, error = %e, "cannot connect");
                None
            }
        }
    }

    async fn probe_primary(&self, schedule: &mut Schedule) -> Option<Lsn> {
        let primary = &self.primary;
        let (client, fresh) = self
            .client(&primary.client, &primary.pool, schedule, "primary")
            .await?;
        let read = async {
            if fresh {
                primary.set_geometry(wal::geometry(&client).await?);
            }
            wal::insert_lsn(&client, primary.geometry()).await
        };
        match timeout(self.options.probe_timeout, read).await {
            Ok(Ok(lsn)) => {
                self.flush_for_waiters(&client, lsn, schedule).await;
                if fresh {
                    primary.client.set(Some(client));
                }
                primary.observe(lsn);
                Some(lsn)
            }
            failed => {
                let error = failed.map_or(ProbeError::TimedOut, |r| {
                    r.err().unwrap_or(ProbeError::TimedOut)
                });
                tracing::debug!(target: "tower_patterns::consistency", set = %self.name, error = %error, "primary probe failed");
                primary.client.set(None);
                schedule.back_off(self.options.probe_every);
                None
            }
        }
    }

    /// While a request waits for a position the primary has written but not flushed yet (so
    /// no replica can have it), and that lasts over [`FLUSH_GRACE`], makes the primary flush
    /// ([`wal::flush_now`]): without it, a token taken after an asynchronous commit waits for
    /// the WAL writer's round (200 ms by default), and one taken after records that no commit
    /// followed can wait out its whole wait on a quiet primary. At most one flush per grace
    /// period, and never for more than the primary has written.
    async fn flush_for_waiters(
        &self,
        client: &ClientWrapper,
        inserted: Lsn,
        schedule: &mut Schedule,
    ) {
        let wanted = self.wanted.load(Relaxed);
        if self.waiters.load(Relaxed) == 0 || wanted == 0 {
            schedule.unflushed_since = None;
            return;
        }
        // Never past what the primary has written: a token from before a failover or a
        // restore (past anything written since) asks for no more than a flush of what is.
        let wanted = wanted.min(inserted.0);
        let Ok(Ok(flushed)) = timeout(self.options.probe_timeout, wal::flush_lsn(client)).await
        else {
            return;
        };
        if !should_flush(
            Lsn(wanted),
            flushed,
            &mut schedule.unflushed_since,
            Instant::now(),
        ) {
            return;
        }
        match timeout(self.options.probe_timeout, wal::flush_now(client)).await {
            Ok(Ok(())) => {
                self.wal_flushes.fetch_add(1, Relaxed);
            }
            failed => {
                let error = failed.map_or(ProbeError::TimedOut, |r| {
                    r.err().unwrap_or(ProbeError::TimedOut)
                });
                tracing::debug!(target: "tower_patterns::consistency", set = %self.name, error = %error, "cannot flush the primary's WAL");
            }
        }
    }

    async fn probe_replica(&self, replica: &Replica, schedule: &mut Schedule) {
        let answer = match self
            .client(&replica.client, &replica.pool, schedule, &replica.name)
            .await
        {
            None => None,
            Some((client, fresh)) => {
                match timeout(self.options.probe_timeout, wal::replica_probe(&client)).await {
                    Ok(Ok(probe)) => {
                        if fresh {
                            replica.client.set(Some(client));
                        }
                        Some(probe)
                    }
                    failed => {
                        let error = failed.map_or(ProbeError::TimedOut, |r| {
                            r.err().unwrap_or(ProbeError::TimedOut)
                        });
                        tracing::debug!(target: "tower_patterns::consistency", set = %self.name, replica = %replica.name, error = %error, "replica probe failed");
                        replica.client.set(None);
                        schedule.back_off(self.options.probe_every);
                        None
                    }
                }
            }
        };
        let Some(probe) = answer else {
            replica.mark_down();
            return;
        };
        let primary = self.primary.last_lsn();
        let lag_bytes = primary.map_or(0, |p| p.bytes_after(probe.replay));
        // How long ago the primary first had WAL this replica has not replayed, from the
        // primary's recent positions; the age of its last replayed transaction only when the
        // primary has not been probed yet (on a quiet primary that age is minutes, not lag).
        let lag_seconds = match self.primary.behind_since(probe.replay) {
            Behind::CaughtUp => 0.0,
            Behind::Since(at) => at.elapsed().as_secs_f64(),
            Behind::Unknown => {
                let caught_up = probe.receive.is_some_and(|r| probe.replay >= r);
                if caught_up {
                    0.0
                } else {
                    probe.since_last_replayed
                }
            }
        };
        let options = &self.options;
        let healthy =
            lag_bytes <= options.max_lag_bytes && lag_seconds <= options.max_lag.as_secs_f64();
        replica.replay.store(probe.replay.0, Release);
        replica
            .receive
            .store(probe.receive.map_or(0, |r| r.0), Relaxed);
        replica.lag_bytes.store(lag_bytes, Relaxed);
        replica.lag_seconds.store(lag_seconds.to_bits(), Relaxed);
        replica.up.store(true, Relaxed);
        replica.healthy.store(healthy, Release);
        replica.gauges.lag_bytes.set(lag_bytes as f64);
        replica.gauges.lag_seconds.set(lag_seconds);
        replica.gauges.up.set(1.0);
    }
}

/// Whether to flush the primary now for a waited-for position `wanted`, given what it has
/// `flushed`: once `wanted` has gone unflushed for [`FLUSH_GRACE`] (tracked in `since`), and
/// then at most once per grace period.
fn should_flush(wanted: Lsn, flushed: Lsn, since: &mut Option<Instant>, now: Instant) -> bool {
    if flushed >= wanted {
        *since = None;
        return false;
    }
    let first = *since.get_or_insert(now);
    if now.duration_since(first) < FLUSH_GRACE {
        return false;
    }
    *since = Some(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_comes_after_the_grace_period_and_once_per_period() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut since = None;
        // Flushed already: nothing, and nothing remembered.
        assert!(!should_flush(Lsn(10), Lsn(10), &mut since, ms(0)));
        assert_eq!(since, None);
        // Unflushed: wait the grace period first.
        assert!(!should_flush(Lsn(10), Lsn(9), &mut since, ms(0)));
        assert!(!should_flush(Lsn(10), Lsn(9), &mut since, ms(9)));
        assert!(should_flush(Lsn(10), Lsn(9), &mut since, ms(10)));
        // Then once per period.
        assert!(!should_flush(Lsn(10), Lsn(9), &mut since, ms(19)));
        assert!(should_flush(Lsn(10), Lsn(9), &mut since, ms(20)));
        // Flushed meanwhile: the clock starts over.
        assert!(!should_flush(Lsn(10), Lsn(11), &mut since, ms(21)));
        assert!(!should_flush(Lsn(12), Lsn(11), &mut since, ms(25)));
        assert!(!should_flush(Lsn(12), Lsn(11), &mut since, ms(34)));
        assert!(should_flush(Lsn(12), Lsn(11), &mut since, ms(35)));
    }
}
