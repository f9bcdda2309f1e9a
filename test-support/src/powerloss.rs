//! A FUSE file system that models a disk's volatile cache, for power-loss tests (the idea of
//! LazyFS): what a program writes is only in the cache until it makes it durable, and a
//! simulated power cut throws the cache away.
//!
//! Durable means, per file: its content and size as of its last `fsync`/`fdatasync` (which
//! `msync(MS_SYNC)`, `O_SYNC`/`O_DSYNC` writes and `RWF_DSYNC` reach as well); per directory:
//! its entries (create, rename, unlink, link) as of its last `fsync`. `sync_file_range`,
//! `close`, and a file's `fsync` do not make its name durable. Everything else is cache.
//!
//! The durable content of each file is a real file under the model's store dir; the cache
//! is in memory: pages written since the last sync over the durable content, plus a log of
//! the writes in order, so a cut can keep a random subset of them (each kept with a chosen
//! chance, the last one kept torn at a 512-byte boundary), as a disk that wrote some of its
//! cache before the power went would. After [`PowerLossFs::cut`] every operation fails with
//! EIO (the program sees the power go before it is killed); [`PowerLossFs::surviving`] then
//! writes the tree a restart would find into a directory, and [`PowerLossFs::mount`] on that
//! directory starts the next round with it as the durable state.
//!
//! Not modelled: `SEEK_DATA`/`SEEK_HOLE` (answered as "all data", which POSIX allows), file
//! locks (the kernel keeps them locally), xattrs, and space (statfs reports 64 GiB free).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

/// What a cut keeps of the writes a file had not synced.
#[derive(Debug, Clone, Copy)]
pub enum CutMode {
    /// Nothing: the state is exactly what was made durable.
    Strict,
    /// Each unsynced write (or truncate, or hole punched) survives with chance `keep`, in
    /// order; the last one kept is torn at a random 512-byte boundary. `seed` makes it
    /// repeatable.
    Partial { keep: f64, seed: u64 },
    /// Everything written survives: the program was killed and the machine stayed up (its
    /// page cache is the file system's).
    ProcessCrash,
}

/// What the file system saw, for the campaign's figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub writes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    /// At the cut: writes (and truncates, punches) not synced, and how many a partial cut kept.
    pub unsynced_ops_at_cut: u64,
    pub unsynced_ops_kept: u64,
    /// At the cut: entries created, renamed or removed whose directory was not synced.
    pub unsynced_entries_at_cut: u64,
    /// Operations failed with EIO by [`PowerLossFs::inject`].
    pub faults_injected: u64,
}

/// An operation a fault makes fail with EIO (the data stays unsynced, as the kernel's page
/// cache keeps it after a failed writeback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Read,
    Write,
    Fsync,
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Arc<[u8]> },
    SetLen(u64),
    Zero { offset: u64, len: u64 },
}

#[derive(Debug)]
struct FileNode {
    /// The durable content (and its size: the file's length).
    store: File,
    store_path: PathBuf,
    /// Live size.
    size: u64,
    /// Live pages over the store: `Some` content, `None` zeros.
    pages: BTreeMap<u64, Option<Box<[u8]>>>,
    /// Durable bytes at or past this offset read as zeros (a truncate since the last sync).
    floor: u64,
    log: Vec<Op>,
}

#[derive(Debug)]
enum Body {
    File(FileNode),
    Dir {
        live: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
    /// A socket, fifo or device: no content.
    Special {
        rdev: u32,
    },
}

#[derive(Debug)]
struct Node {
    /// The name it was last given (for faults aimed by name).
    name: OsString,
    kind: FileType,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    body: Body,
}

#[derive(Debug)]
struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    store_dir: PathBuf,
    /// File handles opened with O_SYNC or O_DSYNC.
    sync_handles: HashMap<u64, bool>,
    next_fh: u64,
    cut: bool,
    faults: Vec<(Fault, String)>,
    counters: Counters,
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

impl FileNode {
    fn create(store_path: PathBuf) -> std::io::Result<Self> {
        let store = File::options().read(true).write(true).create_new(true).open(&store_path)?;
        Ok(Self { store, store_path, size: 0, pages: BTreeMap::new(), floor: 0, log: Vec::new() })
    }

    /// Takes `path` (moved, not copied) as the durable content.
    fn adopt(path: &Path, store_path: PathBuf) -> std::io::Result<Self> {
        std::fs::rename(path, &store_path)?;
        let store = File::options().read(true).write(true).open(&store_path)?;
        let size = store.metadata()?.len();
        Ok(Self { store, store_path, size, pages: BTreeMap::new(), floor: size, log: Vec::new() })
    }

    /// The live content of page `p` (a full page; past the size it is zeros).
    fn page(&self, p: u64) -> std::io::Result<Box<[u8]>> {
        if let Some(page) = self.pages.get(&p) {
            return Ok(page.clone().unwrap_or_else(|| vec![0; PAGE as usize].into()));
        }
        let mut buf = vec![0u8; PAGE as usize];
        let start = p * PAGE;
        if start < self.floor {
            let want = (self.floor - start).min(PAGE) as usize;
            let mut done = 0;
            while done < want {
                let n = self.store.read_at(&mut buf[done..want], start + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
        }
        Ok(buf.into())
    }

    fn read(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let end = (offset + len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let p = at / PAGE;
            let in_page = (at % PAGE) as usize;
            let n = ((PAGE as usize) - in_page).min((end - at) as usize);
            out.extend_from_slice(&self.page(p)?[in_page..in_page + n]);
            at += n as u64;
        }
        Ok(out)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut at = offset;
        let end = offset + data.len() as u64;
        while at < end {
            let p = at / PAGE;
            let in_page = (at % PAGE) as usize;
            let n = ((PAGE as usize) - in_page).min((end - at) as usize);
            let mut page =
                if in_page == 0 && n == PAGE as usize { vec![0; PAGE as usize].into() } else { self.page(p)? };
            let from = (at - offset) as usize;
            page[in_page..in_page + n].copy_from_slice(&data[from..from + n]);
            self.pages.insert(p, Some(page));
            at += n as u64;
        }
        self.size = self.size.max(end);
        self.log.push(Op::Write { offset, data: data.into() });
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        if len < self.size {
            self.floor = self.floor.min(len);
            self.pages.retain(|&p, _| p * PAGE < len);
            if !len.is_multiple_of(PAGE) {
                let p = len / PAGE;
                let mut page = self.page(p)?;
                page[(len % PAGE) as usize..].fill(0);
                self.pages.insert(p, Some(page));
            }
        }
        self.size = len;
        self.log.push(Op::SetLen(len));
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let p = at / PAGE;
            let in_page = at % PAGE;
            let n = (PAGE - in_page).min(end - at);
            if n == PAGE {
                self.pages.insert(p, None);
            } else {
                let mut page = self.page(p)?;
                page[in_page as usize..(in_page + n) as usize].fill(0);
                self.pages.insert(p, Some(page));
            }
            at += n;
        }
        self.log.push(Op::Zero { offset, len });
        Ok(())
    }

    /// Makes the live state durable.
    fn sync(&mut self) -> std::io::Result<()> {
        self.store.set_len(self.floor.min(self.size))?;
        self.store.set_len(self.size)?;
        for (&p, page) in &self.pages {
            let start = p * PAGE;
            if start >= self.size {
                continue;
            }
            let n = (self.size - start).min(PAGE) as usize;
            match page {
                Some(bytes) => self.store.write_all_at(&bytes[..n], start)?,
                None => punch(&self.store, start, n as u64)?,
            }
        }
        self.pages.clear();
        self.floor = self.size;
        self.log.clear();
        Ok(())
    }

    /// Applies the chosen part of the unsynced log to the durable content (at a cut).
    fn apply_partial(&mut self, keep: f64, rng: &mut Rng) -> std::io::Result<u64> {
        let chosen: Vec<Op> = self.log.iter().filter(|_| rng.chance(keep)).cloned().collect();
        let kept = chosen.len() as u64;
        let last = chosen.len().checked_sub(1);
        for (i, op) in chosen.into_iter().enumerate() {
            match op {
                Op::Write { offset, data } => {
                    let mut data = &data[..];
                    if Some(i) == last && data.len() > 512 {
                        let sectors = data.len().div_ceil(512);
                        data = &data[..(rng.below(sectors as u64) as usize * 512).max(512).min(data.len())];
                    }
                    self.store.write_all_at(data, offset)?;
                }
                Op::SetLen(len) => self.store.set_len(len)?,
                Op::Zero { offset, len } => {
                    let size = self.store.metadata()?.len();
                    if offset < size {
                        punch(&self.store, offset, len.min(size - offset))?;
                    }
                }
            }
        }
        self.log.clear();
        self.pages.clear();
        Ok(kept)
    }
}

fn punch(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .map_err(std::io::Error::from)
}

/// A small xorshift generator: a cut's (or a campaign's) choices, repeatable from a seed.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (any seed; zero is made odd).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// True with chance `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// In `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

impl Model {
    fn new(store_dir: PathBuf) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::dir(0o755, 0, 0));
        Self {
            nodes,
            next_ino: ROOT + 1,
            store_dir,
            sync_handles: HashMap::new(),
            next_fh: 1,
            cut: false,
            faults: Vec::new(),
            counters: Counters::default(),
        }
    }

    fn alive(&self) -> Result<(), Errno> {
        if self.cut { Err(Errno::EIO) } else { Ok(()) }
    }

    /// EIO if a fault is aimed at `op` on this node.
    fn fault(&mut self, op: Fault, ino: u64) -> Result<(), Errno> {
        let name = self.node(ino)?.name.to_string_lossy().into_owned();
        if self.faults.iter().any(|(o, pat)| *o == op && name.contains(pat.as_str())) {
            self.counters.faults_injected += 1;
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileNode, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir { .. } => Err(Errno::EISDIR),
            Body::Special { .. } => Err(Errno::EINVAL),
        }
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.node(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.node_mut(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let n = self.node(ino)?;
        let (size, rdev) = match &n.body {
            Body::File(f) => (f.size, 0),
            Body::Dir { live, .. } => (live.len() as u64, 0),
            Body::Special { rdev } => (0, *rdev),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind: n.kind,
            perm: n.perm,
            nlink: 1,
            uid: n.uid,
            gid: n.gid,
            rdev,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn add(&mut self, dir: u64, name: &OsStr, node: Node) -> Result<u64, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node { name: name.to_owned(), ..node });
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn new_file(&mut self, dir: u64, name: &OsStr, perm: u16, uid: u32, gid: u32) -> Result<u64, Errno> {
        let store_path = self.store_dir.join(self.next_ino.to_string());
        let f = FileNode::create(store_path).map_err(io_errno)?;
        self.add(
            dir,
            name,
            Node {
                name: OsString::new(),
                kind: FileType::RegularFile,
                perm,
                uid,
                gid,
                mtime: SystemTime::now(),
                body: Body::File(f),
            },
        )
    }

    /// Walks `seed` into the model as durable state (its files are moved into the store).
    fn adopt_tree(&mut self, dir_ino: u64, seed: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        for e in std::fs::read_dir(seed)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            let perm = (meta.mode() & 0o7777) as u16;
            let ino = self.next_ino;
            self.next_ino += 1;
            let node = if meta.is_dir() {
                Node { name: e.file_name(), ..Node::dir(perm, meta.uid(), meta.gid()) }
            } else if meta.is_file() {
                let f = FileNode::adopt(&e.path(), self.store_dir.join(ino.to_string()))?;
                Node {
                    name: e.file_name(),
                    kind: FileType::RegularFile,
                    perm,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime: SystemTime::now(),
                    body: Body::File(f),
                }
            } else {
                continue; // sockets and the like do not survive a restart
            };
            self.nodes.insert(ino, node);
            if let Some(Node { body: Body::Dir { live, durable }, .. }) = self.nodes.get_mut(&dir_ino) {
                live.insert(e.file_name(), ino);
                durable.insert(e.file_name(), ino);
            }
            if meta.is_dir() {
                self.adopt_tree(ino, &e.path())?;
            }
        }
        Ok(())
    }

    /// Writes the durable tree under `dir_ino` into `dest` (files moved out of the store;
    /// a file with two durable names gets a hard link).
    fn write_durable(&mut self, dir_ino: u64, dest: &Path, placed: &mut HashMap<u64, PathBuf>) -> std::io::Result<()> {
        let entries = match &self.nodes[&dir_ino].body {
            Body::Dir { durable, .. } => durable.clone(),
            _ => return Ok(()),
        };
        for (name, ino) in entries {
            let path = dest.join(&name);
            let Some(node) = self.nodes.get(&ino) else { continue };
            match &node.body {
                Body::Dir { .. } => {
                    std::fs::create_dir(&path)?;
                    self.write_durable(ino, &path, placed)?;
                }
                Body::File(f) => match placed.get(&ino) {
                    Some(first) => std::fs::hard_link(first, &path)?,
                    None => {
                        std::fs::rename(&f.store_path, &path)?;
                        placed.insert(ino, path);
                    }
                },
                Body::Special { .. } => {}
            }
        }
        Ok(())
    }
}

impl Node {
    fn dir(perm: u16, uid: u32, gid: u32) -> Self {
        Node {
            name: OsString::new(),
            kind: FileType::Directory,
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
            body: Body::Dir { live: BTreeMap::new(), durable: BTreeMap::new() },
        }
    }
}

struct Fs(Arc<Mutex<Model>>);

impl Fs {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn kind_of(mode: u32) -> FileType {
    use rustix::fs::FileType as Raw;
    match Raw::from_raw_mode(mode) {
        Raw::Socket => FileType::Socket,
        Raw::Fifo => FileType::NamedPipe,
        Raw::CharacterDevice => FileType::CharDevice,
        Raw::BlockDevice => FileType::BlockDevice,
        Raw::Directory => FileType::Directory,
        Raw::Symlink => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

/// Open flags as FUSE passes them (an `i32` of the kernel's bits).
fn has(flags: i32, flag: rustix::fs::OFlags) -> bool {
    flags.cast_unsigned() & flag.bits() != 0
}

/// A write through a handle opened with one of these is durable when it returns.
const SYNC_FLAGS: rustix::fs::OFlags = rustix::fs::OFlags::SYNC.union(rustix::fs::OFlags::DSYNC);

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let m = self.model();
        match m.alive().and_then(|()| m.lookup(parent.0, name)).and_then(|ino| m.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let m = self.model();
        match m.alive().and_then(|()| m.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut m = self.model();
        let result = (|| {
            m.alive()?;
            if let Some(len) = size {
                m.file_mut(ino.0)?.set_len(len).map_err(io_errno)?;
                m.counters.writes += 1;
            }
            let n = m.node_mut(ino.0)?;
            if let Some(mode) = mode {
                n.perm = (mode & 0o7777) as u16;
            }
            n.uid = uid.unwrap_or(n.uid);
            n.gid = gid.unwrap_or(n.gid);
            n.mtime = SystemTime::now();
            m.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let mut m = self.model();
        let perm = (mode & !umask & 0o7777) as u16;
        let result = m.alive().and_then(|()| {
            let ino = if kind_of(mode) == FileType::RegularFile {
                m.new_file(parent.0, name, perm, req.uid(), req.gid())?
            } else {
                let node = Node {
                    name: OsString::new(),
                    kind: kind_of(mode),
                    perm,
                    uid: req.uid(),
                    gid: req.gid(),
                    mtime: SystemTime::now(),
                    body: Body::Special { rdev },
                };
                m.add(parent.0, name, node)?
            };
            m.attr(ino)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            let ino = m.add(parent.0, name, Node::dir((mode & !umask & 0o7777) as u16, req.uid(), req.gid()))?;
            m.attr(ino)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            let ino = m.lookup(parent.0, name)?;
            if m.node(ino)?.kind == FileType::Directory {
                return Err(Errno::EISDIR);
            }
            m.entries_mut(parent.0)?.remove(name);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            let ino = m.lookup(parent.0, name)?;
            if !m.entries(ino)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            m.entries_mut(parent.0)?.remove(name);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            let ino = m.lookup(parent.0, name)?;
            if let Ok(existing) = m.lookup(newparent.0, newname) {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if m.node(existing)?.kind == FileType::Directory && !m.entries(existing)?.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            if !flags.is_empty() && !flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EINVAL);
            }
            m.entries_mut(parent.0)?.remove(name);
            m.entries_mut(newparent.0)?.insert(newname.to_owned(), ino);
            m.node_mut(ino)?.name = newname.to_owned();
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            if m.entries(newparent.0)?.contains_key(newname) {
                return Err(Errno::EEXIST);
            }
            m.entries_mut(newparent.0)?.insert(newname.to_owned(), ino.0);
            m.attr(ino.0)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            m.node(ino.0)?;
            if has(flags.0, rustix::fs::OFlags::TRUNC) {
                m.file_mut(ino.0)?.set_len(0).map_err(io_errno)?;
            }
            let fh = m.next_fh;
            m.next_fh += 1;
            if has(flags.0, SYNC_FLAGS) {
                m.sync_handles.insert(fh, true);
            }
            Ok(fh)
        });
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            let ino = match m.lookup(parent.0, name) {
                Ok(_) if has(flags, rustix::fs::OFlags::EXCL) => return Err(Errno::EEXIST),
                Ok(ino) => ino,
                Err(_) => m.new_file(parent.0, name, (mode & !umask & 0o7777) as u16, req.uid(), req.gid())?,
            };
            let fh = m.next_fh;
            m.next_fh += 1;
            if has(flags, SYNC_FLAGS) {
                m.sync_handles.insert(fh, true);
            }
            Ok((m.attr(ino)?, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let mut m = self.model();
        let result = m
            .alive()
            .and_then(|()| m.fault(Fault::Read, ino.0))
            .and_then(|()| m.file_mut(ino.0)?.read(offset, u64::from(size)).map_err(io_errno));
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut m = self.model();
        let sync = m.sync_handles.contains_key(&fh.0);
        let result = m.alive().and_then(|()| {
            m.fault(Fault::Write, ino.0)?;
            let f = m.file_mut(ino.0)?;
            f.write(offset, data).map_err(io_errno)?;
            if sync {
                f.sync().map_err(io_errno)?;
            }
            m.node_mut(ino.0)?.mtime = SystemTime::now();
            m.counters.writes += 1;
            Ok(())
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.model().sync_handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            m.fault(Fault::Fsync, ino.0)?;
            m.file_mut(ino.0)?.sync().map_err(io_errno)?;
            m.counters.file_syncs += 1;
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let m = self.model();
        match m.alive().and_then(|()| m.entries(ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let m = self.model();
        let entries = match m.alive().and_then(|()| m.entries(ino.0)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let all = [(OsString::from("."), ino.0), (OsString::from(".."), ROOT)]
            .into_iter()
            .chain(entries.iter().map(|(n, i)| (n.clone(), *i)));
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = m.nodes.get(&child).map_or(FileType::RegularFile, |n| n.kind);
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            match &mut m.node_mut(ino.0)?.body {
                Body::Dir { live, durable } => *durable = live.clone(),
                _ => return Err(Errno::ENOTDIR),
            }
            m.counters.dir_syncs += 1;
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = (64u64 << 30) / PAGE;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, PAGE as u32, 255, PAGE as u32);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        const KEEP_SIZE: i32 = 0x01;
        const PUNCH_HOLE: i32 = 0x02;
        const ZERO_RANGE: i32 = 0x10;
        let mut m = self.model();
        let result = m.alive().and_then(|()| {
            let f = m.file_mut(ino.0)?;
            let end = offset + length;
            match mode & !KEEP_SIZE {
                0 => {}
                PUNCH_HOLE if mode & KEEP_SIZE != 0 => {
                    let upto = end.min(f.size);
                    if offset < upto {
                        f.zero(offset, upto - offset).map_err(io_errno)?;
                    }
                }
                ZERO_RANGE => {
                    let upto = end.min(f.size);
                    if offset < upto {
                        f.zero(offset, upto - offset).map_err(io_errno)?;
                    }
                }
                _ => return Err(Errno::EOPNOTSUPP),
            }
            if mode & KEEP_SIZE == 0 && end > f.size {
                f.set_len(end).map_err(io_errno)?;
            }
            m.counters.writes += 1;
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted power-loss file system. Unmounted on drop.
pub struct PowerLossFs {
    model: Arc<Mutex<Model>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    _store: tempfile::TempDir,
}

impl std::fmt::Debug for PowerLossFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerLossFs").field("mountpoint", &self.mountpoint).finish_non_exhaustive()
    }
}

impl PowerLossFs {
    /// Mounts the file system on `mountpoint` (an empty directory). With `seed`, the tree in
    /// it (moved, not copied: `seed` is left empty) is the durable starting state; the store
    /// lives in a temp dir beside `seed`'s (or in the system's temp dir), on the same file
    /// system so files move without a copy.
    pub fn mount(mountpoint: &Path, seed: Option<&Path>) -> Self {
        let store_parent = seed.and_then(Path::parent).map_or_else(std::env::temp_dir, Path::to_owned);
        let store = tempfile::Builder::new().prefix("powerloss-store").tempdir_in(store_parent).expect("store dir");
        let mut model = Model::new(store.path().to_owned());
        if let Some(seed) = seed {
            model.adopt_tree(ROOT, seed).expect("adopting the seed tree");
        }
        let model = Arc::new(Mutex::new(model));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("cairn-powerloss".into()),
            fuser::MountOption::CUSTOM("max_read=1048576".into()),
        ];
        config.acl = fuser::SessionACL::All;
        let session =
            fuser::spawn_mount(Fs(model.clone()), mountpoint, &config).expect("mounting the power-loss file system");
        Self { model, session: Some(session), mountpoint: mountpoint.to_owned(), _store: store }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// What it saw so far.
    pub fn counters(&self) -> Counters {
        self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner).counters
    }

    /// From now on, `op` fails with EIO on every file whose name contains `name_contains`.
    pub fn inject(&self, op: Fault, name_contains: &str) {
        self.model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .faults
            .push((op, name_contains.to_owned()));
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner).faults.clear();
    }

    /// The power goes: from now on every operation fails with EIO, and nothing more is
    /// made durable. Kill the program on it next, then call [`Self::surviving`].
    pub fn cut(&self) {
        self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner).cut = true;
    }

    /// After a cut (and once nothing has it open), unmounts and writes the tree a restart
    /// would find into `dest` (an empty directory), keeping what `mode` says of the unsynced
    /// writes. Returns the counters at the cut.
    pub fn surviving(mut self, dest: &Path, mode: CutMode) -> Counters {
        let mut m = self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(m.cut, "surviving() is for after a cut");
        let mut rng = match mode {
            CutMode::Partial { seed, .. } => Rng::new(seed),
            _ => Rng::new(1),
        };
        let mut unsynced = 0;
        let mut kept = 0;
        let mut entries = 0;
        for node in m.nodes.values_mut() {
            match &mut node.body {
                Body::File(f) => {
                    unsynced += f.log.len() as u64;
                    match mode {
                        CutMode::Partial { keep, .. } => {
                            kept += f.apply_partial(keep, &mut rng).expect("applying the kept writes");
                        }
                        CutMode::ProcessCrash => {
                            kept += f.log.len() as u64;
                            f.sync().expect("keeping the written state");
                        }
                        CutMode::Strict => {}
                    }
                }
                Body::Dir { live, durable } if matches!(mode, CutMode::ProcessCrash) => *durable = live.clone(),
                Body::Dir { live, durable } => {
                    entries += live.iter().filter(|(n, i)| durable.get(*n) != Some(i)).count() as u64;
                    entries += durable.keys().filter(|n| !live.contains_key(*n)).count() as u64;
                }
                Body::Special { .. } => {}
            }
        }
        m.write_durable(ROOT, dest, &mut HashMap::new()).expect("writing the surviving tree");
        m.counters.unsynced_ops_at_cut = unsynced;
        m.counters.unsynced_ops_kept = kept;
        m.counters.unsynced_entries_at_cut = entries;
        let counters = m.counters;
        drop(m);
        self.unmount();
        counters
    }

    fn unmount(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            // The kernel refuses while a file is open (a killed program's last close can
            // lag); a lazy unmount finishes once it closes.
            eprintln!("power-loss fs: unmount failed ({e}); detaching lazily");
            let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::{CutMode, PowerLossFs};

    fn fsync_dir(path: &std::path::Path) {
        std::fs::File::open(path).unwrap().sync_all().unwrap();
    }

    /// Mounts, runs `work` on the mount, cuts, and returns the surviving tree's dir.
    fn round(seed: Option<&std::path::Path>, mode: CutMode, work: impl FnOnce(&std::path::Path)) -> tempfile::TempDir {
        let mnt = tempfile::tempdir().unwrap();
        let fs = PowerLossFs::mount(mnt.path(), seed);
        work(mnt.path());
        fs.cut();
        let out = tempfile::tempdir().unwrap();
        fs.surviving(out.path(), mode);
        out
    }

    #[test]
    fn only_synced_content_under_synced_names_survives() {
        let out = round(None, CutMode::Strict, |m| {
            let mut a = std::fs::File::create(m.join("a")).unwrap();
            a.write_all(b"durable").unwrap();
            a.sync_all().unwrap();
            std::fs::write(m.join("b"), b"name never synced").unwrap();
            fsync_dir(m); // a and b are named now, but only a's content was synced
            a.write_all_at(b"DURABLE but lost", 0).unwrap();
            std::fs::write(m.join("c"), b"never named").unwrap();
            std::fs::File::open(m.join("c")).unwrap().sync_all().unwrap();
        });
        assert_eq!(std::fs::read(out.path().join("a")).unwrap(), b"durable");
        assert_eq!(std::fs::read(out.path().join("b")).unwrap(), b"", "b's name was synced, its content not");
        assert!(!out.path().join("c").exists(), "c's directory was never synced after it was created");
    }

    #[test]
    fn a_rename_is_durable_only_with_its_directory() {
        let first = round(None, CutMode::Strict, |m| {
            std::fs::create_dir(m.join("d")).unwrap();
            let mut f = std::fs::File::create(m.join("d/tmp")).unwrap();
            f.write_all(b"v1").unwrap();
            f.sync_all().unwrap();
            fsync_dir(&m.join("d"));
            fsync_dir(m);
        });
        assert_eq!(std::fs::read(first.path().join("d/tmp")).unwrap(), b"v1");
        let second = round(Some(first.path()), CutMode::Strict, |m| {
            assert_eq!(std::fs::read(m.join("d/tmp")).unwrap(), b"v1", "the seed is the starting state");
            std::fs::rename(m.join("d/tmp"), m.join("d/current")).unwrap();
        });
        assert!(second.path().join("d/tmp").exists() && !second.path().join("d/current").exists());
        let third = round(Some(second.path()), CutMode::Strict, |m| {
            std::fs::rename(m.join("d/tmp"), m.join("d/current")).unwrap();
            fsync_dir(&m.join("d"));
        });
        assert!(!third.path().join("d/tmp").exists());
        assert_eq!(std::fs::read(third.path().join("d/current")).unwrap(), b"v1");
    }

    #[test]
    fn truncates_and_holes_read_back_live_and_persist_on_sync() {
        let out = round(None, CutMode::Strict, |m| {
            let f =
                std::fs::File::options().read(true).write(true).create(true).truncate(true).open(m.join("f")).unwrap();
            f.write_all_at(&[7u8; 20000], 0).unwrap();
            f.sync_all().unwrap();
            f.set_len(5000).unwrap();
            f.set_len(12000).unwrap();
            let mut back = vec![0u8; 12000];
            f.read_exact_at(&mut back, 0).unwrap();
            assert!(back[..5000].iter().all(|&b| b == 7) && back[5000..].iter().all(|&b| b == 0));
            rustix::fs::fallocate(
                &f,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                4096,
            )
            .unwrap();
            f.sync_data().unwrap();
            fsync_dir(m);
        });
        let back = std::fs::read(out.path().join("f")).unwrap();
        assert_eq!(back.len(), 12000);
        assert!(back[..4096].iter().all(|&b| b == 0), "the punched hole");
        assert!(back[4096..5000].iter().all(|&b| b == 7));
        assert!(back[5000..].iter().all(|&b| b == 0), "truncated away, then extended");
    }

    #[test]
    fn a_partial_cut_keeps_some_unsynced_writes_and_tears_the_last() {
        let out = round(None, CutMode::Partial { keep: 1.0, seed: 7 }, |m| {
            let f = std::fs::File::create(m.join("f")).unwrap();
            f.sync_all().unwrap();
            fsync_dir(m);
            f.write_all_at(&[1u8; 4096], 0).unwrap();
            f.write_all_at(&[2u8; 8192], 4096).unwrap();
        });
        let back = std::fs::read(out.path().join("f")).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 1), "kept whole: not the last write");
        let torn = back.len() - 4096;
        assert!(torn > 0 && torn <= 8192 && torn % 512 == 0, "the last write torn at a sector: {torn}");
    }

    #[test]
    fn msync_of_a_shared_mapping_is_durable() {
        let out = round(None, CutMode::Strict, |m| {
            let f = std::fs::File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(m.join("map"))
                .unwrap();
            f.set_len(8192).unwrap();
            f.sync_all().unwrap();
            fsync_dir(m);
            // SAFETY: the file is this test's own and nobody truncates it while mapped.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
            map[100] = 42;
            map.flush().unwrap();
            map[5000] = 43; // not synced
        });
        let back = std::fs::read(out.path().join("map")).unwrap();
        assert_eq!((back[100], back[5000]), (42, 0));
    }

    #[test]
    fn after_the_cut_everything_fails_with_eio() {
        let mnt = tempfile::tempdir().unwrap();
        let fs = PowerLossFs::mount(mnt.path(), None);
        let f = std::fs::File::create(mnt.path().join("f")).unwrap();
        fs.cut();
        let err = f.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "{err}");
        assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(5));
        drop(f);
        let out = tempfile::tempdir().unwrap();
        fs.surviving(out.path(), CutMode::Strict);
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}
