//! The write gate of a live disk.
//!
//! Every write, trim and write-zeroes passes the gate for its whole duration. Closing the gate
//! (freeze) stops new writes at the gate and waits for those in flight to finish; opening it
//! (thaw) lets the waiting writes go. Reads and flushes never wait at the gate.
//!
//! The gate is a fair (write-preferring) tokio `RwLock<()>`: writers share it, a freeze takes
//! it exclusively, and once a freeze is waiting no new writer gets in ahead of it, so the
//! drain is bounded by the writes already in flight.

use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// A disk's write gate.
#[derive(Debug, Default, Clone)]
pub(crate) struct WriteGate {
    lock: Arc<RwLock<()>>,
}

/// Held by one write while it is in flight.
pub(crate) type GatePass = OwnedRwLockReadGuard<()>;

/// Held while the gate is closed; dropping it opens the gate.
pub(crate) type GateClosed = OwnedRwLockWriteGuard<()>;

impl WriteGate {
    /// Waits until the gate is open, then holds a pass for one write.
    pub(crate) async fn enter(&self) -> GatePass {
        self.lock.clone().read_owned().await
    }

    /// Closes the gate and waits for the writes in flight to finish.
    pub(crate) async fn close(&self) -> GateClosed {
        self.lock.clone().write_owned().await
    }
}
