//! Retention: which restore points of a collection to keep (last N, and the newest of each
//! of the last N days, ISO weeks and months), with a dry run that says what would go and why.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::base::ids::{CollectionId, RestorePointId};
use crate::catalog::restore_point::{ProvisioningState, RestorePointRecord};
use crate::context::Context;

/// How many restore points to keep, by rule. A restore point kept by any rule stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

/// The fate of one restore point under a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDecision {
    pub restore_point: RestorePointId,
    pub name: String,
    pub created_at_ms: u64,
    pub keep: bool,
    /// The rules that keep it, or why it goes.
    pub reasons: Vec<String>,
}

const DAY_MS: u64 = 86_400_000;

/// (year, month, day) of a day counted from 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's civil-from-days).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year, month) of a day counted from 1970-01-01.
fn year_month(days: u64) -> (u64, u64) {
    let (year, month, _) = civil_from_days(days);
    (year, month)
}

/// Applies `policy` to a collection's restore points (any order).
pub(crate) fn plan(rps: &[RestorePointRecord], policy: RetentionPolicy) -> Vec<RetentionDecision> {
    let mut sorted: Vec<&RestorePointRecord> = rps.iter().collect();
    sorted.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.seq.cmp(&a.seq)));
    let (mut days, mut weeks, mut months) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut last = 0;
    sorted
        .into_iter()
        .map(|rp| {
            let mut reasons = Vec::new();
            let keep = match &rp.state {
                ProvisioningState::Creating => {
                    reasons.push("being created".into());
                    true
                }
                ProvisioningState::Failed { .. } => {
                    reasons.push("failed".into());
                    false
                }
                ProvisioningState::Succeeded => {
                    let day = rp.created_at_ms / DAY_MS;
                    let (y, m) = year_month(day);
                    if last < policy.keep_last {
                        last += 1;
                        reasons.push(format!("last {}", policy.keep_last));
                    }
                    if days.len() < policy.keep_daily as usize && days.insert(day) {
                        reasons.push(format!("daily {y:04}-{m:02} (day {day})"));
                    }
                    // 1970-01-01 was a Thursday: +3 makes weeks start on Monday.
                    if weeks.len() < policy.keep_weekly as usize && weeks.insert((day + 3) / 7) {
                        reasons.push(format!("weekly (week {})", (day + 3) / 7));
                    }
                    if months.len() < policy.keep_monthly as usize && months.insert((y, m)) {
                        reasons.push(format!("monthly {y:04}-{m:02}"));
                    }
                    let keep = !reasons.is_empty();
                    if !keep {
                        reasons.push("kept by no rule".into());
                    }
                    keep
                }
            };
            RetentionDecision {
                restore_point: rp.id,
                name: rp.name.to_string(),
                created_at_ms: rp.created_at_ms,
                keep,
                reasons,
            }
        })
        .collect()
}

/// Applies a retention policy to a collection: with `dry_run`, only says what would go
/// and why; otherwise deletes those restore points (oldest first). A policy that keeps
/// nothing is refused: delete restore points explicitly instead.
pub(crate) async fn apply_retention(
    ctx: &Arc<Context>,
    collection: CollectionId,
    policy: RetentionPolicy,
    dry_run: bool,
) -> Result<Vec<RetentionDecision>> {
    if policy == RetentionPolicy::default() {
        return Err(Error::invalid("policy", "keeps nothing; delete restore points explicitly instead"));
    }
    let rps = ctx.list_restore_points(collection)?;
    let decisions = plan(&rps, policy);
    if !dry_run {
        for d in decisions.iter().rev().filter(|d| !d.keep) {
            match super::delete::delete_restore_point(ctx, d.restore_point).await {
                Ok(()) => {
                    tracing::info!(restore_point = %d.name, reasons = ?d.reasons, "retention deleted restore point")
                }
                // Another client may have deleted it meanwhile: that is what we wanted.
                Err(e) if e.kind() == crate::base::error::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ids::{CollectionId, Name, OperationId};
    use crate::catalog::restore_point::ConsistencyMode;

    fn rp(seq: u64, at_ms: u64) -> RestorePointRecord {
        RestorePointRecord {
            id: RestorePointId::new(),
            name: Name::new(format!("rp{seq}")).unwrap(),
            collection: CollectionId::new(),
            description: String::new(),
            seq,
            created_at_ms: at_ms,
            state: ProvisioningState::Succeeded,
            consistency_requested: ConsistencyMode::CrashConsistent,
            consistency_achieved: ConsistencyMode::CrashConsistent,
            consistency_note: None,
            freeze_window_us: 0,
            configuration: String::new(),
            disks: vec![],
            excluded_disks: vec![],
            completed_at_ms: None,
            operation: OperationId::new(),
            merkle_root: None,
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    #[test]
    fn civil_months() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(31), (1970, 2));
        assert_eq!(year_month(20_416), (2025, 11)); // 2025-11-24
        assert_eq!(year_month(11_016), (2000, 2)); // 2000-02-29
    }

    #[test]
    fn keeps_last_daily_weekly_monthly() {
        // Four a day for 60 days, starting on a Monday (1970-01-05).
        let mut rps = Vec::new();
        for day in 4..64u64 {
            for h in 0..4 {
                rps.push(rp(day * 4 + h, day * DAY_MS + h * 6 * 3_600_000));
            }
        }
        let policy = RetentionPolicy { keep_last: 3, keep_daily: 7, keep_weekly: 4, keep_monthly: 3 };
        let d = plan(&rps, policy);
        let kept: Vec<&RetentionDecision> = d.iter().filter(|x| x.keep).collect();
        // Newest first: 3 last (the newest also daily/weekly/monthly), then one per day for
        // 6 more days, one per week for 3 more weeks, and February + January of 1970.
        assert!(kept[0].reasons.len() == 4 && kept[0].name == "rp255", "{:?}", kept[0]);
        let daily = kept.iter().filter(|k| k.reasons.iter().any(|r| r.starts_with("daily"))).count();
        let weekly = kept.iter().filter(|k| k.reasons.iter().any(|r| r.starts_with("weekly"))).count();
        let monthly = kept.iter().filter(|k| k.reasons.iter().any(|r| r.starts_with("monthly"))).count();
        assert_eq!((daily, weekly, monthly), (7, 4, 3));
        assert!(kept.len() <= 3 + 7 + 4 + 3);
        assert!(d.iter().filter(|x| !x.keep).all(|x| x.reasons == ["kept by no rule"]));
        assert_eq!(d.len(), rps.len());
    }

    #[test]
    fn failed_go_and_creating_stay() {
        let mut f = rp(1, 0);
        f.state = ProvisioningState::Failed { reason: "x".into() };
        let mut c = rp(2, 1);
        c.state = ProvisioningState::Creating;
        let d = plan(&[f, c], RetentionPolicy { keep_last: 5, ..Default::default() });
        assert!(d.iter().any(|x| !x.keep && x.reasons == ["failed"]));
        assert!(d.iter().any(|x| x.keep && x.reasons == ["being created"]));
    }
}
