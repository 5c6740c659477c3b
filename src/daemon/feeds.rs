//! Starting the blocklist feeds, and telling them what the jails protect
//! (feeds never drop what the jails never ban).

use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::runtime::Runtime;
use crate::jail::JailSet;
use crate::net::NetSet;

/// Starts one supervised task per `[[feed]]`; each sends its list, replaced
/// whole, to the enforcer thread over `tx`.
pub(super) fn start(
    rt: &mut Runtime,
    tx: std::sync::mpsc::Sender<(String, Vec<IpNet>)>,
    protect: &watch::Receiver<Arc<NetSet>>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for f in rt.config.feeds.clone() {
        let view = Arc::new(std::sync::Mutex::new(crate::control::FeedView {
            name: f.name.clone(),
            ..Default::default()
        }));
        rt.feeds.push(view.clone());
        // Supervised: a panic (a feed's bytes no test foresaw) fetches
        // again after a pause; the last good copy stays in force meanwhile.
        let name = format!("feed {}", f.name);
        let health = rt.tasks.register(&name);
        let (state_dir, tx, protect) = (
            rt.config.daemon.state_dir.clone(),
            tx.clone(),
            protect.clone(),
        );
        tasks.push(crate::supervise::spawn_task(name, health, move || {
            crate::feed::runner::run_feed(
                f.clone(),
                state_dir.clone(),
                tx.clone(),
                view.clone(),
                protect.clone(),
            )
        }));
    }
    tasks
}

/// After a turn of the run loop: when what the jails protect changed, the
/// feeds hear of it.
pub(super) fn tell(jails: &JailSet, seen: &mut u64, tx: &watch::Sender<Arc<NetSet>>) {
    if jails.protection_generation() == *seen {
        return;
    }
    *seen = jails.protection_generation();
    let set = crate::feed::protect::protected_set(jails.protected());
    tx.send_if_modified(|cur| {
        let changed = **cur != *set;
        *cur = set;
        changed
    });
}
