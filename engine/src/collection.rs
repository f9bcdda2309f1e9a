//! Restore point collections: all restore points of one group, in one region.

use serde::{Deserialize, Serialize};

use crate::catalog::Record;
use crate::ids::{CollectionId, GroupId, Name};

/// Default limit of restore points per collection (Azure's).
pub const DEFAULT_MAX_RESTORE_POINTS: u32 = 200;

/// A host script run around the freeze: `command quiesce` before it (stdout's last line may
/// name the consistency reached: `FileSystemConsistent` or `ApplicationConsistent`), and
/// `command thaw` after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptHook {
    /// Program and leading arguments; the phase is appended.
    pub command: Vec<String>,
    pub timeout_ms: u64,
}

/// A collection as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionRecord {
    pub id: CollectionId,
    pub name: Name,
    pub group: GroupId,
    pub region: String,
    pub max_restore_points: u32,
    #[serde(default)]
    pub hook: Option<ScriptHook>,
    pub created_at_ms: u64,
}

impl Record for CollectionRecord {
    const CF: &'static str = "collections";
    fn key(&self) -> [u8; 16] {
        self.id.to_bytes()
    }
}

/// What a caller asks for when creating a collection.
#[derive(Debug, Clone, Default)]
pub struct CreateCollection {
    pub name: String,
    pub group: GroupId,
    /// `None`: this engine's region.
    pub region: Option<String>,
    /// `None`: 200.
    pub max_restore_points: Option<u32>,
    pub hook: Option<ScriptHook>,
}
