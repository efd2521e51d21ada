//! A started process's ready line: shardgate prints `admin=<addr> proxy=<addr> …` on its
//! first stdout line (the bench upstream `addr=<addr>`), and the harnesses read their
//! addresses from it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// Reads the first stdout line of `child` within `timeout`, then keeps draining its stdout
/// so the child never blocks on a full pipe.
pub fn first_line(child: &mut Child, timeout: Duration) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(line)) if !line.is_empty() => Ok(line),
        Ok(Ok(_)) => Err("exited before printing its ready line".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no ready line within {timeout:?}")),
    }
}

/// The address after `key` (e.g. `admin=`) in a ready line.
pub fn addr_after(line: &str, key: &str) -> Result<SocketAddr, String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no {key}<addr> in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_by_key_and_a_missing_one_is_an_error() {
        let line = "shardgate ready admin=127.0.0.1:8080 proxy=127.0.0.1:8081 tls=off\n";
        assert_eq!(
            addr_after(line, "admin="),
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            addr_after(line, "proxy="),
            Ok("127.0.0.1:8081".parse().expect("addr"))
        );
        assert!(addr_after(line, "tls=").is_err());
        assert!(addr_after(line, "addr=").is_err());
    }
}
