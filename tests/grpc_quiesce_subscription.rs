//! The QuiesceSubscription stream with the tonic client, as a hypervisor uses it: a subscriber
//! that answers quiesce makes the restore point application consistent; one that stays
//! silent past its timeout, or answers with an error, degrades it to crash consistent with a
//! note saying why; either way the thaw request comes, and only after the quiesce one, and
//! the freeze falls between the quiesce answer and the thaw request.

use cairn_proto::v1 as pb;
use futures::SinkExt;
use pb::quiesce_client_message::Message as ClientMsg;
use pb::quiesce_server_message::Message as ServerMsg;
use tonic::transport::Channel;

use crate::common::{
    grpc, grpc_disk, grpc_group_and_collection, grpc_read, grpc_restore_point, grpc_write, pattern, start_cairnd,
};

const MIB: u64 = 1 << 20;

/// How the subscriber answers a quiesce request (thaw requests are always answered).
#[derive(Clone, Copy)]
enum Answer {
    Reached(pb::ConsistencyMode),
    Error(&'static str),
    Silent,
}

fn reply(m: ClientMsg) -> pb::QuiesceClientMessage {
    pb::QuiesceClientMessage { message: Some(m) }
}

/// What the guest writes at offset 0 of disk `d` when asked to quiesce (before answering),
/// and when asked to thaw.
fn quiesced_data() -> Vec<u8> {
    pattern(1, 4096)
}
fn thawed_data() -> Vec<u8> {
    pattern(2, 4096)
}

/// Subscribes for group `vm` and answers every request as told, until a thaw request; the
/// guest writes [`quiesced_data`] before answering a quiesce and [`thawed_data`] before
/// answering the thaw. Returns the requests received, in order.
async fn subscribe(ch: &Channel, timeout_ms: u64, answer: Answer) -> tokio::task::JoinHandle<Vec<ServerMsg>> {
    let (mut tx, rx) = futures::channel::mpsc::channel(4);
    tx.send(reply(ClientMsg::Subscribe(pb::QuiesceSubscribe { group: "vm".into(), timeout_ms }))).await.unwrap();
    let mut stream =
        pb::quiesce_client::QuiesceClient::new(ch.clone()).quiesce_subscription(rx).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap().message.unwrap();
    assert!(matches!(first, ServerMsg::Subscribed(_)), "{first:?}");
    let ch = ch.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            let m = m.message.unwrap();
            seen.push(m.clone());
            match &m {
                ServerMsg::Quiesce(_) => grpc_write(&ch, "d", 0, quiesced_data()).await,
                ServerMsg::Thaw(_) => grpc_write(&ch, "d", 0, thawed_data()).await,
                ServerMsg::Subscribed(_) => {}
            }
            match (m, answer) {
                (ServerMsg::Quiesce(q), Answer::Reached(mode)) => {
                    let r = pb::QuiesceReply { request_id: q.request_id, achieved: mode.into(), error: String::new() };
                    tx.send(reply(ClientMsg::Quiesced(r))).await.unwrap();
                }
                (ServerMsg::Quiesce(q), Answer::Error(e)) => {
                    let r = pb::QuiesceReply { request_id: q.request_id, achieved: 0, error: e.into() };
                    tx.send(reply(ClientMsg::Quiesced(r))).await.unwrap();
                }
                (ServerMsg::Thaw(t), _) => {
                    let r = pb::ThawReply { request_id: t.request_id, error: String::new() };
                    tx.send(reply(ClientMsg::Thawed(r))).await.unwrap();
                    break;
                }
                _ => {}
            }
        }
        seen
    })
}

/// A daemon with disk `d` in group `vm` and collection `c`.
async fn daemon_with_a_group() -> (tempfile::TempDir, crate::common::Cairnd, Channel) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    grpc_disk(&ch, "d", 4 * MIB).await;
    grpc_group_and_collection(&ch, "vm", &["d"], "c").await;
    (dir, daemon, ch)
}

/// An application-consistent restore point `name`, once its capture ended.
async fn application_rp(ch: &Channel, name: &str) -> pb::RestorePoint {
    grpc_restore_point(ch, "c", name, pb::ConsistencyMode::ApplicationConsistent).await.unwrap()
}

/// The requests as `(kind, restore point)`.
fn kinds(seen: &[ServerMsg]) -> Vec<(&'static str, String)> {
    seen.iter()
        .map(|m| match m {
            ServerMsg::Quiesce(q) => ("quiesce", q.restore_point.clone()),
            ServerMsg::Thaw(t) => ("thaw", t.restore_point.clone()),
            ServerMsg::Subscribed(_) => ("subscribed", String::new()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answering_subscriber_makes_the_restore_point_application_consistent() {
    let (_dir, daemon, ch) = daemon_with_a_group().await;
    let sub = subscribe(&ch, 10_000, Answer::Reached(pb::ConsistencyMode::ApplicationConsistent)).await;

    let rp = application_rp(&ch, "app").await;
    let seen = sub.await.unwrap();
    let at_rp = pb::read_disk_request::Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: "app".into(),
        disk: "d".into(),
    });
    let (captured, _) = grpc_read(&ch, at_rp).await;
    let (live, _) = grpc_read(&ch, pb::read_disk_request::Source::Disk("d".into())).await;

    assert_eq!(rp.consistency_mode(), pb::ConsistencyMode::ApplicationConsistent, "{rp:?}");
    assert_eq!(rp.consistency_note, "", "{rp:?}");
    assert_eq!(kinds(&seen), [("quiesce", "app".to_owned()), ("thaw", "app".to_owned())]);
    // The freeze came after the quiesce answer and before the thaw request.
    assert_eq!(&captured[..4096], quiesced_data().as_slice(), "what the guest wrote while quiesced is in");
    assert_eq!(&live[..4096], thawed_data().as_slice());
    let ServerMsg::Quiesce(q) = &seen[0] else { unreachable!() };
    assert_eq!((q.requested(), q.timeout_ms), (pb::ConsistencyMode::ApplicationConsistent, 10_000), "{q:?}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscriber_degrades_the_restore_point_after_its_timeout_and_still_gets_the_thaw() {
    let (_dir, daemon, ch) = daemon_with_a_group().await;
    let sub = subscribe(&ch, 300, Answer::Silent).await;

    let rp = application_rp(&ch, "silent").await;
    let seen = sub.await.unwrap();

    assert_eq!(rp.consistency_mode(), pb::ConsistencyMode::CrashConsistent, "{rp:?}");
    assert_eq!(rp.consistency_mode_requested(), pb::ConsistencyMode::ApplicationConsistent, "{rp:?}");
    assert!(rp.consistency_note.contains("did not answer quiesce within 300 ms"), "{rp:?}");
    assert_eq!(kinds(&seen), [("quiesce", "silent".to_owned()), ("thaw", "silent".to_owned())]);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_answering_failure_degrades_the_restore_point_with_its_reason() {
    let (_dir, daemon, ch) = daemon_with_a_group().await;
    let sub = subscribe(&ch, 10_000, Answer::Error("guest agent unreachable")).await;

    let rp = application_rp(&ch, "failed").await;
    let seen = sub.await.unwrap();

    assert_eq!(rp.consistency_mode(), pb::ConsistencyMode::CrashConsistent, "{rp:?}");
    assert_eq!(rp.consistency_note, "guest agent unreachable", "{rp:?}");
    assert_eq!(kinds(&seen), [("quiesce", "failed".to_owned()), ("thaw", "failed".to_owned())]);
    daemon.stop();
}
