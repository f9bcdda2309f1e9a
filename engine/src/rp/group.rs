//! The group freeze: the write gates of a group's disks closed together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::error::{Error, Result};
use crate::base::ids::{DiskId, GroupId};
use crate::base::stats::FreezeStats;
use crate::context::Context;
use crate::disk::Disk;
use crate::disk::gate::GateClosed;

/// Freezes the group's disks, except `exclude`: gates closed, in-flight writes drained.
pub(crate) async fn freeze_group(ctx: &Arc<Context>, id: GroupId, exclude: &[DiskId]) -> Result<Freeze> {
    let group = ctx.group(id)?;
    if let Some(bad) = exclude.iter().find(|d| !group.disks.contains(d)) {
        return Err(Error::invalid("exclude_disks", format!("disk {bad} is not in group {}", group.name)));
    }
    let disks =
        group.disks.iter().filter(|d| !exclude.contains(d)).map(|d| ctx.disk(*d)).collect::<Result<Vec<_>>>()?;
    Ok(Freeze::begin(disks, ctx.freeze_stats.clone()).await)
}

/// Disks whose write gates are closed together: new writes wait, none is in flight.
///
/// The window (from the first gate starting to close to the last reopening) is recorded in
/// the engine's freeze histogram when the freeze ends.
#[must_use = "dropping a Freeze thaws at once"]
pub struct Freeze {
    disks: Vec<Arc<Disk>>,
    gates: Vec<GateClosed>,
    switched: bool,
    started: Instant,
    stats: Arc<FreezeStats>,
}

impl std::fmt::Debug for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freeze").field("disks", &self.disks.len()).field("started", &self.started).finish()
    }
}

impl Freeze {
    /// Closes the gates of `disks` and waits for their in-flight writes to drain.
    ///
    /// One gate after the other, in disk id order: two freezes sharing disks (a resize, a
    /// freeze of another group the disk moved to) then queue on the first disk they share,
    /// where closing them all at once could leave each holding part of the other's gates,
    /// with every guest write blocked for good. A gate closes in the time its in-flight
    /// writes take to drain, so the window grows by little.
    pub(crate) async fn begin(mut disks: Vec<Arc<Disk>>, stats: Arc<FreezeStats>) -> Self {
        disks.sort_by_key(|d| d.id());
        disks.dedup_by_key(|d| d.id());
        let started = Instant::now();
        let mut gates = Vec::with_capacity(disks.len());
        for d in &disks {
            gates.push(d.close_gate().await);
        }
        Self { disks, gates, switched: false, started, stats }
    }

    /// The frozen disks.
    pub fn disks(&self) -> &[Arc<Disk>] {
        &self.disks
    }

    /// Closes the change-tracking epoch of every frozen disk (in memory only; persisted by
    /// [`Self::thaw`]). Fails without switching any disk if one still holds an unconsumed epoch.
    pub fn switch_epochs(&mut self) -> Result<()> {
        if let Some(busy) = self.disks.iter().find(|d| d.tracker().closed_pending()) {
            return Err(Error::FailedPrecondition(format!(
                "disk {} still has a restore point capture pending",
                busy.name()
            )));
        }
        for d in &self.disks {
            d.tracker().switch_epoch()?;
        }
        self.switched = true;
        Ok(())
    }

    /// Time since the freeze began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reopens the gates, records the window, then persists switched epochs.
    pub async fn thaw(mut self) -> Result<Duration> {
        let window = self.open_gates();
        if self.switched {
            let trackers: Vec<_> = self.disks.iter().map(|d| d.tracker()).collect();
            tokio::task::spawn_blocking(move || trackers.iter().try_for_each(|t| t.persist()))
                .await
                .map_err(|e| Error::io("persist change tracking", "", std::io::Error::other(e)))??;
        }
        Ok(window)
    }

    fn open_gates(&mut self) -> Duration {
        if self.gates.is_empty() {
            return Duration::ZERO;
        }
        self.gates.clear();
        let window = self.started.elapsed();
        self.stats.record(window);
        window
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        self.open_gates();
    }
}
