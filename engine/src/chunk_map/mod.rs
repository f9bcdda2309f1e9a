//! The chunk map layer: which chunk every lineage holds at every seq, lineage bases, the reader.
//! Uses base, catalog and store.
//!
//! Chunk maps in the catalog: `lineage | chunk index | !seq -> chunk ref`.
//!
//! A restore point stores only the chunks of its increment. Disk restore point S of a
//! lineage reads chunk i from the first key at or after `(lineage, i, !S)` that still names
//! `(lineage, i)`; with none, from the lineage's base (a restored disk's origin), else zeros.
//!
//! Every entry is also indexed by seq in `chunk_seq` (`lineage | seq | chunk index`, no
//! value), written and deleted in the same batch as the entry: what changed between two
//! restore points, and what deleting one drops, then cost the increments involved rather
//! than a scan of the whole lineage (a 1 TiB disk has 4 Mi chunks per full restore point).

pub(crate) mod reader;

use std::collections::BTreeMap;

use crate::base::error::{Error, Result};
use crate::base::format::{chunk_map_key, decode_chunk_map_key};
use crate::base::ids::LineageId;
use crate::base::merkle::{self, Root};
use crate::catalog::{Batch, Catalog};
use crate::store::chunk::{ChunkId, ChunkRef};

pub(crate) const CF: &str = "chunk_map";
/// The index of [`CF`] by seq.
pub(crate) const SEQ_CF: &str = "chunk_seq";
use crate::base::format::META_SEQ_INDEX_BUILT_KEY as SEQ_INDEX_BUILT_KEY;
use crate::catalog::restore_point::LineageBase;

fn seq_key(lineage: [u8; 16], seq: u64, index: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&lineage);
    k[16..24].copy_from_slice(&seq.to_be_bytes());
    k[24..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Splits a [`SEQ_CF`] key into (seq, chunk index).
fn decode_seq_key(k: &[u8]) -> Result<(u64, u64)> {
    let parse = |r: std::ops::Range<usize>| k.get(r).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    match (k.len(), parse(16..24), parse(24..32)) {
        (32, Some(seq), Some(index)) => Ok((seq, index)),
        _ => Err(Error::corrupt("catalog/chunk_seq", "malformed key")),
    }
}

/// Indexes every entry of [`CF`] in [`SEQ_CF`], unless that was done: once, on the first
/// open of a catalog written before the index existed. Idempotent; batches are bounded,
/// and the marker is set last, so an interrupted run starts over.
pub(crate) fn build_seq_index(catalog: &Catalog) -> Result<()> {
    if catalog.get_raw("meta", SEQ_INDEX_BUILT_KEY)?.is_some() {
        return Ok(());
    }
    let mut batch = catalog.batch();
    let (mut pending, mut total) = (0usize, 0u64);
    let mut full = Vec::new();
    catalog.scan(CF, &[], &[], |k, _| {
        let Some((lineage, index, seq)) = decode_chunk_map_key(k) else {
            return Err(Error::corrupt("catalog/chunk_map", "malformed key"));
        };
        batch.put_raw(SEQ_CF, &seq_key(lineage, seq, index), &[])?;
        pending += 1;
        total += 1;
        if pending == 65_536 {
            full.push(std::mem::replace(&mut batch, catalog.batch()));
            pending = 0;
        }
        Ok(true)
    })?;
    for b in full {
        catalog.commit(b)?;
    }
    batch.put_raw("meta", SEQ_INDEX_BUILT_KEY, &[1])?;
    catalog.commit(batch)?;
    if total > 0 {
        tracing::info!(entries = total, "indexed chunk map entries by seq");
    }
    Ok(())
}

/// Calls `f(index, seq)` for each entry of `lineage` with a seq in `(after, upto]`, by
/// ascending seq, then index.
fn entries_in(
    catalog: &Catalog,
    lineage: LineageId,
    after: u64,
    upto: u64,
    mut f: impl FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    if after >= upto {
        return Ok(());
    }
    let prefix = lineage_key(lineage);
    catalog.scan(SEQ_CF, &seq_key(prefix, after + 1, 0), &prefix, |k, _| {
        let (seq, index) = decode_seq_key(k)?;
        if seq > upto {
            return Ok(false);
        }
        f(index, seq)?;
        Ok(true)
    })
}

/// Adds to `batch` the removal of the entry `(lineage, index, seq)` and of its index key;
/// returns the stored chunks it referenced. An index key whose entry is missing is dropped
/// with a warning.
fn drop_entry(
    catalog: &Catalog,
    batch: &mut Batch<'_>,
    lineage: LineageId,
    index: u64,
    seq: u64,
    derefs: &mut Vec<ChunkId>,
) -> Result<()> {
    let key = chunk_map_key(lineage.to_bytes(), index, seq);
    match catalog.get_raw(CF, &key)? {
        Some(v) => {
            derefs.extend(ChunkRef::decode(&v)?.stored());
            batch.delete_raw(CF, &key)?;
        }
        None => tracing::warn!(%lineage, index, seq, "chunk_seq names a chunk map entry that is gone"),
    }
    batch.delete_raw(SEQ_CF, &seq_key(lineage.to_bytes(), seq, index))
}

fn lineage_key(lineage: LineageId) -> [u8; 16] {
    lineage.to_bytes()
}

fn index_prefix(lineage: LineageId, index: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..16].copy_from_slice(&lineage_key(lineage));
    p[16..].copy_from_slice(&index.to_be_bytes());
    p
}

/// The base a lineage starts from, if it was restored from a disk restore point.
pub(crate) fn lineage_base(catalog: &Catalog, lineage: LineageId) -> Result<Option<LineageBase>> {
    match catalog.get_raw("meta", &crate::base::format::meta_lineage_key(lineage.to_bytes()))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| Error::corrupt("catalog/meta", format!("lineage base: {e}"))),
    }
}

/// The entry chunk `index` has at `seq` in `lineage` itself (not its base).
fn own_entry(catalog: &Catalog, lineage: LineageId, index: u64, seq: u64) -> Result<Option<ChunkRef>> {
    let from = chunk_map_key(lineage.to_bytes(), index, seq);
    match catalog.seek(CF, &from, &index_prefix(lineage, index))? {
        None => Ok(None),
        Some((_, v)) => ChunkRef::decode(&v).map(Some),
    }
}

/// What chunk `index` of `lineage` holds at `seq`, following bases.
pub(crate) fn resolve(catalog: &Catalog, lineage: LineageId, index: u64, seq: u64) -> Result<ChunkRef> {
    let (mut lineage, mut seq) = (lineage, seq);
    // Bases form a chain back to a lineage with none; bound it against a corrupt cycle.
    for _ in 0..1024 {
        if let Some(r) = own_entry(catalog, lineage, index, seq)? {
            return Ok(r);
        }
        match lineage_base(catalog, lineage)? {
            Some(base) => (lineage, seq) = (base.lineage, base.seq),
            None => return Ok(ChunkRef::Zero),
        }
    }
    Err(Error::corrupt("catalog/meta", format!("lineage base chain of {lineage} does not end")))
}

/// Every chunk of `lineage` at `seq` that is not zero, with its ref, ascending by index.
/// `chunks` bounds the indices (the disk's chunk count).
pub(crate) fn allocated(
    catalog: &Catalog,
    lineage: LineageId,
    seq: u64,
    chunks: u64,
) -> Result<BTreeMap<u64, ChunkRef>> {
    let mut out = BTreeMap::new();
    let mut chain = vec![(lineage, seq)];
    let mut cur = lineage;
    while let Some(base) = lineage_base(catalog, cur)? {
        if chain.len() > 1024 {
            return Err(Error::corrupt("catalog/meta", "lineage base chain does not end"));
        }
        chain.push((base.lineage, base.seq));
        cur = base.lineage;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (lin, s) in chain {
        let prefix = lineage_key(lin);
        catalog.scan(CF, &prefix, &prefix, |k, v| {
            let Some((_, index, entry_seq)) = decode_chunk_map_key(k) else {
                return Err(Error::corrupt("catalog/chunk_map", "malformed key"));
            };
            // Newest first within an index: the first entry at or below `s` wins.
            if entry_seq <= s && index < chunks && seen.insert(index) {
                let r = ChunkRef::decode(v)?;
                if r != ChunkRef::Zero {
                    out.insert(index, r);
                }
            }
            Ok(true)
        })?;
    }
    Ok(out)
}

/// The Merkle root (see `base::merkle`) of `lineage` at `seq`, following bases, for a disk
/// of `size_bytes` in chunks of `chunk_size_bytes`: hashed from the entries' content ids,
/// reading no data.
pub(crate) fn merkle_root(
    catalog: &Catalog,
    lineage: LineageId,
    seq: u64,
    size_bytes: u64,
    chunk_size_bytes: u64,
) -> Result<Root> {
    let chunks = size_bytes.div_ceil(chunk_size_bytes);
    let nonzero: BTreeMap<u64, [u8; 32]> = allocated(catalog, lineage, seq, chunks)?
        .into_iter()
        .filter_map(|(index, r)| r.content().map(|c| (index, c.0)))
        .collect();
    let tree = merkle::tree(size_bytes, chunk_size_bytes, &nonzero);
    Ok(merkle::disk_root(size_bytes, chunk_size_bytes, &tree))
}

/// Chunk indices of `lineage` with an entry in `(after_seq, upto_seq]`, ascending: the
/// chunks that changed between two disk restore points of one lineage.
pub(crate) fn changed(catalog: &Catalog, lineage: LineageId, after_seq: u64, upto_seq: u64) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    entries_in(catalog, lineage, after_seq, upto_seq, |index, _| {
        out.push(index);
        Ok(())
    })?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Adds to `batch` the removal of every entry `seq` wrote in `lineage`; returns the stored
/// chunks those entries referenced (one per entry), to dereference.
pub(crate) fn drop_seq(catalog: &Catalog, batch: &mut Batch<'_>, lineage: LineageId, seq: u64) -> Result<Vec<ChunkId>> {
    let mut indices = Vec::new();
    entries_in(catalog, lineage, seq.saturating_sub(1), seq, |index, _| {
        indices.push(index);
        Ok(())
    })?;
    let mut derefs = Vec::new();
    for index in indices {
        drop_entry(catalog, batch, lineage, index, seq, &mut derefs)?;
    }
    Ok(derefs)
}

/// Adds one entry to `batch`.
pub(crate) fn put(batch: &mut Batch<'_>, lineage: LineageId, index: u64, seq: u64, r: &ChunkRef) -> Result<()> {
    batch.put_raw(CF, &chunk_map_key(lineage.to_bytes(), index, seq), &r.encode())?;
    batch.put_raw(SEQ_CF, &seq_key(lineage.to_bytes(), seq, index), &[])
}

/// Adds to `batch` what deleting a restore point at `upto` takes from `lineage`: the entries
/// it owns are those with a seq in `(after, upto]` (`after` = the next older remaining restore
/// point of the lineage, 0 for none). Per chunk, the newest of them is kept when something
/// still reads through it: the next newer remaining restore point `next` (unless it has an
/// entry of its own for that chunk) or, with `keep_for_live`, the live disk's next capture.
/// Everything else in the range is dropped; returns the references to drop.
pub(crate) fn drop_range(
    catalog: &Catalog,
    batch: &mut Batch<'_>,
    lineage: LineageId,
    after: u64,
    upto: u64,
    next: Option<u64>,
    keep_for_live: bool,
) -> Result<Vec<ChunkId>> {
    // The range's entries per chunk, found through the seq index.
    let mut owned: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    entries_in(catalog, lineage, after, upto, |index, seq| {
        owned.entry(index).or_default().push(seq);
        Ok(())
    })?;
    let mut derefs = Vec::new();
    for (index, mut seqs) in owned {
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        // Shadowed: the chunk has a newer entry that whoever reads through the range reads
        // first (`next`'s own, or with no newer restore point one an earlier deletion left
        // for the live disk).
        let bound = next.unwrap_or(u64::MAX);
        let newest =
            catalog.seek(CF, &chunk_map_key(lineage.to_bytes(), index, bound), &index_prefix(lineage, index))?;
        let shadowed = match newest {
            Some((k, _)) => {
                decode_chunk_map_key(&k).ok_or_else(|| Error::corrupt("catalog/chunk_map", "malformed key"))?.2 > upto
            }
            None => false,
        };
        let needed = !shadowed && (next.is_some() || keep_for_live);
        // Newest first: keep the newest when it is needed, drop the rest.
        for &seq in seqs.iter().skip(usize::from(needed)) {
            drop_entry(catalog, batch, lineage, index, seq, &mut derefs)?;
        }
    }
    Ok(derefs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(n: u8) -> ChunkRef {
        ChunkRef::Full(ChunkId([n; 32]))
    }

    /// Writes a chunk map entry the way catalogs did before the seq index.
    fn put_unindexed(catalog: &Catalog, lineage: LineageId, index: u64, seq: u64, r: &ChunkRef) {
        let mut batch = catalog.batch();
        batch.put_raw(CF, &chunk_map_key(lineage.to_bytes(), index, seq), &r.encode()).unwrap();
        catalog.commit(batch).unwrap();
    }

    #[test]
    fn an_older_catalog_gets_its_entries_indexed_once() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        // A catalog from before the index has no marker.
        let mut batch = catalog.batch();
        batch.delete_raw("meta", SEQ_INDEX_BUILT_KEY).unwrap();
        catalog.commit(batch).unwrap();
        let (l, m) = (LineageId::new(), LineageId::new());
        for (lineage, index, seq, n) in [(l, 0, 1, 1), (l, 0, 3, 2), (l, 5, 2, 3), (l, 7, 3, 4), (m, 1, 3, 5)] {
            put_unindexed(&catalog, lineage, index, seq, &full(n));
        }
        // Unindexed, the entries are invisible to what reads the index.
        assert_eq!(changed(&catalog, l, 0, 3).unwrap(), Vec::<u64>::new());

        build_seq_index(&catalog).unwrap();
        assert_eq!(changed(&catalog, l, 0, 3).unwrap(), vec![0, 5, 7]);
        assert_eq!(changed(&catalog, l, 2, 3).unwrap(), vec![0, 7]);
        assert_eq!(changed(&catalog, l, 1, 2).unwrap(), vec![5]);
        assert_eq!(changed(&catalog, m, 0, 9).unwrap(), vec![1]);
        assert_eq!(changed(&catalog, l, 3, 3).unwrap(), Vec::<u64>::new());

        // Done once: a later unindexed entry stays unindexed.
        put_unindexed(&catalog, l, 9, 3, &full(6));
        build_seq_index(&catalog).unwrap();
        assert_eq!(changed(&catalog, l, 2, 3).unwrap(), vec![0, 7]);

        // Dropping a seq drops its entries and their index keys, and only those.
        let mut batch = catalog.batch();
        let mut dropped = drop_seq(&catalog, &mut batch, l, 3).unwrap();
        catalog.commit(batch).unwrap();
        dropped.sort_by_key(|c| c.0);
        assert_eq!(dropped, vec![ChunkId([2; 32]), ChunkId([4; 32])]);
        assert_eq!(changed(&catalog, l, 0, 3).unwrap(), vec![0, 5]);
        assert!(own_entry(&catalog, l, 7, 3).unwrap().is_none());
        assert_eq!(own_entry(&catalog, l, 0, 3).unwrap(), Some(full(1)));
        assert_eq!(changed(&catalog, m, 0, 9).unwrap(), vec![1]);
    }

    #[test]
    fn a_new_catalog_is_marked_indexed_and_puts_index_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert!(catalog.get_raw("meta", SEQ_INDEX_BUILT_KEY).unwrap().is_some());
        let l = LineageId::new();
        let mut batch = catalog.batch();
        put(&mut batch, l, 4, 2, &full(1)).unwrap();
        put(&mut batch, l, 4, 5, &full(2)).unwrap();
        catalog.commit(batch).unwrap();
        assert_eq!(changed(&catalog, l, 0, 2).unwrap(), vec![4]);
        assert_eq!(changed(&catalog, l, 2, 5).unwrap(), vec![4]);
        assert_eq!(changed(&catalog, l, 5, 9).unwrap(), Vec::<u64>::new());

        // Deleting restore point 2 with 5 reading chunk 4 from its own entry: 2's entry goes.
        let mut batch = catalog.batch();
        let dropped = drop_range(&catalog, &mut batch, l, 0, 2, Some(5), true).unwrap();
        catalog.commit(batch).unwrap();
        assert_eq!(dropped, vec![ChunkId([1; 32])]);
        assert_eq!(changed(&catalog, l, 0, 9).unwrap(), vec![4]);
        assert_eq!(resolve(&catalog, l, 4, 9).unwrap(), full(2));
        assert_eq!(resolve(&catalog, l, 4, 3).unwrap(), ChunkRef::Zero);
    }
}
