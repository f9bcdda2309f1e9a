//! Groups as the catalog stores them: the disks of one VM plus its configuration document.

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
use crate::base::ids::{DiskId, GroupId, Name};
use crate::catalog::Record;

/// A group as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: GroupId,
    pub name: Name,
    pub disks: Vec<DiskId>,
    /// The VM's configuration: an opaque document the hypervisor stores with every restore point.
    pub configuration: String,
    pub created_at_ms: u64,
}

impl Record for GroupRecord {
    const CF: &'static str = "groups";
    fn key(&self) -> [u8; 16] {
        self.id.to_bytes()
    }
}

/// What a caller asks for when creating a group.
#[derive(Debug, Clone, Default)]
pub struct CreateGroup {
    pub name: String,
    pub disks: Vec<DiskId>,
    pub configuration: String,
}

/// Largest configuration document kept with a group.
pub const MAX_CONFIGURATION_BYTES: usize = 1 << 20;

pub(crate) fn check_configuration(doc: &str) -> Result<()> {
    if doc.len() > MAX_CONFIGURATION_BYTES {
        return Err(Error::invalid(
            "configuration",
            format!("{} bytes is larger than the maximum {MAX_CONFIGURATION_BYTES}", doc.len()),
        ));
    }
    Ok(())
}
