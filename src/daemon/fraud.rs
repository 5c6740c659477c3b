//! Toll-fraud rules on a jail's Event Socket: its watch, and the bans its
//! rules ask for (see `source/esl/calls.rs`), sent as a control request on
//! the path a manual ban takes, so each is checked against
//! `ignoreip`, put in the kernel, stored, shown, shared with the fleet and
//! lifted on time like any other; the answer is logged.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::control::Request;
use crate::control::server::ControlMsg;
use crate::jail::JailConfig;
use crate::source::esl::EslPeer;
use crate::source::esl::calls::{BanAsk, BanPath, CallWatch};

/// The fraud watch of `peer`, when rules of `jc` watch it.
pub(super) fn call_watch(
    jc: &JailConfig,
    peer: &EslPeer,
    control: Option<&mpsc::Sender<ControlMsg>>,
    dry_run: bool,
) -> Option<Arc<CallWatch>> {
    let rules: Vec<Arc<crate::fraud::FraudRule>> = jc
        .fraud
        .iter()
        .filter(|r| r.applies_to(&jc.name, &peer.label()))
        .map(|r| if dry_run { Arc::new(dry(r)) } else { r.clone() })
        .collect();
    if dry_run && !rules.is_empty() {
        tracing::warn!(
            "[{}] --dry-run: fraud rules on {} log what fires and ban (logged only); no call is hung up and no webhook posted",
            jc.name,
            peer.label()
        );
    }
    (!rules.is_empty()).then(|| {
        Arc::new(CallWatch {
            watch: std::sync::Mutex::new(crate::fraud::Watch::new(&rules)),
            rules,
            jail: jc.name.clone(),
            ban: ban_path(control.cloned()),
            kills: Default::default(),
        })
    })
}

/// Rule `r` for a dry run: nothing that reaches outside (hanging up live
/// calls, posting webhooks); its bans go to the dry-run enforcer, which only
/// logs them.
fn dry(r: &crate::fraud::FraudRule) -> crate::fraud::FraudRule {
    let mut r = r.clone();
    for a in [&mut r.warning, &mut r.critical] {
        a.hangup = false;
        a.webhook = false;
    }
    r
}

/// The ban path of the Event Socket clients with fraud rules.
fn ban_path(control: Option<mpsc::Sender<ControlMsg>>) -> BanPath {
    Arc::new(move |ask: BanAsk| {
        let Some(control) = control.clone() else {
            tracing::error!(
                "[{}] fraud: cannot ban {}: no control path",
                ask.jail,
                ask.addr
            );
            return;
        };
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let req = Request::FraudBan {
                jail: ask.jail.clone(),
                addr: ask.addr,
                duration: ask.bantime.clone(),
            };
            if control.send((req, tx)).await.is_err() {
                return;
            }
            match rx.await {
                Ok(r) if r.ok => {
                    tracing::warn!("[{}] fraud: banned {} ({})", ask.jail, ask.addr, ask.why)
                }
                Ok(r) => tracing::error!(
                    "[{}] fraud: ban of {} not done: {} ({})",
                    ask.jail,
                    ask.addr,
                    r.error.unwrap_or_default(),
                    ask.why
                ),
                Err(_) => {}
            }
        });
    })
}
