//! Quiesce hooks: bring the guest to a consistent state before a freeze and release it after.
//!
//! A hook reports the consistency it reached; a failing or timed-out hook degrades the
//! restore point to what was achieved (crash consistency is always achieved by the freeze),
//! and the note says why. The collection's host script and hypervisors subscribed over gRPC
//! implement the same trait.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::base::ids::{GroupId, Name};
use crate::catalog::restore_point::ConsistencyMode;
use crate::rp::collection::ScriptHook;

/// What a hook is told about the restore point being made.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub group: GroupId,
    pub group_name: Name,
    pub restore_point: Name,
    pub requested: ConsistencyMode,
}

/// A quiesce/thaw provider.
pub trait QuiesceHook: Send + Sync + std::fmt::Debug {
    /// Quiesces the guest; returns the level reached or why it failed.
    fn quiesce<'a>(&'a self, ctx: &'a HookContext) -> BoxFuture<'a, Result<ConsistencyMode, String>>;
    /// Releases the guest after the freeze. Failures are logged, never fatal.
    fn thaw<'a>(&'a self, ctx: &'a HookContext) -> BoxFuture<'a, Result<(), String>>;
}

impl QuiesceHook for ScriptHook {
    fn quiesce<'a>(&'a self, ctx: &'a HookContext) -> BoxFuture<'a, Result<ConsistencyMode, String>> {
        Box::pin(async move {
            let out = run_script(self, "quiesce", ctx).await?;
            let reported = out.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            Ok(reported.parse().unwrap_or(ConsistencyMode::FileSystemConsistent))
        })
    }

    fn thaw<'a>(&'a self, ctx: &'a HookContext) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { run_script(self, "thaw", ctx).await.map(drop) })
    }
}

async fn run_script(hook: &ScriptHook, phase: &str, ctx: &HookContext) -> Result<String, String> {
    let Some((program, args)) = hook.command.split_first() else {
        return Err("hook command is empty".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg(phase)
        .env("CAIRN_PHASE", phase)
        .env("CAIRN_GROUP", ctx.group_name.as_str())
        .env("CAIRN_GROUP_ID", ctx.group.to_string())
        .env("CAIRN_RESTORE_POINT", ctx.restore_point.as_str())
        .env("CAIRN_CONSISTENCY_REQUESTED", format!("{:?}", ctx.requested))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = cmd.output();
    match tokio::time::timeout(Duration::from_millis(hook.timeout_ms), run).await {
        Err(_) => Err(format!("{phase} hook timed out after {} ms", hook.timeout_ms)),
        Ok(Err(e)) => Err(format!("{phase} hook {program:?} could not run: {e}")),
        Ok(Ok(out)) if !out.status.success() => {
            Err(format!("{phase} hook exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// Runs every hook's quiesce; returns the level achieved (never above `requested`) and a
/// note when it fell short.
pub(crate) async fn quiesce_all(
    hooks: &[std::sync::Arc<dyn QuiesceHook>],
    ctx: &HookContext,
) -> (ConsistencyMode, Option<String>) {
    if ctx.requested == ConsistencyMode::CrashConsistent {
        return (ConsistencyMode::CrashConsistent, None);
    }
    if hooks.is_empty() {
        return (
            ConsistencyMode::CrashConsistent,
            Some(format!("{:?} requested but no quiesce hook is configured for the group", ctx.requested)),
        );
    }
    let mut achieved = ctx.requested;
    let mut notes = Vec::new();
    for hook in hooks {
        match hook.quiesce(ctx).await {
            Ok(level) => achieved = achieved.min(level),
            Err(e) => {
                achieved = ConsistencyMode::CrashConsistent;
                notes.push(e);
            }
        }
    }
    if achieved < ctx.requested && notes.is_empty() {
        notes.push(format!("hooks reached {achieved:?}"));
    }
    (achieved, (!notes.is_empty()).then(|| notes.join("; ")))
}

pub(crate) async fn thaw_all(hooks: &[std::sync::Arc<dyn QuiesceHook>], ctx: &HookContext) {
    if ctx.requested == ConsistencyMode::CrashConsistent {
        return;
    }
    for hook in hooks {
        if let Err(e) = hook.thaw(ctx).await {
            tracing::warn!(group = %ctx.group_name, error = %e, "thaw hook failed");
        }
    }
}

/// The quiesce hooks hypervisors subscribed over gRPC, per group. The facade holds it;
/// a creation takes the hooks of its group as they are when it starts.
#[derive(Default)]
pub(crate) struct Registry(RwLock<HashMap<GroupId, Vec<Arc<dyn QuiesceHook>>>>);

impl Registry {
    pub(crate) fn register(&self, group: GroupId, hook: Arc<dyn QuiesceHook>) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).entry(group).or_default().push(hook);
    }

    pub(crate) fn unregister(&self, group: GroupId, hook: &Arc<dyn QuiesceHook>) {
        if let Some(v) = self.0.write().unwrap_or_else(|p| p.into_inner()).get_mut(&group) {
            v.retain(|h| !Arc::ptr_eq(h, hook));
        }
    }

    /// The hooks of `group` now.
    pub(crate) fn of(&self, group: GroupId) -> Vec<Arc<dyn QuiesceHook>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(&group).cloned().unwrap_or_default()
    }
}
