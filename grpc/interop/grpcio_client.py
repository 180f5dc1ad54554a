"""A Python gRPC client (grpcio) against a workerbus gRPC server.

It knows nothing of workerbus and has no generated code: it learns the
Echo service's messages from the server's reflection, then calls it the
way any gRPC client would. Usage: grpcio_client.py HOST:PORT
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address = sys.argv[1]
channel = grpc.insecure_channel(address)


def check(condition, what):
    if not condition:
        raise SystemExit(f"interop: FAILED: {what}")
    print(f"interop: ok: {what}")


# Reflection: list and describe.
database = ProtoReflectionDescriptorDatabase(channel)
services = set(database.get_services())
check("echo.Echo" in services, f"reflection lists echo.Echo (got {sorted(services)})")
check("grpc.health.v1.Health" in services, "reflection lists grpc.health.v1.Health")
pool = descriptor_pool.DescriptorPool(database)
echo = pool.FindServiceByName("echo.Echo")
methods = {method.name for method in echo.methods}
check({"Echo", "Count", "Sum", "Fail", "Sleep"} <= methods, "reflection describes echo.Echo's methods")


def message(name):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def call(kind, method, request, response):
    return getattr(channel, kind)(
        f"/echo.Echo/{method}",
        request_serializer=message(request).SerializeToString,
        response_deserializer=message(response).FromString,
    )


EchoRequest = message("echo.EchoRequest")
HeadersRequest = message("echo.HeadersRequest")
Header = message("echo.Header")
CountRequest = message("echo.CountRequest")
SumRequest = message("echo.SumRequest")
FailRequest = message("echo.FailRequest")
SleepRequest = message("echo.SleepRequest")

# Unary.
reply = call("unary_unary", "Echo", "echo.EchoRequest", "echo.EchoReply")(
    EchoRequest(text="from python", data=b"\x00\x01")
)
check(reply.text == "from python" and reply.data == b"\x00\x01", "a unary call")

# Metadata both ways.
headers = call("unary_unary", "Headers", "echo.HeadersRequest", "echo.HeadersReply")
reply, info = headers.with_call(
    HeadersRequest(reply=[Header(key="served-by", value=b"echo")]),
    metadata=(("tenant", "blue"), ("blob-bin", b"\x00\xff")),
)
seen = {(header.key, bytes(header.value)) for header in reply.seen}
check(("tenant", b"blue") in seen and ("blob-bin", b"\x00\xff") in seen, f"the handler sees the call's metadata ({seen})")
answered = dict(info.initial_metadata())
check(answered.get("served-by") == "echo", f"the handler's response metadata arrives ({answered})")

# Server streaming.
counted = call("unary_stream", "Count", "echo.CountRequest", "echo.CountReply")(
    CountRequest(tag="python", **{"from": 1}, count=3)
)
check([item.value for item in counted] == [1, 2, 3], "a response stream, in order")

# Client streaming.
total = call("stream_unary", "Sum", "echo.SumRequest", "echo.SumReply")(
    iter([SumRequest(value=20), SumRequest(value=22)])
)
check(total.sum == 42, "a request stream")

# A handler's status.
try:
    call("unary_unary", "Fail", "echo.FailRequest", "google.protobuf.Empty")(
        FailRequest(code=5, message="no document 42", repeat=1)
    )
    check(False, "a failing call fails")
except grpc.RpcError as error:
    check(error.code() == grpc.StatusCode.NOT_FOUND, f"a handler's status code ({error.code()})")
    check(error.details() == "no document 42", f"a handler's status message ({error.details()!r})")

# A deadline.
try:
    call("unary_unary", "Sleep", "echo.SleepRequest", "google.protobuf.Empty")(
        SleepRequest(tag="python deadline", ms=10_000), timeout=0.2
    )
    check(False, "a call past its deadline fails")
except grpc.RpcError as error:
    check(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"past its deadline: {error.code()}")

print("interop: every check passed")
