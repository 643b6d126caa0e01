//! What every index must do, run against each.

use super::{SagaIndex, status_word};
use crate::{SagaId, SagaStatus};

fn id(s: &str) -> SagaId {
    SagaId::new(s).unwrap()
}

pub(crate) async fn check(index: &impl SagaIndex) {
    // Registered sagas are leased to their starter.
    assert!(
        index
            .register(&id("a"), "trip", "o1", 100, 200)
            .await
            .unwrap()
    );
    assert!(
        index
            .register(&id("b"), "trip", "o1", 100, 150)
            .await
            .unwrap()
    );
    assert!(
        !index
            .register(&id("a"), "trip", "o2", 100, 300)
            .await
            .unwrap()
    );
    assert!(
        index
            .register(&id("c"), "order", "o2", 100, 400)
            .await
            .unwrap()
    );

    // Nothing is claimable before its lease expires.
    assert!(
        index
            .claim("o3", 140, 1_000, 10, false)
            .await
            .unwrap()
            .is_empty()
    );
    // At 150 b's lease has expired; oldest lease first, up to max.
    let got = index.claim("o3", 150, 1_000, 10, false).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id("b"));
    assert_eq!(got[0].previous_owner.as_deref(), Some("o1"));
    let got = index.claim("o3", 500, 1_000, 1, false).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].id,
        id("a"),
        "a's lease (200) is older than c's (400)"
    );

    // Renewing extends only the owner's open leases.
    let all = [id("a"), id("b"), id("c"), id("zz")];
    let mut held = index.renew("o3", &all, 500, 2_000).await.unwrap();
    held.sort();
    assert_eq!(held, [id("a"), id("b")]);
    assert!(
        index
            .renew("o1", &all, 500, 2_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        index
            .claim("o4", 1_500, 3_000, 10, false)
            .await
            .unwrap()
            .iter()
            .all(|c| c.id == id("c"))
    );

    // A released lease is claimable at once; one's own claim names no previous owner.
    index.release(&id("a"), "o3").await.unwrap();
    index.release(&id("b"), "o9").await.unwrap(); // not o9's: no change
    let got = index.claim("o3", 1_600, 3_000, 10, false).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id("a"));
    assert_eq!(got[0].previous_owner, None);

    // A restarted owner takes its own unexpired leases back when it asks to.
    assert!(
        index
            .claim("o3", 1_600, 3_000, 10, false)
            .await
            .unwrap()
            .is_empty()
    );
    let mine = index.claim("o3", 1_600, 3_000, 10, true).await.unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|c| c.previous_owner.is_none()));
    let own = index.claim("o4", 1_600, 3_000, 10, true).await.unwrap();
    assert_eq!(own.len(), 1, "c is o4's until 3000: {own:?}");
    assert_eq!(own[0].id, id("c"));

    // Stuck and ended sagas are not claimed; claim_one takes a stuck one for a retry.
    index
        .set_status(&id("a"), SagaStatus::Stuck, 1_700)
        .await
        .unwrap();
    index
        .set_status(&id("b"), SagaStatus::Completed, 1_800)
        .await
        .unwrap();
    index
        .set_status(&id("c"), SagaStatus::Compensating, 1_900)
        .await
        .unwrap();
    assert!(
        index
            .claim("o5", 10_000, 20_000, 10, false)
            .await
            .unwrap()
            .iter()
            .all(|c| c.id == id("c"))
    );
    assert_eq!(
        index
            .claim_one(&id("b"), "o5", 10_000, 20_000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        index
            .claim_one(&id("zz"), "o5", 10_000, 20_000)
            .await
            .unwrap(),
        None
    );
    // c is o5's now (claimed above): another cannot take it, o5 can again.
    assert_eq!(
        index
            .claim_one(&id("c"), "o6", 10_000, 20_000)
            .await
            .unwrap(),
        None
    );
    assert!(
        index
            .claim_one(&id("c"), "o5", 10_000, 20_000)
            .await
            .unwrap()
            .is_some()
    );
    let stuck = index
        .claim_one(&id("a"), "o5", 10_000, 20_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stuck.id, id("a"));

    let listed = index.list("stuck", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id("a"));
    assert_eq!(listed[0].saga_type, "trip");
    assert_eq!(listed[0].updated_ms, 1_700);
    let done = index
        .list(status_word(SagaStatus::Completed), 10)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].owner, None);
    let open = index.list("open", 10).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, id("c"));
    assert_eq!(open[0].owner.as_deref(), Some("o5"));
    assert_eq!(index.list("open", 0).await.unwrap().len(), 0);

    // A removed saga is unknown: registering it again works.
    index.remove(&id("c")).await.unwrap();
    assert!(index.list("open", 10).await.unwrap().is_empty());
    assert!(
        index
            .register(&id("c"), "order", "o7", 30_000, 31_000)
            .await
            .unwrap()
    );

    // Only the ids given are renewed: a held saga left out expires and is taken.
    assert!(
        index
            .register(&id("r1"), "trip", "o8", 40_000, 41_000)
            .await
            .unwrap()
    );
    assert!(
        index
            .register(&id("r2"), "trip", "o8", 40_000, 41_000)
            .await
            .unwrap()
    );
    let renewed = index
        .renew("o8", &[id("r1"), id("nope")], 40_500, 42_000)
        .await
        .unwrap();
    assert_eq!(renewed, [id("r1")]);
    let taken: Vec<SagaId> = index
        .claim("o9", 41_500, 43_000, 10, false)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(
        taken.contains(&id("r2")) && !taken.contains(&id("r1")),
        "{taken:?}"
    );
    assert!(
        index
            .renew("o8", &[], 41_600, 44_000)
            .await
            .unwrap()
            .is_empty()
    );
}
