//! Unit tests of the comparison: each kind of difference, paths, normalisers, noise.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::*;

pub(super) fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

/// Compares two JSON bodies (200, `application/json`).
pub(super) fn cmp_json(cmp: &Comparator, legacy: &Value, new: &Value) -> Differences {
    let h = json_headers();
    let (a, b) = (legacy.to_string(), new.to_string());
    cmp.compare(
        &Answer::new(StatusCode::OK, &h, a.as_bytes()),
        &Answer::new(StatusCode::OK, &h, b.as_bytes()),
    )
}

/// `(kind, path)` of each difference.
pub(super) fn found(d: &Differences) -> Vec<(DifferenceKind, String)> {
    d.iter()
        .map(|d| (d.kind().clone(), d.path().to_owned()))
        .collect()
}

pub(super) fn body(change: BodyChange, path: &str) -> (DifferenceKind, String) {
    (DifferenceKind::Body(change), path.to_owned())
}

#[test]
fn equal_answers_have_no_differences() {
    let cmp = Comparator::builder()
        .header(header::CONTENT_TYPE)
        .build()
        .unwrap();
    let v = json!({"a": [1, {"b": null}], "c": "x"});
    let d = cmp_json(&cmp, &v, &v);
    assert!(d.is_empty());
    assert_eq!(d.len(), 0);
    assert_eq!(d.to_string(), "no differences");
}

#[test]
fn the_status_is_always_compared() {
    let h = HeaderMap::new();
    let d = Comparator::default().compare(
        &Answer::new(StatusCode::OK, &h, b"x"),
        &Answer::new(StatusCode::INTERNAL_SERVER_ERROR, &h, b"x"),
    );
    assert_eq!(found(&d), vec![(DifferenceKind::Status, String::new())]);
    let first = d.iter().next().unwrap();
    assert_eq!((first.legacy(), first.new()), ("200", "500"));
    assert_eq!(d.to_string(), "1 difference: status: 200 -> 500");
}

#[test]
fn only_chosen_headers_are_compared_with_all_their_values() {
    let cmp = Comparator::builder()
        .header(header::CACHE_CONTROL)
        .header(header::ETAG)
        .build()
        .unwrap();
    let mut a = HeaderMap::new();
    a.insert(header::SERVER, HeaderValue::from_static("monolith"));
    a.append(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    a.append(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    a.insert(header::ETAG, HeaderValue::from_static("\"1\""));
    let mut b = HeaderMap::new();
    b.insert(header::SERVER, HeaderValue::from_static("users"));
    b.append(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &a, b""),
        &Answer::new(StatusCode::OK, &b, b""),
    );
    assert_eq!(
        found(&d),
        vec![
            (DifferenceKind::Header(header::CACHE_CONTROL), String::new()),
            (DifferenceKind::Header(header::ETAG), String::new()),
        ]
    );
    let shown: Vec<_> = d.iter().map(|d| (d.legacy(), d.new())).collect();
    assert_eq!(
        shown,
        vec![("no-store, private", "no-store"), ("\"1\"", "(missing)")]
    );
    // The same values in the same order are equal.
    assert!(
        cmp.compare(
            &Answer::new(StatusCode::OK, &a, b""),
            &Answer::new(StatusCode::OK, &a, b"")
        )
        .is_empty()
    );
}

#[test]
fn each_body_change_is_reported_at_its_path() {
    let cmp = Comparator::default();
    let legacy = json!({
        "gone": 1, "kind": "x", "n": 1, "s": "a", "t": true,
        "list": [1, 2, 3], "deep": {"k/e~y": [0, {"v": 1}]}
    });
    let new = json!({
        "kind": 5, "n": 2, "s": "b", "t": false, "added": null,
        "list": [1, 9], "deep": {"k/e~y": [0, {"v": 2}]}
    });
    let d = cmp_json(&cmp, &legacy, &new);
    let mut got = found(&d);
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            body(BodyChange::Extra, "/added"),
            body(BodyChange::Value, "/deep/k~1e~0y/1/v"),
            body(BodyChange::Missing, "/gone"),
            body(BodyChange::Type, "/kind"),
            body(BodyChange::Length, "/list"),
            body(BodyChange::Value, "/list/1"),
            body(BodyChange::Value, "/n"),
            body(BodyChange::Value, "/s"),
            body(BodyChange::Value, "/t"),
        ]
    );
    let show = |path: &str| {
        let d = d.iter().find(|d| d.path() == path).unwrap();
        (d.legacy().to_owned(), d.new().to_owned())
    };
    assert_eq!(show("/gone"), ("1".into(), "(missing)".into()));
    assert_eq!(show("/added"), ("(missing)".into(), "null".into()));
    assert_eq!(show("/kind"), ("\"x\"".into(), "5".into()));
    assert_eq!(show("/list"), ("3 elements".into(), "2 elements".into()));
}

#[test]
fn key_order_and_number_spelling_do_not_matter() {
    let h = json_headers();
    let a = br#"{"a": 1, "b": [1.0, 2e0, -0], "c": {"x": 1, "y": 2}}"#;
    let b = br#"{"c":{"y":2,"x":1.00},"b":[1,2,0.0],"a":1.0}"#;
    let d = Comparator::default().compare(
        &Answer::new(StatusCode::OK, &h, a),
        &Answer::new(StatusCode::OK, &h, b),
    );
    assert!(d.is_empty(), "{d}");
}

#[test]
fn ignored_paths_with_wildcards_are_skipped_even_when_missing() {
    let cmp = Comparator::builder()
        .ignore("/meta/request_id")
        .ignore("/items/*/etag")
        .ignore("/*/trace")
        .build()
        .unwrap();
    let legacy = json!({
        "meta": {"request_id": "a", "trace": 1, "v": 1},
        "items": [{"etag": "1", "n": 1}, {"etag": "2", "n": 2}],
        "x": {"trace": 5}
    });
    let new = json!({
        "meta": {"v": 1},
        "items": [{"etag": "3", "n": 1}, {"n": 3, "etag": "4"}],
        "x": {}
    });
    assert_eq!(
        found(&cmp_json(&cmp, &legacy, &new)),
        vec![body(BodyChange::Value, "/items/1/n")]
    );
    // An ignored key the new side adds is not reported either.
    assert!(
        cmp_json(&cmp, &new, &legacy)
            .iter()
            .all(|d| d.path() == "/items/1/n")
    );
    // A literal segment is not a wildcard.
    let d = cmp_json(
        &cmp,
        &json!({"items": [], "meta": {"request_id": 1, "other": 1}}),
        &json!({"items": [], "meta": {"request_id": 2, "other": 2}}),
    );
    assert_eq!(found(&d), vec![body(BodyChange::Value, "/meta/other")]);
}

#[test]
fn ignoring_the_root_turns_the_body_comparison_off() {
    let cmp = Comparator::builder().ignore("").build().unwrap();
    let h = HeaderMap::new();
    let d = cmp.compare(
        &Answer::new(StatusCode::OK, &h, b"<html>a"),
        &Answer::new(StatusCode::CREATED, &h, b"<html>b"),
    );
    assert_eq!(found(&d), vec![(DifferenceKind::Status, String::new())]);
}

#[test]
fn uuids_normalised_under_a_wildcard_only() {
    let cmp = Comparator::builder()
        .normalise("/items/*/id", Normaliser::Uuid)
        .build()
        .unwrap();
    let (u1, u2) = (
        "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "0b8a4a3e-5f7c-4d7e-9c55-2f1e7c1d0a11",
    );
    let legacy = json!({"items": [{"id": u1}, {"id": u1}, {"id": u1}], "owner": u1});
    let new = json!({"items": [{"id": u2}, {"id": "not-a-uuid"}, {"id": u1}], "owner": u2});
    assert_eq!(
        found(&cmp_json(&cmp, &legacy, &new)),
        vec![
            body(BodyChange::Value, "/items/1/id"),
            body(BodyChange::Value, "/owner")
        ]
    );
    // Given for a subtree, it holds at every depth below, through other paths' places too.
    let subtree = Comparator::builder()
        .normalise("/items", Normaliser::Uuid)
        .ignore("/items/*/etag")
        .build()
        .unwrap();
    assert_eq!(
        found(&cmp_json(&subtree, &legacy, &new)),
        vec![
            body(BodyChange::Value, "/items/1/id"),
            body(BodyChange::Value, "/owner")
        ]
    );
}

#[test]
fn built_in_normalisers_cover_their_subtree() {
    let cmp = Comparator::builder()
        .normalise("", Normaliser::Timestamp)
        .normalise("/totals", Normaliser::Tolerance(0.01))
        // Places of other paths everywhere: the normalisers still hold through them.
        .ignore("/*/*/skip")
        .build()
        .unwrap();
    let legacy = json!({"at": "2024-05-01T12:00:00Z", "log": [{"at": "2024-05-01T12:00:00.5+02:00"}],
        "totals": {"sum": 10.0, "tax": [0.333]}, "price": 1.0});
    let new = json!({"at": "2024-06-01 08:00:00Z", "log": [{"at": "2024-05-01T13:00:00Z"}],
        "totals": {"sum": 10.004, "tax": [0.345]}, "price": 1.001});
    assert_eq!(
        found(&cmp_json(&cmp, &legacy, &new)),
        vec![
            body(BodyChange::Value, "/price"),
            body(BodyChange::Value, "/totals/tax/0"),
        ]
    );
}

#[test]
fn a_custom_normaliser_sees_the_value_at_its_path_on_both_sides() {
    let sorted = Normaliser::custom(|v: &Value| match v {
        Value::Array(items) => {
            let mut items = items.clone();
            items.sort_by_key(ToString::to_string);
            Value::Array(items)
        }
        other => other.clone(),
    });
    let cmp = Comparator::builder()
        .normalise("/users/*/tags", sorted)
        .build()
        .unwrap();
    let legacy = json!({"users": [{"tags": ["b", "a"]}, {"tags": ["x"]}], "tags": ["b", "a"]});
    let new = json!({"users": [{"tags": ["a", "b"]}, {"tags": ["y"]}], "tags": ["a", "b"]});
    assert_eq!(
        found(&cmp_json(&cmp, &legacy, &new)),
        vec![
            body(BodyChange::Value, "/tags/0"),
            body(BodyChange::Value, "/tags/1"),
            body(BodyChange::Value, "/users/1/tags/0"),
        ]
    );
}

/// A noisy timestamp and nonce (legacy differs from itself there) are not reported, while a
/// planted mismatch is.
#[test]
fn noise_is_subtracted_and_a_planted_mismatch_stays() {
    let cmp = Comparator::default();
    let answer = |at: &str, nonce: u32, price: u32| {
        json!({"at": at, "nonce": nonce, "items": [
            {"sku": "a", "price": price, "fetched": at},
            {"sku": "b", "price": 3, "fetched": at},
        ]})
    };
    let legacy = answer("2024-05-01T12:00:00Z", 17, 10);
    let legacy2 = answer("2024-05-01T12:00:02Z", 912, 10);
    let noise = cmp_json(&cmp, &legacy, &legacy2);
    assert_eq!(noise.len(), 4);

    let equal_new = answer("2024-05-01T12:00:05Z", 5, 10);
    let raw = cmp_json(&cmp, &legacy, &equal_new);
    assert_eq!(raw.len(), 4);
    assert!(raw.without_noise(&noise).is_empty());

    let planted = answer("2024-05-01T12:00:05Z", 5, 11);
    let real = cmp_json(&cmp, &legacy, &planted).without_noise(&noise);
    assert_eq!(
        found(&real),
        vec![body(BodyChange::Value, "/items/0/price")]
    );
    // The raw differences are still there.
    assert_eq!(cmp_json(&cmp, &legacy, &planted).len(), 5);
}

#[test]
fn noise_in_one_array_element_covers_every_element_and_below() {
    let cmp = Comparator::default();
    let legacy =
        json!({"items": [{"ts": 1, "n": 1}, {"ts": 1, "n": 1}, {"ts": 1, "n": 1}], "m": {"a": 1}});
    let legacy2 =
        json!({"items": [{"ts": 2, "n": 1}, {"ts": 1, "n": 1}, {"ts": 1, "n": 1}], "m": 0});
    let new = json!({"items": [{"ts": 1, "n": 1}, {"ts": 5, "n": 1}, {"ts": {"s": 9}, "n": 2}], "m": {"a": 2}});
    let noise = cmp_json(&cmp, &legacy, &legacy2);
    assert_eq!(
        found(&noise),
        vec![
            body(BodyChange::Value, "/items/0/ts"),
            body(BodyChange::Type, "/m")
        ]
    );
    let real = cmp_json(&cmp, &legacy, &new).without_noise(&noise);
    assert_eq!(found(&real), vec![body(BodyChange::Value, "/items/2/n")]);
}

#[test]
fn status_header_and_whole_body_noise() {
    let cmp = Comparator::builder().header(header::ETAG).build().unwrap();
    let mut h1 = HeaderMap::new();
    h1.insert(header::ETAG, HeaderValue::from_static("1"));
    let mut h2 = HeaderMap::new();
    h2.insert(header::ETAG, HeaderValue::from_static("2"));
    let legacy = Answer::new(StatusCode::OK, &h1, b"<p>1</p>");
    let legacy2 = Answer::new(StatusCode::OK, &h2, b"<p>2</p>");
    let new = Answer::new(StatusCode::ACCEPTED, &h2, b"<p>3</p>");
    let noise = cmp.compare(&legacy, &legacy2);
    let real = cmp.compare(&legacy, &new).without_noise(&noise);
    assert_eq!(found(&real), vec![(DifferenceKind::Status, String::new())]);
    // With no noise, everything stays.
    assert_eq!(
        cmp.compare(&legacy, &new)
            .without_noise(&Differences::none())
            .len(),
        3
    );
}
