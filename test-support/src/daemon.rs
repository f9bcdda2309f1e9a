//! The real cairnd and cairn binaries: built fresh, started on a data dir, watched through
//! their log, stopped cleanly or killed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::pki;

/// A temp dir with a fresh test PKI in its `certs/` (as `ca-cert.pem`, `server-cert.pem`,
/// ... the names QEMU and libnbd look for): the dir, `certs/`, and cairnd's TLS flags for
/// it, with the client CA (client certificates required) if `client_ca`.
pub fn tls_setup(client_ca: bool) -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    pki::TestPki::generate().write_to(&certs);
    let path = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let mut flags = vec!["--tls-cert".into(), path("server-cert.pem"), "--tls-key".into(), path("server-key.pem")];
    if client_ca {
        flags.extend(["--tls-client-ca".into(), path("ca-cert.pem")]);
    }
    (dir, certs, flags)
}

/// Borrowed views of owned arguments.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs cairnd on `data_dir` with `args`, asserting it fails to start; returns its stderr.
pub fn start_fails(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(daemon_bin("cairnd")).arg("--data-dir").arg(data_dir).args(args).output().unwrap();
    assert!(!out.status.success(), "cairnd {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `127.0.0.1:PORT` with a port that was free a moment ago.
pub fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// Path of a freshly built binary of the workspace (`cairnd`, `cairn`): builds it (a no-op
/// when up to date) so the tests never run a stale binary.
pub fn daemon_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    let bins = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // `--examples` (there are none) makes cargo resolve features as for the tests, with
        // dev-dependencies: cairnd gets failpoints and shares every crate the tests built.
        let out = Command::new(cargo)
            .args(["build", "--locked", "--workspace", "--bins", "--examples", "--message-format=json"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo build");
        assert!(out.status.success(), "building the daemon failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact")
            .filter_map(|v| {
                let name = v["target"]["name"].as_str()?.to_owned();
                Some((name, PathBuf::from(v["executable"].as_str()?)))
            })
            .collect()
    });
    bins.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()).unwrap_or_else(|| panic!("no binary {name} built"))
}

/// A running `cairnd` on a data dir, serving NBD on `<data-dir>/nbd.sock`. Killed on drop if
/// [`Cairnd::stop`] was not called.
#[derive(Debug)]
pub struct Cairnd {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Log lines printed up to "cairnd ready".
    pub startup: Vec<String>,
    pub socket: PathBuf,
}

/// must not fight over the default port.
fn free_http(args: &[&str]) -> &'static [&'static str] {
    if args.contains(&"--http") { &[] } else { &["--http", "127.0.0.1:0"] }
}

/// Starts the real cairnd on `data_dir` (plus `args`, with `--http 127.0.0.1:0` unless they
/// give `--http`) and waits until it is ready.
pub fn start_cairnd(data_dir: &Path, args: &[&str]) -> Cairnd {
    start_cairnd_env(data_dir, args, &[])
}

impl Cairnd {
    /// The `HOST:PORT` the HTTP listener bound, from the startup log (text or JSON).
    pub fn http_addr(&self) -> String {
        self.logged_addr("http listening")
    }

    /// The `addr` field of the startup log line containing `needle` (text or JSON).
    pub fn logged_addr(&self, needle: &str) -> String {
        let line = self.startup.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("a {needle:?} log line"));
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            return v["fields"]["addr"].as_str().unwrap().to_owned();
        }
        let mut plain = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| *c == 'm');
            } else {
                plain.push(c);
            }
        }
        let at = plain.find("addr=").unwrap() + "addr=".len();
        plain[at..].split_whitespace().next().unwrap().to_owned()
    }

    /// The NBD URI of an export.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Waits (up to 60 s) for a log line containing `needle`; returns the lines seen.
    pub fn wait_for(&mut self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_millis(100)) {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no {needle:?} in cairnd output:\n{}", seen.join("\n"));
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Waits up to `timeout` for a log line containing one of `needles`; which one came,
    /// or `None` (and what was seen) on timeout.
    pub fn wait_for_any(&mut self, needles: &[&str], timeout: std::time::Duration) -> Result<usize, Vec<String>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_millis(50)) {
                if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                    self.startup.push(line);
                    return Ok(i);
                }
                seen.push(line);
            }
        }
        Err(seen)
    }

    /// SIGTERM, then waits for a clean exit (asserted).
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "cairnd exits 0 on SIGTERM, got {status}");
        self.wait_for("engine closed cleanly");
    }
}

impl Drop for Cairnd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (up to 30 s) for a unix socket to accept connections.
pub fn wait_for_socket(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(std::time::Instant::now() < deadline, "socket {} never came up", path.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts the real cairnd like [`start_cairnd`], with extra environment variables (e.g.
/// `CAIRN_FAILPOINTS`).
pub fn start_cairnd_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Cairnd {
    let mut d = spawn_cairnd_env(data_dir, args, env);
    d.startup = d.wait_for("cairnd ready");
    d
}

/// Starts the real cairnd like [`start_cairnd_env`] without waiting for it to be ready (a
/// failpoint may hold it before).
pub fn spawn_cairnd_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Cairnd {
    use std::io::BufRead;
    let mut cmd = Command::new(daemon_bin("cairnd"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .args(free_http(args))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting cairnd");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Cairnd { child: Some(child), lines: rx, startup: Vec::new(), socket: data_dir.join("nbd.sock") }
}

impl Cairnd {
    /// SIGKILL: no clean shutdown at all.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// The gRPC endpoint of a cairnd started on `data_dir` with the default `--grpc`.
pub fn grpc_endpoint(data_dir: &Path) -> String {
    format!("unix:{}", data_dir.join("cairn.sock").display())
}

/// The `cairn` CLI aimed at a cairnd started on `data_dir`.
pub fn cairn_cli(data_dir: &Path) -> Command {
    let mut cmd = Command::new(daemon_bin("cairn"));
    cmd.arg("--endpoint").arg(grpc_endpoint(data_dir));
    cmd
}
