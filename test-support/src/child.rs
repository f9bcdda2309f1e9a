//! Kill and failpoint tests run their scenario in a child process: this test binary run again
//! with only the child's entry test selected. Failpoints are process-wide, so arming them in
//! the child leaves the other tests of this binary alone, and a child that aborts at a
//! failpoint is a real crash. The child's entry test reads its data dir and phase with
//! [`child_args`] and does nothing when run as a plain test.

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
