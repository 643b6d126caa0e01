//! Comparing two equal answers, shadow mode's common case, allocates nothing.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use tower_patterns_strangler::compare::{Answer, Comparator, Normaliser};
use tower_patterns_testkit::alloc::{Alloc, Counter};

#[global_allocator]
static ALLOC: Alloc = Alloc;

#[test]
fn equal_answers_allocate_nothing() {
    let cmp = Comparator::builder()
        .header(header::CONTENT_TYPE)
        .header(header::ETAG)
        .ignore("/meta/request_id")
        .normalise("/items/*/id", Normaliser::Uuid)
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, HeaderValue::from_static("\"7\""));
    let body = br#"{"items":[{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","n":1}],"meta":{"request_id":"a"}}"#.to_vec();
    let again = body.clone();
    let (legacy, new) = (
        Answer::new(StatusCode::OK, &headers, &body),
        Answer::new(StatusCode::OK, &headers, &again),
    );
    let counter = Counter::start();
    let allocated = counter.fewest(5, || {
        let d = cmp.compare(&legacy, &new);
        assert!(d.is_empty());
        std::hint::black_box(d);
    });
    assert_eq!(allocated, 0);
}
