//! The axum extractor.

use axum_core::{
    extract::FromRequestParts,
    response::{IntoResponse, Response},
};
use http::request::Parts;
use tower_patterns_core::tenant::{TenantError, TenantErrorKind};

use crate::TenantContext;

/// The request's tenant, as a [`TenancyLayer`](crate::TenancyLayer) resolved it.
///
/// Without the layer in front of the route, extraction fails with 401 (no tenant), so a
/// route that forgot the layer serves no one rather than everyone.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_patterns_tenant::Tenant;
///
/// async fn whoami(Tenant(tenant): Tenant) -> String {
///     format!("{} on {}", tenant.id(), tenant.plan())
/// }
/// let app: Router = Router::new().route("/whoami", get(whoami));
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct Tenant(pub TenantContext);

/// Why [`Tenant`] could not be extracted: answered with the error's status and public
/// message.
#[derive(Debug)]
pub struct TenantRejection(pub TenantError);

impl IntoResponse for TenantRejection {
    fn into_response(self) -> Response {
        let res: http::Response<String> = tower_patterns_core::http::error_response(&self.0);
        res.map(axum_core::body::Body::from)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = TenantRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TenantContext>()
            .cloned()
            .map(Tenant)
            .ok_or_else(|| {
                TenantRejection(TenantError::new(
                    TenantErrorKind::MissingCredentials,
                    "no tenant resolved for this request",
                ))
            })
    }
}
