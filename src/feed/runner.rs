//! Keeps a feed loaded: the last good copy at start, then a fetch every
//! `refresh`, each good one handed to the enforcer with the protected
//! networks cut out of it ([`super::protect`]); a change of those networks
//! (a reload, a new fleet peer, a peer's name resolved again) cuts the
//! current copy again.

use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::watch;

use super::protect;
use crate::event::Time;
use crate::net::NetSet;

/// What woke the runner.
enum Wake {
    Fetch,
    Protected,
}

/// Keeps one blocklist feed loaded: its last good copy first, then a fetch
/// every `refresh`; a failed fetch changes nothing. What goes to the
/// enforcer never holds an address of `protected`.
pub async fn run_feed(
    f: crate::feed::FeedConfig,
    state_dir: PathBuf,
    tx: std::sync::mpsc::Sender<(String, Vec<IpNet>)>,
    view: Arc<std::sync::Mutex<crate::control::FeedView>>,
    mut protected: watch::Receiver<Arc<NetSet>>,
) {
    let note_error = |error: Option<String>| {
        if let Ok(mut v) = view.lock() {
            if error.is_none() {
                v.last_ok = Some(Time::now().to_string());
            }
            v.error = error;
        }
    };
    // The feed as fetched (merged), and what was last handed over.
    let mut raw = crate::feed::load_saved(&state_dir, &f.name, f.max_entries);
    if let Some(nets) = &raw {
        tracing::info!("feed {}: last good copy, {} entries", f.name, nets.len());
    }
    let mut loaded: Option<Vec<IpNet>> = None;
    let mut watching = true;
    let mut next_fetch = tokio::time::Instant::now();
    let mut wake = Wake::Protected;
    loop {
        if let Wake::Fetch = wake {
            let cfg = f.clone();
            match tokio::task::spawn_blocking(move || crate::feed::fetch(&cfg)).await {
                Ok(Ok(p)) => {
                    crate::supervise::inject_fault("feed");
                    note_error(None);
                    if raw.as_ref() != Some(&p.nets) {
                        if p.bad_lines > 0 {
                            if let Some((line, text)) = &p.first_bad {
                                tracing::warn!(
                                    "feed {}: {} line(s) skipped, not an address or prefix (first: line {line}: {:?})",
                                    f.name,
                                    p.bad_lines,
                                    text
                                );
                            }
                        }
                        // The copy kept is the feed as fetched: what is cut
                        // from it depends on the configuration of the day.
                        if let Err(e) = crate::feed::save(&state_dir, &f.name, &p.nets) {
                            tracing::warn!(
                                "feed {}: cannot keep a copy in the state directory ({e})",
                                f.name
                            );
                        }
                        raw = Some(p.nets);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        "feed {}: {e}; keeping the last good copy ({} entries)",
                        f.name,
                        loaded.as_ref().map_or(0, Vec::len)
                    );
                    note_error(Some(e.to_string()));
                }
                Err(_) => return,
            }
            next_fetch = tokio::time::Instant::now() + f.refresh;
        }
        if let Some(nets) = &raw {
            let prot = protected.borrow_and_update().clone();
            let cut = protect::subtract(nets, &prot);
            if loaded.as_ref() != Some(&cut.nets) {
                if cut.entries_cut > 0 {
                    tracing::warn!("feed {}: {}", f.name, protect::describe(&cut));
                }
                if let Ok(mut v) = view.lock() {
                    v.entries = cut.nets.len() as u64;
                    v.cut = cut.entries_cut as u64;
                }
                if tx.send((f.name.clone(), cut.nets.clone())).is_err() {
                    return;
                }
                loaded = Some(cut.nets);
            }
        }
        wake = tokio::select! {
            _ = tokio::time::sleep_until(next_fetch) => Wake::Fetch,
            changed = protected.changed(), if watching => {
                // The daemon is stopping when the sender is gone; fetches
                // go on with the last protected set until then.
                watching = changed.is_ok();
                Wake::Protected
            }
        };
    }
}
