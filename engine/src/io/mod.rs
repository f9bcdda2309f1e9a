//! The I/O layer: the backend of live disks, io_uring or blocking threads, one interface.
//! Uses sys only.
//!
//! The I/O backend of live disks.
//!
//! [`Io::open`] picks the backend once per engine: io_uring when the kernel lets us set up a
//! ring with every operation we use (probed once per process and cached), else blocking
//! pread/pwrite on tokio's blocking pool. `CAIRN_IO_BACKEND=uring|blocking` or the engine
//! configuration override the choice; the choice is logged.
//!
//! Both backends take owned buffers and give them back with the result, so a buffer stays
//! alive until the kernel has finished with it, whatever happens to the caller's future.

mod blocking;
mod uring;

use std::fs::File;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sys::IoBuf;

/// The most a buffered write hands the kernel at once.
///
/// The page cache sizes the folio a write creates by the write's length, and large folios
/// cost the disk workload twice. Allocating them can mean compaction: through the NBD
/// export, 1 MiB writes into a new disk ran at 400 MiB/s here, 64 KiB pieces of them at
/// 2.7 GiB/s. And ext4's buffered write (Linux 6.16 and later) walks every block of the
/// folio it writes into, so a guest's 4 KiB overwrite of data once written in 1 MiB pieces
/// cost about 30 µs of kernel time; in 64 KiB folios, 4 KiB random writes through the export
/// went from 31k to 63k IOPS. A large write costs a few more requests in exchange.
pub const BUFFERED_WRITE_PIECE: usize = 64 << 10;

/// Which backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoBackendKind {
    /// io_uring when available, else blocking (the default).
    #[default]
    Auto,
    /// io_uring; opening fails when it cannot be set up.
    Uring,
    /// Blocking pread/pwrite on a thread pool.
    Blocking,
}

impl std::str::FromStr for IoBackendKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "blocking" => Ok(Self::Blocking),
            other => Err(crate::Error::invalid("io_backend", format!("{other:?}; expected auto, uring or blocking"))),
        }
    }
}

/// An opened I/O backend, shared by all disks of an engine.
#[derive(Debug, Clone)]
pub enum Io {
    Uring(uring::Ring),
    Blocking,
}

impl Io {
    /// Opens the backend `kind` asks for (with `CAIRN_IO_BACKEND` taking precedence).
    pub fn open(kind: IoBackendKind) -> crate::Result<Self> {
        let kind = match std::env::var("CAIRN_IO_BACKEND") {
            Ok(v) if !v.is_empty() => v.parse()?,
            _ => kind,
        };
        let io = match kind {
            IoBackendKind::Blocking => Io::Blocking,
            IoBackendKind::Uring => Io::Uring(
                uring::Ring::start()
                    .map_err(|e| crate::Error::io("set up io_uring (requested explicitly)", "io_uring", e))?,
            ),
            IoBackendKind::Auto => match uring::probe() {
                Ok(()) => match uring::Ring::start() {
                    Ok(ring) => Io::Uring(ring),
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring ring setup failed; using blocking I/O");
                        Io::Blocking
                    }
                },
                Err(reason) => {
                    tracing::warn!(%reason, "io_uring unavailable; using blocking I/O");
                    Io::Blocking
                }
            },
        };
        tracing::info!(backend = io.name(), "I/O backend chosen");
        Ok(io)
    }

    /// `"io_uring"` or `"blocking"`.
    pub fn name(&self) -> &'static str {
        match self {
            Io::Uring(_) => "io_uring",
            Io::Blocking => "blocking",
        }
    }

    /// Reads into all of `buf` from `offset`; a short result means end of file.
    pub async fn read_at(&self, file: &Arc<File>, buf: IoBuf, offset: u64) -> (io::Result<usize>, IoBuf) {
        match self {
            Io::Uring(ring) => ring.read_at(file.clone(), buf, offset).await,
            Io::Blocking => blocking::read_at(file.clone(), buf, offset).await,
        }
    }

    /// Writes all of `buf` at `offset` through the page cache, in pieces of at most
    /// [`BUFFERED_WRITE_PIECE`] bytes, one after the other.
    pub async fn write_at(&self, file: &Arc<File>, buf: IoBuf, offset: u64) -> (io::Result<()>, IoBuf) {
        self.write_in_pieces(file, buf, offset, BUFFERED_WRITE_PIECE).await
    }

    /// Writes all of `buf` at `offset` in one request (an O_DIRECT file: no page cache).
    pub async fn write_direct_at(&self, file: &Arc<File>, buf: IoBuf, offset: u64) -> (io::Result<()>, IoBuf) {
        self.write_in_pieces(file, buf, offset, usize::MAX).await
    }

    async fn write_in_pieces(
        &self,
        file: &Arc<File>,
        buf: IoBuf,
        offset: u64,
        piece: usize,
    ) -> (io::Result<()>, IoBuf) {
        match self {
            Io::Uring(ring) => ring.write_at(file.clone(), buf, offset, piece).await,
            Io::Blocking => blocking::write_at(file.clone(), buf, offset, piece).await,
        }
    }

    /// fdatasync.
    pub async fn sync_data(&self, file: &Arc<File>) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.sync_data(file.clone()).await,
            Io::Blocking => blocking::sync_data(file.clone()).await,
        }
    }

    /// Asks the kernel to read `[offset, offset + len)` into the page cache; returns once
    /// the reads are under way (`POSIX_FADV_WILLNEED`).
    pub async fn will_need(&self, file: &Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.will_need(file.clone(), offset, len).await,
            Io::Blocking => blocking::will_need(file.clone(), offset, len).await,
        }
    }

    /// Deallocates a range (reads then return zeros; the file keeps its size).
    pub async fn punch_hole(&self, file: &Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.punch_hole(file.clone(), offset, len).await,
            Io::Blocking => blocking::punch_hole(file.clone(), offset, len).await,
        }
    }
}

#[cfg(test)]
mod tests {
    //! One suite, run on every backend.
    use super::*;
    use std::os::unix::fs::FileExt;

    async fn suite(io: Io) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap(),
        );
        file.set_len(1 << 20).unwrap();

        let data: Vec<u8> = (0..300_000u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let (r, _) = io.write_at(&file, IoBuf::from_slice(&data), 12345).await;
        r.unwrap();
        let (r, buf) = io.read_at(&file, IoBuf::zeroed(data.len()), 12345).await;
        assert_eq!(r.unwrap(), data.len());
        assert_eq!(&*buf, &data[..]);

        // Reading across the end of the file returns what is there.
        let (r, _) = io.read_at(&file, IoBuf::zeroed(8192), (1 << 20) - 4096).await;
        assert_eq!(r.unwrap(), 4096);

        io.sync_data(&file).await.unwrap();
        io.will_need(&file, 0, 1 << 20).await.unwrap();
        io.punch_hole(&file, 16384, 65536).await.unwrap();
        let mut check = vec![1u8; 65536];
        file.read_exact_at(&mut check, 16384).unwrap();
        assert!(check.iter().all(|&b| b == 0));

        // Many operations in flight at once complete independently.
        let ops = (0..64u8).map(|i| {
            let io = io.clone();
            let file = file.clone();
            async move {
                let (r, _) = io.write_at(&file, IoBuf::from_slice(&[i; 4096]), u64::from(i) * 4096).await;
                r.unwrap();
                let (r, b) = io.read_at(&file, IoBuf::zeroed(4096), u64::from(i) * 4096).await;
                r.unwrap();
                assert!(b.iter().all(|&x| x == i));
            }
        });
        futures::future::join_all(ops).await;

        // Errors come back as errors: a read-only file refuses writes.
        let ro = Arc::new(std::fs::File::open(&path).unwrap());
        let (r, _) = io.write_at(&ro, IoBuf::zeroed(4096), 0).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn blocking_backend() {
        suite(Io::open(IoBackendKind::Blocking).unwrap()).await;
    }

    #[tokio::test]
    async fn uring_backend() {
        // CI machines of this kind have io_uring; a skip here would hide a broken backend.
        suite(Io::Uring(uring::Ring::start().unwrap())).await;
    }
}
