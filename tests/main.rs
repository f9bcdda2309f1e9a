//! End-to-end tests: one binary (every test binary links RocksDB), one module per area,
//! named `<area>_<behaviour>`. They drive real files in temp dirs, the real `cairnd` process
//! and, as they land, real clients nobody here wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

mod common;

mod catalog_resources;
mod cli_output;
mod cli_restore_point_story;
mod collection_update;
mod copy_between_daemons;
mod copy_between_engines;
mod crash_campaign;
mod daemon_lifecycle;
mod disk_bad_input;
mod disk_full_daemon;
mod disk_full_filesystem;
mod disk_io;
mod disk_reopen;
mod faults_eio;
mod freeze_concurrent_writers;
mod grpc_bad_input;
mod grpc_listen;
mod grpc_poisoned_disk;
mod grpc_python_client;
mod grpc_quiesce_subscription;
mod grpc_restart;
mod grpc_restore_point_story;
mod grpc_store;
mod http_healthz;
mod http_metrics;
mod load_many_clients;
mod nbd_bad_input;
mod nbd_cache;
mod nbd_listen;
mod nbd_qemu_clients;
mod nbd_reconnect;
mod nbd_restore_point;
mod restore_disk;
mod restore_disk_power_loss;
mod restore_point_capture;
mod restore_point_consistency;
mod restore_point_cow;
mod restore_point_crash;
mod restore_point_create_job;
mod restore_point_delete;
mod restore_point_delta;
mod restore_point_history_model;
mod restore_point_merkle;
mod restore_point_model;
mod restore_point_races;
mod restore_point_restored_history;
mod restore_point_rules;
mod revert_in_place;
mod store_gc;
mod store_kill;
mod store_resume;
mod store_verify;
mod tls_grpc;
mod tls_http;
mod tls_nbd;
mod tracking_model;
