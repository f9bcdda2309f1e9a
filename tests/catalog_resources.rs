//! Disks and groups in the catalog: create, get, list, update, delete, and persistence.

use cairn_engine::{CreateGroup, ErrorKind};

use crate::common::{BACKENDS, disk, open};

#[tokio::test]
async fn disks_and_groups_persist_and_keep_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, g) = {
        let engine = open(dir.path(), BACKENDS[0]).await;
        let a = disk(&engine, "a", 1 << 20).await;
        let b = disk(&engine, "b", 1 << 20).await;
        let c = disk(&engine, "c", 1 << 20).await;
        assert_eq!(
            engine
                .create_disk(cairn_engine::CreateDisk {
                    name: "a".into(),
                    size_bytes: 4096,
                    chunk_size_bytes: None,
                    direct_io: false
                })
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );

        let g = engine
            .create_group(CreateGroup {
                name: "vm1".into(),
                disks: vec![a.id, b.id],
                configuration: r#"{"cpus":2}"#.into(),
            })
            .await
            .unwrap();
        assert_eq!(engine.disk_record(a.id).unwrap().group, Some(g.id));
        // A disk is in at most one group.
        let err = engine
            .create_group(CreateGroup { name: "vm2".into(), disks: vec![b.id], configuration: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("vm1"), "{err}");
        // Same name twice.
        let err = engine
            .create_group(CreateGroup { name: "vm1".into(), disks: vec![c.id], configuration: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        // A disk in a group cannot be deleted.
        let err = engine.delete_disk(a.id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("vm1"), "{err}");

        // Move b out, c in, and change the configuration, in one update.
        let g = engine.update_group(g.id, Some(vec![a.id, c.id]), Some(r#"{"cpus":4}"#.into())).await.unwrap();
        assert_eq!(engine.disk_record(b.id).unwrap().group, None);
        assert_eq!(engine.disk_record(c.id).unwrap().group, Some(g.id));
        engine.close().await.unwrap();
        (a, b, c, g)
    };

    let engine = open(dir.path(), BACKENDS[1]).await;
    let names: Vec<String> = engine
        .list_disks()
        .iter()
        .map(|d| d.name.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    let got = engine.group_by_name("vm1").unwrap();
    assert_eq!(got, g);
    assert_eq!(got.configuration, r#"{"cpus":4}"#);
    assert_eq!(engine.disk_record(c.id).unwrap().group, Some(g.id));

    engine.delete_disk(b.id).await.unwrap();
    assert_eq!(engine.disk(b.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!dir.path().join("disks").join(format!("{}.raw", b.id)).exists());

    // Deleting the group keeps its disks, now outside any group, and deletable.
    engine.delete_group(g.id).await.unwrap();
    assert_eq!(engine.disk_record(a.id).unwrap().group, None);
    engine.delete_disk(a.id).await.unwrap();
    assert_eq!(engine.list_groups(), vec![]);
    assert_eq!(engine.list_disks().len(), 1);
    let _ = c;
}
