//! Cairn's NBD server: hypervisors and standard tools (qemu, libnbd's nbdinfo/nbdcopy)
//! attach exports over the Network Block Device protocol.
//!
//! - [`proto`]: the wire format, pure encode/decode with no I/O (fuzzable).
//! - [`export`]: the [`Export`] trait the server serves, its live-disk implementation, the
//!   [`ExportSource`] that finds exports by name.
//! - [`restore_point`]: read-only exports of disk restore points
//!   (`COLLECTION/RESTORE_POINT/DISK`) with their `qemu:dirty-bitmap:` contexts.
//! - [`server`]: handshake and transmission over any async byte stream.
//! - [`listener`]: unix/TCP listening, the accept loop and clean shutdown.
//!
//! Supported: fixed newstyle handshake with NO_ZEROES; options GO, INFO, LIST, ABORT,
//! EXPORT_NAME, STRUCTURED_REPLY, LIST/SET_META_CONTEXT (`base:allocation`, and
//! `qemu:dirty-bitmap:OLDER_RESTORE_POINT` on restore point exports); commands READ
//! (structured replies skip holes), WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS,
//! DISC; STARTTLS (FORCEDTLS on TCP when TLS is configured, X.509 through rustls). Not yet:
//! EXTENDED_HEADERS (answered ERR_UNSUP).

pub mod codec;
pub mod exports;
pub mod listener;
pub mod server;

pub use exports::restore_point::DiskRestorePointExport;
pub use exports::{Export, ExportSource, LiveDisk, LiveDisks};
pub use listener::{ListenError, Listener, NbdAddr};
pub use server::{Connection, Server, ServerConfig, TlsPolicy};
