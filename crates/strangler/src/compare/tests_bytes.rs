//! Unit tests of the comparison: bodies compared as bytes, bad input, limits, settings.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::tests::{body, cmp_json, found, json_headers};
use super::*;

#[test]
fn non_json_bodies_are_compared_as_bytes() {
    let cmp = Comparator::default();
    let mut html = HeaderMap::new();
    html.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    let json = json_headers();
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &html, b"<p>hello</p>"),
        &Answer::new(StatusCode::OK, &html, b"<p>help</p>"),
    );
    assert_eq!(
        found(&d),
        vec![(DifferenceKind::Bytes { offset: 6 }, String::new())]
    );
    let first = d.iter().next().unwrap();
    assert_eq!(first.legacy(), r#"12 bytes: "lo</p>""#);
    assert_eq!(first.new(), r#"11 bytes: "p</p>""#);
    // JSON text under a non-JSON type is bytes too.
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &html, br#"{"a":1}"#),
        &Answer::new(StatusCode::OK, &html, br#"{"a": 1}"#),
    );
    assert_eq!(
        found(&d),
        vec![(DifferenceKind::Bytes { offset: 5 }, String::new())]
    );
    // One JSON side and one HTML side: bytes.
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &json, br#"{"a":1}"#),
        &Answer::new(StatusCode::OK, &html, b"<p>oops</p>"),
    );
    assert_eq!(
        found(&d),
        vec![(DifferenceKind::Bytes { offset: 0 }, String::new())]
    );
    // A prefix: the offset is the shorter length.
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &html, b"abc"),
        &Answer::new(StatusCode::OK, &html, b"abcdef"),
    );
    assert_eq!(
        found(&d),
        vec![(DifferenceKind::Bytes { offset: 3 }, String::new())]
    );
}

#[test]
fn json_is_recognised_by_type_or_by_its_first_byte() {
    let cmp = Comparator::default();
    let none = HeaderMap::new();
    let mut problem = HeaderMap::new();
    problem.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("Application/Problem+JSON; charset=utf-8"),
    );
    for h in [&none, &problem] {
        let d = cmp.compare(
            &Answer::new(StatusCode::OK, h, b" \n{\"a\":1,\"b\":2}"),
            &Answer::new(StatusCode::OK, h, b"{\"b\":2,\"a\":3}"),
        );
        assert_eq!(found(&d), vec![body(BodyChange::Value, "/a")]);
    }
    // No type and not starting like JSON: bytes, even if it would parse.
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &none, b"1"),
        &Answer::new(StatusCode::OK, &none, b"1.0"),
    );
    assert!(matches!(
        d.iter().next().unwrap().kind(),
        DifferenceKind::Bytes { .. }
    ));
}

#[test]
fn invalid_json_and_invalid_utf8_are_compared_as_bytes() {
    let cmp = Comparator::default();
    let h = json_headers();
    for (a, b) in [
        (&br#"{"a":1}"#[..], &br#"{"a":1"#[..]),
        (br#"{"a":"#, br#"{"a":2}"#),
        (b"{\"a\":\"\xff\"}", b"{\"a\":\"\xfe\"}"),
    ] {
        let d = cmp.compare(
            &Answer::new(StatusCode::OK, &h, a),
            &Answer::new(StatusCode::OK, &h, b),
        );
        assert_eq!(d.len(), 1, "{d}");
        assert!(matches!(
            d.iter().next().unwrap().kind(),
            DifferenceKind::Bytes { .. }
        ));
    }
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &h, b"\xff\x00"),
        &Answer::new(StatusCode::OK, &h, b"\xfe"),
    );
    assert_eq!(
        d.to_string(),
        r#"1 difference: bytes at 0: 2 bytes: "\xff\x00" -> 1 byte: "\xfe""#
    );
}

#[test]
fn deep_nesting_never_panics() {
    let cmp = Comparator::default();
    let h = json_headers();
    // Far deeper than the parser follows: bytes.
    let a = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let b = format!("{}2{}", "[".repeat(100_000), "]".repeat(100_000));
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &h, a.as_bytes()),
        &Answer::new(StatusCode::OK, &h, b.as_bytes()),
    );
    assert_eq!(
        found(&d),
        vec![(DifferenceKind::Bytes { offset: 100_000 }, String::new())]
    );
    // One level more than the parser follows: bytes.
    let a = format!("{}1{}", "[".repeat(128), "]".repeat(128));
    let b = format!("{}2{}", "[".repeat(128), "]".repeat(128));
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &h, a.as_bytes()),
        &Answer::new(StatusCode::OK, &h, b.as_bytes()),
    );
    assert_eq!(
        found(&d),
        vec![(DifferenceKind::Bytes { offset: 128 }, String::new())]
    );
    // As deep as the parser follows: compared structurally, at the full path.
    let a = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    let b = format!("{}2{}", "[".repeat(127), "]".repeat(127));
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &h, a.as_bytes()),
        &Answer::new(StatusCode::OK, &h, b.as_bytes()),
    );
    assert_eq!(found(&d), vec![body(BodyChange::Value, &"/0".repeat(127))]);
}

#[test]
fn a_custom_normaliser_nesting_too_deep_is_reported_not_followed() {
    let deep = Normaliser::custom(|_: &Value| {
        let mut v = json!(1);
        for _ in 0..300 {
            v = json!([v]);
        }
        v
    });
    let cmp = Comparator::builder().normalise("/x", deep).build().unwrap();
    let d = cmp_json(&cmp, &json!({"x": 1}), &json!({"x": 2}));
    assert_eq!(
        found(&d),
        vec![body(
            BodyChange::TooDeep,
            &format!("/x{}", "/0".repeat(127))
        )]
    );
}

#[test]
fn bodies_over_max_body_are_compared_as_bytes_with_hashes() {
    let cmp = Comparator::builder().max_body(8).build().unwrap();
    let h = json_headers();
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &h, br#"{"a":1,"b":2}"#),
        &Answer::new(StatusCode::OK, &h, br#"{"b":2,"a":1}"#),
    );
    assert_eq!(
        found(&d),
        vec![(DifferenceKind::Bytes { offset: 2 }, String::new())]
    );
    assert!(
        d.iter()
            .next()
            .unwrap()
            .legacy()
            .starts_with("13 bytes, xxh3 "),
        "{d}"
    );
    // Under the limit the same bodies are equal.
    let d = Comparator::default().compare(
        &Answer::new(StatusCode::OK, &h, br#"{"a":1,"b":2}"#),
        &Answer::new(StatusCode::OK, &h, br#"{"b":2,"a":1}"#),
    );
    assert!(d.is_empty());
}

#[test]
fn differences_beyond_the_limit_are_counted_not_kept() {
    let cmp = Comparator::builder().max_differences(2).build().unwrap();
    let d = cmp_json(&cmp, &json!([1, 2, 3, 4, 5]), &json!([0, 0, 0, 0, 0]));
    assert_eq!((d.len(), d.omitted()), (2, 3));
    assert!(!d.is_empty());
    assert_eq!(
        d.to_string(),
        "5 differences: body /0 value: 1 -> 0; body /1 value: 2 -> 0; and 3 more"
    );
    let none = Comparator::builder().max_differences(0).build().unwrap();
    let d = cmp_json(&none, &json!(1), &json!(2));
    assert_eq!((d.len(), d.omitted(), d.is_empty()), (0, 1, false));
}

#[test]
fn shown_values_are_cut_short() {
    let long = "é".repeat(1000);
    let d = cmp_json(
        &Comparator::default(),
        &json!({"a": long}),
        &json!({"a": [long, long]}),
    );
    let first = d.iter().next().unwrap();
    assert_eq!(first.legacy().chars().count(), SHOWN + 1);
    assert!(first.legacy().ends_with('…'));
    assert!(first.new().starts_with("[\"éé"));
    assert_eq!(first.new().chars().count(), SHOWN + 1);
    let d = cmp_json(&Comparator::default(), &json!("short"), &json!(0));
    assert_eq!(
        d.to_string(),
        r#"1 difference: body (root) type: "short" -> 0"#
    );
}

const SHOWN: usize = super::diff::SHOWN_CHARS;

#[test]
fn bad_paths_fail_build_naming_the_setting() {
    let err = Comparator::builder().ignore("meta").build().unwrap_err();
    assert_eq!(err.field(), "ignore");
    let err = Comparator::builder()
        .normalise("/a~2", Normaliser::Uuid)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "normalise");
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        let err = Comparator::builder()
            .normalise("/a", Normaliser::Tolerance(bad))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "normalise");
    }
    // Wildcards at every depth of many paths would compile into too many cases.
    let mut many = Comparator::builder();
    for i in 0..16 {
        let path: String = (0..16)
            .map(|j| {
                if j == i {
                    "/k".to_owned()
                } else {
                    "/*".to_owned()
                }
            })
            .collect();
        many = many.ignore(path);
    }
    assert_eq!(many.build().unwrap_err().field(), "ignore/normalise");
}

#[test]
fn the_comparator_is_cheap_to_share() {
    fn shared<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    shared::<Comparator>();
    shared::<Differences>();
    let cmp = Comparator::builder()
        .header(header::ETAG)
        .ignore("/a")
        .normalise("/b", Normaliser::custom(Value::clone))
        .build()
        .unwrap();
    let text = format!("{cmp:?}");
    assert!(
        text.contains("etag")
            && text.contains("ignore")
            && text.contains("/a")
            && text.contains("Custom(..)"),
        "{text}"
    );
}
