//! The mappings are registered when a store is built: before, a conflict is a plain 500.
//! (Its own test binary, so no other test registers them first.)

use http::StatusCode;
use tower_patterns_core::{BoxError, http::classify_error};
use tower_patterns_eventstore::{Error, ExpectedVersion, InMemoryStore};

#[test]
fn building_a_store_registers_the_mappings() {
    let conflict: BoxError = Box::new(Error::WrongExpectedVersion {
        stream: "account-1".into(),
        expected: ExpectedVersion::NoStream,
        actual: 1,
    });
    assert_eq!(
        classify_error(&*conflict).status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "not registered yet"
    );
    let _store = InMemoryStore::new();
    assert_eq!(classify_error(&*conflict).status, StatusCode::CONFLICT);
}
