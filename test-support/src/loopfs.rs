//! A small ext4 file system on a loop device (the tests run as root), for tests that need a
//! file system that fills up, or the state a power loss would leave on a device.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run_ok;

/// An ext4 file system in an image file, mounted with `mount -o loop`; unmounted on drop.
#[derive(Debug)]
pub struct LoopFs {
    /// Holds the image and the mount point; removed after the unmount.
    _dir: tempfile::TempDir,
    image: PathBuf,
    mount: PathBuf,
}

impl LoopFs {
    /// A fresh file system of `size_bytes` (no blocks reserved for root).
    pub fn new(size_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image).unwrap().set_len(size_bytes).unwrap();
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image));
        Self::mount(dir, image)
    }

    fn mount(dir: tempfile::TempDir, image: PathBuf) -> Self {
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        run_ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount));
        Self { _dir: dir, image, mount }
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// What a power loss right now would leave: a copy of the device as the file system has
    /// written it so far (what it only holds in its page cache is not in it), mounted on a
    /// loop device of its own (mounting replays the journal, as after a crash).
    pub fn power_loss_copy(&self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::copy(&self.image, &image).unwrap();
        Self::mount(dir, image)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Lazily if something still holds a file open (a test that failed half way).
        let clean = Command::new("umount").arg(&self.mount).status().is_ok_and(|s| s.success());
        if !clean {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}
