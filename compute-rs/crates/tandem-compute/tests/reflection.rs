//! Server reflection over real gRPC, as grpcurl uses it: the services
//! listed are exactly the ones served, and every message type compute takes
//! or returns resolves, error details included.
// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{TestServer, config};
use prost::Message;
use prost_types::FileDescriptorProto;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

struct Reflection {
    client: ServerReflectionClient<tonic::transport::Channel>,
}

impl Reflection {
    async fn connect(srv: &TestServer) -> Reflection {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr)).unwrap().connect().await.unwrap();
        Reflection { client: ServerReflectionClient::new(channel) }
    }

    /// The answer to `req`; a lookup that fails is an error response or a
    /// failed stream, both reported as the gRPC code.
    async fn ask(&mut self, req: MessageRequest) -> Result<MessageResponse, tonic::Code> {
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(req) };
        let mut stream = self.client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
        match stream.message().await {
            Ok(m) => Ok(m.unwrap().message_response.unwrap()),
            Err(st) => Err(st.code()),
        }
    }

    async fn services(&mut self) -> BTreeSet<String> {
        match self.ask(MessageRequest::ListServices(String::new())).await.unwrap() {
            MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// The files for `req`, or the error code.
    async fn files(&mut self, req: MessageRequest) -> Result<Vec<FileDescriptorProto>, tonic::Code> {
        match self.ask(req).await? {
            MessageResponse::FileDescriptorResponse(f) => {
                Ok(f.file_descriptor_proto.iter().map(|b| FileDescriptorProto::decode(b.as_slice()).unwrap()).collect())
            }
            MessageResponse::ErrorResponse(e) => Err(tonic::Code::from_i32(e.error_code)),
            other => panic!("{other:?}"),
        }
    }

    /// The file defining `symbol` and, transitively, every file it imports
    /// (each fetched by name, as grpcurl does).
    async fn resolve(&mut self, symbol: &str) -> HashMap<String, FileDescriptorProto> {
        let mut files = HashMap::new();
        let mut todo = self
            .files(MessageRequest::FileContainingSymbol(symbol.to_owned()))
            .await
            .unwrap_or_else(|code| panic!("{symbol}: error {code:?}"));
        while let Some(f) = todo.pop() {
            for dep in &f.dependency {
                if !files.contains_key(dep) {
                    let got = self
                        .files(MessageRequest::FileByFilename(dep.clone()))
                        .await
                        .unwrap_or_else(|code| panic!("{symbol}: import {dep}: error {code:?}"));
                    todo.extend(got);
                }
            }
            files.insert(f.name().to_owned(), f);
        }
        files
    }
}

/// Whether `files` define the message or enum `full_name`.
fn defines(files: &HashMap<String, FileDescriptorProto>, full_name: &str) -> bool {
    files.values().any(|f| {
        let name = full_name.strip_prefix(&format!("{}.", f.package())).unwrap_or("");
        f.message_type.iter().any(|m| m.name() == name) || f.enum_type.iter().any(|e| e.name() == name)
    })
}

#[tokio::test]
async fn reflection_lists_exactly_the_served_services() {
    let srv = TestServer::start(config(1, 1)).await;
    let want: BTreeSet<String> = tandem_compute::server::SERVICES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        want,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "tandem.v1.ComputeService",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    );
    let mut r = Reflection::connect(&srv).await;
    assert_eq!(r.services().await, want, "v1 reflection");
    // The v1alpha service answers the same (grpcurl falls back to it).
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr)).unwrap().connect().await.unwrap();
    let mut alpha = tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    use tonic_reflection::pb::v1alpha as a;
    let req = a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(a::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = alpha.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(a::server_reflection_response::MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    assert_eq!(list.service.into_iter().map(|s| s.name).collect::<BTreeSet<_>>(), want, "v1alpha reflection");
    // JobService is the orchestrator's: compute neither lists nor describes it.
    let err = r.files(MessageRequest::FileContainingSymbol("tandem.v1.JobService".to_owned())).await.unwrap_err();
    assert_eq!(err, tonic::Code::NotFound);
    srv.stop().await;
}

#[tokio::test]
async fn reflection_resolves_every_message_compute_returns() {
    let srv = TestServer::start(config(1, 1)).await;
    let mut r = Reflection::connect(&srv).await;
    // Every request and response type of ComputeService.
    let files = r.resolve("tandem.v1.ComputeService").await;
    let svc = files
        .values()
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "ComputeService")
        .expect("ComputeService described");
    assert!(svc.method.len() >= 3, "{:?}", svc.method);
    for m in &svc.method {
        for ty in [m.input_type(), m.output_type()] {
            let ty = ty.trim_start_matches('.');
            assert!(defines(&r.resolve(ty).await, ty), "{ty}");
        }
    }
    // The details every error status carries (ErrorInfo; RetryInfo with
    // RESOURCE_EXHAUSTED), the status itself, and batch-item errors.
    for ty in [
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.Status",
        "tandem.v1.Error",
        "tandem.v1.ErrorReason",
    ] {
        let files = r.resolve(ty).await;
        assert!(defines(&files, ty), "{ty} in {:?}", files.keys());
    }
    srv.stop().await;
}
