//! Expiry and orphans: which stored objects go, and when.
//!
//! At start, the store is listed once: live files (with metadata) are counted into
//! the totals (so they survive a restart), expired ones are deleted, and the
//! leftovers of a crash (temporary objects, files without metadata) are deleted.
//! Then every `manager-interval` the sweep deletes expired files, leftovers older
//! than [`ORPHAN_GRACE`], and learns about files other nodes wrote to a shared
//! store (cluster mode), so every node's totals follow the shared store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::store::Entry;
use super::{Attachments, Known};

/// How old a temporary object or a file without metadata must be before the
/// periodic sweep deletes it: older than any upload in progress can be (an upload
/// is bounded by `body-read-timeout`), so an upload on another node of a shared
/// store is never swept from under it.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_secs(10 * 60);

/// What a sweep did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub orphans: usize,
    pub learned: usize,
}

impl Attachments {
    /// Whether only this process writes to the store (a local directory that is not
    /// shared): then anything unfinished from before its start is a leftover.
    fn sole_writer(&self) -> bool {
        matches!(self.config.location, Some(super::Location::Dir(_))) && !self.config.shared_dir
    }

    /// One pass over the store. `at_start`: the first pass (see the module docs).
    pub async fn sweep(&self, at_start: bool) -> SweepReport {
        let now = crate::model::now_unix();
        let mut report = SweepReport::default();
        let listed = match self.store.list().await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "attachment sweep: cannot list the store");
                return report;
            }
        };
        let stale_before = if at_start && self.sole_writer() {
            self.started
        } else {
            SystemTime::now()
                .checked_sub(ORPHAN_GRACE)
                .unwrap_or(std::time::UNIX_EPOCH)
        };
        let metas: HashSet<&str> = listed
            .iter()
            .filter_map(|l| match &l.entry {
                Entry::Meta { id } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        for item in &listed {
            if item.modified >= stale_before {
                continue;
            }
            let removed = match &item.entry {
                Entry::Temp { name } => self.store.remove_temp(name).await.is_ok(),
                Entry::File { id, .. } if !metas.contains(id.as_str()) => {
                    self.store.remove(id).await.is_ok()
                }
                _ => false,
            };
            if removed {
                report.orphans += 1;
            }
        }

        // Files this node does not know yet (at start: all; later: other nodes').
        let unknown: Vec<String> = {
            let known = self.known();
            metas
                .iter()
                .filter(|id| !known.contains_key(**id))
                .map(|id| id.to_string())
                .collect()
        };
        for id in unknown {
            let Ok(Some(meta)) = self.meta(&id).await else {
                continue;
            };
            if meta.expires <= now {
                if self.store.remove(&id).await.is_ok() {
                    report.expired += 1;
                }
                continue;
            }
            let mut known = self.known();
            if known.contains_key(&id) {
                continue; // uploaded here meanwhile
            }
            self.usage.restore(&meta.visitor, meta.size);
            known.insert(
                id,
                Known {
                    visitor: meta.visitor,
                    size: meta.size,
                    expires: meta.expires,
                    since: std::time::Instant::now(),
                },
            );
            report.learned += 1;
        }

        // Expired, or deleted by another node (gone from the listing; only entries
        // older than the grace, so one written after the listing began stays).
        let gone: Vec<(String, bool)> = self
            .known()
            .iter()
            .filter_map(|(id, k)| {
                if k.expires <= now {
                    Some((id.clone(), true))
                } else if !metas.contains(id.as_str()) && k.since.elapsed() > ORPHAN_GRACE {
                    Some((id.clone(), false))
                } else {
                    None
                }
            })
            .collect();
        for (id, expired) in gone {
            if expired {
                self.delete(&id).await;
                report.expired += 1;
            } else if let Some(k) = self.known().remove(&id) {
                self.usage.release(&k.visitor, k.size);
            }
        }
        self.usage.forget_idle(now);
        report
    }

    /// Sweeps every `interval` until `stop` (the start-up pass is the caller's,
    /// before it serves: [`Self::sweep`] with `at_start`).
    pub async fn run_sweeper(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let report = self.sweep(false).await;
            if report != SweepReport::default() {
                tracing::debug!(?report, "attachment sweep");
            }
        }
    }

    /// Files this node counts.
    pub fn file_count(&self) -> usize {
        self.known().len()
    }
}
