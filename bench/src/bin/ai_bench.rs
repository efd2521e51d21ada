//! The AI gateway's own cost (issue 15): an OpenAI-style SSE stream relayed by a `type: ai`
//! service with metering and `pii_masking` on, against the same stream through the plain
//! proxy path (a REST service) of the same shardgate process, in the same run; and a
//! non-streaming chat completion at concurrency 1 through both.
//!
//! Usage: `ai_bench [--binary PATH] [--proxy-cpus LIST] [--load-cpus LIST] [--workers N]
//!   [--streams N] [--events N] [--gap-us N] [--duration SECS] [--rounds N]
//!   [--chat-requests N] [--smoke] [--json FILE]` (`--help` says what each does).
//!
//! What runs where:
//! - shardgate, pinned to the proxy CPUs (`taskset`), configured through its admin API: one
//!   gateway, one key (`X-API-Key`), rule `/plain/*` → a REST service and rule `/ai/*` → an
//!   AI service (`openai_compatible` provider, a price for the model, so cost is metered
//!   too) with `pii_masking` on the rule (default entities, 256-byte stream window). Usage
//!   tracking and request metrics stay on (the defaults).
//! - in this process, re-pinned to the load CPUs: the fake provider (a thread per
//!   connection) and the clients (a thread per stream).
//!
//! The provider answers `"stream": true` with `--events` content chunks, one every
//! `--gap-us` µs (a real model's cadence, scaled down), then a finish chunk, the usage
//! chunk when asked for (the AI path always asks; the plain path's client does not) and
//! `[DONE]`: each write one HTTP chunk, as a provider's are. Every chunk's `id` carries the
//! time it was written (nanoseconds on this process's monotonic clock), so the client
//! measures each event's latency from the provider's write to its own read of it. Each
//! content delta is the same six bytes, so the client also knows when the text of each
//! event arrived: the *text delay*, which `pii_masking`'s stream window lengthens by design
//! (it holds back up to `stream_window` bytes so an entity split across events is masked).
//!
//! Rounds: plain then AI, `--rounds` times, for streams and for chat completions; the
//! added figures are medians over rounds of (AI − the plain run just before it). CPU is
//! the gateway's, from every thread's `schedstat` (nanoseconds), ÷ the events (or
//! requests) the clients received.
//!
//! Before measuring it checks both paths: the streams are whole, the AI path hides the
//! usage chunk and masks an email split across three events, the plain path does neither,
//! and the gateway metered the AI requests exactly. A failed check exits 1.
//!
//! Prints a Markdown section (what `bench/run` puts in its report); `--json FILE` writes
//! every run's figures.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use shardgate_bench::cli::num;
use shardgate_bench::client::Client;
use shardgate_bench::cpu::{threads_cpu_ns_of, user_system_of};
use shardgate_bench::cpus::{allowed_cpus, cpu_list_string, parse_cpu_list};
use shardgate_bench::ready::{addr_after, first_line};

/// Every content delta of a measured stream: six bytes, no entity in it.
const WORD: &str = " lorem";
/// A prompt containing this gets [`PROBE_WORDS`] instead: an email split across events.
const PROBE: &str = "pii-probe";
const PROBE_WORDS: [&str; 4] = [" mail bob", "@exam", "ple.com", " ok"];
const MODEL: &str = "bench-model";
const HOST: &str = "bench.localhost";
/// Targets from issue 15.
const TARGET_CPU_PER_EVENT_US: f64 = 2.0;
const TARGET_ADDED_P99_MS: f64 = 0.1;

struct Args {
    binary: PathBuf,
    proxy_cpus: Vec<usize>,
    load_cpus: Vec<usize>,
    workers: usize,
    streams: usize,
    busy_streams: usize,
    events: usize,
    gap: Duration,
    duration: Duration,
    rounds: usize,
    chat_requests: usize,
    /// Only these paths (`--paths ai` to profile one), in this order.
    paths: Vec<Path>,
    json: Option<PathBuf>,
}

const HELP: &str = "usage: ai_bench [flags]
  --binary PATH        shardgate binary (default: beside this one)
  --proxy-cpus LIST    CPUs for shardgate (default: first half of the allowed CPUs)
  --load-cpus LIST     CPUs for this process: fake provider and clients (default: the rest)
  --workers N          shardgate --workers (default: number of proxy CPUs)
  --streams N          concurrent streams of the light load: latency (default 16)
  --busy-streams N     concurrent streams of the busy load: CPU per event (default 48;
                       0 skips it)
  --events N           content events per stream (default 64)
  --gap-us N           microseconds between a stream's events (default 1000)
  --duration SECS      measured seconds per streaming run (default 6)
  --rounds N           rounds of (plain, ai) pairs (default 3)
  --chat-requests N    non-streaming requests per run at concurrency 1 (default 2000)
  --smoke              1 s runs, 1 round, 200 chat requests, 16 events
  --paths LIST         measure only these paths (default plain,ai; one alone is for
                       profiling: the report's added figures need both)
  --json FILE          write every run's figures to FILE";

fn parse_args() -> Result<Args, String> {
    let allowed = allowed_cpus();
    let half = allowed.len().div_ceil(2).max(1);
    let mut args = Args {
        binary: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("shardgate")))
            .unwrap_or_else(|| PathBuf::from("target/release/shardgate")),
        proxy_cpus: allowed[..half.min(allowed.len())].to_vec(),
        load_cpus: if allowed.len() > half {
            allowed[half..].to_vec()
        } else {
            allowed.clone()
        },
        workers: 0,
        streams: 16,
        busy_streams: 48,
        events: 64,
        gap: Duration::from_micros(1000),
        duration: Duration::from_secs(6),
        rounds: 3,
        chat_requests: 2000,
        paths: vec![Path::Plain, Path::Ai],
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--binary" => args.binary = PathBuf::from(value()?),
            "--proxy-cpus" => args.proxy_cpus = parse_cpu_list(&value()?)?,
            "--load-cpus" => args.load_cpus = parse_cpu_list(&value()?)?,
            "--workers" => args.workers = num(&flag, value()?)?,
            "--streams" => args.streams = num(&flag, value()?)?,
            "--busy-streams" => args.busy_streams = num(&flag, value()?)?,
            "--events" => args.events = num(&flag, value()?)?,
            "--gap-us" => args.gap = Duration::from_micros(num(&flag, value()?)?),
            "--duration" => args.duration = Duration::from_secs_f64(num(&flag, value()?)?),
            "--rounds" => args.rounds = num(&flag, value()?)?,
            "--chat-requests" => args.chat_requests = num(&flag, value()?)?,
            "--json" => args.json = Some(PathBuf::from(value()?)),
            "--paths" => {
                args.paths = value()?
                    .split(',')
                    .map(|p| match p.trim() {
                        "plain" => Ok(Path::Plain),
                        "ai" => Ok(Path::Ai),
                        other => Err(format!("--paths: unknown path {other:?} (plain, ai)")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--smoke" => {
                args.duration = Duration::from_secs(1);
                args.rounds = 1;
                args.chat_requests = 200;
                args.events = 16;
            }
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}\n{HELP}")),
        }
    }
    if args.workers == 0 {
        args.workers = args.proxy_cpus.len();
    }
    if args.streams == 0 || args.events == 0 || args.rounds == 0 || args.chat_requests == 0 {
        return Err("--streams, --events, --rounds and --chat-requests must be at least 1".into());
    }
    Ok(args)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ai_bench: {e}");
        std::process::exit(1);
    }
}

/// Nanoseconds on this process's monotonic clock: what the provider writes into each
/// chunk and the clients compare against (both live in this process).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// --- HTTP/1.1, just enough ----------------------------------------------------------------

struct Head {
    first_line: String,
    content_length: usize,
    chunked: bool,
}

/// Reads a request or response head; `None` on a clean end of stream before it.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let first_line = line.trim_end().to_string();
    let (mut content_length, mut chunked) = (0, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "head cut off"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    Ok(Some(Head {
        first_line,
        content_length,
        chunked,
    }))
}

/// The next chunk of a chunked body into `out` (replacing it); `false` at the last chunk.
fn read_chunk(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let size_text = line.trim_end().split(';').next().unwrap_or_default();
    let size = usize::from_str_radix(size_text, 16)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}")))?;
    out.clear();
    if size == 0 {
        // Trailers (none expected), then the blank line.
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                return Ok(false);
            }
        }
    }
    out.resize(size, 0);
    r.read_exact(out)?;
    let mut crlf = [0; 2];
    r.read_exact(&mut crlf)?;
    Ok(true)
}

fn read_body(r: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    if head.chunked {
        let (mut body, mut chunk) = (Vec::new(), Vec::new());
        while read_chunk(r, &mut chunk)? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    } else {
        let mut body = vec![0; head.content_length];
        r.read_exact(&mut body)?;
        Ok(body)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// --- the fake provider ---------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Cadence {
    events: usize,
    gap: Duration,
}

fn start_provider(cadence: Cadence) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                // A connection the gateway closed or broke ends here; nothing to report.
                let _ = serve(conn, cadence);
            });
        }
    });
    Ok(addr)
}

fn serve(conn: TcpStream, cadence: Cadence) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    while let Some(head) = read_head(&mut reader)? {
        let body = read_body(&mut reader, &head)?;
        let words: Vec<&str> = if contains(&body, PROBE.as_bytes()) {
            PROBE_WORDS.to_vec()
        } else {
            vec![WORD; cadence.events]
        };
        if contains(&body, b"\"stream\":true") {
            stream_answer(
                &mut w,
                &words,
                cadence.gap,
                contains(&body, b"\"include_usage\":true"),
            )?;
        } else {
            let text: String = words.concat();
            let answer = json!({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": words.len(),
                          "total_tokens": 12 + words.len()},
            })
            .to_string();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )?;
        }
    }
    Ok(())
}

fn chunk_event(out: &mut Vec<u8>, data: &str) {
    let event = format!("data: {data}\n\n");
    let _ = write!(out, "{:x}\r\n{event}\r\n", event.len());
}

fn stream_answer(w: &mut TcpStream, words: &[&str], gap: Duration, usage: bool) -> io::Result<()> {
    let start = Instant::now();
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for (i, word) in words.iter().enumerate() {
        if let Some(wait) = (start + gap * i as u32).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        chunk_event(
            &mut out,
            &format!(
                r#"{{"id":"bench-{}","object":"chat.completion.chunk","created":1,"model":"{MODEL}","choices":[{{"index":0,"delta":{{"content":"{word}"}},"finish_reason":null}}]}}"#,
                now_ns()
            ),
        );
        w.write_all(&out)?;
        out.clear();
    }
    if let Some(wait) = (start + gap * words.len() as u32).checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let id = format!("bench-{}", now_ns());
    chunk_event(
        &mut out,
        &format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","created":1,"model":"{MODEL}","choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#
        ),
    );
    if usage {
        chunk_event(
            &mut out,
            &format!(
                r#"{{"id":"{id}","object":"chat.completion.chunk","created":1,"model":"{MODEL}","choices":[],"usage":{{"prompt_tokens":12,"completion_tokens":{n},"total_tokens":{t}}}}}"#,
                n = words.len(),
                t = 12 + words.len()
            ),
        );
    }
    chunk_event(&mut out, "[DONE]");
    out.extend_from_slice(b"0\r\n\r\n");
    w.write_all(&out)
}

// --- shardgate -----------------------------------------------------------------------------

/// The gateway process, killed on drop.
struct Gateway {
    child: Child,
    pid: u32,
    admin: SocketAddr,
    proxy: SocketAddr,
    key: String,
    _data: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(args: &Args, provider: SocketAddr) -> Result<Gateway, String> {
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    // The gateway warns about a data directory other users can read (it holds keys).
    std::fs::set_permissions(
        data.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(|e| format!("{}: {e}", data.path().display()))?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(cpu_list_string(&args.proxy_cpus))
        .arg(&args.binary);
    if shardgate_bench::tls::shardgate_has_tls_listener(&args.binary) {
        // The HTTPS listener's default (0.0.0.0:8443) is not ours to take.
        cmd.args(["--tls-listen", "off"]);
    }
    let mut child = cmd
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            // Errors only: the load trips the usage-anomaly warning by design.
            "--log",
            "error",
        ])
        .arg("--workers")
        .arg(args.workers.to_string())
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.binary.display()))?;
    let pid = child.id();
    let addrs = first_line(&mut child, Duration::from_secs(30))
        .and_then(|line| Ok((addr_after(&line, "admin=")?, addr_after(&line, "proxy=")?)));
    let (admin, proxy) = match addrs {
        Ok(addrs) => addrs,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let mut gateway = Gateway {
        child,
        pid,
        admin,
        proxy,
        key: String::new(),
        _data: data,
    };
    gateway.key = configure(admin, provider)?;
    Ok(gateway)
}

fn configure(admin: SocketAddr, provider: SocketAddr) -> Result<String, String> {
    let mut client = Client::connect(admin).map_err(|e| format!("admin {admin}: {e}"))?;
    let mut post = |path: &str, body: Value| -> Result<Value, String> {
        let resp = client
            .request("POST", path, Some(&body.to_string()))
            .map_err(|e| format!("POST {path}: {e}"))?;
        if resp.status != 201 && resp.status != 200 {
            return Err(format!(
                "POST {path}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("POST {path}: {e}"))
    };
    let id = |v: &Value| -> Result<String, String> {
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no id in {v}"))
    };
    let gw = id(&post(
        "/api/v1/gateways",
        json!({"name": "bench", "subdomain": "bench"}),
    )?)?;
    let base = format!("/api/v1/gateways/{gw}");
    let target = json!({"host": provider.ip().to_string(), "port": provider.port()});
    let origin = id(&post(
        &format!("{base}/upstreams"),
        json!({"name": "origin", "targets": [target]}),
    )?)?;
    let mut ai_target = target.clone();
    ai_target["provider"] = json!("openai_compatible");
    ai_target["credentials"] = json!({"api_key": "sk-bench-provider"});
    let models = id(&post(
        &format!("{base}/upstreams"),
        json!({"name": "provider", "targets": [ai_target]}),
    )?)?;
    let plain = id(&post(
        &format!("{base}/services"),
        json!({"name": "plain", "upstream_id": origin}),
    )?)?;
    let ai = id(&post(
        &format!("{base}/services"),
        json!({"name": "ai", "type": "ai", "upstream_id": models,
               "ai": {"prices": {MODEL: {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}}}),
    )?)?;
    post(
        &format!("{base}/rules"),
        json!({"path": "/plain/*", "service_id": plain}),
    )?;
    post(
        &format!("{base}/rules"),
        json!({"path": "/ai/*", "service_id": ai, "plugin_chain": [
            {"name": "pii_masking", "enabled": true, "stage": "pre_request", "priority": 1,
             "settings": {}}]}),
    )?;
    let key = post(&format!("{base}/keys"), json!({"name": "bench"}))?;
    key["key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the key response carried no \"key\"".into())
}

// --- clients -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Plain,
    Ai,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Plain => "plain",
            Path::Ai => "ai",
        }
    }
}

fn request(path: Path, key: &str, stream: bool, prompt: &str) -> Vec<u8> {
    let body = json!({"model": MODEL, "stream": stream, "max_tokens": 256,
                      "messages": [{"role": "user", "content": prompt}]})
    .to_string();
    format!(
        "POST /{}/v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        path.name(),
        body.len()
    )
    .into_bytes()
}

fn connect(addr: SocketAddr) -> io::Result<(BufReader<TcpStream>, TcpStream)> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok((BufReader::new(s.try_clone()?), s))
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 3 significant figures, up to an hour.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .unwrap_or_else(|_| unreachable!("the bounds are constant and valid"))
}

/// What the clients of one streaming run saw.
struct StreamStats {
    streams: u64,
    events: u64,
    /// Provider write → client read, per event, ns.
    latency: Histogram<u64>,
    /// Provider write of an event's text → client read of that text, ns.
    text_delay: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl StreamStats {
    fn new() -> StreamStats {
        StreamStats {
            streams: 0,
            events: 0,
            latency: histogram(),
            text_delay: histogram(),
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, o: StreamStats) {
        self.streams += o.streams;
        self.events += o.events;
        let _ = self.latency.add(&o.latency);
        let _ = self.text_delay.add(&o.text_delay);
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// One stream's client-side result: the text and what was recorded.
struct OneStream {
    text: String,
    events: u64,
    saw_usage: bool,
}

fn field<'a>(event: &'a str, name: &str) -> Option<&'a str> {
    let at = event.find(name)? + name.len();
    let rest = &event[at..];
    Some(&rest[..rest.find('"')?])
}

/// Sends one streaming request on `conn` and reads the answer event by event.
fn one_stream(
    conn: &mut (BufReader<TcpStream>, TcpStream),
    request: &[u8],
    stats: &mut StreamStats,
) -> Result<OneStream, String> {
    conn.1.write_all(request).map_err(|e| e.to_string())?;
    let head = read_head(&mut conn.0)
        .map_err(|e| e.to_string())?
        .ok_or("connection closed")?;
    if !head.first_line.contains(" 200 ") || !head.chunked {
        let body = read_body(&mut conn.0, &head).unwrap_or_default();
        return Err(format!(
            "{} (chunked: {}): {}",
            head.first_line,
            head.chunked,
            String::from_utf8_lossy(&body)
        ));
    }
    let mut pending = Vec::new();
    let mut chunk = Vec::new();
    let mut emitted = Vec::new(); // provider write time of each content event
    let mut resolved = 0;
    let mut one = OneStream {
        text: String::new(),
        events: 0,
        saw_usage: false,
    };
    let mut done = false;
    while read_chunk(&mut conn.0, &mut chunk).map_err(|e| e.to_string())? {
        let now = now_ns();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 2);
            one.events += 1;
            if event.contains("[DONE]") {
                done = true;
                continue;
            }
            if event.contains("\"usage\"") {
                one.saw_usage = true;
            }
            if let Some(ts) = field(&event, "\"id\":\"bench-").and_then(|t| t.parse::<u64>().ok()) {
                let _ = stats.latency.record(now.saturating_sub(ts).max(1));
                if !event.contains("\"finish_reason\":\"stop\"") && !event.contains("\"usage\"") {
                    emitted.push(ts);
                }
            }
            if let Some(text) = field(&event, "\"content\":\"") {
                one.text.push_str(text);
                while resolved < emitted.len() && one.text.len() >= WORD.len() * (resolved + 1) {
                    let _ = stats
                        .text_delay
                        .record(now.saturating_sub(emitted[resolved]).max(1));
                    resolved += 1;
                }
            }
        }
    }
    if !done {
        return Err(format!("the stream ended without [DONE]: {}", one.text));
    }
    Ok(one)
}

/// `streams` clients, each streaming on its own keep-alive connection until `duration` is up.
fn stream_run(
    proxy: SocketAddr,
    key: &str,
    path: Path,
    streams: usize,
    events: usize,
    duration: Duration,
) -> StreamStats {
    let deadline = Instant::now() + duration;
    let request = request(path, key, true, "Write a long answer.");
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let request = request.clone();
            thread::spawn(move || {
                let mut stats = StreamStats::new();
                let mut conn = None;
                while Instant::now() < deadline {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match connect(proxy) {
                            Ok(c) => conn.insert(c),
                            Err(e) => {
                                stats.error(format!("connect: {e}"));
                                thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    match one_stream(c, &request, &mut stats) {
                        Ok(one)
                            if one.text.len() == WORD.len() * events
                                && one.events as usize == events + 2 =>
                        {
                            stats.streams += 1;
                            stats.events += one.events;
                        }
                        Ok(one) => {
                            stats.error(format!(
                                "{} events, {} bytes of text; expected {} and {}",
                                one.events,
                                one.text.len(),
                                events + 2,
                                WORD.len() * events
                            ));
                            conn = None;
                        }
                        Err(e) => {
                            stats.error(e);
                            conn = None;
                        }
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = StreamStats::new();
    for h in handles {
        match h.join() {
            Ok(s) => total.merge(s),
            Err(_) => total.error("a client thread panicked".into()),
        }
    }
    total
}

/// `n` non-streaming chat completions, one at a time on one keep-alive connection.
fn chat_run(proxy: SocketAddr, key: &str, path: Path, n: usize) -> Result<Histogram<u64>, String> {
    let request = request(path, key, false, "Write a long answer.");
    let mut conn = connect(proxy).map_err(|e| e.to_string())?;
    let mut hist = histogram();
    for i in 0..n {
        let t = Instant::now();
        conn.1.write_all(&request).map_err(|e| e.to_string())?;
        let head = read_head(&mut conn.0)
            .map_err(|e| e.to_string())?
            .ok_or("connection closed")?;
        let body = read_body(&mut conn.0, &head).map_err(|e| e.to_string())?;
        let elapsed = t.elapsed().as_nanos() as u64;
        if !head.first_line.contains(" 200 ") || !contains(&body, WORD.as_bytes()) {
            return Err(format!(
                "request {i}: {}: {}",
                head.first_line,
                String::from_utf8_lossy(&body)
            ));
        }
        let _ = hist.record(elapsed.max(1));
    }
    Ok(hist)
}

// --- checks --------------------------------------------------------------------------------

fn check(g: &Gateway, events: usize) -> Result<(), String> {
    for path in [Path::Plain, Path::Ai] {
        let mut conn = connect(g.proxy).map_err(|e| e.to_string())?;
        let mut stats = StreamStats::new();
        let one = one_stream(&mut conn, &request(path, &g.key, true, "hello"), &mut stats)
            .map_err(|e| format!("{} stream: {e}", path.name()))?;
        if one.text.len() != WORD.len() * events || one.events as usize != events + 2 {
            return Err(format!(
                "{} stream: {} events and {} bytes of text, expected {} and {}",
                path.name(),
                one.events,
                one.text.len(),
                events + 2,
                WORD.len() * events
            ));
        }
        if one.saw_usage {
            return Err(format!(
                "{} stream: a usage chunk the client did not ask for",
                path.name()
            ));
        }
        let probe = one_stream(&mut conn, &request(path, &g.key, true, PROBE), &mut stats)
            .map_err(|e| format!("{} probe stream: {e}", path.name()))?;
        let (want, not) = match path {
            Path::Plain => ("bob@example.com", "[EMAIL]"),
            Path::Ai => ("[EMAIL]", "bob@"),
        };
        if !probe.text.contains(want) || probe.text.contains(not) {
            return Err(format!(
                "{} stream: the email split across events came back as {:?}",
                path.name(),
                probe.text
            ));
        }
    }
    let mut admin = Client::connect(g.admin).map_err(|e| e.to_string())?;
    let metrics = admin
        .request("GET", "/metrics", None)
        .map_err(|e| format!("GET /metrics: {e}"))?;
    let text = String::from_utf8_lossy(&metrics.body);
    let exact = text.lines().any(|l| {
        l.starts_with("shardgate_ai_requests_total")
            && l.contains("metering=\"exact\"")
            && l.split_whitespace().last().is_some_and(|v| v != "0")
    });
    if !exact {
        return Err(format!(
            "the AI requests were not metered exactly: {}",
            text.lines()
                .filter(|l| l.starts_with("shardgate_ai_"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    Ok(())
}

// --- the run -------------------------------------------------------------------------------

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn quantiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "count": h.len(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn cpu_ns(g: &Gateway) -> Result<u64, String> {
    threads_cpu_ns_of(g.pid).map_err(|e| format!("gateway CPU: {e}"))
}

/// One streaming run through `path` with `streams` clients: the clients' figures and the
/// gateway's CPU per event.
fn measure_streams(g: &Gateway, path: Path, streams: usize, args: &Args) -> Result<Value, String> {
    let cpu0 = cpu_ns(g)?;
    let split0 = user_system_of(g.pid).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let s = stream_run(g.proxy, &g.key, path, streams, args.events, args.duration);
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_ns(g)? - cpu0;
    let split = user_system_of(g.pid).map_err(|e| e.to_string())?;
    let user = (split.0 - split0.0).as_secs_f64();
    let system = (split.1 - split0.1).as_secs_f64();
    if s.errors > 0 {
        return Err(format!(
            "{} errors, first: {}",
            s.errors,
            s.first_error.unwrap_or_default()
        ));
    }
    let events = s.events.max(1) as f64;
    Ok(json!({
        "clients": streams,
        "streams": s.streams,
        "events": s.events,
        "seconds": wall,
        "events_per_s": s.events as f64 / wall,
        "cpu_us_per_event": cpu as f64 / 1e3 / events,
        "cpu_busy": cpu as f64 / 1e9 / wall,
        "kernel_share": system / (user + system).max(f64::MIN_POSITIVE),
        "event_latency": quantiles(&s.latency),
        "text_delay": quantiles(&s.text_delay),
    }))
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    // Pin this process (and every thread it starts) to the load CPUs.
    let pid = std::process::id().to_string();
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu_list_string(&args.load_cpus), &pid])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    if !pinned.success() {
        return Err(format!(
            "taskset could not pin this process to {:?}",
            args.load_cpus
        ));
    }
    let cadence = Cadence {
        events: args.events,
        gap: args.gap,
    };
    let provider = start_provider(cadence).map_err(|e| format!("fake provider: {e}"))?;
    let gateway = start_gateway(&args, provider)?;
    check(&gateway, args.events)?;
    eprintln!(
        "ai_bench: checks passed; {} rounds of {} streams × {} events every {} µs for {:?}, then {} chat completions",
        args.rounds,
        args.streams,
        args.events,
        args.gap.as_micros(),
        args.duration,
        args.chat_requests
    );
    // Warm-up: both paths, a short streaming run and a few chat completions.
    for &path in &args.paths {
        let warm = stream_run(
            gateway.proxy,
            &gateway.key,
            path,
            args.streams,
            args.events,
            Duration::from_millis(500),
        );
        if warm.errors > 0 {
            return Err(format!(
                "{} warm-up: {} errors, first: {}",
                path.name(),
                warm.errors,
                warm.first_error.unwrap_or_default()
            ));
        }
        chat_run(gateway.proxy, &gateway.key, path, 50)
            .map_err(|e| format!("{} warm-up: {e}", path.name()))?;
    }

    let mut stream_rounds = Vec::new();
    let mut busy_rounds = Vec::new();
    let mut chat_rounds = Vec::new();
    for round in 0..args.rounds {
        for (load, streams, rounds) in [
            ("light", args.streams, &mut stream_rounds),
            ("busy", args.busy_streams, &mut busy_rounds),
        ] {
            if streams == 0 {
                continue;
            }
            let mut pair = serde_json::Map::new();
            for &path in &args.paths {
                let run = measure_streams(&gateway, path, streams, &args).map_err(|e| {
                    format!("round {round}, {load} load, {} streams: {e}", path.name())
                })?;
                eprintln!(
                    "ai_bench: round {round} {load:5} {:5} streams: {:.0} events/s, {:.2} µs CPU/event ({:.0} % kernel), event p99 {:.3} ms",
                    path.name(),
                    run["events_per_s"].as_f64().unwrap_or(0.0),
                    run["cpu_us_per_event"].as_f64().unwrap_or(0.0),
                    run["kernel_share"].as_f64().unwrap_or(0.0) * 100.0,
                    run["event_latency"]["p99_ms"].as_f64().unwrap_or(0.0),
                );
                pair.insert(path.name().into(), run);
            }
            rounds.push(Value::Object(pair));
        }

        let mut pair = serde_json::Map::new();
        for &path in &args.paths {
            let cpu0 = cpu_ns(&gateway)?;
            let h = chat_run(gateway.proxy, &gateway.key, path, args.chat_requests)
                .map_err(|e| format!("round {round}, {} chat: {e}", path.name()))?;
            let cpu = cpu_ns(&gateway)? - cpu0;
            eprintln!(
                "ai_bench: round {round} {:5} chat: p50 {:.3} ms, p99 {:.3} ms, {:.1} µs CPU/request",
                path.name(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                cpu as f64 / 1e3 / h.len().max(1) as f64
            );
            let mut q = quantiles(&h);
            q["cpu_us_per_request"] = json!(cpu as f64 / 1e3 / h.len().max(1) as f64);
            pair.insert(path.name().into(), q);
        }
        chat_rounds.push(Value::Object(pair));
    }
    drop(gateway);

    let results = json!({
        "config": {
            "proxy_cpus": args.proxy_cpus,
            "load_cpus": args.load_cpus,
            "workers": args.workers,
            "streams": args.streams,
            "busy_streams": args.busy_streams,
            "events": args.events,
            "gap_us": args.gap.as_micros() as u64,
            "duration_s": args.duration.as_secs_f64(),
            "rounds": args.rounds,
            "chat_requests": args.chat_requests,
        },
        "streams": stream_rounds,
        "busy": busy_rounds,
        "chat": chat_rounds,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, results.to_string())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    print!("{}", markdown(&results));
    Ok(())
}

/// The report section: medians over rounds, and the added figures against the targets.
fn markdown(r: &Value) -> String {
    use std::fmt::Write as _;
    let c = &r["config"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let rounds = |key: &str| r[key].as_array().cloned().unwrap_or_default();
    let (light, busy, chat) = (rounds("streams"), rounds("busy"), rounds("chat"));
    // Median over rounds of `get(round[path])`.
    let med = |rounds: &[Value], path: &str, get: &dyn Fn(&Value) -> f64| {
        median(rounds.iter().map(|p| get(&p[path])).collect())
    };
    // Median over rounds of (ai − plain).
    let added = |rounds: &[Value], get: &dyn Fn(&Value) -> f64| {
        median(
            rounds
                .iter()
                .map(|p| get(&p["ai"]) - get(&p["plain"]))
                .collect(),
        )
    };
    let mut md = String::new();
    let _ = writeln!(md, "## AI gateway: SSE relay and chat completion cost\n");
    let _ = writeln!(
        md,
        "`bench/src/bin/ai_bench.rs`: one shardgate ({} worker(s), CPUs {}), the fake \
         OpenAI-compatible provider and the clients on CPUs {}. `plain`: rule `/plain/*` → a \
         REST service; `ai`: rule `/ai/*` → a `type: ai` service (`openai_compatible` \
         provider, metering with a price, usage tracking and request metrics on) with \
         `pii_masking` (default entities, 256-byte stream window) on the rule. Same key, same \
         provider, same process. Each stream: {} content events (6 bytes of text each) one \
         every {} µs, then a finish chunk and `[DONE]` ({} events). Loads: `light`, {} \
         concurrent streams (the gateway mostly idle between events: latency), and `busy`, \
         {} (the load CPUs saturated: CPU per event, as `bench/run` reads CPU µs/req under \
         wrk). Rounds: plain then ai, {} times; \"added\" is the median over rounds of (ai − \
         the plain run just before it). CPU: the gateway's threads' `schedstat` ÷ events (or \
         requests) received.\n",
        c["workers"],
        c["proxy_cpus"],
        c["load_cpus"],
        c["events"],
        c["gap_us"],
        c["events"].as_u64().unwrap_or(0) + 2,
        c["streams"],
        c["busy_streams"],
        c["rounds"],
    );
    let _ = writeln!(
        md,
        "| SSE stream | load | events/s | CPU µs/event | event latency p50 ms | p99 ms | p99.9 ms | text delay p50 ms | p99 ms |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
    let cols: [&dyn Fn(&Value) -> f64; 7] = [
        &|v| f(&v["events_per_s"]),
        &|v| f(&v["cpu_us_per_event"]),
        &|v| f(&v["event_latency"]["p50_ms"]),
        &|v| f(&v["event_latency"]["p99_ms"]),
        &|v| f(&v["event_latency"]["p999_ms"]),
        &|v| f(&v["text_delay"]["p50_ms"]),
        &|v| f(&v["text_delay"]["p99_ms"]),
    ];
    let mut added_cpu = [f64::NAN; 2];
    let mut added_p99 = f64::NAN;
    for (i, (load, rounds)) in [("light", &light), ("busy", &busy)].into_iter().enumerate() {
        if rounds.is_empty() {
            continue;
        }
        for path in ["plain", "ai"] {
            let v: Vec<f64> = cols.iter().map(|g| med(rounds, path, *g)).collect();
            let _ = writeln!(
                md,
                "| {path} | {load} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                v[0], v[1], v[2], v[3], v[4], v[5], v[6]
            );
        }
        let a: Vec<f64> = cols.iter().map(|g| added(rounds, *g)).collect();
        added_cpu[i] = a[1];
        if i == 0 {
            added_p99 = a[3];
        }
        let _ = writeln!(
            md,
            "| **added** (ai − plain) | {load} | | **{:+.2}** | {:+.3} | {} | {:+.3} | {:+.3} | {:+.3} |",
            a[1],
            a[2],
            if i == 0 {
                format!("**{:+.3}**", a[3])
            } else {
                format!("{:+.3}", a[3])
            },
            a[4],
            a[5],
            a[6]
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| chat completion, concurrency 1 | requests | p50 ms | p99 ms | p99.9 ms | CPU µs/request |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|");
    let ccols: [&dyn Fn(&Value) -> f64; 5] = [
        &|v| f(&v["count"]),
        &|v| f(&v["p50_ms"]),
        &|v| f(&v["p99_ms"]),
        &|v| f(&v["p999_ms"]),
        &|v| f(&v["cpu_us_per_request"]),
    ];
    for path in ["plain", "ai"] {
        let v: Vec<f64> = ccols.iter().map(|g| med(&chat, path, *g)).collect();
        let _ = writeln!(
            md,
            "| {path} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} |",
            v[0], v[1], v[2], v[3], v[4]
        );
    }
    let ca: Vec<f64> = ccols.iter().map(|g| added(&chat, *g)).collect();
    let _ = writeln!(
        md,
        "| **added** (ai − plain) | | {:+.3} | **{:+.3}** | {:+.3} | {:+.1} |\n",
        ca[1], ca[2], ca[3], ca[4]
    );
    let verdict = |v: f64, target: f64| {
        if v.is_nan() {
            "not measured"
        } else if v <= target {
            "met"
        } else {
            "**not met**"
        }
    };
    let _ = writeln!(md, "| issue 15 target | measured | |");
    let _ = writeln!(md, "|---|--:|---|");
    for (load, v) in [("busy", added_cpu[1]), ("light", added_cpu[0])] {
        let _ = writeln!(
            md,
            "| added CPU per event ≤ {TARGET_CPU_PER_EVENT_US} µs, {load} load | {v:+.2} µs | {} |",
            verdict(v, TARGET_CPU_PER_EVENT_US)
        );
    }
    let _ = writeln!(
        md,
        "| added p99 latency per event ≤ {TARGET_ADDED_P99_MS} ms (light load) | {added_p99:+.3} ms | {} |",
        verdict(added_p99, TARGET_ADDED_P99_MS)
    );
    let _ = writeln!(
        md,
        "| non-streaming added p99 at concurrency 1 ≤ {TARGET_ADDED_P99_MS} ms | {:+.3} ms | {} |\n",
        ca[2],
        verdict(ca[2], TARGET_ADDED_P99_MS)
    );
    let _ = writeln!(
        md,
        "Event latency is each event's provider write → client read; every event is relayed \
         as it arrives. At the light load each event wakes the gateway on its own, so both \
         paths pay a kernel wake-up per event and the AI path's extra code runs with cold \
         caches; at the busy load a wake-up serves several events. The relay's own work per \
         event, hot in cache, is `cargo bench -p shardgate-bench --bench ai_relay`. The text \
         delay is each event's *text*: `pii_masking` holds back up to its `stream_window` \
         (256 bytes here, ~{} events of this stream) so an entity split across events is \
         masked whole; the events still flow, with the held text following in later ones. A \
         smaller `stream_window` shortens the delay.\n",
        256 / WORD.len()
    );
    md
}
