//! Every export of an engine, found by name.

use std::sync::Arc;

use cairn_engine::Engine;

use super::live::LiveDisk;
use super::restore_point::{self, RunsCache};
use super::{Export, ExportSource};

/// Every export of an engine: each live disk by its name, read-write, and each disk
/// restore point of a succeeded restore point as `COLLECTION/RESTORE_POINT/DISK`, read-only.
/// Names never hold `/`, so the two kinds cannot collide.
#[derive(Debug, Clone)]
pub struct EngineExports {
    engine: Engine,
    /// Restore point allocations and dirty bitmaps, shared by every connection.
    runs: Arc<RunsCache>,
}

impl EngineExports {
    pub fn new(engine: Engine) -> Self {
        Self { engine, runs: Arc::default() }
    }
}

impl ExportSource for EngineExports {
    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        if name.contains('/') {
            return restore_point::open(&self.engine, &self.runs, name).map(|e| Arc::new(e) as Arc<dyn Export>);
        }
        let disk = self.engine.disk_by_name(name).ok()?;
        Some(Arc::new(LiveDisk(disk)))
    }
    fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self.engine.list_disks().into_iter().map(|r| r.name.to_string()).collect();
        names.extend(restore_point::list(&self.engine));
        names
    }
}
