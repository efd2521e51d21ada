"""A gRPC server and client for tests/tests/proxy_grpc.rs: generic handlers (no protoc),
bytes in and bytes out.

    grpc_echo.py server [CERT KEY]   prints its port, serves until stdin closes (over TLS
                                     with CERT and KEY, PEM files, when given)
    grpc_echo.py client ADDR KEY AUTHORITY CALL   runs one call, prints a JSON result

The server also answers the gRPC health checking protocol (grpc.health.v1.Health/Check,
as raw protobuf bytes): SERVING for "" and "test.Echo", NOT_FOUND for other services. A
line "not_serving" on its stdin makes it answer NOT_SERVING, "serving" SERVING again.

GRPC_ECHO_PERMIT_PINGS=1 lets clients ping the server as often as they like (gRPC core
otherwise answers frequent PINGs with a GOAWAY).
"""
import json
import os
import queue
import sys
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "unary-done"),))
    return b"echo:" + request


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield f"item{i}".encode()
    context.set_trailing_metadata((("x-trailer", "stream-done"),))


def bidi(requests, context):
    for message in requests:
        yield b"re:" + message


def slow(request, context):
    import time
    time.sleep(float(request.decode()))
    return b"late"


HEALTH = {"status": b"\x08\x01"}  # HealthCheckResponse{status: SERVING}


def health_check(request, context):
    # HealthCheckRequest{service: field 1}: an empty message, or 0x0a, length, name.
    service = request[2:].decode() if request[:1] == b"\x0a" else ""
    if service not in ("", SERVICE):
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return HEALTH["status"]


def serve(cert=None, key=None):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    options = []
    if os.environ.get("GRPC_ECHO_PERMIT_PINGS") == "1":
        options = [
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    health = {"Check": grpc.unary_unary_rpc_method_handler(health_check)}
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, handlers),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),
    ))
    if cert:
        credentials = grpc.ssl_server_credentials(
            [(open(key, "rb").read(), open(cert, "rb").read())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    for line in sys.stdin:
        if line.strip() == "not_serving":
            HEALTH["status"] = b"\x08\x02"
        elif line.strip() == "serving":
            HEALTH["status"] = b"\x08\x01"
    server.stop(0)


def call(addr, key, authority, what):
    channel = grpc.insecure_channel(addr, options=[("grpc.default_authority", authority)])
    metadata = [("x-api-key", key)] if key != "-" else []
    result = {}
    try:
        if what == "unary":
            response, c = channel.unary_unary(f"/{SERVICE}/Unary").with_call(
                b"hi", metadata=metadata, timeout=10)
            result["messages"] = [response.decode()]
            result["trailers"] = dict(c.trailing_metadata() or ())
        elif what == "server_stream":
            responses = channel.unary_stream(f"/{SERVICE}/ServerStream")(
                b"5", metadata=metadata, timeout=10)
            result["messages"] = [m.decode() for m in responses]
            result["trailers"] = dict(responses.trailing_metadata() or ())
        elif what == "bidi":
            # Ping-pong: each message is sent only after the answer to the previous one
            # arrived, so it passes only if both directions flow at once.
            outbox = queue.Queue()
            outbox.put(b"m0")

            def requests():
                while True:
                    message = outbox.get()
                    if message is None:
                        return
                    yield message

            responses = channel.stream_stream(f"/{SERVICE}/Bidi")(
                requests(), metadata=metadata, timeout=10)
            got = []
            for i, message in enumerate(responses):
                got.append(message.decode())
                outbox.put(f"m{i + 1}".encode() if i < 3 else None)
            result["messages"] = got
        elif what == "big":
            response = channel.unary_unary(f"/{SERVICE}/Unary")(
                b"x" * 5000, metadata=metadata, timeout=10)
            result["messages"] = [response[:8].decode()]
        elif what == "unary_3s":
            # A unary call the client gives up on after 3 s.
            response = channel.unary_unary(f"/{SERVICE}/Unary")(
                b"hi", metadata=metadata, timeout=3)
            result["messages"] = [response.decode()]
        elif what == "deadline":
            channel.unary_unary(f"/{SERVICE}/Slow")(b"3", metadata=metadata, timeout=0.5)
        result["code"] = "OK"
    except grpc.RpcError as e:
        result["code"] = e.code().name
        result["details"] = e.details()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(*sys.argv[2:4])
    else:
        call(*sys.argv[2:6])
