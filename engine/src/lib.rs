//! # Cairn's storage engine
//!
//! The engine keeps a host's live disks and (in later layers) their restore points. It has no
//! network code: the daemon adapts gRPC, NBD and HTTP onto these calls.
//!
//! ## Data dir
//!
//! ```text
//! DATA_DIR/catalog/          RocksDB: disks, groups, collections, restore_points, chunk_map,
//!                            chunks, packs, grants, operations, meta (format version)
//! DATA_DIR/disks/<id>.raw    a live disk: sparse file, size a multiple of 4 KiB
//! DATA_DIR/disks/<id>.ctk    its change tracking: header + two bitmap slots (see `format`)
//! ```
//!
//! ## Write path
//!
//! A write passes the disk's write gate (it waits while the disk is frozen), marks its 4 KiB
//! blocks dirty in the active change-tracking slot (an atomic OR into a shared mapping of the
//! `.ctk` file), then goes to the I/O backend: io_uring on a ring thread, or blocking
//! pread/pwrite where io_uring cannot be set up. Trim and write-zeroes punch holes, so the file
//! stays sparse; reads of holes cost no data I/O. FLUSH = fdatasync of the disk file + msync of
//! the bitmap. A failed sync poisons the disk: it refuses all further I/O.
//!
//! Acknowledged means: a completed write survives a process kill (it is in the page cache),
//! and a power loss once a FLUSH or its own FUA has returned.
//!
//! ## Freeze
//!
//! A group freeze closes the gates of all included disks at once (a fair RwLock: new writes
//! wait, in-flight ones drain), switches each disk's change-tracking epoch by swapping the
//! active slot in memory, and reopens the gates. Nothing is copied or synced in the window;
//! the switch is persisted after the thaw. The window is recorded in a histogram.
//!
//! ## Crash rules
//!
//! - The `.ctk` header's OPEN flag is set while the engine has a disk open; finding it set at
//!   open means an unclean shutdown, and tracking becomes UNTRUSTED until a full capture.
//! - Disk creation writes and syncs the files before the catalog record; deletion removes the
//!   record before the files. Files without a record are removed at open.
//! - Every multi-key catalog change is one synced RocksDB WriteBatch.
//!
//! ## What may run together
//!
//! | operation              | may run with                        | protected by                    |
//! |------------------------|-------------------------------------|---------------------------------|
//! | write / trim / zeroes  | reads, flushes, other writes        | write gate (shared)             |
//! | freeze + epoch switch  | reads, flushes                      | write gate (exclusive)          |
//! | resize                 | reads, flushes                      | write gate (exclusive) + admin  |
//! | create/delete disk, group changes | all I/O on other disks   | admin mutex, one catalog batch  |
//! | capture of closed epoch| writes (active slot only)           | CLOSED_PENDING flag per disk    |

mod capture;
mod catalog;
mod chunk;
mod chunk_map;
mod chunk_store;
mod collection;
mod delta;
mod disk;
mod engine;
mod error;
#[doc(hidden)]
pub mod failpoint;
pub mod format;
mod gate;
mod gc;
mod group;
mod hooks;
mod ids;
pub mod io;
mod jobs;
mod local_map;
mod operation;
mod restore;
mod restore_point;
mod restore_points;
mod restored;
pub mod retention;
mod stats;
pub mod store;
mod sys;
mod tracking;
mod verify;

pub use capture::PendingCapture;
pub use chunk::{ChunkId, ChunkRef};
pub use chunk_store::StoreStats;
pub use collection::{CollectionRecord, CreateCollection, DEFAULT_MAX_RESTORE_POINTS, ScriptHook};
pub use disk::{CreateDisk, Disk, DiskCounters, DiskRecord, Extent, RestoreSource};
pub use engine::{Engine, EngineConfig};
pub use error::{Error, ErrorKind, Result};
pub use gc::{DEFAULT_GC_LIVE_SHARE_PERCENT, GcReport};
pub use group::{CreateGroup, Freeze, GroupRecord, MAX_CONFIGURATION_BYTES};
pub use hooks::{HookContext, QuiesceHook};
pub use ids::{CollectionId, DiskId, GroupId, LineageId, Name, OperationId, PackId, RestorePointId};
pub use io::IoBackendKind;
pub use operation::{OperationKind, OperationRecord, OperationState};
pub use restore::RestoreDisk;
pub use restore_point::{
    ConsistencyMode, CreateRestorePoint, DiskRestorePoint, LineageBase, ProvisioningState, RestorePointRecord,
};
pub use restore_points::{DiskRestorePointReader, MAX_RESTORE_POINTS_LIMIT};
pub use retention::{RetentionDecision, RetentionPolicy};
pub use stats::{FreezeStats, FreezeSummary};
pub use sys::IoBuf;
pub use tracking::ChangeTracker;
pub use verify::{Affected, CorruptRecord, VerifyReport, VerifyTarget};
