//! Load: wrk runs (with a Lua `done()` that prints the latency percentile curve as JSON),
//! single checked requests, and the idle keep-alive connection test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::sys;

/// Quantiles (in percent) wrk reports: the percentile curve from 0 % to 99.99 % in steps
/// of a tenth of a decade of `1 / (1 - q)`, plus the named ones and the maximum.
pub fn quantiles() -> Vec<f64> {
    let mut qs: Vec<f64> = (0..=40)
        .map(|k| 100.0 * (1.0 - 10f64.powf(-(k as f64) / 10.0)))
        .collect();
    qs.extend([50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0]);
    qs.sort_by(f64::total_cmp);
    qs.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    qs
}

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
        Ok(Running { child })
    }
}

impl Running {
    /// Waits for wrk and returns its JSON summary.
    pub fn finish(self) -> Result<Value, String> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| format!("wrk: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WRKJSON "))
            .ok_or_else(|| {
                format!(
                    "wrk printed no summary (exit {:?}):\n{stdout}\n{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        serde_json::from_str(line).map_err(|e| format!("wrk summary {line:?}: {e}"))
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
pub fn get_on(stream: &TcpStream, request: &[u8]) -> Result<Reply, String> {
    let mut w = stream;
    w.write_all(request).map_err(|e| e.to_string())?;
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
    get_on(&stream, &request_bytes(path, headers))
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
        let reply = get_on(&stream, &request).map_err(|e| format!("connection {i}: {e}"))?;
        if reply.status != 200 {
            return Err(format!("connection {i}: status {}", reply.status));
        }
        conns.push(stream);
    }
    Ok(conns)
}
