//! AI providers and clients for the AI gateway tests: fake OpenAI and Anthropic servers
//! (tests/python/fake_ai.py: real HTTP and SSE with usage fields, deterministic replies,
//! fault injection, and a record of every request they received), and the official OpenAI
//! and Anthropic SDKs (tests/python/ai_client.py) as the clients users have.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::{Client, python};

fn script(name: &str) -> String {
    format!("{}/python/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A fake provider process, killed on drop.
#[derive(Debug)]
pub struct FakeProvider {
    child: Child,
    pub port: u16,
    pub name: String,
}

impl FakeProvider {
    /// `api`: `openai` or `anthropic`; `args`: extra CLI flags (`--status 429`,
    /// `--fail-after 2`, `--delay-ms 50`).
    pub fn start(api: &str, name: &str, args: &[&str]) -> FakeProvider {
        let mut child = Command::new(python())
            .arg(script("fake_ai.py"))
            .args([
                "--api",
                api,
                "--port",
                "0",
                "--name",
                name,
                "--exit-on-stdin-eof",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tests/python/fake_ai.py");
        let stdout = child.stdout.take().expect("fake stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the fake's ready line");
        let port = line
            .trim()
            .strip_prefix("fake_ai ready port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fake_ai.py did not start: {line:?}"));
        FakeProvider {
            child,
            port,
            name: name.to_owned(),
        }
    }

    fn admin(&self) -> Client {
        Client::new(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// Every request it received (see fake_ai.py's `/_seen`).
    pub fn seen(&self) -> Vec<Value> {
        match self.admin().get("/_seen").expect_status(200).json() {
            Value::Array(list) => list,
            other => panic!("/_seen is not a list: {other}"),
        }
    }

    /// Its usage sums (`/_usage`).
    pub fn usage(&self) -> Value {
        self.admin().get("/_usage").expect_status(200).json()
    }

    /// A target JSON for this fake as provider `provider` with `api_key`, plus `extra`.
    pub fn target(&self, provider: &str, api_key: &str, extra: Value) -> Value {
        let mut t = json!({
            "host": "127.0.0.1",
            "port": self.port,
            "provider": provider,
            "credentials": {"api_key": api_key},
        });
        crate::tenant::merge(&mut t, extra);
        t
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One chat call with an official SDK (`sdk`: `openai` or `anthropic`) through the gateway
/// at `proxy` as `host`, base path `base` (`/openai/v1` for OpenAI's SDK, `/claude` for
/// Anthropic's, which appends `/v1/messages`), with `args` (`--stream`, `--max-tokens`, ...).
/// Returns ai_client.py's JSON line.
pub fn sdk_call(
    sdk: &str,
    proxy: SocketAddr,
    host: &str,
    base: &str,
    key: &str,
    args: &[&str],
) -> Value {
    let output = Command::new(python())
        .arg(script("ai_client.py"))
        .args(["--sdk", sdk])
        .args(["--base-url", &format!("http://{host}{base}")])
        .args(["--api-key", key])
        .args(["--connect-to", &format!("127.0.0.1:{}", proxy.port())])
        .args(args)
        .output()
        .expect("run tests/python/ai_client.py");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{sdk} {args:?}: no JSON from ai_client.py ({e}): {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
