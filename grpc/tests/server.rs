//! The gRPC server seen from a gRPC client that knows nothing of workerbus:
//! tonic's own client, calling by path with each message encoded by prost.

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel as TonicChannel;
use tonic::{Code, Request};
use workerbus_grpc::{BytesCodec, GrpcServer};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    CountReply, CountRequest, EchoReply, EchoRequest, EchoServer, FailRequest, HeadersReply,
    HeadersRequest, SleepRequest, SumReply, SumRequest,
};

/// A server of the Echo service on a loopback port, and a tonic client of it.
async fn start() -> Grpc<TonicChannel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Grpc::new(channel)
}

fn path(path: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(path)
}

fn bytes_of(message: &impl Message) -> Bytes {
    message.encode_to_vec().into()
}

async fn unary(
    grpc: &mut Grpc<TonicChannel>,
    at: &'static str,
    request: Request<Bytes>,
) -> Result<tonic::Response<Bytes>, tonic::Status> {
    grpc.ready().await.unwrap();
    grpc.unary(request, path(at), BytesCodec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_shape_is_served() {
    let mut grpc = start().await;
    let echo = EchoRequest {
        text: "hello".into(),
        ..EchoRequest::default()
    };
    let reply = unary(&mut grpc, "/echo.Echo/Echo", Request::new(bytes_of(&echo)))
        .await
        .unwrap();
    assert_eq!(EchoReply::decode(reply.into_inner()).unwrap().text, "hello");

    grpc.ready().await.unwrap();
    let count = CountRequest {
        from: 1,
        count: 3,
        ..CountRequest::default()
    };
    let mut stream = grpc
        .server_streaming(
            Request::new(bytes_of(&count)),
            path("/echo.Echo/Count"),
            BytesCodec,
        )
        .await
        .unwrap()
        .into_inner();
    let mut values = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        values.push(CountReply::decode(item).unwrap().value);
    }
    assert_eq!(values, [1, 2, 3]);

    grpc.ready().await.unwrap();
    let numbers = futures_util::stream::iter([20, 22].map(|value| {
        bytes_of(&SumRequest {
            value,
            ..SumRequest::default()
        })
    }));
    let sum = grpc
        .client_streaming(Request::new(numbers), path("/echo.Echo/Sum"), BytesCodec)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(SumReply::decode(sum).unwrap().sum, 42);

    grpc.ready().await.unwrap();
    let texts = futures_util::stream::iter(["a", "b", "c"].map(|text| {
        bytes_of(&EchoRequest {
            text: text.into(),
            ..EchoRequest::default()
        })
    }));
    let replies = grpc
        .streaming(Request::new(texts), path("/echo.Echo/Chat"), BytesCodec)
        .await
        .unwrap()
        .into_inner();
    let replies: Vec<String> = replies
        .map(|reply| EchoReply::decode(reply.unwrap()).unwrap().text)
        .collect()
        .await;
    assert_eq!(replies, ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_metadata_and_unknown_paths_map_one_to_one() {
    let mut grpc = start().await;

    // A handler's status: code, message and details as the handler set them.
    let fail = FailRequest {
        code: Code::PermissionDenied as u32,
        message: "not yours".into(),
        details: b"\x01\x02".to_vec().into(),
        ..FailRequest::default()
    };
    let status = unary(&mut grpc, "/echo.Echo/Fail", Request::new(bytes_of(&fail)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "not yours");
    assert_eq!(status.details(), b"\x01\x02");

    // Metadata both ways; gRPC's own headers are not the call's metadata.
    let mut request = Request::new(bytes_of(&HeadersRequest {
        reply: vec![workerbus_tests::pb::echo::Header {
            key: "served-by".into(),
            value: b"grpc".to_vec().into(),
        }],
        ..HeadersRequest::default()
    }));
    request
        .metadata_mut()
        .insert("tenant", MetadataValue::from_static("blue"));
    request
        .metadata_mut()
        .insert_bin("blob-bin", MetadataValue::from_bytes(&[0, 1, 255]));
    let response = unary(&mut grpc, "/echo.Echo/Headers", request)
        .await
        .unwrap();
    assert_eq!(response.metadata().get("served-by").unwrap(), "grpc");
    let seen = HeadersReply::decode(response.into_inner()).unwrap().seen;
    let seen: Vec<(&str, &[u8])> = seen
        .iter()
        .map(|header| (header.key.as_str(), header.value.as_ref()))
        .collect();
    assert_eq!(
        seen,
        [("tenant", b"blue".as_slice()), ("blob-bin", &[0, 1, 255])]
    );

    // A path no service has.
    let status = unary(&mut grpc, "/echo.Echo/Nope", Request::new(Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("/echo.Echo/Nope"), "{status:?}");
    let status = unary(&mut grpc, "/nobody.Home/Echo", Request::new(Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

/// Makes a unary call over a bare HTTP/2 connection, with no timer of the
/// client's own (tonic's client ends a call at its `grpc-timeout` itself,
/// with `CANCELLED`), and returns the `grpc-status` the server answered.
async fn raw_unary(
    address: std::net::SocketAddr,
    path: &str,
    message: Bytes,
    headers: &[(&str, &str)],
) -> String {
    use bytes::BufMut;
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut request = request;
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let (response, mut send) = client.send_request(request, false).unwrap();
    let mut frame = bytes::BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap());
    frame.put(message);
    send.send_data(frame.freeze(), true).unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    if let Some(status) = parts.headers.get("grpc-status") {
        return status.to_str().unwrap().to_owned();
    }
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_grpc_timeout_ends_deadline_exceeded_never_cancelled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    let calls = (0..100).map(|n| {
        let sleep = SleepRequest {
            tag: format!("deadline-{n}"),
            ms: 60_000,
            blocking: false,
        };
        raw_unary(
            address,
            "/echo.Echo/Sleep",
            bytes_of(&sleep),
            &[("grpc-timeout", "20m")],
        )
    });
    let statuses = futures_util::future::join_all(calls).await;
    let deadline_exceeded = (Code::DeadlineExceeded as i32).to_string();
    for status in statuses {
        assert_eq!(
            status, deadline_exceeded,
            "every call ends DEADLINE_EXCEEDED"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_describe_the_served_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = GrpcServer::new()
        .add_service(EchoServer::new(EchoWorker::new()))
        .add_descriptors(workerbus_tests::DESCRIPTORS)
        .unwrap();
    tokio::spawn(server.serve(listener));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "echo.Echo"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "echo.Missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| {
        futures_util::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }])
    };
    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a list of services");
    };
    let mut names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "echo.Echo",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ],
        "served services only: not echo.Missing nor the events service"
    );
    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "echo.Echo".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected the file that defines echo.Echo");
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.name(), "echo.proto");
    let echo = file
        .service
        .iter()
        .find(|service| service.name() == "Echo")
        .unwrap();
    assert!(echo.method.iter().any(|method| method.name() == "Chat"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_client_resets_is_cancelled_in_the_worker() {
    use workerbus_tests::pb::echo::{ObserveRequest, SleepState};

    let grpc = start().await;
    let observe = |state: SleepState| {
        let mut grpc = grpc.clone();
        async move {
            let request = ObserveRequest {
                tag: "reset".into(),
                state: state as i32,
            };
            unary(
                &mut grpc,
                "/echo.Echo/Observe",
                Request::new(bytes_of(&request)),
            )
            .await
        }
    };
    let sleeping = tokio::spawn({
        let mut grpc = grpc.clone();
        async move {
            let sleep = SleepRequest {
                tag: "reset".into(),
                ms: 60_000,
                blocking: false,
            };
            unary(
                &mut grpc,
                "/echo.Echo/Sleep",
                Request::new(bytes_of(&sleep)),
            )
            .await
        }
    });
    observe(SleepState::Started).await.unwrap();
    // Dropping tonic's call resets its HTTP/2 stream.
    sleeping.abort();
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        observe(SleepState::Cancelled),
    )
    .await;
    assert!(
        matches!(cancelled, Ok(Ok(_))),
        "the handler was not cancelled: {cancelled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_metadata_of_streams_and_failures_arrives_in_trailers() {
    let mut grpc = start().await;

    // A response stream: its handler's response metadata after the items.
    let count = CountRequest {
        from: 1,
        count: 2,
        ..CountRequest::default()
    };
    let mut request = Request::new(bytes_of(&count));
    request
        .metadata_mut()
        .insert("tenant", MetadataValue::from_static("blue"));
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(request, path("/echo.Echo/Count"), BytesCodec)
        .await
        .unwrap()
        .into_inner();
    let mut items = 0;
    while stream.message().await.unwrap().is_some() {
        items += 1;
    }
    assert_eq!(items, 2);
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("tenant").unwrap(), "blue");

    // A stream that fails: the metadata travels with its status.
    let failing = CountRequest {
        count: 1,
        fail_code: Code::Aborted as u32,
        ..CountRequest::default()
    };
    let mut request = Request::new(bytes_of(&failing));
    request
        .metadata_mut()
        .insert("tenant", MetadataValue::from_static("green"));
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(request, path("/echo.Echo/Count"), BytesCodec)
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream was to fail"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.metadata().get("tenant").unwrap(), "green");

    // A unary call that fails.
    let headers = HeadersRequest {
        reply: vec![workerbus_tests::pb::echo::Header {
            key: "served-by".into(),
            value: b"grpc".to_vec().into(),
        }],
        fail_code: Code::NotFound as u32,
        ..HeadersRequest::default()
    };
    let status = unary(
        &mut grpc,
        "/echo.Echo/Headers",
        Request::new(bytes_of(&headers)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.metadata().get("served-by").unwrap(), "grpc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_one_way_messages_and_malformed_headers_map_as_written() {
    use workerbus_tests::pb::echo::{NoteRequest, ProgressReply, ProgressRequest, TraceReply};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = Grpc::new(channel);

    // A traceparent: the handler sees its parent id as the calling span.
    let mut request = Request::new(Bytes::new());
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let reply = unary(&mut grpc, "/echo.Echo/Trace", request).await.unwrap();
    let reply = TraceReply::decode(reply.into_inner()).unwrap();
    assert!(reply.has_parent);
    assert_eq!(reply.parent_span_id, 0x00f0_67aa_0ba9_02b7);

    // A one-way message: answered OK with an empty message; the handler
    // runs (it counts the note under its tag).
    let note = NoteRequest {
        tag: "grpc-note".into(),
        text: "hi".into(),
        ..NoteRequest::default()
    };
    let answer = unary(&mut grpc, "/echo.Echo/Note", Request::new(bytes_of(&note)))
        .await
        .unwrap();
    assert!(answer.into_inner().is_empty());
    let progress = ProgressRequest {
        tag: "grpc-note".into(),
        at_least: 1,
    };
    let reply = unary(
        &mut grpc,
        "/echo.Echo/Progress",
        Request::new(bytes_of(&progress)),
    )
    .await
    .unwrap();
    assert_eq!(
        ProgressReply::decode(reply.into_inner()).unwrap().messages,
        1
    );

    // Malformed headers: INVALID_ARGUMENT.
    let invalid = (Code::InvalidArgument as i32).to_string();
    let echo = bytes_of(&EchoRequest::default());
    for headers in [
        [("grpc-timeout", "1.5S")],
        [("grpc-timeout", "123456789m")],
        [("blob-bin", "not base64!")],
    ] {
        let status = raw_unary(address, "/echo.Echo/Echo", echo.clone(), &headers).await;
        assert_eq!(status, invalid, "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stream_reset_before_its_end_cancels_the_call() {
    use workerbus_tests::pb::echo::{ObserveRequest, SleepState};

    let grpc = start().await;
    let observe = |state: SleepState| {
        let mut grpc = grpc.clone();
        async move {
            let request = ObserveRequest {
                tag: "truncated".into(),
                state: state as i32,
            };
            unary(
                &mut grpc,
                "/echo.Echo/Observe",
                Request::new(bytes_of(&request)),
            )
            .await
        }
    };
    let summing = tokio::spawn({
        let mut grpc = grpc.clone();
        async move {
            let first = bytes_of(&SumRequest {
                tag: "truncated".into(),
                value: 1,
                ..SumRequest::default()
            });
            // One message, then nothing: the stream never ends by itself.
            let requests =
                futures_util::stream::iter([first]).chain(futures_util::stream::pending());
            grpc.ready().await.unwrap();
            grpc.client_streaming(Request::new(requests), path("/echo.Echo/Sum"), BytesCodec)
                .await
        }
    });
    observe(SleepState::Started).await.unwrap();
    // Dropping tonic's call resets the stream before its end.
    summing.abort();
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        observe(SleepState::Cancelled),
    )
    .await;
    assert!(
        matches!(cancelled, Ok(Ok(_))),
        "the handler was not cancelled: {cancelled:?}"
    );
}
