//! Shared helpers of the end-to-end tests.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cairn_engine::{CreateDisk, DiskRecord, Engine, EngineConfig, IoBackendKind};

/// Throwaway CA, server and client certificates (the daemon's unit tests use the same).
#[path = "../../daemon/src/test_pki.rs"]
pub mod pki;

pub mod loopfs;

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

/// Both I/O backends: every I/O test runs on each.
pub const BACKENDS: [IoBackendKind; 2] = [IoBackendKind::Uring, IoBackendKind::Blocking];

pub async fn open(dir: &Path, io_backend: IoBackendKind) -> Engine {
    Engine::open(EngineConfig { io_backend, ..EngineConfig::new(dir) }).await.unwrap()
}

pub async fn disk(engine: &Engine, name: &str, size_bytes: u64) -> DiskRecord {
    engine
        .create_disk(CreateDisk { name: name.into(), size_bytes, chunk_size_bytes: None, direct_io: false })
        .await
        .unwrap()
}

/// Bytes the file system allocated to `path` (what `stat` reports as blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Deterministic bytes for a pattern identified by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
pub struct Cairnd {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Log lines printed up to "cairnd ready".
    pub startup: Vec<String>,
    pub socket: PathBuf,
}

/// Creates live disks `(name, size_bytes)` in `data_dir` with the engine in-process, then
/// closes the engine so a daemon can open the data dir.
pub async fn create_disks(data_dir: &Path, disks: &[(&str, u64)]) -> Vec<DiskRecord> {
    let engine = open(data_dir, IoBackendKind::Auto).await;
    let mut records = Vec::new();
    for (name, size) in disks {
        records.push(disk(&engine, name, *size).await);
    }
    engine.close().await.unwrap();
    drop(engine);
    records
}

/// `--http 127.0.0.1:0` unless `args` choose an HTTP address: daemons started in parallel
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

/// Runs a client command, asserting success; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-io -f raw` with one `-c` per command on `target` (a file or an NBD URI).
pub fn qemu_io(target: &str, commands: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = run_ok(cmd.arg(target));
    assert!(!out.contains("failed") && !out.contains("error"), "qemu-io {commands:?} on {target}:\n{out}");
    out
}

/// A sparse raw file of `size` bytes (no block allocated, unlike `qemu-img create`).
pub fn sparse_file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// `(offset, length, is_data)` runs, adjacent runs of the same kind merged.
pub fn merge_runs(runs: impl IntoIterator<Item = (u64, u64, bool)>) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for (off, len, data) in runs {
        match out.last_mut() {
            Some(last) if last.2 == data && last.0 + last.1 == off => last.1 += len,
            _ => out.push((off, len, data)),
        }
    }
    out
}

/// Allocation runs from `qemu-img map --output=json` output.
pub fn qemu_img_map_runs(json: &str) -> Vec<(u64, u64, bool)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    merge_runs(
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap(), e["data"].as_bool().unwrap())),
    )
}

/// Allocation runs from `nbdinfo --map` output (`offset length type description`).
pub fn nbdinfo_map_runs(text: &str) -> Vec<(u64, u64, bool)> {
    merge_runs(text.lines().filter(|l| !l.trim().is_empty()).map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags: u32 = f[2].parse().unwrap();
        (f[0].parse().unwrap(), f[1].parse().unwrap(), flags & 1 == 0)
    }))
}

/// Waits (up to 30 s) for a unix socket to accept connections.
pub fn wait_for_socket(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(std::time::Instant::now() < deadline, "socket {} never came up", path.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until an operation ends; returns its final record.
pub async fn wait_op(engine: &Engine, id: cairn_engine::OperationId) -> cairn_engine::OperationRecord {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let op = engine.operation(id).unwrap();
        if op.state.is_terminal() {
            return op;
        }
        assert!(std::time::Instant::now() < deadline, "operation {id} still running: {op:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Creates a restore point and waits for its capture; returns the final record.
pub async fn restore_point(
    engine: &Engine,
    collection: cairn_engine::CollectionId,
    name: &str,
    exclude: Vec<cairn_engine::DiskId>,
) -> cairn_engine::RestorePointRecord {
    let req = cairn_engine::CreateRestorePoint { name: name.into(), exclude_disks: exclude, ..Default::default() };
    let (rp, op) = engine.create_restore_point(collection, req).await.unwrap();
    let op = wait_op(engine, op.id).await;
    assert_eq!(op.state, cairn_engine::OperationState::Succeeded, "{op:?}");
    engine.restore_point(rp.id).unwrap()
}

/// A group of the given disks with a collection over it.
pub async fn collection(
    engine: &Engine,
    name: &str,
    disks: Vec<cairn_engine::DiskId>,
) -> (cairn_engine::GroupRecord, cairn_engine::CollectionRecord) {
    let group = engine
        .create_group(cairn_engine::CreateGroup {
            name: format!("{name}-vm"),
            disks,
            configuration: format!("{{\"vm\":\"{name}\"}}"),
        })
        .await
        .unwrap();
    let coll = engine
        .create_collection(cairn_engine::CreateCollection { name: name.into(), group: group.id, ..Default::default() })
        .await
        .unwrap();
    (group, coll)
}

/// The whole content of a live disk.
pub async fn read_all(disk: &cairn_engine::Disk) -> Vec<u8> {
    let mut out = Vec::new();
    let size = disk.size_bytes();
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(8 << 20);
        out.extend_from_slice(&disk.read(pos, n).await.unwrap());
        pos += n;
    }
    out
}

/// The whole content of a disk restore point.
pub async fn read_rp(engine: &Engine, rp: cairn_engine::RestorePointId, disk: cairn_engine::DiskId) -> Vec<u8> {
    let r = engine.disk_restore_point(rp, disk).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < r.size_bytes() {
        let n = (r.size_bytes() - pos).min(8 << 20);
        out.extend_from_slice(&r.read(pos, n).await.unwrap());
        pos += n;
    }
    out
}

/// Asserts two images are equal, reporting the first differing offset instead of the bytes.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!("{what}: images differ (lengths {} and {}), first difference at byte {first:?}", got.len(), want.len());
}

/// Starts the real cairnd like [`start_cairnd`], with extra environment variables (e.g.
/// `CAIRN_FAILPOINTS`).
pub fn start_cairnd_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Cairnd {
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
    let mut d = Cairnd { child: Some(child), lines: rx, startup: Vec::new(), socket: data_dir.join("nbd.sock") };
    d.startup = d.wait_for("cairnd ready");
    d
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

/// A gRPC channel to a cairnd started on `data_dir`.
pub async fn grpc(data_dir: &Path) -> tonic::transport::Channel {
    cairn_cli::client::connect(&grpc_endpoint(data_dir)).await.unwrap()
}

/// The `cairn` CLI aimed at a cairnd started on `data_dir`.
pub fn cairn_cli(data_dir: &Path) -> Command {
    let mut cmd = Command::new(daemon_bin("cairn"));
    cmd.arg("--endpoint").arg(grpc_endpoint(data_dir));
    cmd
}

/// Writes `data` at `offset` of a live disk through the gRPC WriteDisk stream (flushed).
pub async fn grpc_write(ch: &tonic::transport::Channel, disk: &str, offset: u64, data: Vec<u8>) {
    use cairn_proto::v1 as pb;
    let msgs: Vec<pb::WriteDiskRequest> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, part)| pb::WriteDiskRequest {
            disk: if i == 0 { disk.into() } else { String::new() },
            offset: offset + (i as u64) * (1 << 20),
            data: part.to_vec(),
            zero_length: 0,
        })
        .collect();
    pb::disk_data_client::DiskDataClient::new(ch.clone()).write_disk(futures::stream::iter(msgs)).await.unwrap();
}

/// The whole content of a live disk or disk restore point through the gRPC ReadDisk stream,
/// zero runs expanded; also returns how many zero runs came.
pub async fn grpc_read(
    ch: &tonic::transport::Channel,
    source: cairn_proto::v1::read_disk_request::Source,
) -> (Vec<u8>, usize) {
    use cairn_proto::v1 as pb;
    let req = pb::ReadDiskRequest { source: Some(source), offset: 0, length: 0 };
    let mut stream = pb::disk_data_client::DiskDataClient::new(ch.clone()).read_disk(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    let mut zero_runs = 0;
    while let Some(m) = stream.message().await.unwrap() {
        assert_eq!(m.offset, out.len() as u64, "ReadDisk sends the range in order");
        if m.zero {
            zero_runs += 1;
            out.resize(out.len() + m.length as usize, 0);
        } else {
            assert_eq!(m.data.len() as u64, m.length);
            out.extend_from_slice(&m.data);
        }
    }
    (out, zero_runs)
}

/// Polls an operation over gRPC until it ends; returns its last state.
pub async fn grpc_wait_op(ch: &tonic::transport::Channel, id: &str) -> cairn_proto::v1::Operation {
    use cairn_proto::v1 as pb;
    let mut c = pb::operations_client::OperationsClient::new(ch.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let op = c.get_operation(pb::GetOperationRequest { id: id.into() }).await.unwrap().into_inner();
        if op.state() != pb::OperationState::Running {
            return op;
        }
        assert!(std::time::Instant::now() < deadline, "operation {id} still running: {op:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Over gRPC: a group `group` of `disks` (configuration `{}`) and a collection `collection`
/// over it.
pub async fn grpc_group_and_collection(ch: &tonic::transport::Channel, group: &str, disks: &[&str], collection: &str) {
    use cairn_proto::v1 as pb;
    pb::groups_client::GroupsClient::new(ch.clone())
        .create_group(pb::CreateGroupRequest {
            name: group.into(),
            disks: disks.iter().map(|d| (*d).to_owned()).collect(),
            configuration: "{}".into(),
        })
        .await
        .unwrap();
    pb::collections_client::CollectionsClient::new(ch.clone())
        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
            name: collection.into(),
            group: group.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Over gRPC: a live disk.
pub async fn grpc_disk(ch: &tonic::transport::Channel, name: &str, size_bytes: u64) {
    use cairn_proto::v1 as pb;
    pb::disks_client::DisksClient::new(ch.clone())
        .create_disk(pb::CreateDiskRequest { name: name.into(), size_bytes, ..Default::default() })
        .await
        .unwrap();
}

/// Over gRPC: restore point `name` of `collection` in `mode`, as it stands once its capture
/// ended, or why its creation was refused.
pub async fn grpc_restore_point(
    ch: &tonic::transport::Channel,
    collection: &str,
    name: &str,
    mode: cairn_proto::v1::ConsistencyMode,
) -> Result<cairn_proto::v1::RestorePoint, tonic::Status> {
    use cairn_proto::v1 as pb;
    let mut rps = pb::restore_points_client::RestorePointsClient::new(ch.clone());
    let req = pb::CreateRestorePointRequest {
        collection: collection.into(),
        name: name.into(),
        consistency_mode: mode.into(),
        ..Default::default()
    };
    let r = rps.create_restore_point(req).await?.into_inner();
    grpc_wait_op(ch, &r.operation.unwrap().id).await;
    let get =
        pb::GetRestorePointRequest { collection: collection.into(), restore_point: name.into(), instance_view: false };
    Ok(rps.get_restore_point(get).await.unwrap().into_inner())
}

/// Kill and failpoint tests run their scenario in a child process: this test binary run again
/// with only the child's entry test selected. Failpoints are process-wide, so arming them in
/// the child leaves the other tests of this binary alone, and a child that aborts at a
/// failpoint is a real crash. The child's entry test reads its data dir and phase with
/// [`child_args`] and does nothing when run as a plain test.
pub mod child {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const DIR_ENV: &str = "CAIRN_TEST_CHILD_DIR";
    const PHASE_ENV: &str = "CAIRN_TEST_CHILD_PHASE";

    /// Runs test `entry` (its path in this binary, e.g. `"store_gc::child_process_entry"`) as
    /// a child on `dir` in `phase`, with `CAIRN_FAILPOINTS` set to `failpoints`; returns its
    /// exit status and its output (stdout then stderr).
    pub fn run(entry: &str, dir: &Path, phase: &str, failpoints: &str) -> (std::process::ExitStatus, String) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([entry, "--exact", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir)
            .env(PHASE_ENV, phase)
            .env("CAIRN_FAILPOINTS", failpoints)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status, text)
    }

    /// Like [`run`], asserting the child passed.
    #[track_caller]
    pub fn run_ok(entry: &str, dir: &Path, phase: &str, failpoints: &str) {
        let (status, text) = run(entry, dir, phase, failpoints);
        assert!(status.success(), "child {entry} ({phase}) failed with {status}:\n{text}");
    }

    /// In a child's entry test: its data dir and phase; `None` when run as a plain test.
    pub fn child_args() -> Option<(PathBuf, String)> {
        let dir = std::env::var_os(DIR_ENV)?;
        Some((PathBuf::from(dir), std::env::var(PHASE_ENV).unwrap_or_default()))
    }
}
