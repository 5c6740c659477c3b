//! The counters of one AMI connection, shared with status and metrics, and
//! the rate-limited log lines that go with them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::event::Unreadable;
use super::mapper::unreadable_text;
use crate::source::rare;

/// Counters and state of one AMI connection, shared with status output.
#[derive(Debug, Default)]
pub struct AmiStats {
    /// Connected and logged in right now.
    pub connected: AtomicBool,
    /// Messages read after the login.
    pub messages: AtomicU64,
    /// Failure (and success) events passed to the jail.
    pub failures: AtomicU64,
    /// Logins that succeeded.
    pub connects: AtomicU64,
    /// Security events that could not be counted (see
    /// [`Unreadable`]), and those distrusted after one cut short.
    pub unreadable: AtomicU64,
    /// Logged in, but Asterisk did not report that login as a security
    /// event: the user most likely lacks `read = security`.
    no_security: AtomicBool,
    /// Why the last session ended (or could not start), with what to do:
    /// shown in status while disconnected.
    last_error: Mutex<Option<String>>,
}

/// What status says of a connection that sees no security event.
const NO_SECURITY: &str = "logged in, but Asterisk did not report this login as a security event by the first ping (20 s): if the manager.conf user lacks read = security, no failure is ever seen";

impl AmiStats {
    /// Why the source is not connected, when it is not and knows.
    pub fn reason(&self) -> Option<String> {
        if self.connected.load(Ordering::Relaxed) {
            return self
                .no_security
                .load(Ordering::Relaxed)
                .then(|| NO_SECURITY.to_string());
        }
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// A new login: whether it sees security events is not known yet.
    pub(super) fn logged_in(&self) {
        self.no_security.store(false, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.set_error(None);
    }

    /// The login was not reported as a security event: says so, in the
    /// log and in status.
    pub(super) fn note_no_security(&self, peer: &str, user: &str) {
        self.no_security.store(true, Ordering::Relaxed);
        tracing::warn!(
            "manager interface {peer}: logged in as {user:?}, but Asterisk did not report the login as a security event by the first ping; give that manager.conf user read = security, or no failure is ever seen"
        );
    }

    /// Notes why a session ended.
    pub(super) fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }

    /// Logs events that could not be counted, rarely (the 1st, 10th,
    /// 100th...): their text is Asterisk's copy of what a packet said.
    pub(super) fn note_unreadable(
        &self,
        peer: &str,
        seen: &[(&'static str, Unreadable, Option<Box<str>>)],
    ) {
        let Some((event, why, raw)) = seen.first() else {
            return;
        };
        let added = seen.len() as u64;
        let total = self.unreadable.fetch_add(added, Ordering::Relaxed) + added;
        if rare(total, added) {
            tracing::warn!(
                "manager interface {peer}: {}; not counted ({total} such event(s) so far)",
                unreadable_text(event, *why, raw.as_deref())
            );
        }
    }

    /// Logs security events distrusted after one cut short, rarely.
    pub(super) fn note_after_cut(&self, peer: &str, n: u64) {
        if n == 0 {
            return;
        }
        let total = self.unreadable.fetch_add(n, Ordering::Relaxed) + n;
        if rare(total, n) {
            tracing::warn!(
                "manager interface {peer}: {n} security event(s) right after one cut short by a line break; not counted, they may be forged ({total} uncounted event(s) so far)"
            );
        }
    }
}
