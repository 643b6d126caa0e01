//! A store's error maps to 503 once a registry is built, without any tenancy layer (its own
//! test binary: core's registry of error mappings is global to a process).

use http::StatusCode;
use tower_patterns_core::{BoxError, http::classify_error};
use tower_patterns_tenant::{Registry, StaticTenants, StoreError};

#[test]
fn a_store_error_maps_to_503_once_a_registry_is_built() {
    let err: BoxError = StoreError("connection refused".into()).into();
    assert_eq!(
        classify_error(&*err).status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "nothing registered yet"
    );
    let _registry = Registry::new(StaticTenants::default());
    let mapping = classify_error(&*err);
    assert_eq!(mapping.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !mapping.message.contains("refused"),
        "no internals in the phrase"
    );
}
