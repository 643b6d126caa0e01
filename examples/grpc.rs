//! A gRPC service and its client (tonic, HTTP/2) with the same layers as the HTTP services:
//!
//! - **server**: the tenant from the `x-tenant-id` metadata, verified by an API key in
//!   `x-api-key` (a refusal is the gRPC status the HTTP one maps to: UNAUTHENTICATED,
//!   PERMISSION_DENIED, INVALID_ARGUMENT), and a chaos layer that answers UNAVAILABLE to a share
//!   of the calls;
//! - **client**: retry on UNAVAILABLE (the request body buffered so it can be sent again)
//!   outside a circuit breaker that reads `grpc-status` (in the headers, or in the trailers when
//!   the body ends: a unary answer ends with `grpc-status: 0` in its trailers, which the
//!   breaker waits for), a timeout per attempt, over a tonic `Channel`. A charge is sent again only
//!   under its idempotency key.
//!
//! No `protoc` and no generated code: the messages are JSON through a small tonic codec below,
//! and the service is written out by hand as tonic's generated code would be.
//!
//! ```text
//! cargo run --example grpc --features full -- [--calls 20] [--unavailable 0.3]
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it shows")]

use std::{
    collections::HashMap,
    convert::Infallible,
    io::Write,
    marker::PhantomData,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BufMut};
use http::{Request, Response, uri::PathAndQuery};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tonic::{
    Status,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::NamedService,
    transport::{Channel, Server, server::TcpIncoming},
};
use tower::{Service, ServiceBuilder, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError,
    breaker::CircuitBreakerLayer,
    chaos::{ChaosLayer, Fault},
    classify::TowerHttp,
    http::classify_error,
    retry::{HttpRetry, ReplayBodyLayer, ReplayableBody, RetryPolicy},
    tenant::{StaticTenants, TenancyLayer, TenantId, hash_api_key},
};

/// A charge, as the client sends it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChargeRequest {
    order: String,
    cents: u64,
}

/// The answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChargeReply {
    charge: String,
    tenant: String,
}

/// Messages as JSON: what tonic's prost codec does with protobuf.
#[derive(Debug)]
struct JsonCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for JsonCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

#[derive(Debug)]
struct JsonEncoder<E>(PhantomData<E>);

#[derive(Debug)]
struct JsonDecoder<D>(PhantomData<D>);

impl<E: Serialize + Send + 'static, D: DeserializeOwned + Send + 'static> Codec
    for JsonCodec<E, D>
{
    type Encode = E;
    type Decode = D;
    type Encoder = JsonEncoder<E>;
    type Decoder = JsonDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        JsonEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        JsonDecoder(PhantomData)
    }
}

impl<E: Serialize> Encoder for JsonEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        serde_json::to_writer(dst.writer(), &item).map_err(|_| Status::internal("encoding failed"))
    }
}

impl<D: DeserializeOwned> Decoder for JsonDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| Status::invalid_argument("malformed message"))
    }
}

/// The path of the one method.
const CHARGE: &str = "/shop.Payments/Charge";

/// The service as generated code would write it: the method by its path, the rest
/// UNIMPLEMENTED. A charge sent again under the same `idempotency-key` gets the first answer
/// back and charges nothing more.
#[derive(Clone, Debug, Default)]
struct Payments {
    charged: Arc<Mutex<HashMap<String, ChargeReply>>>,
}

impl Service<Request<Body>> for Payments {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let charged = self.charged.clone();
        Box::pin(async move {
            if req.uri().path() != CHARGE {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let tenant = TenantId::of(&req).map_or_else(String::new, |t| t.as_str().to_owned());
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(|k| format!("{tenant}/{k}"));
            let charged = charged.clone();
            let charge = tower::service_fn(move |r: tonic::Request<ChargeRequest>| {
                let (tenant, key, charged) = (tenant.clone(), key.clone(), charged.clone());
                async move {
                    let r = r.into_inner();
                    let reply = ChargeReply {
                        charge: format!("ch_{}_{}", r.order, r.cents),
                        tenant,
                    };
                    let reply = match key {
                        Some(key) => charged
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(key)
                            .or_insert(reply)
                            .clone(),
                        None => reply,
                    };
                    Ok::<_, Status>(tonic::Response::new(reply))
                }
            });
            let mut grpc =
                tonic::server::Grpc::new(JsonCodec::<ChargeReply, ChargeRequest>::default());
            Ok(grpc.unary(charge, req).await)
        })
    }
}

/// The server's stack, boxed, under the service's name.
#[derive(Clone)]
struct Named(BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>);

impl NamedService for Named {
    const NAME: &'static str = "shop.Payments";
}

impl Service<Request<Body>> for Named {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <BoxCloneSyncService<Request<Body>, Response<Body>, Infallible> as Service<
        Request<Body>,
    >>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.0.call(req)
    }
}

/// Answers a layer's error with the gRPC status its HTTP mapping stands for (as core's
/// `ErrorResponse` does for HTTP), so the stack below can fail and tonic still gets a response.
#[derive(Clone)]
struct GrpcErrors<S> {
    inner: S,
    failed: Option<Status>,
}

impl<S> Service<Request<Body>> for GrpcErrors<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Pending while the stack below is; its failure is answered by the next call.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.failed = Some(grpc_status(&e));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(status) = self.failed.take() {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(fut.await.unwrap_or_else(|e| grpc_status(&e).into_http())) })
    }
}

/// A layer's error as the gRPC status its HTTP mapping stands for, with the same fixed phrase.
fn grpc_status(err: &BoxError) -> Status {
    let mapping = classify_error(&**err);
    let code = match mapping.status.as_u16() {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        504 => tonic::Code::DeadlineExceeded,
        _ => tonic::Code::Internal,
    };
    Status::new(code, mapping.message)
}

/// The registry: one tenant, `acme`, whose key is `key-acme`.
fn tenants() -> Result<StaticTenants, BoxError> {
    let hash: String = hash_api_key("key-acme")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(StaticTenants::from_toml(&format!(
        "[[tenants]]\nid = \"acme\"\nplan = \"gold\"\napi_key_sha256 = [\"{hash}\"]\n"
    ))?)
}

/// Runs the example with `args` (without the program name), writing to `out`.
pub(crate) async fn run(args: &[String], out: &mut (impl Write + Send)) -> ExitCode {
    let mut calls = 20u32;
    let mut unavailable = 0.3f64;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next();
        match (flag.as_str(), value.map(|v| v.parse::<f64>())) {
            ("--calls", Some(Ok(n))) if (1.0..=10_000.0).contains(&n) && n.fract() == 0.0 => {
                calls = n as u32
            }
            ("--unavailable", Some(Ok(r))) if (0.0..=1.0).contains(&r) => unavailable = r,
            _ => {
                let _ = writeln!(
                    out,
                    "usage: grpc [--calls N] [--unavailable RATE]   (N 1 to 10000, RATE 0 to 1)"
                );
                return ExitCode::from(2);
            }
        }
    }
    match show(calls, unavailable, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn show(calls: u32, unavailable: f64, out: &mut (impl Write + Send)) -> Result<(), BoxError> {
    // The server: tenant, chaos, the service; a refusal becomes a gRPC status.
    let chaos = ChaosLayer::builder("payments-server")
        .seed(7)
        .fault(Fault::grpc(14).rate(unavailable))
        .build()?;
    let faults = chaos.handle();
    let tenancy = TenancyLayer::builder("grpc")
        .store(tenants()?)
        .header("x-tenant-id")
        .api_key("x-api-key")
        .build()?;
    let layers = ServiceBuilder::new()
        .layer(tenancy)
        .layer(chaos)
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .service(Payments::default());
    let stack = GrpcErrors {
        inner: layers,
        failed: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(Named(BoxCloneSyncService::new(stack)))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            }),
    );

    // The client: retry outside the breaker, a timeout per attempt, the channel.
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let retry = RetryPolicy::builder("payments")
        .kind(HttpRetry::default().grpc_codes(&[14]))
        .max_attempts(4)
        .build()?;
    let breaker = CircuitBreakerLayer::builder("payments")
        .classifier(TowerHttp::grpc())
        .count_window(10)
        .minimum_calls(10)
        .failure_rate(0.9)
        .build()?;
    let circuit = breaker.handle();
    let client = ServiceBuilder::new()
        .layer(ReplayBodyLayer::new(64 * 1024))
        .layer(retry.layer())
        .layer(breaker)
        .timeout(Duration::from_secs(2))
        .map_request(|req: Request<ReplayableBody<Body>>| req.map(Body::new))
        .service(channel);
    let mut grpc = tonic::client::Grpc::new(client);

    let mut charged = 0;
    for i in 0..calls {
        let mut req = tonic::Request::new(ChargeRequest {
            order: format!("o{i}"),
            cents: 100 + u64::from(i),
        });
        req.metadata_mut().insert("x-api-key", "key-acme".parse()?);
        // A charge is a POST: the retry sends it again only under an idempotency key (the
        // order), which the provider uses to charge once.
        req.metadata_mut()
            .insert("idempotency-key", format!("o{i}").parse()?);
        grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let codec = JsonCodec::<ChargeRequest, ChargeReply>::default();
        match grpc
            .unary(req, PathAndQuery::from_static(CHARGE), codec)
            .await
        {
            Ok(res) => {
                charged += 1;
                if i == 0 {
                    let reply = res.into_inner();
                    writeln!(
                        out,
                        "first reply: {} for tenant {}",
                        reply.charge, reply.tenant
                    )?;
                }
            }
            Err(status) if i < 3 || charged > 0 => {
                writeln!(out, "call {i}: {:?} {}", status.code(), status.message())?;
            }
            Err(_) => {}
        }
    }
    let injected = faults.injected(tower_patterns::chaos::FaultKind::Status);
    writeln!(
        out,
        "{charged} of {calls} charged; the server answered UNAVAILABLE {injected} times and the client retried each (at most 4 attempts); breaker {}, {} call(s) refused by it",
        circuit.state().as_str(),
        circuit.snapshot().rejected
    )?;

    // Refusals come back as gRPC statuses.
    let refusals = [
        ("no credential", None, None),
        ("an unknown key", Some("key-nobody"), None),
        ("a tenant that disagrees", Some("key-acme"), Some("globex")),
        ("a malformed tenant", Some("key-acme"), Some("no spaces!")),
    ];
    for (what, key, tenant) in refusals {
        let mut req = tonic::Request::new(ChargeRequest {
            order: "x".into(),
            cents: 1,
        });
        if let Some(key) = key {
            req.metadata_mut().insert("x-api-key", key.parse()?);
        }
        if let Some(tenant) = tenant {
            req.metadata_mut().insert("x-tenant-id", tenant.parse()?);
        }
        grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let codec = JsonCodec::<ChargeRequest, ChargeReply>::default();
        let status = match grpc
            .unary(req, PathAndQuery::from_static(CHARGE), codec)
            .await
        {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?} {:?}", s.code(), s.message()),
        };
        writeln!(out, "{what}: {status}")?;
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(
        &std::env::args().skip(1).collect::<Vec<_>>(),
        &mut std::io::stdout(),
    )
    .await
}
