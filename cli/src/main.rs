//! `cairn`: the command-line client of a Cairn daemon, over its gRPC API.
//!
//! Subcommands by noun (`disk`, `group`, `collection`, `rp`, `restore`, `op`, `store`) plus
//! `gc` and `verify`. Output is a table, or with `--output json` one JSON document (stable,
//! for scripts). Exit codes: 0 ok, 1 the call or the operation failed (or a verify found
//! corrupt records), 2 usage. Failures print one line on stderr.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use cairn_cli::client::{self, AuthChannel, Credentials};
use cairn_proto::size::parse_size;
use cairn_proto::v1 as pb;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// The daemon's default socket, as `cairnd` creates it with its default data dir.
const DEFAULT_ENDPOINT: &str = "unix:./cairn-data/cairn.sock";

/// Command-line client of the Cairn block-level snapshot storage daemon.
#[derive(Debug, Parser)]
#[command(version, name = "cairn")]
struct Cli {
    /// The daemon's gRPC endpoint: `unix:PATH`, `HOST:PORT`, or an http:// or https:// URL.
    #[arg(long, global = true, env = "CAIRN_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,

    /// CA certificate (PEM) that an https:// endpoint's certificate must chain to.
    #[arg(long, global = true, env = "CAIRN_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a daemon that requires one; needs --tls-key.
    #[arg(long, global = true, env = "CAIRN_CLIENT_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "CAIRN_CLIENT_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// File holding the daemon's bearer token (its --grpc-token-file); the CAIRN_TOKEN
    /// environment variable may hold the token itself instead.
    #[arg(long, global = true, env = "CAIRN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live disks.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Groups: the disks of one VM plus its configuration.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Restore point collections.
    #[command(subcommand)]
    Collection(CollectionCmd),
    /// Restore points.
    #[command(subcommand)]
    Rp(RpCmd),
    /// Restores a disk of a restore point as a new disk (--disk and --name), or the whole
    /// restore point as a new group (--group).
    Restore(RestoreArgs),
    /// Reverts live disks in place to a restore point of their group: only chunks changed
    /// since, whose content differs, are rewritten. The disks must have no NBD client attached.
    /// A restore point of the current state is taken first unless --no-current-state.
    Revert {
        collection: String,
        restore_point: String,
        /// A disk of the restore point to revert (repeatable; id or name); default: all.
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Take no restore point of the current state first.
        #[arg(long)]
        no_current_state: bool,
        /// Name of the restore point of the current state [default: before-revert-<unix ms>].
        #[arg(long, conflicts_with = "no_current_state")]
        current_state_name: Option<String>,
    },
    /// Long-running operations.
    #[command(subcommand)]
    Op(OpCmd),
    /// The chunk store.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Garbage collection: reclaims stored records no restore point references and rewrites
    /// sparse packs.
    Gc {
        /// Rewrite packs whose live bytes are below this percentage of their size [default: 50].
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        live_share: Option<u32>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Re-reads and checks stored records (the whole store, or one restore point); exits 1
    /// when it finds corrupt records, listing them with the restore points they affect.
    Verify {
        /// Only the records this restore point reads: COLLECTION/RESTORE_POINT.
        #[arg(long, value_parser = parse_rp_path)]
        restore_point: Option<(String, String)>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Prints a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum DiskCmd {
    /// Creates a sparse disk.
    Create {
        name: String,
        /// Size, e.g. 10G, 512M, 4K or bytes.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Chunk size (power of two, 4K..4M) [default: 256K].
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Open the disk file with O_DIRECT.
        #[arg(long)]
        direct_io: bool,
    },
    List,
    Show {
        disk: String,
    },
    /// Grows a disk.
    Resize {
        disk: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    Delete {
        disk: String,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    Create {
        name: String,
        /// A disk of the group (id or name); repeat for more.
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// The VM configuration document saved with every restore point.
        #[arg(long, default_value = "")]
        configuration: String,
    },
    List,
    Show {
        group: String,
    },
    Delete {
        group: String,
    },
}

#[derive(Debug, Subcommand)]
enum CollectionCmd {
    Create {
        name: String,
        /// The group (id or name).
        #[arg(long, required_unless_present = "source")]
        group: Option<String>,
        /// Makes a copy collection of a configured peer's collection: PEER:COLLECTION (no
        /// group, no hook; `cairn rp copy` fills it).
        #[arg(long, value_parser = parse_source, conflicts_with_all = ["group", "hook_command"])]
        source: Option<(String, String)>,
        /// Most restore points kept [default: 200].
        #[arg(long)]
        max_restore_points: Option<u32>,
        /// Region [default: the daemon's].
        #[arg(long)]
        region: Option<String>,
        #[command(flatten)]
        hook: HookArgs,
    },
    /// Changes a collection's settings; those not given stay as they are. Its group and
    /// region cannot change.
    Update {
        collection: String,
        /// Most restore points kept (not below the number it holds).
        #[arg(long)]
        max_restore_points: Option<u32>,
        #[command(flatten)]
        hook: HookArgs,
        /// Remove the quiesce hook.
        #[arg(long, conflicts_with_all = ["hook_command", "hook_timeout_ms"])]
        no_hook: bool,
    },
    List,
    Show {
        collection: String,
    },
    Delete {
        collection: String,
        /// Also delete the restore points in it.
        #[arg(long)]
        cascade: bool,
    },
}

/// Default time a quiesce hook script may take.
const DEFAULT_HOOK_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Args)]
struct HookArgs {
    /// Quiesce hook script run before and after the freeze: the program, then its leading
    /// arguments, one per flag (the phase, `quiesce` or `thaw`, is appended).
    #[arg(long = "hook-command", value_name = "ARG")]
    hook_command: Vec<String>,
    /// How long the hook script may take, in milliseconds [default: 60000].
    #[arg(long)]
    hook_timeout_ms: Option<u64>,
}

impl HookArgs {
    /// The hook these flags ask for, over `current` (what the collection has now).
    fn over(self, current: Option<pb::ScriptHook>) -> Res<Option<pb::ScriptHook>> {
        match (self.hook_command.is_empty(), self.hook_timeout_ms, current) {
            (false, timeout, current) => Ok(Some(pb::ScriptHook {
                command: self.hook_command,
                timeout_ms: timeout.or(current.map(|h| h.timeout_ms)).unwrap_or(DEFAULT_HOOK_TIMEOUT_MS),
            })),
            (true, Some(timeout_ms), Some(h)) => Ok(Some(pb::ScriptHook { timeout_ms, ..h })),
            (true, Some(_), None) => {
                Err(Failure::Other("--hook-timeout-ms needs a hook: give --hook-command too".into()))
            }
            (true, None, current) => Ok(current),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Consistency {
    Crash,
    Filesystem,
    Application,
}

#[derive(Debug, Args)]
struct Wait {
    /// Follow the operation until it ends (the default).
    #[arg(long, overrides_with = "no_wait")]
    wait: bool,
    /// Return as soon as the operation started.
    #[arg(long)]
    no_wait: bool,
}

impl Wait {
    fn enabled(&self) -> bool {
        !self.no_wait
    }
}

#[derive(Debug, Subcommand)]
enum RpCmd {
    /// Creates a restore point of the collection's group.
    Create {
        collection: String,
        name: String,
        /// A disk to leave out (id or name); repeat for more.
        #[arg(long = "exclude-disk")]
        exclude_disks: Vec<String>,
        #[arg(long, value_enum, default_value = "crash")]
        consistency: Consistency,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Copies a restore point of the source collection (on the peer a copy collection
    /// names) into the copy collection: only what earlier copies did not bring is sent.
    Copy {
        /// The copy collection.
        collection: String,
        /// The restore point to copy, by its name in the source collection.
        restore_point: String,
        /// Name of the copy [default: the source's name].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    List {
        collection: String,
    },
    Show {
        collection: String,
        restore_point: String,
        /// Add per-disk progress.
        #[arg(long)]
        instance_view: bool,
    },
    Delete {
        collection: String,
        restore_point: String,
    },
    /// Applies a retention policy: deletes the restore points no rule keeps (with
    /// --dry-run, only lists what would go and why). A restore point kept by any rule stays.
    Retain {
        collection: String,
        /// Keep the newest N restore points.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest restore point of each of the last N days.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// Keep the newest restore point of each of the last N ISO weeks.
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        /// Keep the newest restore point of each of the last N months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Chunks of a disk that changed between two restore points.
    Diff {
        collection: String,
        from: String,
        to: String,
        /// The disk (id or name at capture time).
        #[arg(long)]
        disk: String,
    },
}

#[derive(Debug, Args)]
struct RestoreArgs {
    collection: String,
    restore_point: String,
    /// The disk of the restore point to restore (id or name at capture time).
    #[arg(long, requires = "name", conflicts_with = "group")]
    disk: Option<String>,
    /// Name of the new disk.
    #[arg(long, requires = "disk")]
    name: Option<String>,
    /// Restore every disk into a new group of this name.
    #[arg(long, required_unless_present = "disk")]
    group: Option<String>,
    #[command(flatten)]
    wait: Wait,
}

#[derive(Debug, Subcommand)]
enum StoreCmd {
    /// Records, bytes, references and packs in the chunk store.
    Stats,
}

#[derive(Debug, Subcommand)]
enum OpCmd {
    List {
        /// Only operations still running.
        #[arg(long)]
        running: bool,
    },
    Show {
        id: String,
    },
    /// Follows an operation until it ends.
    Watch {
        id: String,
    },
    Cancel {
        id: String,
    },
}

/// Parses `COLLECTION/RESTORE_POINT`.
fn parse_rp_path(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((c, r)) if !c.is_empty() && !r.is_empty() && !r.contains('/') => Ok((c.into(), r.into())),
        _ => Err(format!("{s:?} is not COLLECTION/RESTORE_POINT")),
    }
}

/// `PEER:COLLECTION`, a copy collection's source.
fn parse_source(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((p, c)) if !p.is_empty() && !c.is_empty() && !c.contains(':') => Ok((p.into(), c.into())),
        _ => Err(format!("{s:?} is not PEER:COLLECTION")),
    }
}

/// A failure that ends the command.
enum Failure {
    /// The call failed.
    Rpc(tonic::Status),
    /// The call worked but the operation ended badly, or something else went wrong.
    Other(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Rpc(s)
    }
}

type Res<T = ()> = Result<T, Failure>;

fn code_name(c: tonic::Code) -> String {
    // "Some requested entity was not found" reads worse than NOT_FOUND for a one-liner.
    format!("{c:?}").chars().fold(String::new(), |mut out, ch| {
        if ch.is_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
        out
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rpc(s)) => {
            eprintln!("error: {}: {}", code_name(s.code()), s.message().replace('\n', " "));
            ExitCode::FAILURE
        }
        Err(Failure::Other(m)) => {
            eprintln!("error: {}", m.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

struct Client {
    ch: AuthChannel,
    output: Output,
}

/// The credentials the flags and environment give.
fn credentials(cli: &Cli) -> Result<Credentials, client::ConnectError> {
    let creds = Credentials {
        tls_ca: cli.tls_ca.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        token: None,
    };
    match (&cli.token_file, std::env::var("CAIRN_TOKEN")) {
        (Some(path), _) => creds.with_token_file(path),
        (None, Ok(token)) => Ok(Credentials { token: Some(token.trim().to_owned()), ..creds }),
        (None, Err(_)) => Ok(creds),
    }
}

async fn run(cli: Cli) -> Res {
    let other = |e: client::ConnectError| Failure::Other(e.to_string());
    let ch = client::connect_with(&cli.endpoint, &credentials(&cli).map_err(other)?).await.map_err(other)?;
    let c = Client { ch, output: cli.output };
    match cli.command {
        Command::Disk(cmd) => c.disk(cmd).await,
        Command::Group(cmd) => c.group(cmd).await,
        Command::Collection(cmd) => c.collection(cmd).await,
        Command::Rp(cmd) => c.rp(cmd).await,
        Command::Restore(args) => c.restore(args).await,
        Command::Revert { collection, restore_point, disks, no_current_state, current_state_name } => {
            let req = pb::RevertInPlaceRequest {
                collection,
                restore_point,
                disks,
                skip_current_state: no_current_state,
                current_state_name: current_state_name.unwrap_or_default(),
            };
            c.revert(req).await
        }
        Command::Op(cmd) => c.op(cmd).await,
        Command::Store(StoreCmd::Stats) => c.store_stats().await,
        Command::Gc { live_share, wait } => c.gc(live_share, &wait).await,
        Command::Verify { restore_point, wait } => c.verify(restore_point, &wait).await,
        Command::Completions { .. } => Ok(()),
    }
}

// ---- output ------------------------------------------------------------------------------

/// `PROVISIONING_STATE_SUCCEEDED` -> `Succeeded`.
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .split('_')
        .map(|w| {
            let mut cs = w.chars();
            cs.next().map(|f| f.to_string() + &cs.as_str().to_lowercase()).unwrap_or_default()
        })
        .collect()
}

fn j_disk(d: &pb::Disk) -> Value {
    json!({
        "id": d.id, "name": d.name, "size_bytes": d.size_bytes, "chunk_size_bytes": d.chunk_size_bytes,
        "direct_io": d.direct_io, "group_id": d.group_id, "created_at_ms": d.created_at_ms,
        "source": d.source.as_ref().map(|s| json!({"restore_point_id": s.restore_point_id, "disk_id": s.disk_id})),
        "hydrated": d.hydrated, "allocated_bytes": d.allocated_bytes,
    })
}

fn j_group(g: &pb::Group) -> Value {
    json!({"id": g.id, "name": g.name, "disk_ids": g.disk_ids, "configuration": g.configuration,
           "created_at_ms": g.created_at_ms})
}

fn j_collection(c: &pb::Collection) -> Value {
    json!({
        "id": c.id, "name": c.name, "group_id": c.group_id, "region": c.region,
        "max_restore_points": c.max_restore_points, "restore_point_count": c.restore_point_count,
        "hook": c.hook.as_ref().map(|h| json!({"command": h.command, "timeout_ms": h.timeout_ms})),
        "created_at_ms": c.created_at_ms,
        "source": c.source.as_ref().map(|x| format!("{}:{}", x.peer, x.collection)),
    })
}

fn j_op(o: &pb::Operation) -> Value {
    json!({
        "id": o.id, "kind": enum_name(o.kind().as_str_name(), "OPERATION_KIND_"), "target": o.target,
        "state": enum_name(o.state().as_str_name(), "OPERATION_STATE_"), "percent": o.percent,
        "bytes_done": o.bytes_done, "bytes_total": o.bytes_total, "error": o.error,
        "paused_reason": o.paused_reason, "created_at_ms": o.created_at_ms, "updated_at_ms": o.updated_at_ms,
        "result": serde_json::from_str::<Value>(&o.result_json).ok(), "note": o.note,
    })
}

fn j_rp(r: &pb::RestorePoint) -> Value {
    let disks: Vec<Value> = r
        .disks
        .iter()
        .map(|d| {
            json!({
                "disk_id": d.disk_id, "disk_name": d.disk_name, "size_bytes": d.size_bytes,
                "chunk_size_bytes": d.chunk_size_bytes, "full_scan": d.full_scan,
                "chunks_captured": d.chunks_captured, "chunks_new": d.chunks_new,
                "chunks_deduplicated": d.chunks_deduplicated, "chunks_zero": d.chunks_zero,
                "chunks_delta": d.chunks_delta, "bytes_stored": d.bytes_stored, "bytes_captured": d.bytes_captured,
                "merkle_root": d.merkle_root,
            })
        })
        .collect();
    let view = r.instance_view.as_ref().map(|v| {
        json!({
            "disks": v.disks.iter().map(|d| json!({"disk_id": d.disk_id, "disk_name": d.disk_name,
                "bytes_done": d.bytes_done, "bytes_total": d.bytes_total, "percent": d.percent})).collect::<Vec<_>>(),
            "operation": v.operation.as_ref().map(j_op),
        })
    });
    json!({
        "id": r.id, "name": r.name, "collection_id": r.collection_id, "description": r.description, "seq": r.seq,
        "created_at_ms": r.created_at_ms,
        "provisioning_state": enum_name(r.provisioning_state().as_str_name(), "PROVISIONING_STATE_"),
        "failure_reason": r.failure_reason,
        "consistency_mode_requested": enum_name(r.consistency_mode_requested().as_str_name(), "CONSISTENCY_MODE_"),
        "consistency_mode": enum_name(r.consistency_mode().as_str_name(), "CONSISTENCY_MODE_"),
        "consistency_note": r.consistency_note, "freeze_window_us": r.freeze_window_us,
        "configuration": r.configuration, "disks": disks, "excluded_disk_ids": r.excluded_disk_ids,
        "completed_at_ms": r.completed_at_ms, "operation_id": r.operation_id,
        "bytes_stored": r.disks.iter().map(|d| d.bytes_stored).sum::<u64>(),
        "merkle_root": r.merkle_root,
        "instance_view": view,
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `2026-11-25 23:58:23Z`: milliseconds since the epoch, in UTC.
fn timestamp(ms: u64) -> String {
    let t = i64::try_from(ms / 1000).ok().and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    match t {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        // Past the year 9999: no daemon's clock says so, print what it sent.
        None => format!("{ms}ms"),
    }
}

/// `850µs`, `12.3ms`, `4.20s`, `3m20s`, `2h05m`: a duration for people.
fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match d.as_micros() {
        us if us < 1000 => format!("{us}µs"),
        us if us < 1_000_000 => format!("{:.1}ms", d.as_secs_f64() * 1000.0),
        _ if secs < 60 => format!("{:.2}s", d.as_secs_f64()),
        _ if secs < 3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

/// A table's name for a JSON key: the unit suffix of a time goes, the cell says it.
fn column_name(key: &str) -> String {
    let name = key.strip_suffix("_ms").or_else(|| key.strip_suffix("_us")).unwrap_or(key);
    name.to_uppercase()
}

/// A table cell: times as UTC timestamps (`*_at_ms`) and durations (`*_ms`, `*_us`); JSON
/// output keeps the numbers.
fn table_cell(key: &str, v: &Value) -> String {
    match (key, v.as_u64()) {
        (k, Some(0)) if k.ends_with("_at_ms") => "-".into(),
        (k, Some(ms)) if k.ends_with("_at_ms") => timestamp(ms),
        (k, Some(us)) if k.ends_with("_us") => duration(std::time::Duration::from_micros(us)),
        (k, Some(ms)) if k.ends_with("_ms") => duration(std::time::Duration::from_millis(ms)),
        _ => cell(v),
    }
}

/// Prints rows as a table of `columns` (JSON keys), or the whole list as JSON.
fn print_list(output: Output, rows: &[Value], columns: &[&str]) {
    if output == Output::Json {
        println!("{}", Value::Array(rows.to_vec()));
        return;
    }
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|c| table_cell(c, &r[*c])).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([column_name(c).len()]).max().unwrap_or(0))
        .collect();
    let line = |vals: Vec<String>| {
        let parts: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(columns.iter().map(|c| column_name(c)).collect());
    for r in cells {
        line(r);
    }
}

/// Prints one resource: `key: value` lines, or JSON.
fn print_one(output: Output, v: &Value) {
    if output == Output::Json {
        println!("{v}");
        return;
    }
    if let Value::Object(m) = v {
        for (k, val) in m {
            match val {
                Value::Array(items) if items.iter().any(Value::is_object) => {
                    println!("{k}:");
                    for it in items {
                        println!("  - {}", it);
                    }
                }
                Value::Object(_) => println!("{k}: {val}"),
                _ => println!("{}: {}", column_name(k).to_lowercase(), table_cell(k, val)),
            }
        }
    }
}

const DISK_COLS: &[&str] = &["name", "id", "size_bytes", "allocated_bytes", "group_id", "hydrated"];
const GROUP_COLS: &[&str] = &["name", "id", "disk_ids"];
const COLL_COLS: &[&str] = &["name", "id", "group_id", "region", "restore_point_count", "max_restore_points"];
const RP_COLS: &[&str] = &["name", "id", "provisioning_state", "consistency_mode", "bytes_stored", "created_at_ms"];
const OP_COLS: &[&str] = &["id", "kind", "state", "percent", "target", "error"];
const RETAIN_COLS: &[&str] = &["name", "keep", "reasons", "created_at_ms", "restore_point_id"];
const CORRUPT_COLS: &[&str] = &["chunk", "pack", "reason", "affected"];
const REVERT_COLS: &[&str] = &["disk_name", "chunks_compared", "chunks_rewritten", "bytes_written", "bytes_trimmed"];
const ROOT_MISMATCH_COLS: &[&str] = &["restore_point", "disk", "recorded", "computed"];

// ---- commands ----------------------------------------------------------------------------

impl Client {
    fn disks(&self) -> pb::disks_client::DisksClient<AuthChannel> {
        pb::disks_client::DisksClient::new(self.ch.clone())
    }
    fn groups(&self) -> pb::groups_client::GroupsClient<AuthChannel> {
        pb::groups_client::GroupsClient::new(self.ch.clone())
    }
    fn collections(&self) -> pb::collections_client::CollectionsClient<AuthChannel> {
        pb::collections_client::CollectionsClient::new(self.ch.clone())
    }
    fn rps(&self) -> pb::restore_points_client::RestorePointsClient<AuthChannel> {
        pb::restore_points_client::RestorePointsClient::new(self.ch.clone())
    }
    fn ops(&self) -> pb::operations_client::OperationsClient<AuthChannel> {
        pb::operations_client::OperationsClient::new(self.ch.clone())
    }
    fn store(&self) -> pb::store_client::StoreClient<AuthChannel> {
        pb::store_client::StoreClient::new(self.ch.clone())
    }

    async fn store_stats(&self) -> Res {
        let s = self.store().get_store_stats(pb::GetStoreStatsRequest {}).await?.into_inner();
        print_one(
            self.output,
            &json!({
                "records": s.records, "record_bytes": s.record_bytes, "referenced_records": s.referenced_records,
                "referenced_bytes": s.referenced_bytes, "references": s.references, "packs": s.packs,
                "pack_bytes": s.pack_bytes,
            }),
        );
        Ok(())
    }

    async fn gc(&self, live_share: Option<u32>, wait: &Wait) -> Res {
        let op = self
            .store()
            .collect_garbage(pb::CollectGarbageRequest { live_share_percent: live_share })
            .await?
            .into_inner();
        if !wait.enabled() {
            print_one(self.output, &j_op(&op));
            return Ok(());
        }
        let end = self.follow(&op.id, "garbage collection").await?;
        print_one(self.output, &j_op(&end));
        op_outcome(&end)
    }

    async fn verify(&self, restore_point: Option<(String, String)>, wait: &Wait) -> Res {
        let (collection, restore_point) = restore_point.unwrap_or_default();
        let what = if restore_point.is_empty() { "store".to_owned() } else { format!("{collection}/{restore_point}") };
        let op = self.store().verify(pb::VerifyRequest { collection, restore_point }).await?.into_inner();
        if !wait.enabled() {
            print_one(self.output, &j_op(&op));
            return Ok(());
        }
        let end = self.follow(&op.id, &format!("verifying {what}")).await?;
        op_outcome(&end)?;
        let report: Value = serde_json::from_str(&end.result_json)
            .map_err(|e| Failure::Other(format!("operation {} has no verify report: {e}", end.id)))?;
        let corrupt: Vec<Value> = report["corrupt"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        let affected: Vec<Value> = c["affected"]
                            .as_array()
                            .map(|xs| {
                                xs.iter()
                                    .map(|x| {
                                        Value::String(format!(
                                            "{}/{}",
                                            cell(&x["restore_point_name"]),
                                            cell(&x["disk_name"])
                                        ))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        json!({"chunk": c["chunk"], "pack": c["pack"], "reason": c["reason"], "affected": affected})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mismatches: Vec<Value> = report["root_mismatches"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        let disk = m["disk_name"].as_str().filter(|d| !d.is_empty()).unwrap_or("(restore point)");
                        json!({"restore_point": m["restore_point_name"], "disk": disk,
                            "recorded": m["recorded"], "computed": m["computed"]})
                    })
                    .collect()
            })
            .unwrap_or_default();
        match self.output {
            Output::Json => println!("{}", j_op(&end)),
            Output::Table => {
                println!(
                    "verified {what}: {} records, {} bytes, {} corrupt; {} Merkle roots, {} mismatched",
                    cell(&report["records_checked"]),
                    cell(&report["bytes_checked"]),
                    corrupt.len(),
                    cell(&report["roots_checked"]),
                    mismatches.len()
                );
                if !corrupt.is_empty() {
                    print_list(self.output, &corrupt, CORRUPT_COLS);
                }
                if !mismatches.is_empty() {
                    print_list(self.output, &mismatches, ROOT_MISMATCH_COLS);
                }
            }
        }
        match (corrupt.len(), mismatches.len()) {
            (0, 0) => Ok(()),
            (c, 0) => Err(Failure::Other(format!("verify found {c} corrupt records in {what}"))),
            (c, m) => Err(Failure::Other(format!(
                "verify found {c} corrupt records and {m} chunk maps that do not match their Merkle roots in {what}"
            ))),
        }
    }

    async fn disk(&self, cmd: DiskCmd) -> Res {
        let mut c = self.disks();
        let d = match cmd {
            DiskCmd::Create { name, size, chunk_size, direct_io } => {
                let req = pb::CreateDiskRequest {
                    name,
                    size_bytes: size,
                    chunk_size_bytes: chunk_size.unwrap_or(0),
                    direct_io,
                };
                c.create_disk(req).await?.into_inner()
            }
            DiskCmd::List => {
                let mut rows = Vec::new();
                let mut page_token = String::new();
                loop {
                    let r = c.list_disks(pb::ListDisksRequest { page_size: 0, page_token }).await?.into_inner();
                    rows.extend(r.disks.iter().map(j_disk));
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    page_token = r.next_page_token;
                }
                print_list(self.output, &rows, DISK_COLS);
                return Ok(());
            }
            DiskCmd::Show { disk } => c.get_disk(pb::GetDiskRequest { disk }).await?.into_inner(),
            DiskCmd::Resize { disk, size } => {
                c.resize_disk(pb::ResizeDiskRequest { disk, size_bytes: size }).await?.into_inner()
            }
            DiskCmd::Delete { disk } => {
                c.delete_disk(pb::DeleteDiskRequest { disk: disk.clone() }).await?;
                return self.deleted("disk", &disk);
            }
        };
        print_one(self.output, &j_disk(&d));
        Ok(())
    }

    fn deleted(&self, what: &str, name: &str) -> Res {
        match self.output {
            Output::Json => println!("{}", json!({"deleted": what, "name": name})),
            Output::Table => println!("{what} {name} deleted"),
        }
        Ok(())
    }

    async fn group(&self, cmd: GroupCmd) -> Res {
        let mut c = self.groups();
        let g = match cmd {
            GroupCmd::Create { name, disks, configuration } => {
                c.create_group(pb::CreateGroupRequest { name, disks, configuration }).await?.into_inner()
            }
            GroupCmd::List => {
                let r = c.list_groups(pb::ListGroupsRequest::default()).await?.into_inner();
                print_list(self.output, &r.groups.iter().map(j_group).collect::<Vec<_>>(), GROUP_COLS);
                return Ok(());
            }
            GroupCmd::Show { group } => c.get_group(pb::GetGroupRequest { group }).await?.into_inner(),
            GroupCmd::Delete { group } => {
                c.delete_group(pb::DeleteGroupRequest { group: group.clone() }).await?;
                return self.deleted("group", &group);
            }
        };
        print_one(self.output, &j_group(&g));
        Ok(())
    }

    async fn collection(&self, cmd: CollectionCmd) -> Res {
        let mut c = self.collections();
        let coll = match cmd {
            CollectionCmd::Create { name, group, source, max_restore_points, region, hook } => {
                let req = pb::CreateOrUpdateCollectionRequest {
                    name,
                    group: group.unwrap_or_default(),
                    region: region.unwrap_or_default(),
                    max_restore_points: max_restore_points.unwrap_or(0),
                    hook: hook.over(None)?,
                    source: source.map(|(peer, collection)| pb::CollectionSource { peer, collection }),
                };
                c.create_or_update_collection(req).await?.into_inner()
            }
            CollectionCmd::Update { collection, max_restore_points, hook, no_hook } => {
                // CreateOrUpdate takes the whole collection wanted: start from what it is.
                let now = c.get_collection(pb::GetCollectionRequest { collection }).await?.into_inner();
                let req = pb::CreateOrUpdateCollectionRequest {
                    max_restore_points: max_restore_points.unwrap_or(now.max_restore_points),
                    hook: if no_hook { None } else { hook.over(now.hook)? },
                    name: now.name,
                    group: now.group_id,
                    region: now.region,
                    source: now.source,
                };
                c.create_or_update_collection(req).await?.into_inner()
            }
            CollectionCmd::List => {
                let r = c.list_collections(pb::ListCollectionsRequest::default()).await?.into_inner();
                print_list(self.output, &r.collections.iter().map(j_collection).collect::<Vec<_>>(), COLL_COLS);
                return Ok(());
            }
            CollectionCmd::Show { collection } => {
                c.get_collection(pb::GetCollectionRequest { collection }).await?.into_inner()
            }
            CollectionCmd::Delete { collection, cascade } => {
                c.delete_collection(pb::DeleteCollectionRequest { collection: collection.clone(), cascade }).await?;
                return self.deleted("collection", &collection);
            }
        };
        print_one(self.output, &j_collection(&coll));
        Ok(())
    }

    async fn rp(&self, cmd: RpCmd) -> Res {
        let mut c = self.rps();
        match cmd {
            RpCmd::Copy { collection, restore_point, name, wait } => {
                let req = pb::CopyRestorePointRequest {
                    collection: collection.clone(),
                    name: name.unwrap_or_default(),
                    source_restore_point: restore_point,
                };
                let r = c.copy_restore_point(req).await?.into_inner();
                let rp = r.restore_point.unwrap_or_default();
                let op = r.operation.unwrap_or_default();
                if !wait.enabled() {
                    print_one(self.output, &json!({"restore_point": j_rp(&rp), "operation": j_op(&op)}));
                    return Ok(());
                }
                let end = self.follow(&op.id, &format!("copying restore point {}", rp.name)).await?;
                let req = pb::GetRestorePointRequest { collection, restore_point: rp.id, instance_view: false };
                print_one(self.output, &j_rp(&c.get_restore_point(req).await?.into_inner()));
                op_outcome(&end)
            }
            RpCmd::Create { collection, name, exclude_disks, consistency, description, wait } => {
                let mode = match consistency {
                    Consistency::Crash => pb::ConsistencyMode::CrashConsistent,
                    Consistency::Filesystem => pb::ConsistencyMode::FileSystemConsistent,
                    Consistency::Application => pb::ConsistencyMode::ApplicationConsistent,
                };
                let req = pb::CreateRestorePointRequest {
                    collection: collection.clone(),
                    name,
                    description,
                    exclude_disks,
                    consistency_mode: mode.into(),
                };
                let r = c.create_restore_point(req).await?.into_inner();
                let rp = r.restore_point.unwrap_or_default();
                let op = r.operation.unwrap_or_default();
                if !wait.enabled() {
                    print_one(self.output, &json!({"restore_point": j_rp(&rp), "operation": j_op(&op)}));
                    return Ok(());
                }
                let end = self.follow(&op.id, &format!("restore point {}", rp.name)).await?;
                let rp = c
                    .get_restore_point(pb::GetRestorePointRequest {
                        collection,
                        restore_point: rp.id,
                        instance_view: false,
                    })
                    .await?
                    .into_inner();
                print_one(self.output, &j_rp(&rp));
                op_outcome(&end)
            }
            RpCmd::List { collection } => {
                let r = c
                    .list_restore_points(pb::ListRestorePointsRequest { collection, ..Default::default() })
                    .await?
                    .into_inner();
                print_list(self.output, &r.restore_points.iter().map(j_rp).collect::<Vec<_>>(), RP_COLS);
                Ok(())
            }
            RpCmd::Show { collection, restore_point, instance_view } => {
                let r = c
                    .get_restore_point(pb::GetRestorePointRequest { collection, restore_point, instance_view })
                    .await?
                    .into_inner();
                print_one(self.output, &j_rp(&r));
                Ok(())
            }
            RpCmd::Delete { collection, restore_point } => {
                c.delete_restore_point(pb::DeleteRestorePointRequest {
                    collection,
                    restore_point: restore_point.clone(),
                })
                .await?;
                self.deleted("restore point", &restore_point)
            }
            RpCmd::Retain { collection, keep_last, keep_daily, keep_weekly, keep_monthly, dry_run } => {
                let req = pb::ApplyRetentionRequest {
                    collection,
                    policy: Some(pb::RetentionPolicy { keep_last, keep_daily, keep_weekly, keep_monthly }),
                    dry_run,
                };
                let r = self.store().apply_retention(req).await?.into_inner();
                let rows: Vec<Value> = r
                    .decisions
                    .iter()
                    .map(|d| {
                        json!({"restore_point_id": d.restore_point_id, "name": d.name, "created_at_ms": d.created_at_ms,
                               "keep": d.keep, "reasons": d.reasons})
                    })
                    .collect();
                if self.output == Output::Json {
                    println!("{}", json!({"dry_run": dry_run, "decisions": rows}));
                } else {
                    print_list(self.output, &rows, RETAIN_COLS);
                    let gone = r.decisions.iter().filter(|d| !d.keep).count();
                    println!(
                        "{gone} restore points {}",
                        if dry_run { "would be deleted (dry run)" } else { "deleted" }
                    );
                }
                Ok(())
            }
            RpCmd::Diff { collection, from, to, disk } => {
                let mut data = pb::disk_data_client::DiskDataClient::new(self.ch.clone());
                let mut blocks = Vec::new();
                let mut page_token = String::new();
                let block_size = loop {
                    let req = pb::ListChangedBlocksRequest {
                        first: Some(pb::DiskRestorePointRef {
                            collection: collection.clone(),
                            restore_point: from.clone(),
                            disk: disk.clone(),
                        }),
                        second_restore_point: to.clone(),
                        page_size: 0,
                        page_token,
                    };
                    let r = data.list_changed_blocks(req).await?.into_inner();
                    blocks.extend(
                        r.blocks.iter().map(|b| json!({"index": b.index, "offset": b.offset, "length": b.length})),
                    );
                    if r.next_page_token.is_empty() {
                        break r.block_size_bytes;
                    }
                    page_token = r.next_page_token;
                };
                if self.output == Output::Json {
                    println!("{}", json!({"block_size_bytes": block_size, "changed_blocks": blocks}));
                } else {
                    print_list(self.output, &blocks, &["index", "offset", "length"]);
                }
                Ok(())
            }
        }
    }

    async fn revert(&self, req: pb::RevertInPlaceRequest) -> Res {
        let mut c = pb::restores_client::RestoresClient::new(self.ch.clone());
        let r = c.revert_in_place(req).await?.into_inner();
        let disks: Vec<Value> = r
            .disks
            .iter()
            .map(|d| {
                json!({"disk_id": d.disk_id, "disk_name": d.disk_name, "chunks_compared": d.chunks_compared,
                    "chunks_rewritten": d.chunks_rewritten, "bytes_written": d.bytes_written,
                    "bytes_trimmed": d.bytes_trimmed})
            })
            .collect();
        match self.output {
            Output::Json => {
                println!("{}", json!({"disks": disks, "current_state": r.current_state.as_ref().map(j_rp)}))
            }
            Output::Table => {
                if let Some(rp) = &r.current_state {
                    println!("restore point of the state before: {}", rp.name);
                }
                print_list(self.output, &disks, REVERT_COLS);
            }
        }
        Ok(())
    }

    async fn restore(&self, a: RestoreArgs) -> Res {
        let mut c = pb::restores_client::RestoresClient::new(self.ch.clone());
        let (out, ops) = match (a.disk, a.name, a.group) {
            (Some(disk), Some(name), None) => {
                let req = pb::RestoreDiskRequest {
                    collection: a.collection,
                    restore_point: a.restore_point,
                    disk,
                    name,
                    direct_io: false,
                };
                let r = c.restore_disk(req).await?.into_inner();
                let d = r.disk.unwrap_or_default();
                let op = r.operation.unwrap_or_default();
                (json!({"disk": j_disk(&d), "operations": [j_op(&op)]}), vec![(op.id, format!("disk {}", d.name))])
            }
            (None, None, Some(group_name)) => {
                let req =
                    pb::RestoreGroupRequest { collection: a.collection, restore_point: a.restore_point, group_name };
                let r = c.restore_group(req).await?.into_inner();
                let g = r.group.unwrap_or_default();
                let ops = r
                    .disks
                    .iter()
                    .zip(&r.operations)
                    .map(|(d, o)| (o.id.clone(), format!("disk {}", d.name)))
                    .collect();
                (
                    json!({"group": j_group(&g), "disks": r.disks.iter().map(j_disk).collect::<Vec<_>>(),
                           "operations": r.operations.iter().map(j_op).collect::<Vec<_>>()}),
                    ops,
                )
            }
            _ => return Err(Failure::Other("give --disk and --name, or --group".into())),
        };
        if !a.wait.enabled() {
            print_one(self.output, &out);
            return Ok(());
        }
        let mut ends = Vec::new();
        for (id, what) in ops {
            ends.push(self.follow(&id, &format!("hydrating {what}")).await?);
        }
        let mut out = out;
        out["operations"] = Value::Array(ends.iter().map(j_op).collect());
        print_one(self.output, &out);
        ends.iter().try_for_each(op_outcome)
    }

    async fn op(&self, cmd: OpCmd) -> Res {
        let mut c = self.ops();
        let op = match cmd {
            OpCmd::List { running } => {
                let r = c
                    .list_operations(pb::ListOperationsRequest { running_only: running, ..Default::default() })
                    .await?
                    .into_inner();
                print_list(self.output, &r.operations.iter().map(j_op).collect::<Vec<_>>(), OP_COLS);
                return Ok(());
            }
            OpCmd::Show { id } => c.get_operation(pb::GetOperationRequest { id }).await?.into_inner(),
            OpCmd::Watch { id } => {
                let end = self.follow(&id, &format!("operation {id}")).await?;
                print_one(self.output, &j_op(&end));
                return op_outcome(&end);
            }
            OpCmd::Cancel { id } => c.cancel_operation(pb::CancelOperationRequest { id }).await?.into_inner(),
        };
        print_one(self.output, &j_op(&op));
        Ok(())
    }

    /// Follows an operation to its end over WatchOperation, with a progress bar (on stderr)
    /// when stdout is a terminal, which ends as one line saying how it went; returns its
    /// last state. Without a terminal nothing but the result is printed.
    async fn follow(&self, id: &str, what: &str) -> Res<pb::Operation> {
        let mut stream = self.ops().watch_operation(pb::WatchOperationRequest { id: id.into() }).await?.into_inner();
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what.to_owned());
            bar
        });
        let started = std::time::Instant::now();
        let mut last = None;
        while let Some(op) = stream.message().await? {
            if let Some(b) = &bar {
                b.set_length(op.bytes_total);
                b.set_position(op.bytes_done);
            }
            last = Some(op);
        }
        if let (Some(b), Some(op)) = (bar, &last) {
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.finish_with_message(summary(what, op, started.elapsed()));
        }
        last.ok_or_else(|| Failure::Other(format!("the watch of operation {id} ended without a state")))
    }
}

/// The line a progress bar leaves: `verifying store: Succeeded, 12.0 MiB in 1.20s (10.0 MiB/s)`.
fn summary(what: &str, op: &pb::Operation, took: std::time::Duration) -> String {
    let state = enum_name(op.state().as_str_name(), "OPERATION_STATE_");
    let bytes = indicatif::BinaryBytes(op.bytes_done);
    #[allow(clippy::cast_precision_loss, reason = "a rate for people")]
    let rate = op.bytes_done as f64 / took.as_secs_f64().max(1e-3);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a rate for people")]
    let rate = indicatif::BinaryBytes(rate as u64);
    format!("{what}: {state}, {bytes} in {} ({rate}/s)", duration(took))
}

/// Exit status of an operation that ended.
fn op_outcome(op: &pb::Operation) -> Res {
    match op.state() {
        pb::OperationState::Succeeded => Ok(()),
        pb::OperationState::Failed => Err(Failure::Other(format!("operation {} failed: {}", op.id, op.error))),
        pb::OperationState::Canceled => Err(Failure::Other(format!("operation {} was canceled", op.id))),
        other => Err(Failure::Other(format!("operation {} ended {}", op.id, other.as_str_name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_point_paths_need_both_parts() {
        assert_eq!(parse_rp_path("c/rp1"), Ok(("c".into(), "rp1".into())));
        assert!(parse_rp_path("c").is_err());
        assert!(parse_rp_path("c/").is_err());
        assert!(parse_rp_path("c/r/d").is_err());
    }

    #[test]
    fn enum_names_read_like_the_engine() {
        assert_eq!(enum_name("PROVISIONING_STATE_SUCCEEDED", "PROVISIONING_STATE_"), "Succeeded");
        assert_eq!(enum_name("CONSISTENCY_MODE_FILE_SYSTEM_CONSISTENT", "CONSISTENCY_MODE_"), "FileSystemConsistent");
    }

    #[test]
    fn times_read_as_timestamps_and_durations() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(timestamp(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03Z");
        assert_eq!(timestamp(1_764_115_103_000), "2025-11-25 23:58:23Z");
        let d = std::time::Duration::from_micros;
        assert_eq!(
            [d(850), d(12_345), d(4_200_000), d(200_000_000), d(7_500_000_000)].map(duration),
            ["850µs", "12.3ms", "4.20s", "3m20s", "2h05m"]
        );
        assert_eq!(
            (column_name("created_at_ms"), column_name("freeze_window_us")),
            ("CREATED_AT".into(), "FREEZE_WINDOW".into())
        );
        assert_eq!(table_cell("completed_at_ms", &json!(0)), "-");
        assert_eq!(table_cell("bytes_stored", &json!(5)), "5");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
