//! Bans asked by toll-fraud rules (see `source/esl/calls.rs`): sent as a
//! control `ban`, the path a manual ban takes, so each is checked against
//! `ignoreip`, put in the kernel, stored, shown, shared with the fleet and
//! lifted on time like any other; the answer is logged.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::control::Request;
use crate::control::server::ControlMsg;
use crate::source::esl::calls::{BanAsk, BanPath};

/// The ban path of the Event Socket clients with fraud rules.
pub(super) fn ban_path(control: Option<mpsc::Sender<ControlMsg>>) -> BanPath {
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
