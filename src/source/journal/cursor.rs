//! Where each journal follower stands: the cursor of the last entry whose
//! failures the jails have handled, kept in the store so that a restart
//! resumes there (nothing lost, nothing read twice).
//!
//! A follower sends a batch of events, then *marks* the cursor of its last
//! entry here. The run loop takes the marks, then drains the event queue:
//! every batch sent before its mark was taken is handled by the end of that
//! drain, and only then are the marks committed (written to the store in its
//! next batch). A follower started again (a reload, a panic) resumes from
//! its newest mark: entries already sent are not sent again.
//!
//! Each start of a follower is a new *generation* of its key: a mark from
//! an older one (a follower stopped, still finishing a batch when its
//! successor started) is ignored, so a key's position never moves back.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// A journal source's identity in the store: its jail and what it reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CursorKey {
    /// The jail.
    pub jail: String,
    /// The journal read ([`JournalConfig::label`](super::JournalConfig::label)).
    pub source: String,
}

/// A cursor to commit once its batch is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Whose.
    pub key: CursorKey,
    /// The cursor of the last entry sent.
    pub cursor: String,
}

#[derive(Debug, Default)]
struct Ledger {
    committed: HashMap<CursorKey, String>,
    /// Marked, not yet taken, oldest first.
    marks: Vec<Mark>,
    /// Taken, not yet committed (their batch may still be queued).
    taken: HashMap<CursorKey, String>,
    /// The current generation of each key (see [`Cursors::begin`]).
    generation: HashMap<CursorKey, u64>,
}

/// One start of a follower of a key (see [`Cursors::begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(u64);

/// The cursors of every journal follower of the daemon.
#[derive(Debug, Default)]
pub struct Cursors {
    inner: Mutex<Ledger>,
}

impl Cursors {
    /// The cursors the store kept.
    pub fn new(stored: impl IntoIterator<Item = (CursorKey, String)>) -> Cursors {
        Cursors {
            inner: Mutex::new(Ledger {
                committed: stored.into_iter().collect(),
                ..Ledger::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Each step leaves the ledger whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a follower of `key` starts: after its newest marked or
    /// committed cursor; `None` the first time.
    pub fn resume(&self, key: &CursorKey) -> Option<String> {
        let l = self.lock();
        l.marks
            .iter()
            .rev()
            .find(|m| &m.key == key)
            .map(|m| m.cursor.clone())
            .or_else(|| l.taken.get(key).cloned())
            .or_else(|| l.committed.get(key).cloned())
    }

    /// A follower of `key` starts: its generation (older ones' marks are
    /// ignored from now on) and where it resumes ([`resume`](Self::resume)).
    pub fn begin(&self, key: &CursorKey) -> (Generation, Option<String>) {
        let g = {
            let mut l = self.lock();
            let g = l.generation.entry(key.clone()).or_insert(0);
            *g += 1;
            Generation(*g)
        };
        (g, self.resume(key))
    }

    /// A follower of generation `g` sent the batch ending at `cursor`;
    /// ignored when a newer follower of `key` has started since (it
    /// resumed from an earlier mark and sends that batch itself).
    pub fn mark(&self, key: &CursorKey, g: Generation, cursor: String) {
        let mut l = self.lock();
        if l.generation.get(key).copied().unwrap_or(0) != g.0 {
            return;
        }
        l.marks.push(Mark {
            key: key.clone(),
            cursor,
        });
    }

    /// Takes the marks made so far (the newest per source): the caller
    /// drains the event queue, then [`commit`](Self::commit)s them.
    pub fn take(&self) -> Vec<Mark> {
        let mut l = self.lock();
        let marks = std::mem::take(&mut l.marks);
        let mut newest: Vec<Mark> = Vec::new();
        for m in marks {
            match newest.iter_mut().find(|n| n.key == m.key) {
                Some(n) => n.cursor = m.cursor,
                None => newest.push(m),
            }
        }
        for m in &newest {
            l.taken.insert(m.key.clone(), m.cursor.clone());
        }
        newest
    }

    /// Every committed position (to write them all again, into a database
    /// created again).
    pub fn committed(&self) -> Vec<Mark> {
        self.lock()
            .committed
            .iter()
            .map(|(key, cursor)| Mark {
                key: key.clone(),
                cursor: cursor.clone(),
            })
            .collect()
    }

    /// The batches of `marks` were handled: their cursors are where a
    /// restart resumes (the caller writes them to the store).
    pub fn commit(&self, marks: &[Mark]) {
        let mut l = self.lock();
        for m in marks {
            if l.taken.get(&m.key) == Some(&m.cursor) {
                l.taken.remove(&m.key);
            }
            l.committed.insert(m.key.clone(), m.cursor.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(j: &str) -> CursorKey {
        CursorKey {
            jail: j.into(),
            source: "journal".into(),
        }
    }

    #[test]
    fn a_follower_resumes_from_its_newest_position() {
        let c = Cursors::new([(key("sshd"), "s0".to_string())]);
        assert_eq!(c.resume(&key("sshd")).as_deref(), Some("s0"));
        assert_eq!(c.resume(&key("other")), None);
        let (g, at) = c.begin(&key("sshd"));
        assert_eq!(at.as_deref(), Some("s0"));
        let (o, _) = c.begin(&key("other"));
        c.mark(&key("sshd"), g, "s1".into());
        c.mark(&key("sshd"), g, "s2".into());
        c.mark(&key("other"), o, "o1".into());
        assert_eq!(c.resume(&key("sshd")).as_deref(), Some("s2"));
        let taken = c.take();
        assert_eq!(
            taken,
            vec![
                Mark {
                    key: key("sshd"),
                    cursor: "s2".into()
                },
                Mark {
                    key: key("other"),
                    cursor: "o1".into()
                }
            ]
        );
        // Taken but not committed: a follower started now still goes on
        // after what it sent.
        assert_eq!(c.resume(&key("sshd")).as_deref(), Some("s2"));
        c.mark(&key("sshd"), g, "s3".into());
        c.commit(&taken);
        assert_eq!(c.resume(&key("sshd")).as_deref(), Some("s3"));
        let again = c.take();
        assert_eq!(again.len(), 1);
        c.commit(&again);
        assert_eq!(c.resume(&key("sshd")).as_deref(), Some("s3"));
        assert!(c.take().is_empty());
        let mut all = c.committed();
        all.sort_by(|a, b| a.key.jail.cmp(&b.key.jail));
        let cursors: Vec<&str> = all.iter().map(|m| m.cursor.as_str()).collect();
        assert_eq!(cursors, ["o1", "s3"]);
    }

    /// A stopped follower still finishing its batch after its successor
    /// started: its mark is ignored, the position never moves back.
    #[test]
    fn a_stale_journal_follower_never_moves_the_cursor_back() {
        let c = Cursors::default();
        let (old, _) = c.begin(&key("sshd"));
        c.mark(&key("sshd"), old, "s1".into());
        let (new, at) = c.begin(&key("sshd"));
        assert_eq!(at.as_deref(), Some("s1"));
        c.mark(&key("sshd"), new, "s5".into());
        c.mark(&key("sshd"), old, "s2".into());
        let taken = c.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].cursor, "s5");
        c.commit(&taken);
        assert_eq!(c.resume(&key("sshd")).as_deref(), Some("s5"));
    }
}
