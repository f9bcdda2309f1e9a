//! Blocking backend: positioned reads and writes on tokio's blocking thread pool.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::sys::{IoBuf, punch_hole as punch, will_need as advise_will_need};

async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)
}

pub(super) async fn read_at(file: Arc<File>, buf: IoBuf, offset: u64) -> (io::Result<usize>, IoBuf) {
    let len = buf.len();
    let joined = run(move || {
        let mut buf = buf;
        let mut done = 0;
        let res = loop {
            if done == len {
                break Ok(done);
            }
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break Ok(done),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        (res, buf)
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => (Err(e), IoBuf::zeroed(len)),
    }
}

pub(super) async fn write_at(file: Arc<File>, buf: IoBuf, offset: u64, piece: usize) -> (io::Result<()>, IoBuf) {
    let len = buf.len();
    let joined = run(move || {
        let res = buf
            .chunks(piece.max(1))
            .zip((offset..).step_by(piece.max(1)))
            .try_for_each(|(part, at)| file.write_all_at(part, at));
        (res, buf)
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => (Err(e), IoBuf::zeroed(len)),
    }
}

pub(super) async fn sync_data(file: Arc<File>) -> io::Result<()> {
    run(move || file.sync_data()).await?
}

pub(super) async fn punch_hole(file: Arc<File>, offset: u64, len: u64) -> io::Result<()> {
    run(move || punch(&file, offset, len)).await?
}

pub(super) async fn will_need(file: Arc<File>, offset: u64, len: u64) -> io::Result<()> {
    run(move || advise_will_need(&file, offset, len)).await?
}
