//! A firing POSTed as JSON to its rule's webhook: ureq (already built for
//! the blocklist feeds) on a blocking thread, a timeout each, a few at
//! once, failures logged.
//!
//! Not on the action runner: fraud fires in the Event Socket task, while the
//! runner belongs to the run loop (its `sh -c` commands are no place for
//! caller-written numbers either); here they are JSON strings in a body.
//! Unsigned and without retries, unlike a jail's `notify` webhooks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Firing;
use crate::event::escape_text;

/// POSTs in flight at once; past it a firing's POST is skipped (and said).
pub const MAX_IN_FLIGHT: usize = 4;
/// Longest a POST may take, answer included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The JSON body of a firing.
pub fn body(f: &Firing, connection: &str) -> serde_json::Value {
    serde_json::json!({
        "event": "sipwarden.fraud",
        "connection": connection,
        "time": f.time.to_string(),
        "rule": f.rule,
        "level": f.level,
        "account": f.account,
        "metric": f.metric,
        "value": f.value,
        "threshold": f.threshold,
        "actions": f.actions,
        "calls": f.calls.iter().map(|(u, d)| serde_json::json!({"uuid": u, "number": d})).collect::<Vec<_>>(),
    })
}

/// Sends `f` to `url` in the background (needs a tokio runtime).
pub fn post(url: &str, f: &Firing, connection: &str) {
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(
            "fraud rule {}: webhook skipped, {MAX_IN_FLIGHT} POSTs still in flight",
            f.rule
        );
        return;
    }
    let url = url.to_string();
    // A webhook's path (and user part) often holds its token: logged
    // with its scheme and host only, as notify's webhooks are.
    let shown = crate::notify::config::shown(&url);
    let rule = f.rule.clone();
    let text = body(f, connection).to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        let r = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(text.as_str());
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(_) => tracing::info!("fraud rule {rule}: webhook {shown} accepted the firing"),
            Err(e) => tracing::warn!(
                "fraud rule {rule}: webhook {shown} failed: {}",
                escape_text(&e.to_string(), 200)
            ),
        }
    });
}
