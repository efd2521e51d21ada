"""An h2c upstream that fails streams the way HTTP/2 servers do, for
tests/tests/proxy_grpc.rs: refusing them when it shuts down or is overloaded (a refused
stream was not processed, RFC 9113 section 8.7, so a gateway may send it again on another
stream), or failing them after it took them.

    h2_faulty.py MODE FAULTS [every]

prints its port, then serves until stdin closes. The first stream of each of the first
FAULTS connections (with `every`: each of their streams) fails as MODE says; every other
stream is answered 200 with the request body after "echo:" and
`x-served-by: c<connection>s<stream>`. MODE:

    goaway        GOAWAY (last stream 0, NO_ERROR) as soon as its HEADERS arrive, then the
                  connection is closed once the client has gone
    reset         RST_STREAM REFUSED_STREAM as soon as its HEADERS arrive (the connection
                  stays open and serves the next stream)
    reset_late    RST_STREAM REFUSED_STREAM once its whole body has arrived
    status503     answered 503 once its whole body has arrived (processed, and failed)
    reset_error   RST_STREAM INTERNAL_ERROR once its whole body has arrived (processed)

A line "stats" on stdin prints a JSON line: connections, streams refused, streams failed
(503, INTERNAL_ERROR), streams served and the body bytes each refused or failed stream
carried.
"""
import json
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events

LOCK = threading.Lock()
STATS = {"connections": 0, "refused": 0, "failed": 0, "served": 0, "refused_body_bytes": [],
         "failed_body_bytes": []}


def serve_connection(sock, number, mode, refuse_first, every):
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    bodies = {}
    refused = set()
    first = True
    going_away = False
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            if going_away:
                # After GOAWAY, as servers shutting down do: the connection stays open
                # (what arrives is read and dropped) until the client closes it.
                continue
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    sid = event.stream_id
                    bodies[sid] = bytearray()
                    if first and refuse_first:
                        refused.add(sid)
                        if mode == "goaway":
                            conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR,
                                                  last_stream_id=0)
                            count_refused(0)
                            going_away = True
                            break
                        elif mode == "reset":
                            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                            count_refused(0)
                    first = every
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id in bodies:
                        bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    finish(conn, event.stream_id, bodies, refused, mode, number)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (OSError, h2.exceptions.ProtocolError):
        return
    finally:
        sock.close()


def count_refused(body_bytes):
    with LOCK:
        STATS["refused"] += 1
        STATS["refused_body_bytes"].append(body_bytes)


def count_failed(body_bytes):
    with LOCK:
        STATS["failed"] += 1
        STATS["failed_body_bytes"].append(body_bytes)


def finish(conn, sid, bodies, refused, mode, number):
    body = bytes(bodies.pop(sid, b""))
    if sid in refused:
        if mode == "reset_late":
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            count_refused(len(body))
        elif mode == "reset_error":
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            count_failed(len(body))
        elif mode == "status503":
            conn.send_headers(sid, [(":status", "503"), ("content-length", "11")])
            conn.send_data(sid, b"unavailable", end_stream=True)
            count_failed(len(body))
        return
    reply = b"echo:" + body
    conn.send_headers(sid, [
        (":status", "200"), ("content-type", "text/plain"),
        ("content-length", str(len(reply))), ("x-served-by", f"c{number}s{sid}")])
    # Within the gateway's windows (256 KiB a stream), in frames of the allowed size.
    step = conn.max_outbound_frame_size
    for at in range(0, len(reply), step):
        conn.send_data(sid, reply[at:at + step], end_stream=at + step >= len(reply))
    with LOCK:
        STATS["served"] += 1


def main(mode, refusals, every=False):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)

    def accept():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with LOCK:
                STATS["connections"] += 1
                number = STATS["connections"]
            threading.Thread(target=serve_connection,
                             args=(sock, number, mode, number <= refusals, every),
                             daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "stats":
            with LOCK:
                print(json.dumps(STATS), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["every"])
