//! Real client programs (qemu-io, qemu-img, nbdinfo, ...): running them, and reading what
//! they print.

use std::process::Command;

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
