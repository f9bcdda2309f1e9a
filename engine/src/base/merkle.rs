//! Merkle roots: what a disk restore point and a restore point hold, as one hash each, so
//! two copies compare without moving data and a chunk map that changed under a restore
//! point is found before its bytes are served.
//!
//! - Leaf `i` of a disk restore point: the BLAKE3 of chunk `i`'s raw content (the chunk's
//!   length: the last one may be short), zeros included. Every chunk map entry records it
//!   (a full chunk's id, a delta's `content`), so roots are hashed from the map without
//!   reading data, and consolidating deltas never changes them.
//! - The tree over leaves `D[0..n]`, RFC 6962's shape with BLAKE3 and its domain bytes:
//!   `MTH(D[0..1]) = BLAKE3(0x00 || D[0])`; `MTH(D[0..n]) = BLAKE3(0x01 || MTH(D[0..k]) ||
//!   MTH(D[k..n]))` with `k` the largest power of two below `n`.
//! - A disk restore point's root: BLAKE3 in derive-key mode ([`DISK_CONTEXT`]) of
//!   `size_bytes (u64 LE) || chunk_size_bytes (u64 LE) || MTH`.
//! - A restore point's root: BLAKE3 in derive-key mode ([`RESTORE_POINT_CONTEXT`]) of
//!   `BLAKE3(configuration) || disk count (u64 LE)` then, per disk in the record's order,
//!   `name length (u64 LE) || name || disk root`.
//!
//! Disks are named, not identified, in the root: a copy in another region names its disks
//! alike and has other ids.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Derive-key context of a disk restore point's root.
pub const DISK_CONTEXT: &str = "cairn 2026-12-04 disk restore point merkle root v1";
/// Derive-key context of a restore point's root.
pub const RESTORE_POINT_CONTEXT: &str = "cairn 2026-12-04 restore point merkle root v1";

/// A Merkle root; hex in text and JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Root(pub [u8; 32]);

/// Writes a digest as lowercase hex.
pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, digest: &[u8; 32]) -> fmt::Result {
    digest.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Root({self})")
    }
}

impl std::str::FromStr for Root {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        let bad = || crate::Error::invalid("merkle root", format!("{s:?} is not 64 hex digits"));
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl Serialize for Root {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Root {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn leaf_node(leaf: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(leaf);
    *h.finalize().as_bytes()
}

fn inner_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The BLAKE3 of `len` zero bytes: the leaf of an all-zero chunk.
pub fn zero_leaf(len: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(4096)).unwrap_or(4096);
        h.update(&zeros[..n]);
        left -= n as u64;
    }
    *h.finalize().as_bytes()
}

/// The tree of a disk of `size_bytes` in chunks of `chunk_size_bytes`, whose chunks not in
/// `nonzero` are all zeros: sparse, so it costs the allocated chunks times the tree's depth,
/// not the disk's chunk count (subtrees of zero chunks are hashed once per level).
pub fn tree(size_bytes: u64, chunk_size_bytes: u64, nonzero: &BTreeMap<u64, [u8; 32]>) -> [u8; 32] {
    let n = size_bytes.div_ceil(chunk_size_bytes.max(1));
    if n == 0 {
        return *blake3::hash(b"").as_bytes();
    }
    let last_len = size_bytes - (n - 1) * chunk_size_bytes;
    let full_zero = zero_leaf(chunk_size_bytes);
    // zero_levels[j]: the subtree of 2^j zero chunks of full length.
    let mut zero_levels = vec![leaf_node(&full_zero)];
    while (1u64 << (zero_levels.len() - 1)) < n {
        let below = zero_levels[zero_levels.len() - 1];
        zero_levels.push(inner_node(&below, &below));
    }
    let sparse =
        Sparse { n, short_tail: last_len < chunk_size_bytes, nonzero, zero_levels, last_zero: zero_leaf(last_len) };
    sparse.subtree(0, n)
}

struct Sparse<'a> {
    n: u64,
    /// The last chunk is shorter than the others: its zero leaf differs.
    short_tail: bool,
    nonzero: &'a BTreeMap<u64, [u8; 32]>,
    zero_levels: Vec<[u8; 32]>,
    /// The leaf of the last chunk when it is zero.
    last_zero: [u8; 32],
}

impl Sparse<'_> {
    fn subtree(&self, lo: u64, hi: u64) -> [u8; 32] {
        let len = hi - lo;
        if len == 1 {
            return match self.nonzero.get(&lo) {
                Some(leaf) => leaf_node(leaf),
                None if lo == self.n - 1 => leaf_node(&self.last_zero),
                None => self.zero_levels[0],
            };
        }
        let all_full_zeros = !(self.short_tail && hi == self.n) && self.nonzero.range(lo..hi).next().is_none();
        if len.is_power_of_two() && all_full_zeros {
            return self.zero_levels[len.trailing_zeros() as usize];
        }
        let k = 1u64 << (63 - (len - 1).leading_zeros());
        inner_node(&self.subtree(lo, lo + k), &self.subtree(lo + k, hi))
    }
}

/// A disk restore point's root over its tree.
pub fn disk_root(size_bytes: u64, chunk_size_bytes: u64, tree: &[u8; 32]) -> Root {
    let mut h = blake3::Hasher::new_derive_key(DISK_CONTEXT);
    h.update(&size_bytes.to_le_bytes());
    h.update(&chunk_size_bytes.to_le_bytes());
    h.update(tree);
    Root(*h.finalize().as_bytes())
}

/// A restore point's root over its configuration and its disks' (name, root), in order.
pub fn restore_point_root<'a>(configuration: &str, disks: impl ExactSizeIterator<Item = (&'a str, Root)>) -> Root {
    let mut h = blake3::Hasher::new_derive_key(RESTORE_POINT_CONTEXT);
    h.update(blake3::hash(configuration.as_bytes()).as_bytes());
    h.update(&(disks.len() as u64).to_le_bytes());
    for (name, root) in disks {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&root.0);
    }
    Root(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RFC 6962's tree over every leaf, written out plainly.
    fn naive(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => *blake3::hash(b"").as_bytes(),
            1 => leaf_node(&leaves[0]),
            n => {
                let k = (1..n).rev().find(|k| k.is_power_of_two()).unwrap_or(1);
                inner_node(&naive(&leaves[..k]), &naive(&leaves[k..]))
            }
        }
    }

    fn leaves(size: u64, chunk: u64, nonzero: &BTreeMap<u64, [u8; 32]>) -> Vec<[u8; 32]> {
        (0..size.div_ceil(chunk))
            .map(|i| nonzero.get(&i).copied().unwrap_or_else(|| zero_leaf((size - i * chunk).min(chunk))))
            .collect()
    }

    proptest! {
        #[test]
        fn the_sparse_tree_is_the_plain_one(
            chunks in 1u64..70,
            tail in 0u64..4,
            set in proptest::collection::btree_set(0u64..70, 0..8),
        ) {
            let chunk = 4096;
            let size = chunks * chunk - tail * 1024;
            let n = size.div_ceil(chunk);
            let nonzero: BTreeMap<u64, [u8; 32]> =
                set.into_iter().filter(|&i| i < n).map(|i| (i, *blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
            prop_assert_eq!(tree(size, chunk, &nonzero), naive(&leaves(size, chunk, &nonzero)));
        }
    }

    #[test]
    fn a_zero_chunk_named_explicitly_is_the_same_tree() {
        let mut explicit = BTreeMap::new();
        explicit.insert(3, zero_leaf(4096));
        assert_eq!(tree(10 * 4096, 4096, &explicit), tree(10 * 4096, 4096, &BTreeMap::new()));
    }

    #[test]
    fn roots_bind_sizes_names_and_configuration() {
        let t = tree(8 * 4096, 4096, &BTreeMap::new());
        let a = disk_root(8 * 4096, 4096, &t);
        assert_ne!(a, disk_root(8 * 4096, 8192, &t));
        assert_ne!(a, disk_root(8 * 4096 + 1, 4096, &t));
        let rp = restore_point_root("cfg", [("a", a)].into_iter());
        assert_ne!(rp, restore_point_root("cfg2", [("a", a)].into_iter()));
        assert_ne!(rp, restore_point_root("cfg", [("b", a)].into_iter()));
        assert_ne!(rp, restore_point_root("cfg", [("a", a), ("a", a)].into_iter()));
        assert_eq!(a.to_string().parse::<Root>().unwrap(), a);
        assert_eq!(serde_json::from_str::<Root>(&serde_json::to_string(&a).unwrap()).unwrap(), a);
        assert!("xyz".parse::<Root>().is_err());
        assert!("é".repeat(32).parse::<Root>().is_err());
    }
}
