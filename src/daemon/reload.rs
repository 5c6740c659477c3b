//! Reload: a new configuration applied to the running jails and sources.

use std::sync::Arc;

use super::runtime::Runtime;
use crate::config::{Config, JailConfig};
use crate::control::Response;
use crate::jail::JailSpec;
use crate::source::scanner::ScannerList;

impl Runtime {
    /// Re-reads the configuration; a bad one is refused and the running one
    /// stays.
    pub(super) fn reload(&mut self) -> Response {
        let cfg = match Config::load_with(
            self.opts.config_path.as_deref(),
            self.opts.fail2ban_config.as_deref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reload refused, the running configuration stays: {e}");
                return Response::error(format!(
                    "reload refused, the running configuration stays: {e}"
                ));
            }
        };
        if cfg.firewall != self.config.firewall
            || cfg.daemon != self.config.daemon
            || cfg.cluster != self.config.cluster
            || cfg.http != self.config.http
            || cfg.feeds != self.config.feeds
        {
            tracing::warn!(
                "reload: [firewall], [daemon], [cluster], [http] and [[feed]] changes take effect at the next restart"
            );
        }
        let enabled: Vec<JailConfig> = cfg.enabled_jails().cloned().collect();
        let specs: Vec<JailSpec> = enabled.iter().map(JailSpec::from_config).collect();
        let lifted = self.jails.configure(&specs);
        self.sources.scanners = Arc::new(ScannerList::new(&cfg.scanners));
        self.config = cfg;
        let started = self.sources.sync(&enabled, &self.jails);
        if let Err(e) = started.and_then(|_| self.dispatch(lifted)) {
            return Response::error(e.to_string());
        }
        tracing::info!("reloaded {}: {} jail(s)", self.config.origin, enabled.len());
        Response::ok(serde_json::json!({ "config": self.config.origin, "jails": enabled.len() }))
    }
}
