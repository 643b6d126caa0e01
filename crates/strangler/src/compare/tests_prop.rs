//! Properties of the comparison over arbitrary JSON documents.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

use super::*;

/// Any JSON document: every type, keys with the characters a pointer escapes, numbers of each
/// representation, nesting a few levels deep.
fn document() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e15f64..1e15).prop_map(Value::from),
        "[a-z0-9 é~/\"\\\\]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z0-9~/*]{0,3}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `v` written with the keys of every object in reverse order and extra whitespace, so the
/// bytes differ from serde_json's and only a structural comparison finds them equal.
fn reordered(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push_str("{ ");
            for (i, (k, v)) in m.iter().rev().enumerate() {
                if i > 0 {
                    out.push_str(" ,\n");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(" : ");
                reordered(v, out);
            }
            out.push_str(" }");
        }
        Value::Array(items) => {
            out.push_str("[ ");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                reordered(v, out);
            }
            out.push_str(" ]");
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Every leaf (a scalar, or an empty array or object) as the pointer to it, escaped here
/// independently of the code under test.
fn leaves(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = k.replace('~', "~0").replace('/', "~1");
                leaves(v, &format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, &format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at.to_owned()),
    }
}

/// A leaf changed so that it is certainly different as JSON.
fn changed(leaf: &Value) -> Value {
    match leaf {
        Value::Null => Value::Bool(true),
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i ^ 1),
            (None, Some(u)) => Value::from(u ^ 1),
            _ => Value::String(n.to_string()),
        },
        Value::String(s) => Value::String(format!("{s}!")),
        Value::Array(_) | Value::Object(_) => Value::Null,
    }
}

fn compare_texts(cmp: &Comparator, a: &str, b: &str) -> Differences {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    cmp.compare(
        &Answer::new(StatusCode::OK, &h, a.as_bytes()),
        &Answer::new(StatusCode::OK, &h, b.as_bytes()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(21),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A document equals itself, whatever order its keys are written in.
    #[test]
    fn a_document_equals_itself(doc in document()) {
        let mut other = String::new();
        reordered(&doc, &mut other);
        let d = compare_texts(&Comparator::default(), &doc.to_string(), &other);
        prop_assert!(d.is_empty(), "{}", d);
    }

    /// One changed leaf is one difference, at exactly its path.
    #[test]
    fn one_changed_leaf_is_reported_at_its_path(doc in document(), pick in any::<Index>()) {
        let mut paths = Vec::new();
        leaves(&doc, "", &mut paths);
        let path = pick.get(&paths);
        let mut new = doc.clone();
        let leaf = new.pointer_mut(path).expect("a leaf's pointer finds it");
        *leaf = changed(leaf);
        let mut text = String::new();
        reordered(&new, &mut text);
        let d = compare_texts(&Comparator::default(), &doc.to_string(), &text);
        prop_assert_eq!(d.len(), 1, "{}", d);
        let only = d.iter().next().unwrap();
        prop_assert_eq!(only.path(), path.as_str());
        prop_assert!(
            matches!(only.kind(), DifferenceKind::Body(BodyChange::Value | BodyChange::Type)),
            "{:?}", only.kind()
        );
    }

    /// Differences are their own noise: subtracting them leaves nothing.
    #[test]
    fn differences_are_their_own_noise(a in document(), b in document()) {
        let cmp = Comparator::builder().max_differences(usize::MAX).build().unwrap();
        let d = compare_texts(&cmp, &a.to_string(), &b.to_string());
        prop_assert!(d.without_noise(&d).is_empty(), "{}", d);
    }
}
