//! Chunk maps in the catalog: `lineage | chunk index | !seq -> chunk ref`.
//!
//! A restore point stores only the chunks of its increment. Disk restore point S of a
//! lineage reads chunk i from the first key at or after `(lineage, i, !S)` that still names
//! `(lineage, i)`; with none, from the lineage's base (a restored disk's origin), else zeros.

use std::collections::BTreeMap;

use crate::catalog::{Batch, Catalog};
use crate::chunk::{ChunkId, ChunkRef};
use crate::error::{Error, Result};
use crate::format::{chunk_map_key, decode_chunk_map_key};
use crate::ids::LineageId;
use crate::restore_point::LineageBase;

pub(crate) const CF: &str = "chunk_map";

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
    let key = [b"lineage:".as_slice(), &lineage.to_bytes()].concat();
    match catalog.get_raw("meta", &key)? {
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

/// Chunk indices of `lineage` with an entry in `(after_seq, upto_seq]`: the chunks that
/// changed between two disk restore points of one lineage.
pub(crate) fn changed(catalog: &Catalog, lineage: LineageId, after_seq: u64, upto_seq: u64) -> Result<Vec<u64>> {
    let prefix = lineage_key(lineage);
    let mut out = Vec::new();
    catalog.scan(CF, &prefix, &prefix, |k, _| {
        let Some((_, index, s)) = decode_chunk_map_key(k) else {
            return Err(Error::corrupt("catalog/chunk_map", "malformed key"));
        };
        if s > after_seq && s <= upto_seq && out.last() != Some(&index) {
            out.push(index);
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Adds to `batch` the removal of every entry `seq` wrote in `lineage`; returns the stored
/// chunks those entries referenced (one per entry), to dereference.
pub(crate) fn drop_seq(catalog: &Catalog, batch: &mut Batch<'_>, lineage: LineageId, seq: u64) -> Result<Vec<ChunkId>> {
    let prefix = lineage_key(lineage);
    let mut keys = Vec::new();
    let mut derefs = Vec::new();
    catalog.scan(CF, &prefix, &prefix, |k, v| {
        if let Some((_, _, s)) = decode_chunk_map_key(k)
            && s == seq
        {
            keys.push(k.to_vec());
            derefs.extend(ChunkRef::decode(v)?.stored());
        }
        Ok(true)
    })?;
    for k in keys {
        batch.delete_raw(CF, &k)?;
    }
    Ok(derefs)
}

/// Adds one entry to `batch`.
pub(crate) fn put(batch: &mut Batch<'_>, lineage: LineageId, index: u64, seq: u64, r: &ChunkRef) -> Result<()> {
    batch.put_raw(CF, &chunk_map_key(lineage.to_bytes(), index, seq), &r.encode())
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
    let prefix = lineage_key(lineage);
    let mut derefs = Vec::new();
    let mut keys = Vec::new();
    // Keys sort by chunk index, then newest first.
    let mut current: Option<u64> = None;
    let mut shadowed_by_next = false;
    let mut kept_newest = false;
    catalog.scan(CF, &prefix, &prefix, |k, v| {
        let Some((_, index, seq)) = decode_chunk_map_key(k) else {
            return Err(Error::corrupt("catalog/chunk_map", "malformed key"));
        };
        if current != Some(index) {
            current = Some(index);
            shadowed_by_next = false;
            kept_newest = false;
        }
        if seq > upto {
            // Owned by `next`, or (with no newer restore point) left for the live disk by an
            // earlier deletion: either way newer than anything in the range.
            if next.is_none_or(|n| seq <= n) {
                shadowed_by_next = true;
            }
            return Ok(true);
        }
        if seq <= after {
            return Ok(true);
        }
        let needed = !shadowed_by_next && (next.is_some() || keep_for_live);
        if needed && !kept_newest {
            kept_newest = true;
        } else {
            keys.push(k.to_vec());
            derefs.extend(ChunkRef::decode(v)?.stored());
        }
        Ok(true)
    })?;
    for k in keys {
        batch.delete_raw(CF, &k)?;
    }
    Ok(derefs)
}
