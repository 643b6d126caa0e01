//! Routing a request to its shard allocates nothing (the shard's future is driven in place).

use std::convert::Infallible;

use tower::service_fn;
use tower_patterns_core::{KeyError, key::key_fn};
use tower_patterns_shard::{Directory, Jump, ShardRouter};
use tower_patterns_testkit::{
    alloc::{Alloc, Counter},
    call_now,
};

#[global_allocator]
static ALLOC: Alloc = Alloc;

#[test]
fn routing_allocates_nothing() {
    let shard = service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x)));
    let by_user = key_fn(|u: &u64| Ok::<_, KeyError>(*u));
    let mut jump = ShardRouter::builder("users")
        .shards(vec![shard; 16])
        .strategy(Jump::new(16))
        .key(by_user)
        .build()
        .unwrap();
    let mut directory = ShardRouter::builder("users")
        .shards(vec![shard; 16])
        .strategy(Directory::new(16).unwrap())
        .key(by_user)
        .build()
        .unwrap();
    for i in 0..1_000 {
        call_now(&mut jump, i).unwrap();
        call_now(&mut directory, i).unwrap();
    }
    let counter = Counter::start();
    let allocations = counter.fewest(3, || {
        for i in 0..100_000 {
            assert_eq!(call_now(&mut jump, i).unwrap(), i);
            assert_eq!(call_now(&mut directory, i).unwrap(), i);
        }
    });
    assert_eq!(allocations, 0, "allocations on 200,000 routed calls");
}
