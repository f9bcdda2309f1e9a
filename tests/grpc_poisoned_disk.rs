//! A disk poisoned by a failed sync stays poisoned until the operator fixes its storage and
//! restarts the daemon: the real cairnd tells a tonic client FAILED_PRECONDITION, the code
//! whose clients do not retry until the state is fixed, never UNAVAILABLE, which invites
//! retries of a state no retry can end.

use cairn_proto::v1 as pb;
use pb::disk_data_client::DiskDataClient;
use pb::read_disk_request::Source;
use tonic::Code;

use crate::common::{grpc, grpc_disk, pattern, start_cairnd_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_disk_answers_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd_env(dir.path(), &[], &[("CAIRN_FAILPOINTS", "disk::sync=return")]);
    let ch = grpc(dir.path()).await;
    grpc_disk(&ch, "d", 1 << 20).await;
    let mut data = DiskDataClient::new(ch.clone());
    let write = pb::WriteDiskRequest { disk: "d".into(), offset: 0, data: pattern(1, 4096), zero_length: 0 };

    let flushed = data.write_disk(futures::stream::iter([write])).await;
    let read = pb::ReadDiskRequest { source: Some(Source::Disk("d".into())), offset: 0, length: 4096 };
    let refused = match data.read_disk(read).await {
        Ok(stream) => stream.into_inner().message().await.map(drop),
        Err(status) => Err(status),
    };

    assert!(flushed.is_err(), "the flush after the write failed: {flushed:?}");
    let status = refused.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("poisoned"), "{status:?}");
    daemon.stop();
}
