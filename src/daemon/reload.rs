//! Reload: a new configuration applied to the running jails and sources.

use std::sync::Arc;

use super::enforcer::Work;
use super::runtime::{JobMeta, Runtime};
use crate::config::Config;
use crate::control::Response;
use crate::jail::JailConfig;
use crate::jail::{Jail, JailSpec};
use crate::source::scanner::ScannerList;

impl Runtime {
    /// Re-reads the configuration as one transaction: one that does not
    /// parse, is empty or would remove every running jail is refused (unless
    /// `force`) and the running one stays, bans and all.
    pub(super) fn reload(&mut self, force: bool) -> Response {
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
        let running: Vec<&str> = self.jails.jails().map(Jail::name).collect();
        if let Some(why) = cfg.reload_refusal(&running) {
            if !force {
                tracing::warn!("reload refused, the running configuration stays: {why}");
                return Response::error(format!(
                    "reload refused, the running configuration stays: {why} (reload --force to apply it anyway)"
                ));
            }
            tracing::warn!("reload forced: {why}");
        }
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
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
        self.read_ignore_files(true);
        self.resolver.sync(self.jails.names_in_use().keys());
        self.sources.scanners = Arc::new(ScannerList::new(&cfg.scanners));
        self.config = cfg;
        self.sync_actions(&enabled);
        let started = self.sources.sync(&enabled, &self.jails);
        if let Err(e) = started.and_then(|_| self.dispatch(lifted, JobMeta::default())) {
            return Response::error(e.to_string());
        }
        // After the removed jails' unbans, before any new decision: bans
        // of a jail whose port scope changed move to the new scope's sets.
        let scopes = super::enforcer::scopes(&self.jails, &enabled);
        if let Some(f) = &mut self.fast {
            f.set_scopes(&scopes);
        }
        if self.dec_tx.send(Work::Scopes(scopes)).is_err() {
            return Response::error("the enforcer thread stopped; see the error above".to_string());
        }
        tracing::info!("reloaded {}: {} jail(s)", self.config.origin, enabled.len());
        Response::ok(serde_json::json!({ "config": self.config.origin, "jails": enabled.len() }))
    }
}
