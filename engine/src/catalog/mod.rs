//! The catalog layer: RocksDB (it stops here), batches, and the group and restore point records.
//! Uses base only.
//!
//! The metadata catalog: one RocksDB instance per data dir. RocksDB stops at this module.
//!
//! Column families are those of DESIGN.md. Records of resources (disks, groups, ...) are
//! JSON values under their 16-byte id; every multi-key change is one [`Batch`], written
//! synchronously. The `meta` family holds the format version, checked at open.

pub(crate) mod group;
pub(crate) mod restore_point;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, DB, Options, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::base::error::{Error, Result};
use crate::base::format::{CATALOG_FORMAT_VERSION, META_FORMAT_VERSION_KEY};

/// Column families, as in DESIGN.md, plus `chunk_seq` (see chunk_map.rs).
pub(crate) const COLUMN_FAMILIES: [&str; 11] = [
    "disks",
    "groups",
    "collections",
    "restore_points",
    "chunk_map",
    "chunk_seq",
    "chunks",
    "packs",
    "grants",
    "operations",
    "meta",
];

/// A resource stored as one JSON value under its id in its column family.
pub(crate) trait Record: Serialize + DeserializeOwned {
    const CF: &'static str;
    fn key(&self) -> [u8; 16];
}

/// The catalog.
pub(crate) struct Catalog {
    db: DB,
    path: PathBuf,
    /// Why the last commit failed, until one succeeds (for health checks).
    last_commit_error: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish_non_exhaustive()
    }
}

fn db_err(context: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
    move |source| Error::Catalog { context, source }
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and checks its format version.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let db = DB::open_cf(&opts, path, COLUMN_FAMILIES).map_err(|source| {
            if source.as_ref().contains("lock") {
                Error::Busy(format!(
                    "catalog {} is in use by another process (is another cairnd running on this data dir?): {source}",
                    path.display()
                ))
            } else {
                Error::Catalog { context: "open catalog", source }
            }
        })?;
        let catalog = Self { db, path: path.to_owned(), last_commit_error: std::sync::Mutex::new(None) };
        catalog.check_format_version()?;
        Ok(catalog)
    }

    fn check_format_version(&self) -> Result<()> {
        let meta = self.cf("meta")?;
        match self.db.get_cf(meta, META_FORMAT_VERSION_KEY).map_err(db_err("read format version"))? {
            None => {
                // A new catalog: its chunk map is indexed by seq from the first entry.
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, META_FORMAT_VERSION_KEY, CATALOG_FORMAT_VERSION.to_be_bytes());
                batch.put_cf(meta, crate::base::format::META_SEQ_INDEX_BUILT_KEY, [1]);
                let mut opts = WriteOptions::default();
                opts.set_sync(true);
                self.db.write_opt(batch, &opts).map_err(db_err("write format version"))
            }
            Some(v) => {
                let bytes: [u8; 4] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt(&self.path, format!("format version record is {} bytes", v.len())))?;
                let found = u32::from_be_bytes(bytes);
                if found > CATALOG_FORMAT_VERSION {
                    return Err(Error::FailedPrecondition(format!(
                        "catalog {} has format version {found}, newer than this build reads ({CATALOG_FORMAT_VERSION}); run a newer cairnd",
                        self.path.display()
                    )));
                }
                Ok(())
            }
        }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::corrupt(&self.path, format!("column family {name} missing")))
    }

    /// Reads one record by id.
    #[allow(dead_code, reason = "restore points read records by id; disks and groups are cached")]
    pub(crate) fn get<R: Record>(&self, key: [u8; 16]) -> Result<Option<R>> {
        let cf = self.cf(R::CF)?;
        match self.db.get_pinned_cf(cf, key).map_err(db_err("read record"))? {
            None => Ok(None),
            Some(bytes) => self.decode::<R>(&bytes).map(Some),
        }
    }

    /// Reads every record of a kind, in id order.
    pub(crate) fn list<R: Record>(&self) -> Result<Vec<R>> {
        let cf = self.cf(R::CF)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (_, v) = item.map_err(db_err("scan records"))?;
            out.push(self.decode::<R>(&v)?);
        }
        Ok(out)
    }

    fn decode<R: Record>(&self, bytes: &[u8]) -> Result<R> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(&self.path, format!("undecodable {} record: {e}", R::CF)))
    }

    /// Reads a raw value (families with binary keys: chunk_map, chunks, meta).
    pub(crate) fn get_raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.cf(cf)?;
        self.db.get_cf(cf, key).map_err(db_err("read value"))
    }

    /// The first entry at or after `from` whose key starts with `prefix`, if any.
    pub(crate) fn seek(&self, cf: &str, from: &[u8], prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let cf = self.cf(cf)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek(from);
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if k.starts_with(prefix) => Ok(Some((k.to_vec(), v.to_vec()))),
            _ => it.status().map(|()| None).map_err(db_err("seek")),
        }
    }

    /// Calls `f` for each entry from `from` on whose key starts with `prefix`, in key order,
    /// until `f` returns false.
    pub(crate) fn scan(
        &self,
        cf: &str,
        from: &[u8],
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(cf)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek(from);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) || !f(k, v)? {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(db_err("scan"))
    }

    /// Starts a batch of changes, applied atomically by [`Self::commit`].
    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch { catalog: self, batch: WriteBatch::default() }
    }

    /// Applies a batch atomically and durably (synced write-ahead log).
    pub(crate) fn commit(&self, batch: Batch<'_>) -> Result<()> {
        self.write_synced(batch.batch)
    }

    /// A synced write, remembering whether it failed for [`Self::problem`].
    fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        let res = self.write(batch);
        *self.last_commit_error.lock().unwrap_or_else(|p| p.into_inner()) = res.as_ref().err().map(ToString::to_string);
        res
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        crate::failpoint!("catalog::commit");
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(db_err("commit batch"))
    }

    /// [`Self::commit`] on a blocking thread: the WAL sync then holds no async worker, which
    /// guest I/O may be waiting for. For background jobs' batches.
    pub(crate) async fn commit_off_thread(self: &Arc<Self>, batch: Batch<'_>) -> Result<()> {
        let (catalog, batch) = (self.clone(), batch.batch);
        tokio::task::spawn_blocking(move || catalog.write_synced(batch))
            .await
            .map_err(|e| Error::io("commit batch", &self.path, std::io::Error::other(e)))?
    }

    /// What is wrong with the catalog, if anything: the last commit failed (and none
    /// succeeded since), or it cannot be read.
    pub(crate) fn problem(&self) -> Option<String> {
        if let Some(e) = self.last_commit_error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(format!("the last catalog commit failed: {e}"));
        }
        let read = self
            .cf("meta")
            .and_then(|meta| self.db.get_cf(meta, META_FORMAT_VERSION_KEY).map_err(db_err("read format version")));
        read.err().map(|e| format!("the catalog cannot be read: {e}"))
    }
}

/// An atomic set of changes to the catalog.
pub(crate) struct Batch<'a> {
    catalog: &'a Catalog,
    batch: WriteBatch,
}

impl Batch<'_> {
    pub(crate) fn put<R: Record>(&mut self, record: &R) -> Result<()> {
        let cf = self.catalog.cf(R::CF)?;
        let value = serde_json::to_vec(record)
            .map_err(|e| Error::invalid("record", format!("cannot encode {} record: {e}", R::CF)))?;
        self.batch.put_cf(cf, record.key(), value);
        Ok(())
    }

    pub(crate) fn put_raw(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.catalog.cf(cf)?;
        self.batch.put_cf(cf, key, value);
        Ok(())
    }

    pub(crate) fn delete_raw(&mut self, cf: &str, key: &[u8]) -> Result<()> {
        let cf = self.catalog.cf(cf)?;
        self.batch.delete_cf(cf, key);
        Ok(())
    }

    pub(crate) fn delete<R: Record>(&mut self, key: [u8; 16]) -> Result<()> {
        let cf = self.catalog.cf(R::CF)?;
        self.batch.delete_cf(cf, key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        id: [u8; 16],
        v: u32,
    }
    impl Record for Thing {
        const CF: &'static str = "disks";
        fn key(&self) -> [u8; 16] {
            self.id
        }
    }

    #[test]
    fn batches_apply_atomically_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Catalog::open(dir.path()).unwrap();
            let mut b = c.batch();
            b.put(&Thing { id: [1; 16], v: 1 }).unwrap();
            b.put(&Thing { id: [2; 16], v: 2 }).unwrap();
            c.commit(b).unwrap();
            let mut b = c.batch();
            b.delete::<Thing>([1; 16]).unwrap();
            c.commit(b).unwrap();
        }
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.list::<Thing>().unwrap(), vec![Thing { id: [2; 16], v: 2 }]);
        assert_eq!(c.get::<Thing>([1; 16]).unwrap(), None);
    }

    /// Keys and value size of each batch in the kill test: a batch of 1 MiB spans many WAL
    /// blocks, so a process killed amid its write could leave part of it.
    const KILL_KEYS: u32 = 256;
    const KILL_VALUE_BYTES: usize = 4096;

    fn kill_batch_value(i: u32) -> Vec<u8> {
        let mut v = vec![u8::try_from(i % 251).unwrap(); KILL_VALUE_BYTES];
        v[..4].copy_from_slice(&i.to_be_bytes());
        v
    }

    /// The child of [`a_process_killed_amid_a_stream_of_batches_keeps_each_batch_whole`]:
    /// commits batch after batch (every key set to the batch's number) until it is killed,
    /// printing each number once its commit returned.
    fn commit_batches_until_killed(dir: &Path) -> ! {
        use std::io::Write;
        let c = Catalog::open(dir).unwrap();
        for i in 1.. {
            let mut b = c.batch();
            for k in 0..KILL_KEYS {
                b.put_raw("meta", format!("kill-test:{k:04}").as_bytes(), &kill_batch_value(i)).unwrap();
            }
            c.commit(b).unwrap();
            let mut out = std::io::stdout().lock();
            writeln!(out, "committed {i}").unwrap();
            out.flush().unwrap();
        }
        unreachable!("the parent kills this process")
    }

    #[test]
    fn a_process_killed_amid_a_stream_of_batches_keeps_each_batch_whole() {
        use std::io::BufRead;
        const CHILD_ENV: &str = "CAIRN_CATALOG_KILL_CHILD";
        if let Some(dir) = std::env::var_os(CHILD_ENV) {
            commit_batches_until_killed(Path::new(&dir));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut last_acked = 0;
        // Several kills at different points of the stream, each reopening what the last left.
        for round in 0..4u32 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "catalog::tests::a_process_killed_amid_a_stream_of_batches_keeps_each_batch_whole",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let target = 5 + 7 * round;
            let mut seen = 0;
            for line in lines {
                let line = line.unwrap();
                if let Some(n) = line.strip_prefix("committed ") {
                    seen += 1;
                    last_acked = n.parse().unwrap();
                    if seen == target {
                        break;
                    }
                }
            }
            assert_eq!(seen, target, "round {round}: the child stopped early");
            // Amid the next batch's write.
            child.kill().unwrap();
            child.wait().unwrap();

            let c = Catalog::open(dir.path()).unwrap();
            let values: Vec<Vec<u8>> = (0..KILL_KEYS)
                .map(|k| c.get_raw("meta", format!("kill-test:{k:04}").as_bytes()).unwrap().unwrap())
                .collect();
            let first = u32::from_be_bytes(values[0][..4].try_into().unwrap());
            assert!(
                first >= last_acked,
                "round {round}: batch {last_acked} was acknowledged, the catalog holds {first}"
            );
            for (k, v) in values.iter().enumerate() {
                assert_eq!(*v, kill_batch_value(first), "round {round}: key {k} is not from batch {first}");
            }
            drop(c);
        }
    }

    #[test]
    fn newer_format_refuses_to_open_and_second_open_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Catalog::open(dir.path()).unwrap();
            assert_eq!(Catalog::open(dir.path()).unwrap_err().kind(), crate::ErrorKind::Busy);
            let meta = c.cf("meta").unwrap();
            c.db.put_cf(meta, META_FORMAT_VERSION_KEY, (CATALOG_FORMAT_VERSION + 1).to_be_bytes()).unwrap();
        }
        let err = Catalog::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
