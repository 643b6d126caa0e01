//! How the event store's errors map to HTTP through core's error mapping.

use std::sync::Arc;

use http::StatusCode;
use tower_patterns_core::{BoxError, ConfigError, http::classify_error};
use tower_patterns_eventstore::{
    Error, EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore, Repository,
    RepositoryError,
};

fn mapped(err: impl std::error::Error + Send + Sync + 'static) -> (StatusCode, &'static str) {
    let boxed: BoxError = Box::new(err);
    let mapping = classify_error(&*boxed);
    (mapping.status, mapping.message)
}

#[tokio::test]
async fn a_lost_append_is_409_with_a_fixed_phrase() {
    let store = InMemoryStore::new();
    let opened = EventData::json("Opened", &serde_json::json!({})).unwrap();
    store
        .append("account-1", ExpectedVersion::NoStream, vec![opened])
        .await
        .unwrap();
    let late = EventData::json("Opened", &serde_json::json!({})).unwrap();
    let err = store
        .append("account-1", ExpectedVersion::NoStream, vec![late])
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(mapped(err), (StatusCode::CONFLICT, "concurrent update"));
}

#[test]
fn clashing_event_ids_are_409_and_bad_data_stays_500() {
    InMemoryStore::new(); // registers the mappings
    let partial = Error::PartialDuplicate {
        stream: "account-1".into(),
    };
    assert_eq!(
        mapped(partial),
        (StatusCode::CONFLICT, "conflicting event ids")
    );
    let elsewhere = Error::DuplicateElsewhere {
        id: uuid::Uuid::nil(),
        stream: "account-2".into(),
    };
    assert_eq!(
        mapped(elsewhere),
        (StatusCode::CONFLICT, "conflicting event ids")
    );

    let internal = (StatusCode::INTERNAL_SERVER_ERROR, "internal server error");
    let corrupt = Error::Corrupt {
        stream: "account-1".into(),
        version: 3,
        position: GlobalPosition::START,
        reason: "payload: expected value at line 1".into(),
    };
    assert_eq!(
        mapped(corrupt),
        internal,
        "a corrupt event is a 500 and its details stay out"
    );
    assert_eq!(mapped(Error::Invalid("empty stream id".into())), internal);
    assert_eq!(mapped(Error::Backend("connection reset".into())), internal);
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Counter(u64);

#[derive(serde::Serialize, serde::Deserialize)]
enum Counted {
    Added,
}

impl tower_patterns_eventstore::DomainEvent for Counted {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

impl tower_patterns_eventstore::Aggregate for Counter {
    type Command = ();
    type Event = Counted;
    type Error = ConfigError;

    fn handle(&self, (): &()) -> Result<Vec<Counted>, ConfigError> {
        Ok(vec![Counted::Added])
    }

    fn apply(&mut self, _: &Counted) {
        self.0 += 1;
    }
}

#[test]
fn repository_errors_are_409_422_or_as_the_store_error() {
    let _: Repository<Counter, _> = Repository::new(Arc::new(InMemoryStore::new()), "counter-");
    let conflict = RepositoryError::<ConfigError>::Conflict {
        stream: "counter-1".into(),
        attempts: 4,
    };
    assert_eq!(
        mapped(conflict),
        (StatusCode::CONFLICT, "concurrent update")
    );

    let lost = RepositoryError::<ConfigError>::Store(Error::WrongExpectedVersion {
        stream: "counter-1".into(),
        expected: ExpectedVersion::Exact(1),
        actual: 2,
    });
    assert_eq!(mapped(lost), (StatusCode::CONFLICT, "concurrent update"));
    let corrupt = RepositoryError::<ConfigError>::Store(Error::Encode("x".into()));
    assert_eq!(mapped(corrupt).0, StatusCode::INTERNAL_SERVER_ERROR);

    let refused = RepositoryError::Domain(ConfigError::new("amount", "must be positive"));
    assert_eq!(
        mapped(refused),
        (StatusCode::UNPROCESSABLE_ENTITY, "command refused"),
        "the domain's words stay out of the body"
    );
    // A domain error with a mapping of its own keeps it (the repository registered as a
    // repository of an aggregate refusing with `OutOfStock` would).
    tower_patterns_core::http::register_error_response::<RepositoryError<OutOfStock>>();
    tower_patterns_core::http::register_error_response::<OutOfStock>();
    assert_eq!(
        mapped(RepositoryError::Domain(OutOfStock)),
        (StatusCode::CONFLICT, "out of stock")
    );
}

#[derive(Debug)]
struct OutOfStock;

impl std::fmt::Display for OutOfStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sku 42: 0 left")
    }
}

impl std::error::Error for OutOfStock {}

impl tower_patterns_core::http::IntoErrorResponse for OutOfStock {
    fn error_mapping(&self) -> tower_patterns_core::http::ErrorMapping {
        tower_patterns_core::http::ErrorMapping::new(StatusCode::CONFLICT, "out of stock")
    }
}
