//! Owns Cairn's NBD server: hypervisors and standard tools (qemu, libnbd's nbdinfo/nbdcopy)
//! attach exports over the Network Block Device protocol. Uses the engine, `net` and `errors`.
//!
//! - [`codec`]: the wire format, pure encode/decode with no I/O (fuzzable).
//! - [`exports`]: the [`Export`] trait the server serves, with its live-disk and disk restore
//!   point (`COLLECTION/RESTORE_POINT/DISK`, with `qemu:dirty-bitmap:` contexts)
//!   implementations, and the [`ExportSource`] that finds exports by name.
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

pub use exports::{DiskRestorePointExport, EngineExports, Export, ExportSource, LiveDisk};
pub use listener::{ListenError, Listener, NbdAddr};
pub use server::{Connection, Server, ServerConfig, TlsPolicy};
