//! Pack stores: where sealed packs live. Narrow on purpose: put an immutable pack, read a
//! range of one, list them, delete one. The local directory is the embedded default; an
//! S3-compatible object store implements the same trait.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::base::error::{Error, Result};
use crate::base::ids::PackId;
use crate::sys::sync_dir;

/// Where sealed packs live.
pub trait PackStore: Send + Sync + std::fmt::Debug {
    /// Stores the sealed, synced pack file at `staged` under `id`, durably. The staged file
    /// may be consumed (moved).
    fn put(&self, id: PackId, staged: PathBuf) -> BoxFuture<'_, Result<()>>;
    /// Reads `len` bytes at `offset` of pack `id`.
    fn get_range(&self, id: PackId, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>>>;
    /// Every stored pack, with its size in bytes.
    fn list(&self) -> BoxFuture<'_, Result<Vec<(PackId, u64)>>>;
    /// Removes a pack (only ever one this host wrote).
    fn delete(&self, id: PackId) -> BoxFuture<'_, Result<()>>;
}

/// Packs as files in a local directory: `DIR/<pack id>.pack`.
#[derive(Debug)]
pub struct LocalPackStore {
    dir: PathBuf,
    /// Open pack files, so reads do not reopen them.
    open: std::sync::Mutex<std::collections::HashMap<PackId, Arc<File>>>,
}

impl LocalPackStore {
    pub fn open(dir: &Path) -> Result<Self> {
        crate::sys::create_dir_durable(dir).map_err(|e| Error::io("create pack directory", dir, e))?;
        Ok(Self { dir: dir.to_owned(), open: Default::default() })
    }

    fn path(&self, id: PackId) -> PathBuf {
        self.dir.join(format!("{id}.pack"))
    }

    fn file(&self, id: PackId) -> Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(&id) {
            return Ok(f.clone());
        }
        let path = self.path(id);
        let f = Arc::new(File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::corrupt(&path, "pack referenced by the index is missing")
            } else {
                Error::io("open pack", &path, e)
            }
        })?);
        open.insert(id, f.clone());
        Ok(f)
    }
}

impl PackStore for LocalPackStore {
    fn put(&self, id: PackId, staged: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let dest = self.path(id);
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::rename(&staged, &dest).map_err(|e| Error::io("move sealed pack into the store", &dest, e))?;
                sync_dir(&dir).map_err(|e| Error::io("sync pack directory", &dir, e))
            })
            .await
            .map_err(|e| Error::io("store pack", &self.dir, std::io::Error::other(e)))?
        })
    }

    fn get_range(&self, id: PackId, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let file = self.file(id)?;
            let path = self.path(id);
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        Error::corrupt(&path, format!("record at {offset}+{len} runs past the end of the pack"))
                    } else {
                        Error::io("read pack", &path, e)
                    }
                })?;
                Ok(buf)
            })
            .await
            .map_err(|e| Error::io("read pack", &self.dir, std::io::Error::other(e)))?
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(PackId, u64)>>> {
        Box::pin(async move {
            let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io("list packs", &self.dir, e))?;
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list packs", &self.dir, e))?;
                let name = entry.file_name();
                if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".pack")).and_then(|n| n.parse().ok()) {
                    let size = entry.metadata().map_err(|e| Error::io("stat pack", entry.path(), e))?.len();
                    out.push((id, size));
                }
            }
            Ok(out)
        })
    }

    fn delete(&self, id: PackId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            let path = self.path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("delete pack", &path, e)),
            }
        })
    }
}
