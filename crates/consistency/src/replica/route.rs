//! Where one request goes, and what its response future does there.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use deadpool_postgres::Object;
use futures_util::future::poll_fn;
use tower_patterns_core::{BoxError, rng::SplitMix64};
use tower_service::Service;

use super::{
    error::PrimaryUnavailable,
    router::{Node, Routed},
    state::{InFlight, Shared},
    wal,
};
use crate::{
    concern::{MarkResponse, ReadConcern},
    mark::{Lsn, Mark},
};

/// The node chosen for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Primary,
    Replica(usize),
}

/// A read goes to the primary when its concern asks for it or carries a mark of the other
/// kind; otherwise to a healthy replica that has replayed its mark (any healthy replica
/// without one), picked by two random choices, or to the primary when there is none.
pub(crate) fn route_read(shared: &Shared, concern: ReadConcern) -> Route {
    if concern.from_primary {
        return Route::Primary;
    }
    let wanted = match concern.at_least {
        None => Lsn(0),
        Some(Mark::Lsn(lsn)) => lsn,
        Some(Mark::Position(_)) => return Route::Primary,
    };
    let replicas = &shared.replicas;
    pick(
        replicas.len(),
        |i| replicas[i].has_reached(wanted),
        |i| replicas[i].in_flight.load(Relaxed),
        &mut shared.rng(),
    )
    .map_or(Route::Primary, Route::Replica)
}

/// The power of two choices among the `len` nodes that `candidate` accepts: two of them drawn
/// at random (uniformly, without replacement, in one pass: reservoir sampling), and of the
/// two the one with fewer requests in flight (`load`), a random one of the two on a tie.
/// `None` when no node is a candidate.
pub(crate) fn pick(
    len: usize,
    candidate: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> usize,
    rng: &mut SplitMix64,
) -> Option<usize> {
    let mut drawn = [usize::MAX; 2];
    let mut seen = 0u64;
    for i in (0..len).filter(|&i| candidate(i)) {
        if seen < 2 {
            drawn[seen as usize] = i;
        } else {
            let slot = rng.next_u64() % (seen + 1);
            if slot < 2 {
                drawn[slot as usize] = i;
            }
        }
        seen += 1;
    }
    match seen {
        0 => None,
        1 => Some(drawn[0]),
        _ => {
            let [a, b] = drawn;
            let (la, lb) = (load(a), load(b));
            Some(if la < lb {
                a
            } else if lb < la || rng.next_u64() & 1 == 1 {
                b
            } else {
                a
            })
        }
    }
}

/// Waits for `inner`'s readiness and calls it.
async fn call<S, Req>(inner: &mut S, routed: Routed<Req>) -> Result<S::Response, BoxError>
where
    S: Service<Routed<Req>>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    inner.call(routed).await.map_err(Into::into)
}

/// A connection of the primary's pool, waiting at most the probe timeout (a pool without a
/// wait timeout of its own would otherwise wait for ever when full or stopped).
async fn primary_client(shared: &Shared) -> Result<Object, PrimaryUnavailable> {
    match tokio::time::timeout(shared.options.probe_timeout, shared.primary.pool.get()).await {
        Ok(got) => got.map_err(PrimaryUnavailable::new),
        Err(_) => Err(PrimaryUnavailable::new(
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait),
        )),
    }
}

/// Sets the primary's insert position read now as `res`'s mark (nothing, and a count, when
/// it cannot be read: the request itself went through).
async fn mark_primary<Res: MarkResponse>(shared: &Shared, res: &mut Res) {
    match shared
        .primary
        .insert_lsn_now(shared.options.probe_timeout)
        .await
    {
        Ok(lsn) => res.set_mark(Mark::Lsn(lsn)),
        Err(e) => {
            shared.mark_errors.fetch_add(1, Relaxed);
            tracing::warn!(target: "tower_patterns::consistency", set = %shared.name, error = %e, "cannot read the primary's WAL position: the response carries no mark");
        }
    }
}

/// A write: on the primary, then marked with the primary's insert position.
pub(crate) async fn write<S, Req>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Req,
) -> Result<S::Response, BoxError>
where
    S: Service<Routed<Req>>,
    S::Error: Into<BoxError>,
    S::Response: MarkResponse,
{
    let client = primary_client(&shared).await?;
    let routed = Routed {
        request,
        client,
        node: Node::Primary,
    };
    let mut res = call(&mut inner, routed).await?;
    if res.wants_mark() {
        mark_primary(&shared, &mut res).await;
    }
    Ok(res)
}

/// A read on the chosen node (the primary when the chosen replica's pool fails), then marked
/// with where it was read when the set observes reads.
pub(crate) async fn read<S, Req>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Req,
    route: Route,
    at_least: Option<Lsn>,
    in_flight: Option<InFlight>,
) -> Result<S::Response, BoxError>
where
    S: Service<Routed<Req>>,
    S::Error: Into<BoxError>,
    S::Response: MarkResponse,
{
    let mut served_by = None;
    let mut client = None;
    if let Route::Replica(i) = route {
        let replica = &shared.replicas[i];
        let got = tokio::time::timeout(shared.options.probe_timeout, replica.pool.get()).await;
        match got {
            Ok(Ok(c)) if !fresh_and_behind(&c, at_least).await => {
                replica.reads.fetch_add(1, Relaxed);
                served_by = Some(i);
                client = Some((c, Node::Replica(replica.name.clone())));
            }
            Ok(Ok(_)) => {
                // A new connection to a node that has not replayed the mark: the replica
                // restarted since its last probe (or the address now leads elsewhere).
                replica.fallbacks.fetch_add(1, Relaxed);
                tracing::debug!(target: "tower_patterns::consistency", set = %shared.name, replica = %replica.name, "a new connection to the replica is behind the read's mark: read from the primary");
            }
            Ok(Err(e)) => {
                replica.mark_down();
                replica.fallbacks.fetch_add(1, Relaxed);
                tracing::warn!(target: "tower_patterns::consistency", set = %shared.name, replica = %replica.name, error = %e, "no connection to the replica: down until its next probe, read from the primary");
            }
            Err(_) => {
                // A full pool is busy, not down: this read goes to the primary.
                replica.fallbacks.fetch_add(1, Relaxed);
                tracing::debug!(target: "tower_patterns::consistency", set = %shared.name, replica = %replica.name, "no connection to the replica within the probe timeout: read from the primary");
            }
        }
    }
    let (client, node) = match client {
        Some(c) => c,
        None => {
            shared.primary_reads.fetch_add(1, Relaxed);
            (primary_client(&shared).await?, Node::Primary)
        }
    };
    let routed = Routed {
        request,
        client,
        node,
    };
    let result = call(&mut inner, routed).await;
    drop(in_flight);
    let mut res = result?;
    if shared.options.observe_reads && res.wants_mark() {
        match served_by {
            Some(i) => match shared.replicas[i]
                .replay_lsn_now(shared.options.probe_timeout)
                .await
            {
                Ok(lsn) => res.set_mark(Mark::Lsn(lsn)),
                Err(e) => {
                    shared.mark_errors.fetch_add(1, Relaxed);
                    tracing::warn!(target: "tower_patterns::consistency", set = %shared.name, replica = %shared.replicas[i].name, error = %e, "cannot read the replica's replay position: the response carries no mark");
                }
            },
            None => mark_primary(&shared, &mut res).await,
        }
    }
    Ok(res)
}

/// True when `client` is a connection its pool has just made (never recycled) and the node
/// behind it has not replayed `at_least`. The monitor's last probe says where a replica
/// stood; a connection that lived through that probe is to the same server process, but a
/// new one may reach a replica that restarted since (and replays again from an earlier
/// point) or another server behind the same address. Costs one query, on new connections
/// of reads that carry a mark only.
async fn fresh_and_behind(client: &Object, at_least: Option<Lsn>) -> bool {
    let Some(wanted) = at_least else {
        return false;
    };
    if Object::metrics(client).recycle_count > 0 {
        return false;
    }
    !matches!(wal::replay_lsn(client).await, Ok(replayed) if replayed >= wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        len: usize,
        candidate: impl Fn(usize) -> bool + Copy,
        load: impl Fn(usize) -> usize + Copy,
        draws: usize,
    ) -> Vec<usize> {
        let mut rng = SplitMix64::new(7);
        let mut n = vec![0; len];
        for _ in 0..draws {
            n[pick(len, candidate, load, &mut rng).expect("a candidate")] += 1;
        }
        n
    }

    #[test]
    fn no_candidate_is_none_and_one_is_always_it() {
        let mut rng = SplitMix64::new(1);
        assert_eq!(pick(0, |_| true, |_| 0, &mut rng), None);
        assert_eq!(pick(4, |_| false, |_| 0, &mut rng), None);
        assert_eq!(counts(4, |i| i == 2, |_| 9, 100), [0, 0, 100, 0]);
    }

    #[test]
    fn only_candidates_are_picked_and_equal_loads_share_evenly() {
        let n = counts(5, |i| i != 1 && i != 3, |_| 0, 30_000);
        assert_eq!((n[1], n[3]), (0, 0));
        for i in [0, 2, 4] {
            assert!((9_000..11_000).contains(&n[i]), "{n:?}");
        }
        // Two candidates of equal load: a tie is broken at random, not by order.
        let n = counts(2, |_| true, |_| 3, 10_000);
        assert!((4_500..5_500).contains(&n[0]), "{n:?}");
    }

    #[test]
    fn of_two_candidates_the_less_loaded_always_wins() {
        assert_eq!(counts(3, |i| i > 0, |i| [0, 5, 1][i], 1_000), [0, 0, 1_000]);
        // Of three, the busiest loses every pair it is drawn in: it is never picked, and the
        // idlest wins every pair it is in (two pairs of three).
        let n = counts(3, |_| true, |i| [7, 0, 3][i], 30_000);
        assert_eq!(n[0], 0, "{n:?}");
        assert!((19_000..21_000).contains(&n[1]), "{n:?}");
    }
}
