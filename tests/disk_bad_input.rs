//! Bad input gets a typed error, harms nothing, and the engine keeps working.

use cairn_engine::{CreateDisk, CreateGroup, DiskId, ErrorKind, GroupId, IoBuf, MAX_CONFIGURATION_BYTES};

use crate::common::{BACKENDS, disk, open, pattern};

fn create(name: &str, size_bytes: u64, chunk: Option<u64>) -> CreateDisk {
    CreateDisk { name: name.into(), size_bytes, chunk_size_bytes: chunk, direct_io: false }
}

#[tokio::test]
async fn bad_input_table() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let good = disk(&engine, "good", 1 << 20).await;
    let d = engine.disk(good.id).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(5, 4096)), false).await.unwrap();

    let cases: Vec<(&str, ErrorKind, cairn_engine::Result<()>)> = vec![
        ("empty name", ErrorKind::InvalidArgument, engine.create_disk(create("", 4096, None)).await.map(drop)),
        ("slash in name", ErrorKind::InvalidArgument, engine.create_disk(create("a/b", 4096, None)).await.map(drop)),
        (
            "name too long",
            ErrorKind::InvalidArgument,
            engine.create_disk(create(&"x".repeat(65), 4096, None)).await.map(drop),
        ),
        ("zero size", ErrorKind::InvalidArgument, engine.create_disk(create("z", 0, None)).await.map(drop)),
        ("unaligned size", ErrorKind::InvalidArgument, engine.create_disk(create("z", 4097, None)).await.map(drop)),
        (
            "huge size",
            ErrorKind::InvalidArgument,
            engine.create_disk(create("z", u64::MAX - 4095, None)).await.map(drop),
        ),
        (
            "chunk not power of two",
            ErrorKind::InvalidArgument,
            engine.create_disk(create("z", 1 << 20, Some(12288))).await.map(drop),
        ),
        (
            "chunk too small",
            ErrorKind::InvalidArgument,
            engine.create_disk(create("z", 1 << 20, Some(2048))).await.map(drop),
        ),
        (
            "chunk too large",
            ErrorKind::InvalidArgument,
            engine.create_disk(create("z", 1 << 20, Some(8 << 20))).await.map(drop),
        ),
        ("read past end", ErrorKind::InvalidArgument, d.read((1 << 20) - 10, 11).await.map(drop)),
        ("read offset overflow", ErrorKind::InvalidArgument, d.read(u64::MAX, 2).await.map(drop)),
        ("read too large", ErrorKind::InvalidArgument, d.read(0, 64 << 20).await.map(drop)),
        ("write past end", ErrorKind::InvalidArgument, d.write(1 << 20, IoBuf::zeroed(1), false).await),
        ("punch past end", ErrorKind::InvalidArgument, d.punch(0, (1 << 20) + 1, false).await),
        ("extents overflow", ErrorKind::InvalidArgument, d.extents(u64::MAX, 1).map(drop)),
        ("unknown disk", ErrorKind::NotFound, engine.disk(DiskId::new()).map(drop)),
        ("unknown disk name", ErrorKind::NotFound, engine.disk_by_name("nope").map(drop)),
        ("delete unknown disk", ErrorKind::NotFound, engine.delete_disk(DiskId::new()).await),
        ("resize unknown disk", ErrorKind::NotFound, engine.resize_disk(DiskId::new(), 8192).await.map(drop)),
        ("resize unaligned", ErrorKind::InvalidArgument, engine.resize_disk(good.id, (2 << 20) + 1).await.map(drop)),
        ("shrink", ErrorKind::InvalidArgument, engine.resize_disk(good.id, 4096).await.map(drop)),
        (
            "group of unknown disk",
            ErrorKind::NotFound,
            engine
                .create_group(CreateGroup {
                    name: "g".into(),
                    disks: vec![DiskId::new()],
                    configuration: String::new(),
                })
                .await
                .map(drop),
        ),
        (
            "group lists a disk twice",
            ErrorKind::InvalidArgument,
            engine
                .create_group(CreateGroup {
                    name: "g".into(),
                    disks: vec![good.id, good.id],
                    configuration: String::new(),
                })
                .await
                .map(drop),
        ),
        (
            "group config too large",
            ErrorKind::InvalidArgument,
            engine
                .create_group(CreateGroup {
                    name: "g".into(),
                    disks: vec![],
                    configuration: "x".repeat(MAX_CONFIGURATION_BYTES + 1),
                })
                .await
                .map(drop),
        ),
        (
            "bad group name",
            ErrorKind::InvalidArgument,
            engine
                .create_group(CreateGroup { name: "-g".into(), disks: vec![], configuration: String::new() })
                .await
                .map(drop),
        ),
        ("unknown group", ErrorKind::NotFound, engine.group(GroupId::new()).map(drop)),
        ("delete unknown group", ErrorKind::NotFound, engine.delete_group(GroupId::new()).await),
        ("freeze unknown group", ErrorKind::NotFound, engine.freeze_group(GroupId::new(), &[]).await.map(drop)),
    ];
    for (what, kind, result) in cases {
        let err = result.expect_err(what);
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert!(!err.to_string().is_empty());
    }

    // Nothing was half-created, and the engine still serves.
    assert_eq!(engine.list_disks().len(), 1);
    assert_eq!(engine.list_groups().len(), 0);
    let files = std::fs::read_dir(dir.path().join("disks")).unwrap().count();
    assert_eq!(files, 2, "only the good disk's data and tracking files exist");
    assert_eq!(&*d.read(0, 4096).await.unwrap(), &pattern(5, 4096)[..]);
    assert_eq!(engine.resize_disk(good.id, 2 << 20).await.unwrap().size_bytes, 2 << 20);
}
