//! Running totals of the chunk index and its packs, so that reading them (every metrics
//! scrape, `store stats`) costs nothing: one scan at open, then every change to the `chunks`
//! and `packs` families adjusts them right after its batch commits. All of those changes
//! happen under the chunk store's index lock, so the totals move in the same order as the
//! catalog.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::base::error::Result;
use crate::base::format::RECORD_HEADER_LEN;
use crate::catalog::Catalog;
use crate::store::chunk::ChunkLocation;

/// What the chunk store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records in the index (full chunks and deltas).
    pub records: u64,
    /// Their stored bytes (headers included).
    pub record_bytes: u64,
    /// Records some chunk map entry references.
    pub referenced_records: u64,
    pub referenced_bytes: u64,
    /// Sum of reference counts.
    pub references: u64,
    pub packs: u64,
    pub pack_bytes: u64,
}

/// Stored bytes of a record, header included.
pub(crate) fn record_bytes(loc: &ChunkLocation) -> u64 {
    RECORD_HEADER_LEN as u64 + u64::from(loc.stored_len)
}

/// One change to the totals, signed, gathered before its batch commits and applied after.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreChange {
    records: i64,
    record_bytes: i64,
    referenced_records: i64,
    referenced_bytes: i64,
    references: i64,
    packs: i64,
    pack_bytes: i64,
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl StoreChange {
    /// A record's index entry goes from `old` to `new` (`None`: absent).
    pub(crate) fn record(&mut self, old: Option<&ChunkLocation>, new: Option<&ChunkLocation>) {
        for (loc, sign) in [(old, -1i64), (new, 1)] {
            let Some(loc) = loc else { continue };
            let bytes = signed(record_bytes(loc));
            self.records += sign;
            self.record_bytes += sign * bytes;
            self.references += sign * signed(loc.refs);
            if loc.refs > 0 {
                self.referenced_records += sign;
                self.referenced_bytes += sign * bytes;
            }
        }
    }

    /// A pack of `bytes` enters the index.
    pub(crate) fn pack_added(&mut self, bytes: u64) {
        self.packs += 1;
        self.pack_bytes += signed(bytes);
    }

    /// A pack of `bytes` leaves the index.
    pub(crate) fn pack_removed(&mut self, bytes: u64) {
        self.packs -= 1;
        self.pack_bytes -= signed(bytes);
    }
}

/// The totals themselves.
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    records: AtomicU64,
    record_bytes: AtomicU64,
    referenced_records: AtomicU64,
    referenced_bytes: AtomicU64,
    references: AtomicU64,
    packs: AtomicU64,
    pack_bytes: AtomicU64,
}

impl StoreCounters {
    /// Counts the index and its packs (the one scan, at open).
    pub(crate) fn load(catalog: &Catalog) -> Result<Self> {
        let mut change = StoreChange::default();
        catalog.scan("chunks", &[], &[], |_, v| {
            change.record(None, Some(&ChunkLocation::decode(v)?));
            Ok(true)
        })?;
        catalog.scan("packs", &[], &[], |_, v| {
            change.pack_added(crate::base::format::decode_pack_entry(v)?);
            Ok(true)
        })?;
        let counters = Self::default();
        counters.apply(&change);
        Ok(counters)
    }

    /// Adds a committed change.
    pub(crate) fn apply(&self, c: &StoreChange) {
        let pairs = [
            (&self.records, c.records),
            (&self.record_bytes, c.record_bytes),
            (&self.referenced_records, c.referenced_records),
            (&self.referenced_bytes, c.referenced_bytes),
            (&self.references, c.references),
            (&self.packs, c.packs),
            (&self.pack_bytes, c.pack_bytes),
        ];
        for (counter, delta) in pairs {
            let magnitude = delta.unsigned_abs();
            if delta >= 0 {
                counter.fetch_add(magnitude, Ordering::Relaxed);
            } else {
                // Never below zero: a total that would go negative was miscounted, and a
                // wrapped u64 would read as an absurd size.
                let _ =
                    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(magnitude)));
            }
        }
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            records: self.records.load(Ordering::Relaxed),
            record_bytes: self.record_bytes.load(Ordering::Relaxed),
            referenced_records: self.referenced_records.load(Ordering::Relaxed),
            referenced_bytes: self.referenced_bytes.load(Ordering::Relaxed),
            references: self.references.load(Ordering::Relaxed),
            packs: self.packs.load(Ordering::Relaxed),
            pack_bytes: self.pack_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ids::PackId;

    fn loc(stored_len: u32, refs: u64) -> ChunkLocation {
        ChunkLocation { pack: PackId::new(), offset: 0, stored_len, raw_len: stored_len, refs }
    }

    #[test]
    fn a_pack_entry_that_is_not_eight_bytes_fails_the_load_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let mut batch = catalog.batch();
        batch.put_raw("packs", &PackId::new().to_bytes(), &[1, 2, 3]).unwrap();
        catalog.commit(batch).unwrap();

        let err = StoreCounters::load(&catalog).unwrap_err();

        assert_eq!(err.kind(), crate::base::error::ErrorKind::Corrupt, "{err}");
    }

    #[test]
    fn records_moving_between_referenced_and_dead_adjust_every_total() {
        let counters = StoreCounters::default();
        let header = RECORD_HEADER_LEN as u64;
        let mut add = StoreChange::default();
        add.record(None, Some(&loc(100, 2)));
        add.record(None, Some(&loc(50, 1)));
        add.pack_added(4096);
        counters.apply(&add);
        let mut drop = StoreChange::default();
        drop.record(Some(&loc(50, 1)), Some(&loc(50, 0)));
        counters.apply(&drop);

        let s = counters.snapshot();
        assert_eq!((s.records, s.record_bytes), (2, 150 + 2 * header));
        assert_eq!((s.referenced_records, s.referenced_bytes, s.references), (1, 100 + header, 2));
        assert_eq!((s.packs, s.pack_bytes), (1, 4096));

        let mut sweep = StoreChange::default();
        sweep.record(Some(&loc(50, 0)), None);
        sweep.record(Some(&loc(100, 2)), None);
        sweep.pack_removed(4096);
        counters.apply(&sweep);
        assert_eq!(counters.snapshot(), StoreStats::default());
    }
}
