//! # Cairn's storage engine
//!
//! The engine keeps a host's live disks and their restore points. It has no network code:
//! the daemon adapts gRPC, NBD and HTTP onto these calls.
//!
//! ## Layers
//!
//! Each folder uses only the ones above it in this list; `maintenance/` and `rp/` are siblings,
//! neither uses the other (`scripts/check-layers`, run by the test command, fails on an edge
//! against the list). The services of `maintenance/` and `rp/` are functions over the shared
//! `context::Context`; only `engine.rs` writes methods on `Engine`, each handing the call on.
//!
//! | module         | owns                                                                  |
//! |----------------|-----------------------------------------------------------------------|
//! | `base/`        | errors, ids, clock, every on-disk format and catalog key, failpoints   |
//! | `sys/`         | the unsafe system calls: aligned buffers, mapped words, fs, scheduling |
//! | `io/`          | the I/O backend (io_uring, or blocking threads) behind one interface   |
//! | `catalog/`     | RocksDB (it stops here), batches, the group and restore point records  |
//! | `store/`       | chunks, deltas, packs and pack stores, the chunk index, its counters   |
//! | `chunk_map/`   | chunk maps of lineages, their bases, the restore point reader          |
//! | `disk/`        | live disks: gate, tracking, readahead, copy-before-write, local maps   |
//! | `jobs/`        | job slots and cancel flags, operation records, the background pool    |
//! | `context/`     | what every service shares: settings, catalog, store, jobs; live disks, groups, operation records, restore point reads |
//! | `maintenance/` | GC, verify, resuming their operations (uses context, not rp)           |
//! | `rp/`          | collections, groups and freezes, hooks, creation, capture, deletion, restore, retention |
//! | `engine.rs`    | the facade: `Engine`, open and close, calls handed to the layers      |
//!
//! ## Data dir
//!
//! ```text
//! DATA_DIR/catalog/            RocksDB: disks, groups, collections, restore_points, chunk_map,
//!                              chunk_seq (chunk_map by seq), chunks, packs, grants, operations,
//!                              meta (format version, next seq, lineage bases, corrupt marks,
//!                              retired packs)
//! DATA_DIR/disks/<id>.raw      a live disk: sparse file, size a multiple of 4 KiB
//! DATA_DIR/disks/<id>.ctk      its change tracking: header + two bitmap slots (see `format`)
//! DATA_DIR/disks/<id>.local    a restored disk's local map (chunks already in the file)
//! DATA_DIR/packs/<id>.pack     sealed packs of the local pack store
//! DATA_DIR/staging/            packs being filled (removed at start: never referenced)
//! DATA_DIR/spill/              copy-before-write blocks past the memory bound
//! ```
//!
//! ## Write path
//!
//! A write passes the disk's write gate (it waits while the disk is frozen); on a restored
//! disk, each chunk it touches that is still in the store is filled from its base first
//! (written, synced, then marked local); if a capture is pending on the chunk, the old content
//! of the 4 KiB blocks about to change is preserved (copy-before-write); the blocks are marked
//! dirty in the active change-tracking slot (an atomic OR into a shared mapping of the `.ctk`
//! file); then the data goes to the I/O backend: io_uring on a ring thread, or blocking
//! pread/pwrite where io_uring cannot be set up. Trim and write-zeroes punch holes. FLUSH =
//! fdatasync + msync of the bitmap (and of the local map of a restored disk still hydrating,
//! as after a FUA write). A failed sync poisons the disk: it refuses all further I/O. The
//! `.ctk` and `.local` files are fully allocated when created or grown, so a bit set through
//! their mapping never needs a block: a full file system is an ENOSPC on a write, not a SIGBUS.
//!
//! Page cache: buffered writes reach the kernel in pieces of at most 64 KiB, and disk files
//! are opened with the kernel's readahead off; the engine reads ahead of sequential streams
//! itself (`POSIX_FADV_WILLNEED`). Both keep the page cache's folios small: large folios
//! cost compaction to allocate and, on ext4 since Linux 6.16, a walk over every block of the
//! folio on each small write into it (see `io::BUFFERED_WRITE_PIECE` and `disk/readahead.rs`).
//!
//! Acknowledged means: a completed write survives a process kill (it is in the page cache),
//! and a power loss once a FLUSH or its own FUA has returned.
//!
//! ## Restore points
//!
//! Creating one is an engine job from the first hook to the last commit (the caller only
//! starts it and gets the `Creating` record): a caller that goes away changes nothing, thaw
//! hooks always follow quiesce hooks, and from the epoch switch on any failure ends
//! copy-before-write and merges the closed epochs back. One creation or deletion at a time
//! per group (the creation slot), whatever collection it is in.
//!
//! Quiesce hooks run, then the freeze closes the gates of all included disks, one after the
//! other in disk id order (a fair RwLock: new writes wait, in-flight ones drain), switches
//! each disk's change-tracking epoch (an in-memory slot swap), installs the copy-before-write
//! state (built before the window, rebuilt inside if a resize got in between), and reopens the
//! gates: nothing is copied or synced in the window. Thaw hooks run; the epoch switch and the
//! `Creating` record are persisted; the capture runs in the background: each chunk dirty in
//! the closed epoch (every allocated chunk for a first or untrusted capture) is read with its
//! preserved blocks laid over it, then stored as zero, deduplicated against the store by
//! BLAKE3, stored as a delta over the full chunk its previous version is based on (when at
//! most 25% of its blocks may differ), or stored whole, zstd-compressed with a CRC-headed
//! record in a pack that is synced and put before the catalog batch that references it.
//!
//! The capture is one pipeline over all the group's disks. Each chunk is one job on the
//! background threads (read, delta plan, hash, compress); the sequential part (pack appends,
//! seals, commits) runs on a thread of its own; a full pack seals while the next one fills,
//! and entries commit in the order their packs seal. Background threads run under
//! `SCHED_IDLE` by default ([`BackgroundPriority`]), so guest I/O always gets the CPU first;
//! the locks guest I/O may wait for are taken at normal priority.
//!
//! Chunk maps: `lineage | chunk index | !seq -> ref`; a restore point stores only its
//! increment, and reading chunk i at seq S is one seek. `chunk_seq` indexes the same entries
//! as `lineage | seq | chunk index`, so finding an increment (to delete a restore point, or
//! for a changed-chunks bitmap) reads that increment only. A restore point owns the entries
//! between the next older remaining restore point of the history and its own seq; deleting it
//! keeps, per chunk, the newest of them when a newer restore point or the live disk's next
//! capture reads through it, and drops the rest (their references with them).
//!
//! Restore: a disk made from a disk restore point gets a new lineage whose base is that disk
//! restore point; chunks not yet local are read from the store; a background job hydrates
//! them. Its first restore point is an increment over the base. Chunks a grow adds past the
//! base's are local from the start.
//!
//! Merkle roots (`base/merkle.rs`): when a capture succeeds, each disk restore point records
//! the root of a BLAKE3 tree whose leaves are its chunks' content ids in index order, hashed
//! from the chunk map (every entry, full or delta, names the content's BLAKE3; zero chunks
//! hash as zeros), so no data is read and merging deltas never changes it; the restore point
//! records a root over its configuration and its disks' roots. A chunk map entry swapped for
//! another good record reads back as valid but wrong bytes; the roots are what find it: a
//! restore hashes the map before it hands the disk out, a reader is checked once per disk
//! restore point while the engine is open, and verify reports every mismatch. Deletions keep
//! the roots of the restore points that remain (a dropped entry is one nobody reads through).
//! Restore points from before roots get theirs at open, from their map as it then is.
//!
//! Copies (`rp/copy.rs`): a copy collection names a source (a configured peer and its
//! collection) and holds no group; its restore points are copies, pulled through a
//! `CopySource` (the daemon's replication client, or another engine). The manifest (record
//! and chunk maps) is checked as client input and against its own Merkle roots before
//! anything is fetched; records the previous copy of the same disk did not bring are fetched
//! several at a time, each checked on arrival and appended verbatim (deltas included) to the
//! target's packs; entries are written as the difference from the previous copy, in one
//! history per source disk; the copy turns `Succeeded` once every delta gives its content
//! and the map written hashes to the source's roots. It holds the collection's creation
//! slot and the GC gate (shared), as a capture does, and fails like one.
//!
//! Revert in place (`rp/revert.rs`): the disks are held (no client may attach, others' I/O
//! fails Busy; writers check the hold inside the gate, so none is left running), a restore
//! point of the current state is taken, and under the group's creation slot only chunks with
//! a map entry newer than the restore point or dirty in tracking are compared, and those that
//! differ rewritten through the write path (so tracking marks them).
//!
//! Growing a disk whose last chunk is short marks the blocks that chunk gains as changed, so
//! the next capture stores it again at its full length (whole, or as a delta over the short
//! base, which reads zero-extended).
//!
//! ## Crash rules
//!
//! - The `.ctk` header's OPEN flag is set while the engine has a disk open; finding it set at
//!   open means an unclean shutdown, and tracking becomes UNTRUSTED until a full capture.
//! - Files are synced before the catalog record that names them; deletion removes the record
//!   before the files; files without a record are removed at open. A directory the engine
//!   makes (the data dir, `catalog/`, `disks/`, `packs/`, `staging/`, `spill/`) is synced into
//!   its parent, and a file it creates into its directory, before anything relies on them.
//! - Every multi-key catalog change is one synced RocksDB WriteBatch.
//! - A restore point still `Creating` at open becomes `Failed` with its entries dropped; a
//!   closed epoch is consumed if a succeeded restore point captured it, else merged back.
//!   One left `Creating` while the engine runs (recording its failure failed) can be deleted.
//! - Deleting the last restore point of a history takes the history with it; the live disk's
//!   change tracking is marked untrusted first, so its next capture reads everything again.
//! - A GC or verify still `Running` at open (a crash, or parked by a clean shutdown) resumes as
//!   the same operation: GC from the start of its phases (each is idempotent: phase 1 deletes
//!   whatever pack nothing references, phase 2 switches only records still where they were),
//!   a store verify from the cursor its record saved (records go in index order).
//! - Failpoints (`CAIRN_FAILPOINTS`) sit on each of these edges; kill tests drive them, and the
//!   crash campaign (`tests/crash_campaign.rs`) holds the daemon at them (`return(hold)`) to
//!   cut the power there, on a file system that keeps only what was synced.
//!
//! ## What may run together
//!
//! | operation                 | may run with                              | protected by                        |
//! |---------------------------|-------------------------------------------|-------------------------------------|
//! | write / trim / zeroes     | reads, flushes, other writes, captures    | write gate (shared); preserve-before-write with the capture (disk/capture.rs); restored disks' chunk stripes |
//! | freeze + epoch switch     | reads, flushes                            | write gate (exclusive)              |
//! | resize                    | reads, flushes; not a pending capture     | write gate (exclusive) + admin      |
//! | create/delete disk, group | I/O on other disks                        | admin mutex, one catalog batch      |
//! | capture                   | writes, reads, restores, captures and deletes of other groups, GC phase 2 | creation slot per group, GC gate (shared) |
//! | delete restore point      | captures of other groups, GC              | creation slot per group, admin, index lock |
//! | hydration                 | guest I/O on the same disk                | chunk stripes, local map            |
//! | GC sweep (phase 1)        | reads, restores, deletes                  | GC gate (exclusive), index lock     |
//! | GC rewrite (phase 2)      | captures, reads (old packs retired, not deleted) | index lock per switch        |
//! | verify                    | everything                                | read-only but for corrupt marks     |
//! | copy into a copy collection | captures, copies and deletes of other collections, GC phase 2 | creation slot of the copy collection, GC gate (shared) |
//! | revert in place           | captures of other groups; not an attached client or others' I/O on its disks | disk hold (`disk/access.rs`), then the creation slot per group |

mod base;
mod catalog;
mod chunk_map;
mod context;
mod disk;
mod engine;
pub mod io;
mod jobs;
mod maintenance;
mod rp;
pub mod store;
mod sys;

#[doc(hidden)]
pub use base::failpoint;
pub use base::format;

pub use base::error::{Error, ErrorKind, Result};
pub use base::ids::{CollectionId, DiskId, GroupId, LineageId, Name, OperationId, PackId, RestorePointId};
pub use base::merkle::Root;
pub use base::stats::{FreezeStats, FreezeSummary, JobThroughput, Throughput};
pub use catalog::group::{CreateGroup, GroupRecord, MAX_CONFIGURATION_BYTES};
pub use catalog::restore_point::{
    ConsistencyMode, CreateRestorePoint, DiskRestorePoint, LineageBase, ProvisioningState, RestorePointRecord,
};
pub use chunk_map::reader::DiskRestorePointReader;
pub use disk::access::Attachment;
pub use disk::capture::PendingCapture;
pub use disk::tracking::ChangeTracker;
pub use disk::{CreateDisk, Disk, DiskCounters, DiskRecord, Extent, RestoreSource};
pub use engine::{Engine, EngineConfig};
pub use io::IoBackendKind;
pub use jobs::background::BackgroundPriority;
pub use jobs::operation::{OperationKind, OperationRecord, OperationState};
pub use maintenance::gc::{DEFAULT_GC_LIVE_SHARE_PERCENT, GcReport};
pub use maintenance::verify::{Affected, CorruptRecord, RootMismatch, VerifyReport, VerifyTarget};
pub use rp::collection::{
    CollectionRecord, CollectionSource, CreateCollection, DEFAULT_MAX_RESTORE_POINTS, MAX_RESTORE_POINTS_LIMIT,
    ScriptHook, UpdateCollection,
};
pub use rp::copy::{CopySource, ExportedDisk, ExportedRestorePoint};
pub use rp::group::Freeze;
pub use rp::hooks::{HookContext, QuiesceHook};
pub use rp::restore::RestoreDisk;
pub use rp::retention::{RetentionDecision, RetentionPolicy};
pub use rp::revert::{RevertInPlace, RevertReport, RevertedDisk};
pub use store::chunk::{ChunkId, ChunkRef};
pub use store::counters::StoreStats;
pub use sys::IoBuf;
