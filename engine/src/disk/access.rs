//! Who may use a live disk: attached clients (NBD connections) and an exclusive hold (a
//! revert in place), which exclude each other. While a disk is held, every read, write,
//! trim and flush that does not come from the holder fails Busy, and attaching fails.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::base::error::{Error, Result};
use crate::disk::Disk;

#[derive(Debug, Default)]
pub(crate) struct Access {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    attached: u32,
    /// What holds the disk, for the errors others get.
    held: Option<String>,
}

impl Access {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails Busy while the disk is held.
    pub(crate) fn check(&self, disk: &str) -> Result<()> {
        match &self.lock().held {
            Some(purpose) => Err(Error::Busy(format!("disk {disk} is held by {purpose}; try again when it ends"))),
            None => Ok(()),
        }
    }

    pub(crate) fn attached(&self) -> u32 {
        self.lock().attached
    }
}

/// A client attached to a disk (an NBD connection); detaches when dropped.
#[derive(Debug)]
pub struct Attachment {
    disk: Arc<Disk>,
}

impl Attachment {
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut s = self.disk.access.lock();
        s.attached = s.attached.saturating_sub(1);
    }
}

/// The exclusive hold of a disk; released when dropped.
#[derive(Debug)]
pub(crate) struct Hold {
    disk: Arc<Disk>,
}

impl Hold {
    pub(crate) fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.disk.access.lock().held = None;
    }
}

impl Disk {
    /// Attaches a client; fails Busy while the disk is held.
    pub fn attach(self: &Arc<Self>) -> Result<Attachment> {
        let mut s = self.access.lock();
        if let Some(purpose) = &s.held {
            return Err(Error::Busy(format!("disk {} is held by {purpose}; attach when it ends", self.name)));
        }
        s.attached += 1;
        Ok(Attachment { disk: self.clone() })
    }

    /// Clients attached now.
    pub fn attached(&self) -> u32 {
        self.access.attached()
    }

    /// Holds the disk for `purpose`: fails FailedPrecondition while a client is attached, Busy
    /// while it is held already. Writes in flight drain before this returns; later ones fail.
    pub(crate) async fn hold(self: &Arc<Self>, purpose: &str) -> Result<Hold> {
        {
            let mut s = self.access.lock();
            if s.attached > 0 {
                return Err(Error::FailedPrecondition(format!(
                    "disk {} has {} client(s) attached; detach them before {purpose}",
                    self.name, s.attached
                )));
            }
            if let Some(other) = &s.held {
                return Err(Error::Busy(format!("disk {} is held by {other}", self.name)));
            }
            s.held = Some(purpose.to_owned());
        }
        let hold = Hold { disk: self.clone() };
        // Writers check the hold inside the gate: once it has been closed and reopened, no
        // write that missed the hold is still running.
        drop(self.close_gate().await);
        Ok(hold)
    }
}
