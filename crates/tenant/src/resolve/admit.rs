//! Admission: an active tenant's record goes into the request's extensions.

use std::{future::Future, pin::Pin, sync::Arc};

use http::Request;
use tower_patterns_core::tenant::{TenantError, TenantErrorKind};

use super::context::TenantContext;
use crate::registry::{TenantRecord, TenantStatus};

/// The registry's answer, refused unless it is an active tenant.
pub(super) fn admitted(
    record: Option<Arc<TenantRecord>>,
) -> Result<Arc<TenantRecord>, TenantError> {
    let record =
        record.ok_or_else(|| TenantError::new(TenantErrorKind::Unknown, "not in the registry"))?;
    if record.status == TenantStatus::Suspended {
        return Err(TenantError::new(
            TenantErrorKind::Suspended,
            format!("{} is suspended", record.id),
        ));
    }
    Ok(record)
}

/// Puts an admitted tenant in the request's extensions.
pub(super) fn admit<B>(req: &mut Request<B>, record: Arc<TenantRecord>) {
    req.extensions_mut().insert(record.id.clone());
    req.extensions_mut().insert(TenantContext { record });
}

/// A registry lookup the request waits for: an admitted tenant, or the refusal (counted).
pub(super) type Lookup =
    Pin<Box<dyn Future<Output = Result<Arc<TenantRecord>, TenantError>> + Send>>;
