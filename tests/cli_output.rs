//! The CLI's output for people and for scripts: under a pseudo-terminal (`script` from
//! util-linux) `--wait` draws a progress bar (bytes, rate, ETA) that ends as a line saying how
//! the operation went, and without a terminal nothing but the result is printed; tables show
//! times as UTC timestamps and durations while JSON keeps the numbers.

use std::path::Path;
use std::process::Command;

use cairn_proto::v1 as pb;

use crate::common::{
    Cairnd, cairn_cli, daemon_bin, grpc, grpc_disk, grpc_endpoint, grpc_group_and_collection, grpc_restore_point,
    grpc_write, pattern, run_ok, start_cairnd_env,
};

const MIB: u64 = 1 << 20;

/// A cairnd (with `env`) holding disk `d` with 8 MiB of data in collection `c`, restore
/// point `rp1` of it.
async fn daemon_with_a_restore_point(dir: &Path, env: &[(&str, &str)]) -> Cairnd {
    let daemon = start_cairnd_env(dir, &[], env);
    let ch = grpc(dir).await;
    grpc_disk(&ch, "d", 8 * MIB).await;
    grpc_write(&ch, "d", 0, pattern(3, (8 * MIB) as usize)).await;
    grpc_group_and_collection(&ch, "vm", &["d"], "c").await;
    grpc_restore_point(&ch, "c", "rp1", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_draws_progress_on_a_terminal_and_prints_only_the_result_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    // 30 ms per record: the 32-record verify lasts about a second, long enough to draw.
    let daemon =
        daemon_with_a_restore_point(dir.path(), &[("CAIRN_FAILPOINTS", "verify::after_record=sleep(30)")]).await;
    let cli = format!("{} --endpoint {} verify --wait", daemon_bin("cairn").display(), grpc_endpoint(dir.path()));

    let on_tty = run_ok(Command::new("script").args(["-qefc", &cli, "/dev/null"]));
    let piped = Command::new("sh").args(["-c", &cli]).output().unwrap();

    assert!(on_tty.contains("/8.00 MiB") && on_tty.contains(" eta "), "the bar drew bytes, rate and ETA:\n{on_tty}");
    assert!(on_tty.contains("verifying store: Succeeded, 8.00 MiB in "), "the bar's last line:\n{on_tty}");
    assert!(on_tty.contains("verified store: 32 records"), "{on_tty}");
    assert!(piped.status.success(), "{piped:?}");
    let stdout = String::from_utf8(piped.stdout).unwrap();
    assert!(stdout.starts_with("verified store: 32 records, ") && stdout.lines().count() == 1, "{stdout:?}");
    assert_eq!(String::from_utf8_lossy(&piped.stderr), "", "no progress without a terminal");
    daemon.stop();
}

/// Whether `s` reads `YYYY-MM-DD HH:MM:SSZ`.
fn is_timestamp(s: &str) -> bool {
    let shape: String = s.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
    shape == "9999-99-99 99:99:99Z"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_show_timestamps_and_durations_and_json_keeps_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_a_restore_point(dir.path(), &[]).await;
    let cli = || cairn_cli(dir.path());

    let table = run_ok(cli().args(["rp", "list", "c"]));
    let shown = run_ok(cli().args(["rp", "show", "c", "rp1"]));
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(cli().args(["--output", "json", "rp", "list", "c"]))).unwrap();

    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header.last(), Some(&"CREATED_AT"), "{table}");
    let row = lines.next().unwrap();
    assert!(is_timestamp(&row[row.len() - 20..]), "{table}");
    let field = |name: &str| {
        let line = shown.lines().find(|l| l.starts_with(&format!("{name}: "))).unwrap_or_else(|| panic!("{shown}"));
        line[name.len() + 2..].to_owned()
    };
    assert!(is_timestamp(&field("created_at")) && is_timestamp(&field("completed_at")), "{shown}");
    let window = field("freeze_window");
    assert!(window.ends_with("µs") || window.ends_with("ms"), "a duration: {shown}");
    assert!(json[0]["created_at_ms"].as_u64().unwrap() > 1_600_000_000_000, "{json}");
    assert!(json[0]["freeze_window_us"].is_u64(), "{json}");
    daemon.stop();
}
