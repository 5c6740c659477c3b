//! What status shows of a jail's running sources: one view per file,
//! journal, Event Socket, manager interface, wire sensor and HEP listener,
//! read from their counters. Apart from `sources.rs`, which starts and
//! stops them.

use std::sync::atomic::Ordering;

use super::SourceGroup;
use crate::control::SourceView;
use crate::source::DateStats;

impl SourceGroup {
    /// What status shows of these sources.
    pub(in crate::daemon) fn views(&self) -> Vec<SourceView> {
        let dates = |d: &DateStats, v: SourceView| SourceView {
            too_old: d.too_old.load(Ordering::Relaxed),
            skewed: d.skewed.load(Ordering::Relaxed),
            last_skew_s: d.last_skew_s(),
            ..v
        };
        let stats = self.files.as_ref().map(|f| f.stats()).unwrap_or_default();
        let files = stats.iter().map(|(p, s)| {
            dates(
                &s.dates,
                SourceView {
                    kind: "file".into(),
                    path: p.display().to_string(),
                    healthy: s.open.load(Ordering::Relaxed),
                    reason: s.reason(),
                    lines: s.lines.load(Ordering::Relaxed),
                    matched: s.matched.load(Ordering::Relaxed),
                    ..SourceView::default()
                },
            )
        });
        let now = crate::event::Time::now();
        let esl = self.esl.iter().map(|(label, s, calls, _)| {
            dates(
                &s.dates,
                SourceView {
                    kind: "esl".into(),
                    path: label.clone(),
                    healthy: s.connected.load(Ordering::Relaxed),
                    reason: None,
                    lines: s.events.load(Ordering::Relaxed),
                    matched: s.failures.load(Ordering::Relaxed),
                    fraud: calls.as_ref().map(|c| c.view(now)),
                    ..SourceView::default()
                },
            )
        });
        let ami = self.ami.iter().map(|(label, s, _)| SourceView {
            kind: "ami".into(),
            path: label.clone(),
            healthy: s.connected.load(Ordering::Relaxed),
            reason: s.reason(),
            lines: s.messages.load(Ordering::Relaxed),
            matched: s.failures.load(Ordering::Relaxed),
            ..SourceView::default()
        });
        let wire = self.wire.iter().map(|(label, s)| SourceView {
            kind: "wire".into(),
            path: label.clone(),
            healthy: s.up.load(Ordering::Relaxed),
            reason: None,
            lines: s.messages.load(Ordering::Relaxed),
            matched: s.failures.load(Ordering::Relaxed),
            packets: Some(s.packets.load(Ordering::Relaxed)),
            dropped_kernel: Some(s.drops.load(Ordering::Relaxed)),
            ..SourceView::default()
        });
        let journal = self.journal.iter().map(|(label, s)| {
            dates(
                &s.dates,
                SourceView {
                    kind: "journal".into(),
                    path: label.clone(),
                    healthy: s.open.load(Ordering::Relaxed),
                    reason: s.reason(),
                    lines: s.lines.load(Ordering::Relaxed),
                    matched: s.matched.load(Ordering::Relaxed),
                    ..SourceView::default()
                },
            )
        });
        files
            .chain(journal)
            .chain(esl)
            .chain(ami)
            .chain(wire)
            .chain(self.hep.iter().map(crate::daemon::hep::HepGroup::view))
            .collect()
    }
}
