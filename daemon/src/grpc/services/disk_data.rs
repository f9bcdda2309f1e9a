//! Service `cairn.v1.DiskData`: disk content over gRPC, in the spirit of the EBS direct APIs.
//!
//! ReadDisk sends a range in order as data and zero runs (holes of a live disk, ZERO chunks
//! of a disk restore point, and all-zero pieces either way), at most [`PIECE_BYTES`] of data
//! per message. WriteDisk flushes the disk before it replies.

use std::sync::Arc;

use cairn_engine::{ChunkRef, Disk, DiskRestorePointReader, Engine, IoBuf};
use cairn_proto::v1 as pb;
use pb::disk_data_server::DiskData;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Context, guard};
use crate::errors::{grpc_status, invalid};
use crate::grpc::convert::{self, page};

/// Largest data payload of one ReadDisk message (well under gRPC's 4 MiB default).
pub const PIECE_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub struct DiskDataService(pub Context);

enum Source {
    Live(Arc<Disk>),
    RestorePoint(DiskRestorePointReader),
}

impl Source {
    fn size_bytes(&self) -> u64 {
        match self {
            Source::Live(d) => d.size_bytes(),
            Source::RestorePoint(r) => r.size_bytes(),
        }
    }

    /// `(offset, len, is_data)` runs of `[offset, offset + len)`, zero runs as exact as the
    /// source knows them.
    fn runs(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>, Status> {
        match self {
            Source::Live(d) => Ok(d
                .extents(offset, len)
                .map_err(grpc_status)?
                .into_iter()
                .map(|e| (e.offset, e.len, e.data))
                .collect()),
            Source::RestorePoint(r) => {
                let cs = r.chunk_size_bytes();
                let end = offset + len;
                let mut out: Vec<(u64, u64, bool)> = Vec::new();
                let mut pos = offset;
                while pos < end {
                    let index = pos / cs;
                    let next = ((index + 1) * cs).min(end);
                    let data = r.chunk_ref(index).map_err(grpc_status)? != ChunkRef::Zero;
                    match out.last_mut() {
                        Some(last) if last.2 == data => last.1 += next - pos,
                        _ => out.push((pos, next - pos, data)),
                    }
                    pos = next;
                }
                Ok(out)
            }
        }
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, Status> {
        match self {
            Source::Live(d) => d.read(offset, len).await.map(|b| b.to_vec()).map_err(grpc_status),
            Source::RestorePoint(r) => r.read(offset, len).await.map_err(grpc_status),
        }
    }
}

/// The end of `len` bytes at `offset` of a disk of `size` bytes; a range past the end is
/// INVALID_ARGUMENT naming `offset` when it starts past the end, else `len_field` (the request
/// field that gives its length).
fn check_range(size: u64, offset: u64, len: u64, len_field: &str) -> Result<u64, Status> {
    if offset > size {
        return Err(invalid("offset", format!("{offset} is past the disk size {size}")));
    }
    offset
        .checked_add(len)
        .filter(|&e| e <= size)
        .ok_or_else(|| invalid(len_field, format!("{len} bytes at offset {offset} end past the disk size {size}")))
}

fn rp_reader(
    engine: &Engine,
    field: &str,
    r: Option<&pb::DiskRestorePointRef>,
) -> Result<DiskRestorePointReader, Status> {
    let r = r.ok_or_else(|| invalid(field, "is required"))?;
    let rp = convert::restore_point_in(
        engine,
        (&format!("{field}.collection"), &r.collection),
        (&format!("{field}.restore_point"), &r.restore_point),
    )?;
    let disk = convert::restore_point_disk(&rp, &format!("{field}.disk"), &r.disk)?;
    engine.disk_restore_point(rp.id, disk).map_err(grpc_status)
}

async fn send_reads(src: Source, offset: u64, end: u64, tx: mpsc::Sender<Result<pb::ReadDiskResponse, Status>>) {
    let mut pending_zero: Option<(u64, u64)> = None;
    let mut pos = offset;
    while pos < end {
        // Runs are looked up a window at a time so a huge sparse disk costs no huge list.
        let window = (end - pos).min(256 * PIECE_BYTES);
        let runs = match src.runs(pos, window) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        for (run_off, run_len, data) in runs {
            let mut p = run_off;
            while p < run_off + run_len {
                let n = if data { (run_off + run_len - p).min(PIECE_BYTES) } else { run_off + run_len - p };
                let bytes = if data {
                    match src.read(p, n).await {
                        Ok(b) => Some(b).filter(|b| b.iter().any(|&x| x != 0)),
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                } else {
                    None
                };
                match bytes {
                    None => match &mut pending_zero {
                        Some((_, l)) => *l += n,
                        None => pending_zero = Some((p, n)),
                    },
                    Some(data) => {
                        if let Some((zo, zl)) = pending_zero.take()
                            && tx.send(Ok(zero_msg(zo, zl))).await.is_err()
                        {
                            return;
                        }
                        let msg = pb::ReadDiskResponse { offset: p, length: n, data, zero: false };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
                p += n;
            }
        }
        pos += window;
    }
    if let Some((zo, zl)) = pending_zero {
        let _ = tx.send(Ok(zero_msg(zo, zl))).await;
    }
}

fn zero_msg(offset: u64, length: u64) -> pb::ReadDiskResponse {
    pb::ReadDiskResponse { offset, length, data: Vec::new(), zero: true }
}

fn blocks(
    indices: Vec<u64>,
    chunk: u64,
    size: u64,
    page_size: u32,
    token: &str,
) -> Result<pb::ListBlocksResponse, Status> {
    let (indices, next_page_token) = page(indices, page_size, token)?;
    Ok(pb::ListBlocksResponse {
        blocks: indices
            .into_iter()
            .map(|i| {
                let offset = i.saturating_mul(chunk);
                pb::Block { index: i, offset, length: chunk.min(size.saturating_sub(offset)) }
            })
            .collect(),
        block_size_bytes: chunk,
        disk_size_bytes: size,
        next_page_token,
    })
}

#[tonic::async_trait]
impl DiskData for DiskDataService {
    type ReadDiskStream = ReceiverStream<Result<pb::ReadDiskResponse, Status>>;

    async fn read_disk(&self, req: Request<pb::ReadDiskRequest>) -> Result<Response<Self::ReadDiskStream>, Status> {
        guard("ReadDisk", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let src = match &r.source {
                None => return Err(invalid("source", "name a disk or a disk_restore_point")),
                Some(pb::read_disk_request::Source::Disk(d)) => {
                    Source::Live(engine.disk(convert::disk_id(engine, "disk", d)?).map_err(grpc_status)?)
                }
                Some(pb::read_disk_request::Source::DiskRestorePoint(d)) => {
                    Source::RestorePoint(rp_reader(engine, "disk_restore_point", Some(d))?)
                }
            };
            let size = src.size_bytes();
            let len = if r.length == 0 { size.saturating_sub(r.offset) } else { r.length };
            let end = check_range(size, r.offset, len, "length")?;
            let (tx, rx) = mpsc::channel(4);
            super::spawn_guarded("ReadDisk", tx.clone(), send_reads(src, r.offset, end, tx));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }

    async fn write_disk(
        &self,
        req: Request<Streaming<pb::WriteDiskRequest>>,
    ) -> Result<Response<pb::WriteDiskResponse>, Status> {
        guard("WriteDisk", async {
            let engine = &self.0.engine;
            let mut stream = req.into_inner();
            let mut disk: Option<Arc<Disk>> = None;
            let mut reply = pb::WriteDiskResponse::default();
            while let Some(m) = stream.message().await? {
                let d = match &disk {
                    None => {
                        if m.disk.is_empty() {
                            return Err(invalid("disk", "the first message must name the disk"));
                        }
                        let d = engine.disk(convert::disk_id(engine, "disk", &m.disk)?).map_err(grpc_status)?;
                        disk.insert(d)
                    }
                    Some(d) => {
                        if !m.disk.is_empty() && m.disk != d.name().as_str() && m.disk != d.id().to_string() {
                            return Err(invalid("disk", "one WriteDisk stream writes one disk"));
                        }
                        d
                    }
                };
                match (m.data.is_empty(), m.zero_length) {
                    (false, 0) => {
                        let n = m.data.len() as u64;
                        check_range(d.size_bytes(), m.offset, n, "data")?;
                        d.write(m.offset, IoBuf::from_slice(&m.data), false).await.map_err(grpc_status)?;
                        reply.bytes_written += n;
                    }
                    (true, z) if z > 0 => {
                        check_range(d.size_bytes(), m.offset, z, "zero_length")?;
                        d.punch(m.offset, z, false).await.map_err(grpc_status)?;
                        reply.bytes_zeroed += z;
                    }
                    (true, _) => {}
                    (false, _) => return Err(invalid("zero_length", "must be 0 when data is set")),
                }
            }
            let d = disk.ok_or_else(|| invalid("disk", "the stream held no message naming the disk"))?;
            d.flush().await.map_err(grpc_status)?;
            Ok(Response::new(reply))
        })
        .await
    }

    async fn list_changed_blocks(
        &self,
        req: Request<pb::ListChangedBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        guard("ListChangedBlocks", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let first = r.first.as_ref().ok_or_else(|| invalid("first", "is required"))?;
            let a = convert::restore_point_in(
                engine,
                ("first.collection", &first.collection),
                ("first.restore_point", &first.restore_point),
            )?;
            let disk = convert::restore_point_disk(&a, "first.disk", &first.disk)?;
            let coll = if first.collection.is_empty() { a.collection.to_string() } else { first.collection.clone() };
            let b = convert::restore_point_in(
                engine,
                ("first.collection", &coll),
                ("second_restore_point", &r.second_restore_point),
            )?;
            if b.seq < a.seq {
                return Err(invalid(
                    "second_restore_point",
                    format!("{} is older than the first restore point {}; give the older one first", b.name, a.name),
                ));
            }
            let reader = engine.disk_restore_point(b.id, disk).map_err(grpc_status)?;
            let changed = engine.changed_chunks(a.id, b.id, disk).map_err(grpc_status)?;
            let resp = blocks(changed, reader.chunk_size_bytes(), reader.size_bytes(), r.page_size, &r.page_token)?;
            Ok(Response::new(resp))
        })
        .await
    }

    async fn list_allocated_blocks(
        &self,
        req: Request<pb::ListAllocatedBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        guard("ListAllocatedBlocks", async {
            let r = req.into_inner();
            let reader = rp_reader(&self.0.engine, "disk_restore_point", r.disk_restore_point.as_ref())?;
            let allocated: Vec<u64> =
                reader.allocated_chunks().map_err(grpc_status)?.into_iter().map(|(i, _)| i).collect();
            let resp = blocks(allocated, reader.chunk_size_bytes(), reader.size_bytes(), r.page_size, &r.page_token)?;
            Ok(Response::new(resp))
        })
        .await
    }
}
