//! The service: resolve the tenant, from the registry's cache at once or after a lookup, then
//! call the inner service.

use std::{
    convert::Infallible,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use tower_patterns_core::{
    BoxError,
    check::CheckThenCall,
    tenant::{TenantError, TenantErrorKind},
};
use tower_service::Service;

use super::{
    admit::{Lookup, admitted},
    context::ClientIp,
    future::{Admit, ResponseFuture},
    handle::TenancyHandle,
    resolver::Resolver,
    sources::{Found, Named, unknown_key},
};
use crate::TenantStore;

/// The service of [`TenancyLayer`](super::TenancyLayer).
pub struct Tenancy<Svc, S> {
    pub(super) inner: Svc,
    pub(super) resolver: Arc<Resolver<S>>,
}

impl<Svc: Clone, S> Clone for Tenancy<Svc, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            resolver: self.resolver.clone(),
        }
    }
}

impl<Svc: fmt::Debug, S> fmt::Debug for Tenancy<Svc, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenancy")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Svc, S> Tenancy<Svc, S> {
    /// A reference to the inner service.
    pub const fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub const fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> Svc {
        self.inner
    }

    /// The handle of the layer that made this service.
    pub fn handle(&self) -> TenancyHandle<S> {
        TenancyHandle {
            resolver: self.resolver.clone(),
        }
    }
}

impl<Svc, S> Tenancy<Svc, S> {
    fn refuse<B>(&self, err: TenantError) -> ResponseFuture<Svc, B>
    where
        Svc: Service<Request<B>>,
    {
        self.resolver.stats.refused(&err);
        ResponseFuture::new(CheckThenCall::failed(err))
    }
}

impl<Svc, S, B> Service<Request<B>> for Tenancy<Svc, S>
where
    Svc: Service<Request<B>> + Clone,
    Svc::Error: Into<BoxError>,
    S: TenantStore,
{
    type Response = Svc::Response;
    type Error = BoxError;
    type Future = ResponseFuture<Svc, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let peer = Resolver::<S>::peer(&req);
        if let Some(ip) = self.resolver.client_ip(peer, req.headers()) {
            req.extensions_mut().insert(ClientIp(ip));
        }
        let lookup: Lookup = match self.resolver.resolve(&req, peer) {
            Err(err) => return self.refuse(err),
            Ok(Found::Tenant(id)) => match self.resolver.registry.cached(id.as_str()) {
                Some(record) => {
                    return match admitted(record) {
                        // Decided, and infallible: no error path left to compile in.
                        Ok(record) => ResponseFuture::new(CheckThenCall::decided(
                            Ok::<_, Infallible>(record),
                            &mut self.inner,
                            req,
                            Admit,
                        )),
                        Err(err) => self.refuse(err),
                    };
                }
                None => {
                    let id = match id.into_owned() {
                        Ok(id) => id,
                        Err(err) => return self.refuse(err),
                    };
                    let resolver = self.resolver.clone();
                    resolver.stats.looked_up();
                    Box::pin(async move {
                        let record = resolver.registry.get(&id).await.and_then(admitted);
                        resolver.stats.settle(record)
                    })
                }
            },
            Ok(Found::Key(hash, named)) => {
                let named = match named.map(Named::into_owned).transpose() {
                    Ok(named) => named,
                    Err(err) => return self.refuse(err),
                };
                let resolver = self.resolver.clone();
                resolver.stats.looked_up();
                Box::pin(async move {
                    let record = async {
                        let registry = &resolver.registry;
                        let owner = registry.by_api_key(&hash).await?.ok_or_else(unknown_key)?;
                        if let Some(named) = named
                            && named != owner
                        {
                            return Err(TenantError::new(
                                TenantErrorKind::Conflict,
                                format!("API key belongs to {owner}, another source names {named}"),
                            ));
                        }
                        admitted(registry.get(&owner).await?)
                    };
                    let record = record.await;
                    resolver.stats.settle(record)
                })
            }
        };
        ResponseFuture::new(CheckThenCall::checking(lookup, &mut self.inner, req, Admit))
    }
}
