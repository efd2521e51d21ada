"""One HTTP/2 request (h2c with prior knowledge) for tests/tests/observability.rs, with
Python's h2: GET PATH as AUTHORITY with X-API-Key KEY and X-Request-Id ID. Prints one JSON
line: the status and response headers.

    h2_request.py HOST PORT AUTHORITY PATH KEY ID complete
    h2_request.py HOST PORT AUTHORITY PATH KEY ID reset

`reset`: once the request is sent, prints "sent" and waits for a line on stdin; then resets
the stream (RST_STREAM CANCEL), as a client that gave up does, and closes the connection.
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events


def main(host, port, authority, path, key, request_id, mode):
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
            ("x-api-key", key),
            ("x-request-id", request_id),
        ],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    out = {"status": None, "headers": {}}
    if mode == "reset":
        print("sent", flush=True)
        sys.stdin.readline()
        conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        sock.sendall(conn.data_to_send())
        sock.close()
        print(json.dumps(out), flush=True)
        return
    ended = False
    while not ended:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                out["status"] = int(headers[":status"])
                out["headers"] = headers
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        sock.sendall(conn.data_to_send())
    sock.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:8])
