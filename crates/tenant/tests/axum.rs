//! The `Tenant` extractor behind the layer, in an axum router.
#![cfg(feature = "axum")]

use axum::{Router, error_handling::HandleErrorLayer, routing::get};
use http::{Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_patterns_tenant::{StaticTenants, TenancyLayer, Tenant};

async fn whoami(Tenant(tenant): Tenant) -> String {
    format!("{} {}", tenant.id(), tenant.plan())
}

#[tokio::test]
async fn the_extractor_sees_the_resolved_tenant_and_rejects_without_one() {
    let tenants = StaticTenants::from_toml("[[tenants]]\nid = \"acme\"\nplan = \"gold\"").unwrap();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(
                    tower_patterns_core::http::handle_error,
                ))
                .layer(
                    TenancyLayer::builder("test")
                        .store(tenants)
                        .header("x-tenant-id")
                        .allow_unverified()
                        .build()
                        .unwrap(),
                ),
        )
        .route("/unguarded", get(whoami));
    let call = |uri: &str, tenant: Option<&str>| {
        let mut req = Request::builder().uri(uri);
        if let Some(t) = tenant {
            req = req.header("x-tenant-id", t);
        }
        app.clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
    };
    let ok = call("/whoami", Some("acme")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body = axum::body::to_bytes(ok.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"acme gold");
    assert_eq!(
        call("/whoami", Some("nobody")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("/whoami", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // A route outside the layer: the extractor refuses rather than serving everyone.
    assert_eq!(
        call("/unguarded", Some("acme")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
