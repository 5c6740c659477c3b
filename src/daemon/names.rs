//! Looking up the peers' host names (an Event Socket `host`, the Redis
//! server of `[cluster]`) beside the run loop, never in its way: one task
//! per name looks it up at start with a timeout, again every
//! [`REFRESH`], and after a failure again with backoff. Each answer
//! reaches the run loop as a message; the jails protect the addresses
//! (`JailSet::set_resolved`), the store keeps them for the next start.
//!
//! A lookup is getaddrinfo (A and AAAA, `/etc/hosts` included) on tokio's
//! blocking pool, as `tokio::net::lookup_host` does it, but with the task's
//! handle kept: a getaddrinfo that hangs cannot be cancelled, so a name
//! whose lookup outlived its timeout waits for that same lookup rather
//! than starting another (one blocking thread per name at most).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::runtime::Runtime;
use crate::control::NameView;
use crate::event::Time;
use crate::jail::JailSet;
use crate::jail::names::Change;
use crate::store::{Store, StoreOp};

/// How long one lookup may take before it counts as failed.
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a name is looked up again after an answer.
pub(super) const REFRESH: Duration = Duration::from_secs(300);
/// The first retry after a failure; doubled for each failure in a row, up
/// to [`REFRESH`].
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(5);

/// One lookup's answer, for the run loop.
#[derive(Debug)]
pub(super) struct Answer {
    /// The host name.
    pub(super) name: String,
    /// Its addresses, or why there are none.
    pub(super) result: Result<Vec<IpAddr>, String>,
}

/// A blocking lookup: getaddrinfo in the daemon, a stand-in in tests.
pub(super) type Lookup = Arc<dyn Fn(&str) -> std::io::Result<Vec<IpAddr>> + Send + Sync>;

/// getaddrinfo: every address of `name`, IPv4 and IPv6.
pub(super) fn system_lookup() -> Lookup {
    Arc::new(|name: &str| {
        use std::net::ToSocketAddrs;
        Ok((name, 0u16).to_socket_addrs()?.map(|sa| sa.ip()).collect())
    })
}

/// How long until the next lookup after `failures` failures in a row.
pub(super) fn next_delay(failures: u32) -> Duration {
    match failures {
        0 => REFRESH,
        n => RETRY_FIRST
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(REFRESH),
    }
}

/// The lookup tasks, one per name in use.
pub(super) struct Resolver {
    tx: mpsc::Sender<Answer>,
    lookup: Lookup,
    tasks: HashMap<String, JoinHandle<()>>,
}

impl Resolver {
    /// No names yet; answers go to `tx`.
    pub(super) fn new(tx: mpsc::Sender<Answer>, lookup: Lookup) -> Resolver {
        Resolver {
            tx,
            lookup,
            tasks: HashMap::new(),
        }
    }

    /// Looks up exactly `names` from now on: a new name at once, a name no
    /// longer in use no more.
    pub(super) fn sync<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        let want: Vec<&String> = names.into_iter().collect();
        self.tasks.retain(|name, task| {
            let keep = want.contains(&name);
            if !keep {
                task.abort();
            }
            keep
        });
        for name in want {
            if !self.tasks.contains_key(name) {
                let task = tokio::spawn(watch(name.clone(), self.lookup.clone(), self.tx.clone()));
                self.tasks.insert(name.clone(), task);
            }
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

/// Looks `name` up for as long as the daemon runs.
async fn watch(name: String, lookup: Lookup, tx: mpsc::Sender<Answer>) {
    let mut failures = 0u32;
    let mut running: Option<JoinHandle<std::io::Result<Vec<IpAddr>>>> = None;
    loop {
        let mut lookup_task = running.take().unwrap_or_else(|| {
            let (lookup, name) = (lookup.clone(), name.clone());
            tokio::task::spawn_blocking(move || lookup(&name))
        });
        let result = match tokio::time::timeout(LOOKUP_TIMEOUT, &mut lookup_task).await {
            Ok(Ok(Ok(addrs))) => Ok(addrs),
            Ok(Ok(Err(e))) => Err(format!("lookup failed: {e}")),
            Ok(Err(e)) => Err(format!("lookup failed: {e}")),
            Err(_) => {
                running = Some(lookup_task);
                Err(format!(
                    "no answer within {} s (DNS down?)",
                    LOOKUP_TIMEOUT.as_secs()
                ))
            }
        };
        failures = match &result {
            Ok(a) if !a.is_empty() => 0,
            _ => failures.saturating_add(1),
        };
        if tx
            .send(Answer {
                name: name.clone(),
                result,
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(next_delay(failures)).await;
    }
}

/// At start: protects what the names in use resolved to in an earlier run,
/// until this run's lookups answer.
pub(super) fn remember_stored(jails: &mut JailSet, store: &Store) {
    let in_use = jails.names_in_use();
    if in_use.is_empty() {
        return;
    }
    match store.resolved() {
        Ok(names) => {
            for n in names.into_iter().filter(|n| in_use.contains_key(&n.name)) {
                jails.remember_resolved(&n.name, n.addrs, n.at);
            }
        }
        Err(e) => tracing::error!(
            "{e}; the addresses peer names last resolved to are not known until their lookups answer"
        ),
    }
}

impl Runtime {
    /// A lookup answered: the jails protect the name's addresses, the store
    /// keeps them.
    pub(super) fn on_resolved(&mut self, a: Answer) {
        let now = Time::now();
        let change = self.jails.set_resolved(&a.name, a.result, now);
        if matches!(change, Change::Kept { .. }) {
            return;
        }
        if let (Some(tx), Some(st)) = (&self.store_tx, self.jails.resolved(&a.name)) {
            let _ = tx.send(vec![StoreOp::Resolved {
                name: a.name,
                addrs: st.addrs.iter().map(ipnet::IpNet::addr).collect(),
                at: now,
            }]);
        }
    }

    /// What the names in use resolved to, for the store being rebuilt.
    pub(super) fn resolved_ops(&self) -> Vec<StoreOp> {
        self.jails
            .names_in_use()
            .into_keys()
            .filter_map(|name| {
                let st = self.jails.resolved(&name)?;
                Some(StoreOp::Resolved {
                    addrs: st.addrs.iter().map(ipnet::IpNet::addr).collect(),
                    at: st.resolved_at?,
                    name,
                })
            })
            .collect()
    }

    /// The names in use, for `status`.
    pub(super) fn name_views(&self) -> Vec<NameView> {
        self.jails
            .names_in_use()
            .into_iter()
            .map(|(name, jails)| {
                let st = self.jails.resolved(&name).cloned().unwrap_or_default();
                NameView {
                    name,
                    jails,
                    addrs: st
                        .addrs
                        .iter()
                        .map(|a| crate::jail::DisplayNet(a).to_string())
                        .collect(),
                    resolved_at: st.resolved_at.map(|t| t.to_string()),
                    from_store: st.from_store,
                    problem: st.problem,
                    problem_since: st.problem_since.map(|t| t.to_string()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, mpsc as std_mpsc};

    use super::*;

    #[test]
    fn retries_back_off_up_to_the_refresh() {
        assert_eq!(next_delay(0), REFRESH);
        assert_eq!(next_delay(1), RETRY_FIRST);
        assert_eq!(next_delay(2), RETRY_FIRST * 2);
        assert_eq!(next_delay(4), RETRY_FIRST * 8);
        assert_eq!(next_delay(7), REFRESH);
        assert_eq!(next_delay(u32::MAX), REFRESH);
    }

    /// DNS down, then back: each failure reaches the run loop and is
    /// retried with backoff; the first answer comes through.
    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_until_an_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let lookup: Lookup = Arc::new(move |name: &str| {
            assert_eq!(name, "pbx.example");
            match c.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(std::io::Error::other(
                    "Temporary failure in name resolution",
                )),
                2 => Ok(vec![]),
                _ => Ok(vec!["192.0.2.5".parse().unwrap()]),
            }
        });
        let (tx, mut rx) = mpsc::channel(8);
        let mut r = Resolver::new(tx, lookup);
        r.sync(&["pbx.example".to_string()]);
        let t0 = tokio::time::Instant::now();
        for _ in 0..2 {
            let a = rx.recv().await.unwrap();
            assert!(a.result.unwrap_err().contains("Temporary failure"));
        }
        assert_eq!(rx.recv().await.unwrap().result, Ok(vec![]));
        let a = rx.recv().await.unwrap();
        assert_eq!(a.result, Ok(vec!["192.0.2.5".parse().unwrap()]));
        // Retried after 5, 10 and 20 s (virtual time).
        assert_eq!(t0.elapsed().as_secs(), 35);
        // Then refreshed every five minutes.
        let t1 = tokio::time::Instant::now();
        assert!(rx.recv().await.unwrap().result.is_ok());
        assert_eq!(t1.elapsed(), REFRESH);
        // A name no longer in use is looked up no more.
        r.sync(&[]);
        let n = calls.load(Ordering::SeqCst);
        tokio::time::sleep(REFRESH * 3).await;
        assert_eq!(calls.load(Ordering::SeqCst), n);
    }

    /// A lookup that hangs is a failure after `LOOKUP_TIMEOUT` and is not
    /// started again while it still hangs; its late answer still counts.
    /// (A blocking task stops paused time from advancing by itself: the
    /// test advances it.)
    #[tokio::test(start_paused = true)]
    async fn a_hanging_lookup_times_out_and_is_not_doubled() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, wait) = std_mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let c = calls.clone();
        let lookup: Lookup = Arc::new(move |_: &str| {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = wait.lock().map(|w| w.recv());
            Ok(vec!["2001:db8::5".parse().unwrap()])
        });
        let (tx, mut rx) = mpsc::channel(8);
        let mut r = Resolver::new(tx, lookup);
        r.sync(&["pbx.example".to_string()]);
        for _ in 0..5000 {
            if calls.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the lookup started");
        // Time moves a second at a time until the next answer (timeouts and
        // backoff in between: 5 + 5 s, then 5 + 10 s, ...).
        let mut next = async || {
            for _ in 0..100 {
                if let Ok(a) = rx.try_recv() {
                    return a;
                }
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            panic!("no answer within 100 s of virtual time");
        };
        for _ in 0..3 {
            let a = next().await;
            assert!(a.result.unwrap_err().contains("no answer within 5 s"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one lookup in flight");
        release.send(()).unwrap();
        let a = rx.recv().await.unwrap();
        assert_eq!(a.result, Ok(vec!["2001:db8::5".parse().unwrap()]));
        drop(release);
        drop(r);
    }
}
