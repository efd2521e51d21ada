//! Load: wrk runs (with a Lua `done()` that prints the latency percentile curve as JSON),
//! `tls_load` runs for the HTTPS scenarios (the same summary), single checked requests
//! (plain or HTTPS), and the idle keep-alive connection test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::Value;
use shardgate_bench::summary::{TLS_LOAD_PREFIX, WRK_PREFIX, h2load_summary, quantiles};
use shardgate_bench::tls::{self, Negotiated};

use crate::sys;
use crate::targets::TlsMode;

/// Writes the wrk script; its `done()` prints one `WRKJSON {...}` line.
pub fn write_script(dir: &Path) -> Result<PathBuf, String> {
    let qs = quantiles()
        .iter()
        .map(|q| format!("{q:.6}"))
        .collect::<Vec<_>>()
        .join(", ");
    let script = format!(
        r#"-- Written by bench/run: prints wrk's summary and latency percentiles as JSON.
local qs = {{ {qs} }}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"mean_us":%.3f,"max_us":%d,"percentiles":[',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, latency.mean, latency.max))
  for i, q in ipairs(qs) do
    if i > 1 then io.write(",") end
    io.write(string.format("[%.6f,%d]", q, latency:percentile(q)))
  end
  io.write("]}}\n")
end
"#
    );
    let path = dir.join("report.lua");
    std::fs::write(&path, script).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// One wrk invocation.
pub struct WrkJob<'a> {
    pub wrk: &'a Path,
    pub script: &'a Path,
    pub cpus: &'a [usize],
    pub threads: usize,
    pub connections: usize,
    pub seconds: u64,
    pub addr: SocketAddr,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
}

pub struct Running {
    child: std::process::Child,
    /// The summary line's prefix (empty: h2load's own text, parsed by
    /// [`h2load_summary`]).
    prefix: &'static str,
    what: &'static str,
}

/// One h2load run over TLS (ALPN h2): `connections` connections of `streams` concurrent
/// streams each for `seconds`, SNI and `:authority` the bench server name.
pub struct H2loadJob<'a> {
    pub cpus: &'a [usize],
    pub threads: usize,
    pub connections: usize,
    pub streams: usize,
    pub seconds: u64,
    pub addr: SocketAddr,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
}

impl H2loadJob<'_> {
    pub fn spawn(&self) -> Result<Running, String> {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(sys::cpu_list_string(self.cpus))
            .arg("h2load")
            .args(["-t", &self.threads.min(self.connections).max(1).to_string()])
            .args(["-c", &self.connections.to_string()])
            .args(["-m", &self.streams.to_string()])
            .args(["-D", &self.seconds.to_string()])
            .arg(format!("--connect-to={}", self.addr));
        for (name, value) in self.headers {
            // Host is the URL's authority in HTTP/2.
            if !name.eq_ignore_ascii_case("host") {
                cmd.arg("-H").arg(format!("{name}: {value}"));
            }
        }
        cmd.arg(format!(
            "https://{}:{}{}",
            tls::SERVER_NAME,
            self.addr.port(),
            self.path
        ));
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start h2load (Debian: nghttp2-client): {e}"))?;
        Ok(Running {
            child,
            prefix: "",
            what: "h2load",
        })
    }
}

impl WrkJob<'_> {
    pub fn spawn(&self) -> Result<Running, String> {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(sys::cpu_list_string(self.cpus))
            .arg(self.wrk)
            .arg("-t")
            .arg(self.threads.to_string())
            .arg("-c")
            .arg(self.connections.to_string())
            .arg("-d")
            .arg(format!("{}s", self.seconds))
            .args(["--timeout", "5s"])
            .arg("-s")
            .arg(self.script);
        for (name, value) in self.headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        cmd.arg(format!("http://{}{}", self.addr, self.path));
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start wrk: {e}"))?;
        Ok(Running {
            child,
            prefix: WRK_PREFIX,
            what: "wrk",
        })
    }
}

/// One `tls_load` invocation (src/bin/tls_load.rs): the HTTPS scenarios' load generator.
pub struct TlsJob<'a> {
    pub binary: &'a Path,
    pub ca: &'a Path,
    pub cpus: &'a [usize],
    pub threads: usize,
    pub connections: usize,
    pub seconds: u64,
    pub addr: SocketAddr,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub mode: TlsMode,
}

impl TlsJob<'_> {
    pub fn spawn(&self) -> Result<Running, String> {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(sys::cpu_list_string(self.cpus))
            .arg(self.binary)
            .arg("--addr")
            .arg(self.addr.to_string())
            .arg("--ca")
            .arg(self.ca)
            .args(["--sni", tls::SERVER_NAME])
            .args(["--path", self.path])
            .args(["--threads", &self.threads.to_string()])
            .args(["--connections", &self.connections.to_string()])
            .args(["--seconds", &self.seconds.to_string()])
            .args(["--timeout", "5"]);
        for (name, value) in self.headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if self.mode == TlsMode::Handshake {
            cmd.arg("--new-connection-per-request");
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        Ok(Running {
            child,
            prefix: TLS_LOAD_PREFIX,
            what: "tls_load",
        })
    }
}

impl Running {
    /// Waits for the load generator and returns its JSON summary.
    pub fn finish(self) -> Result<Value, String> {
        let what = self.what;
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| format!("{what}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if self.prefix.is_empty() {
            return h2load_summary(&stdout);
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(self.prefix))
            .ok_or_else(|| {
                format!(
                    "{what} printed no summary (exit {:?}):\n{stdout}\n{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        serde_json::from_str(line).map_err(|e| format!("{what} summary {line:?}: {e}"))
    }
}

/// A response read by [`get`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn request_bytes(path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Sends one GET on `stream` and reads the whole response (Content-Length or chunked).
pub fn get_on<S: Read + Write>(stream: &mut S, request: &[u8]) -> Result<Reply, String> {
    stream.write_all(request).map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let t = line.trim_end();
        if t.is_empty() {
            break;
        }
        if let Some((n, v)) = t.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut reply = Reply {
        status,
        headers,
        body_len: 0,
    };
    if let Some(len) = reply.header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length")?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        reply.body_len = len;
    } else if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            reply.body_len += size;
        }
    }
    if !r.buffer().is_empty() {
        return Err("unexpected bytes after the response".into());
    }
    Ok(reply)
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    get_on(&mut &stream, &request_bytes(path, headers))
}

/// The HTTPS client of the checked requests: the bench client configuration and SNI name.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// One GET over a new TLS connection (SNI and chain verified as the load generator does);
/// the reply and what the handshake negotiated.
pub fn tls_get(
    client: &TlsClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(Reply, Negotiated), String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(client.config.clone(), client.name.clone())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = StreamOwned::new(conn, tcp);
    let reply = get_on(&mut stream, &request_bytes(path, headers))
        .map_err(|e| format!("https://{addr}{path}: {e}"))?;
    Ok((reply, Negotiated::of(&stream.conn)))
}

/// Opens `count` keep-alive connections, each after one complete request, and returns them
/// open (idle).
pub fn open_idle(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    count: usize,
) -> Result<Vec<TcpStream>, String> {
    let request = request_bytes(path, headers);
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connection {i}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let reply = get_on(&mut &stream, &request).map_err(|e| format!("connection {i}: {e}"))?;
        if reply.status != 200 {
            return Err(format!("connection {i}: status {}", reply.status));
        }
        conns.push(stream);
    }
    Ok(conns)
}
