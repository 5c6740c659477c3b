//! A jail's HEP listeners (issue 20): started with the jail's other
//! sources, shown in status, stopped with them. The senders they accept
//! are recorded in one [`HepSenders`] shared by every jail; the main loop
//! protects them (see `Runtime::protect_hep_senders`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::DaemonError;
use crate::control::SourceView;
use crate::event::{FailureEvent, JailId};
use crate::jail::JailConfig;
use crate::source::hep::{HepIntake, HepListeners, HepSenders, HepStats};
use crate::source::scanner::ScannerList;
use crate::supervise::{Health, Tasks};

/// One jail's running HEP listeners.
pub(super) struct HepGroup {
    label: String,
    stats: Arc<HepStats>,
    listeners: HepListeners,
}

impl HepGroup {
    /// What status shows of them.
    pub(super) fn view(&self) -> SourceView {
        let s = &self.stats;
        SourceView {
            kind: "hep".into(),
            path: self.label.clone(),
            healthy: s.up.load(Ordering::Relaxed),
            reason: None,
            lines: s.messages.load(Ordering::Relaxed),
            matched: s.failures.load(Ordering::Relaxed),
            dropped_sender: s.dropped_sender.load(Ordering::Relaxed),
            dropped_auth: s.dropped_auth.load(Ordering::Relaxed),
            dropped_malformed: s.dropped_malformed.load(Ordering::Relaxed)
                + s.busy.load(Ordering::Relaxed),
            ..SourceView::default()
        }
    }

    /// Stops listening and closes every connection.
    pub(super) fn stop(&self) {
        self.listeners.stop();
    }
}

/// Starts jail `jc`'s HEP listeners, if it has a `hep` table: bound now,
/// so a taken port fails the start (or the reload) with what to check.
pub(super) fn start(
    jc: &JailConfig,
    id: JailId,
    tx: &mpsc::Sender<Vec<FailureEvent>>,
    scanners: &Arc<ScannerList>,
    tasks: &Tasks,
    senders: &Arc<HepSenders>,
    healths: &mut Vec<Arc<Health>>,
) -> Result<Option<HepGroup>, DaemonError> {
    let Some(h) = &jc.hep else {
        return Ok(None);
    };
    let stats = Arc::new(HepStats::default());
    let mut intake = HepIntake::new(
        id,
        h.clone(),
        scanners.clone(),
        stats.clone(),
        senders.clone(),
    );
    intake.jail_name = jc.name.clone();
    let name = format!("[{}] hep {}", jc.name, h.listen);
    let health = tasks.register(&name);
    healths.push(health.clone());
    let listeners = HepListeners::start(Arc::new(intake), tx.clone(), name, health).map_err(|e| {
        DaemonError::Setup(format!(
            "jail {}: hep: cannot listen on {} ({e}); is another collector (heplify, Homer) on that port?",
            jc.name, h.listen
        ))
    })?;
    if let Some(w) = h.warning() {
        tracing::warn!("[{}] {w}", jc.name);
    }
    tracing::info!("[{}] hep: listening on {}", jc.name, h.label());
    Ok(Some(HepGroup {
        label: h.label(),
        stats,
        listeners,
    }))
}
