//! A real nginx as an upstream, with its default URI handling (`merge_slashes on`,
//! percent-decoding before `location` matching): the upstream most users put behind a
//! gateway, and the one whose view of a path the gateway's router must agree with.
//!
//! nginx is installed by `tests/run` (Debian's package); a test that needs it fails with
//! that instruction when it is missing rather than passing without having run.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The nginx binary: `$NGINX` when set, else `nginx` on PATH or in `/usr/sbin`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: run the suite with tests/run (it installs it), or \
                 `apt-get install nginx`, or set $NGINX"
            )
        })
}

/// One nginx process serving `server_body` (the inside of a `server {}` block, without
/// `listen`) on a free loopback port; stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(server_body: &str) -> Nginx {
        let bin = binary();
        let dir = tempdir();
        // A freed port can be taken by a parallel test before nginx binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
            write_config(&dir, addr, server_body);
            let child = Command::new(&bin)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let mut child = child;
            if wait_ready(&mut child, addr) {
                return Nginx { child, addr, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "nginx did not start; its error log: {}",
            fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A target for the admin API's upstream `targets` list.
    pub fn target(&self) -> serde_json::Value {
        serde_json::json!({"host": "127.0.0.1", "port": self.addr.port()})
    }
}

fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

fn tempdir() -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("shardgate-nginx-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create nginx's directory");
    dir
}

fn write_config(dir: &Path, addr: SocketAddr, server_body: &str) {
    let d = dir.display();
    let config = format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
             access_log off;\n\
             default_type text/plain;\n\
             client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{\n\
                 listen {addr};\n\
                 {server_body}\n\
             }}\n\
         }}\n"
    );
    let mut file = fs::File::create(dir.join("nginx.conf")).expect("write nginx.conf");
    file.write_all(config.as_bytes()).expect("write nginx.conf");
}
