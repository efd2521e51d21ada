"""bench/idle_h2.py: what an idle HTTP/2-over-TLS client connection costs a shardgate.

Starts BIN (1 worker, a fresh data dir, free loopback ports, its development
certificate), opens 50 connections to warm it, then COUNT more (TLS 1.3, ALPN h2, the
client's preface and SETTINGS, the server's SETTINGS read), waits 2 s and prints the
gateway's RSS delta divided by COUNT. Needs Python's `h2` (the test venv has it):

    target/test-venv/bin/python bench/idle_h2.py target/release/shardgate 2000
"""
import os, resource, shutil, socket, ssl, subprocess, sys, tempfile, time

import h2.config
import h2.connection

bin_, n = sys.argv[1], int(sys.argv[2])
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
d = tempfile.mkdtemp()
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
admin, proxy, tls = port(), port(), port()
p = subprocess.Popen([bin_, "--workers", "1", "--data-dir", d + "/data", "--admin-listen", f"127.0.0.1:{admin}",
                      "--proxy-listen", f"127.0.0.1:{proxy}", "--tls-listen", f"127.0.0.1:{tls}"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", tls)).close(); break
    except OSError: time.sleep(0.1)
time.sleep(0.5)
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) * 1024
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
def open_conn():
    s = socket.create_connection(("127.0.0.1", tls))
    t = ctx.wrap_socket(s, server_hostname="localhost")
    assert t.selected_alpn_protocol() == "h2"
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection(); t.sendall(c.data_to_send())
    t.settimeout(2); t.recv(65535)   # the server's SETTINGS
    return t
# warm: a few connections so the allocator's first arenas are in place
warm = [open_conn() for _ in range(50)]
time.sleep(1)
before = rss(p.pid)
conns = [open_conn() for _ in range(n)]
time.sleep(2)
after = rss(p.pid)
print(f"{bin_}: {n} idle h2 TLS connections: RSS {before/2**20:.1f} -> {after/2**20:.1f} MiB, {(after-before)/n:.0f} B each")
p.kill()
shutil.rmtree(d, ignore_errors=True)
