//! Keeps a feed loaded: the last good copy at start, then a fetch every
//! `refresh`, each good one handed to the enforcer.

use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;

use crate::event::Time;

/// Keeps one blocklist feed loaded: its last good copy first, then a fetch
/// every `refresh`; a failed fetch changes nothing.
pub async fn run_feed(
    f: crate::feed::FeedConfig,
    state_dir: PathBuf,
    tx: std::sync::mpsc::Sender<(String, Vec<IpNet>)>,
    view: Arc<std::sync::Mutex<crate::control::FeedView>>,
) {
    let note = |entries: Option<usize>, error: Option<String>| {
        if let Ok(mut v) = view.lock() {
            if let Some(n) = entries {
                v.entries = n as u64;
            }
            if error.is_none() {
                v.last_ok = Some(Time::now().to_string());
            }
            v.error = error;
        }
    };
    let mut current = crate::feed::load_saved(&state_dir, &f.name, f.max_entries);
    if let Some(nets) = &current {
        if let Ok(mut v) = view.lock() {
            v.entries = nets.len() as u64;
        }
        tracing::info!("feed {}: last good copy, {} entries", f.name, nets.len());
        let _ = tx.send((f.name.clone(), nets.clone()));
    }
    loop {
        let cfg = f.clone();
        match tokio::task::spawn_blocking(move || crate::feed::fetch(&cfg)).await {
            Ok(Ok(p)) if current.as_ref() == Some(&p.nets) => note(Some(p.nets.len()), None),
            Ok(Ok(p)) => {
                note(Some(p.nets.len()), None);
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
                if let Err(e) = crate::feed::save(&state_dir, &f.name, &p.nets) {
                    tracing::warn!(
                        "feed {}: cannot keep a copy in the state directory ({e})",
                        f.name
                    );
                }
                if tx.send((f.name.clone(), p.nets.clone())).is_err() {
                    return;
                }
                current = Some(p.nets);
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "feed {}: {e}; keeping the last good copy ({} entries)",
                    f.name,
                    current.as_ref().map_or(0, Vec::len)
                );
                note(None, Some(e.to_string()));
            }
            Err(_) => return,
        }
        tokio::time::sleep(f.refresh).await;
    }
}
