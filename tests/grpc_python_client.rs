//! A client that is not ours: Python grpcio with stubs generated from proto/ by grpcio-tools
//! drives the real cairnd (create, list, write, read, a restore point, an error code, a
//! hypervisor answering on the QuiesceSubscription stream, and the standard health service).

use std::process::Command;

use crate::common::{grpc_endpoint, run_ok, start_cairnd};

const SCRIPT: &str = r#"
import queue, sys, threading, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from cairn.v1 import disks_pb2, disks_pb2_grpc, disk_data_pb2, disk_data_pb2_grpc
from cairn.v1 import groups_pb2, groups_pb2_grpc, collections_pb2, collections_pb2_grpc
from cairn.v1 import restore_points_pb2, restore_points_pb2_grpc, operations_pb2, operations_pb2_grpc
from cairn.v1 import quiesce_pb2, quiesce_pb2_grpc
from cairn.v1 import resources_pb2

# grpcio sends a unix socket's path as :authority, which h2 (under tonic) refuses as malformed;
# "localhost" is what grpcurl and Go clients send on unix sockets.
ch = grpc.insecure_channel(sys.argv[1], options=[("grpc.default_authority", "localhost")])
disks = disks_pb2_grpc.DisksStub(ch)
d = disks.CreateDisk(disks_pb2.CreateDiskRequest(name="py", size_bytes=1 << 20))
assert d.size_bytes == 1 << 20, d
assert [x.name for x in disks.ListDisks(disks_pb2.ListDisksRequest()).disks] == ["py"]
try:
    disks.CreateDisk(disks_pb2.CreateDiskRequest(name="py", size_bytes=4096))
    raise SystemExit("duplicate disk accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS, e
data = disk_data_pb2_grpc.DiskDataStub(ch)
payload = bytes(range(256)) * 16
w = data.WriteDisk(iter([disk_data_pb2.WriteDiskRequest(disk="py", offset=8192, data=payload)]))
assert w.bytes_written == 4096, w
got = bytearray()
for m in data.ReadDisk(disk_data_pb2.ReadDiskRequest(disk="py")):
    got += bytes(m.length) if m.zero else m.data
assert len(got) == 1 << 20 and got[8192:12288] == payload and not any(got[:8192])
groups_pb2_grpc.GroupsStub(ch).CreateGroup(groups_pb2.CreateGroupRequest(name="pyg", disks=["py"]))
collections_pb2_grpc.CollectionsStub(ch).CreateOrUpdateCollection(
    collections_pb2.CreateOrUpdateCollectionRequest(name="pyc", group="pyg"))
rps = restore_points_pb2_grpc.RestorePointsStub(ch)
r = rps.CreateRestorePoint(restore_points_pb2.CreateRestorePointRequest(collection="pyc", name="first"))
last = None
for op in operations_pb2_grpc.OperationsStub(ch).WatchOperation(operations_pb2.WatchOperationRequest(id=r.operation.id)):
    last = op
assert last.state == resources_pb2.OPERATION_STATE_SUCCEEDED, last
rp = rps.GetRestorePoint(restore_points_pb2.GetRestorePointRequest(collection="pyc", restore_point="first"))
assert rp.provisioning_state == resources_pb2.PROVISIONING_STATE_SUCCEEDED, rp
# A hypervisor on the QuiesceSubscription stream: it answers quiesce and thaw from a thread,
# and the restore point asked for meanwhile reaches application consistency.
replies = queue.Queue()
def client_messages():
    yield quiesce_pb2.QuiesceClientMessage(subscribe=quiesce_pb2.QuiesceSubscribe(group="pyg", timeout_ms=10000))
    while (m := replies.get()) is not None:
        yield m
server_messages = quiesce_pb2_grpc.QuiesceStub(ch).QuiesceSubscription(client_messages())
assert next(server_messages).WhichOneof("message") == "subscribed"
seen = []
def hypervisor():
    for m in server_messages:
        kind = m.WhichOneof("message")
        seen.append((kind, getattr(m, kind).restore_point))
        if kind == "quiesce":
            replies.put(quiesce_pb2.QuiesceClientMessage(quiesced=quiesce_pb2.QuiesceReply(
                request_id=m.quiesce.request_id, achieved=resources_pb2.CONSISTENCY_MODE_APPLICATION_CONSISTENT)))
        elif kind == "thaw":
            replies.put(quiesce_pb2.QuiesceClientMessage(thawed=quiesce_pb2.ThawReply(request_id=m.thaw.request_id)))
            replies.put(None)
            return
answering = threading.Thread(target=hypervisor)
answering.start()
r = rps.CreateRestorePoint(restore_points_pb2.CreateRestorePointRequest(
    collection="pyc", name="app", consistency_mode=resources_pb2.CONSISTENCY_MODE_APPLICATION_CONSISTENT))
for op in operations_pb2_grpc.OperationsStub(ch).WatchOperation(operations_pb2.WatchOperationRequest(id=r.operation.id)):
    last = op
assert last.state == resources_pb2.OPERATION_STATE_SUCCEEDED, last
answering.join(timeout=60)
assert seen == [("quiesce", "app"), ("thaw", "app")], seen
rp = rps.GetRestorePoint(restore_points_pb2.GetRestorePointRequest(collection="pyc", restore_point="app"))
assert rp.consistency_mode == resources_pb2.CONSISTENCY_MODE_APPLICATION_CONSISTENT, rp
h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="cairn.v1.Disks"))
assert h.status == health_pb2.HealthCheckResponse.SERVING, h
print("python client ok")
"#;

const HEALTH_PROTO: &str = r#"
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"#;

#[test]
fn python_grpcio_client_drives_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let stubs = tempfile::tempdir().unwrap();
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    std::fs::create_dir_all(stubs.path().join("grpc_health/v1")).unwrap();
    std::fs::write(stubs.path().join("grpc_health/v1/health.proto"), HEALTH_PROTO).unwrap();
    let mut protoc = Command::new("python3");
    protoc
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto_dir.display()))
        .arg(format!("-I{}", stubs.path().display()));
    protoc
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()));
    for f in std::fs::read_dir(proto_dir.join("cairn/v1")).unwrap() {
        protoc.arg(format!("cairn/v1/{}", f.unwrap().file_name().to_string_lossy()));
    }
    protoc.arg("grpc_health/v1/health.proto");
    run_ok(&mut protoc);
    let endpoint = grpc_endpoint(dir.path());
    let out = run_ok(Command::new("python3").arg("-c").arg(SCRIPT).arg(&endpoint).env("PYTHONPATH", stubs.path()));
    assert!(out.contains("python client ok"), "{out}");
    daemon.stop();
}
