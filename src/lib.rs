//! sipwarden: a SIP-aware intrusion-prevention daemon.
//!
//! The flow, and the modules in its order:
//!
//! ```text
//! source ──► filter ──► event ──► jail ──► enforce
//! (files)   (one line,  (Failure  (count,   (nftables,
//!            one event)  Event)    decide)   or log only)
//! ```
//!
//! [`config`] reads the TOML configuration; [`daemon`] wires the stages
//! together with tokio; [`store`] keeps ban history in SQLite; [`control`]
//! is the socket the CLI talks to; [`cli`] holds the verbs of the
//! `sipwarden` command, the only code that prints; [`net`] is the one place
//! an address or prefix is parsed, made canonical and judged (never a
//! packet's source).

pub mod action;
pub mod claim;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decision;
pub mod duration;
pub mod enforce;
pub mod event;
pub mod feed;
pub mod filter;
pub mod fraud;
pub mod http;
pub mod jail;
pub mod net;
pub mod notify;
pub mod source;
pub mod store;
pub mod supervise;
pub mod systemd;
#[cfg(test)]
pub(crate) mod test_support;

/// Bodies of the fuzz targets in `fuzz/`, kept in the library so `cargo
/// test` replays their corpora and past crashes without a fuzzer. Each must
/// never panic, whatever the bytes.
pub mod fuzzing {
    use crate::event::Time;
    use crate::filter::{BUILTIN_FILTERS, FilterContext, FilterOptions, builtin};

    pub use crate::source::ami::fuzz_ami;
    pub use crate::source::esl::fuzz_frames;
    pub use crate::source::hep::fuzz_hep;

    /// Every built-in filter, both option sets, on one line.
    pub fn fuzz_filters(data: &[u8]) {
        let cx = FilterContext {
            tz: jiff::tz::TimeZone::UTC,
            now: Time(1_795_621_254_000),
        };
        for name in BUILTIN_FILTERS {
            for opts in [
                FilterOptions::default(),
                FilterOptions {
                    count_challenges: true,
                    count_abandoned: true,
                    without_users: true,
                },
            ] {
                if let Some(f) = builtin(name, opts) {
                    let _ = f.match_line(data, &cx);
                }
            }
        }
    }

    /// The TOML configuration loader.
    pub fn fuzz_config(data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = crate::config::Config::parse(text, "fuzz.toml");
        }
    }

    /// The fail2ban INI reader and option interpolation.
    pub fn fuzz_ini(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        if let Ok(entries) =
            crate::filter::f2b::ini::parse(&text, std::path::Path::new("fuzz.conf"))
        {
            let mut ini = crate::filter::f2b::ini::Ini::default();
            for (sec, key, value, _) in entries {
                ini.set(&sec, &key, &value);
            }
            let opts = std::collections::BTreeMap::new();
            for key in ["failregex", "prefregex", "datepattern"] {
                let _ = ini.get("Definition", key, &opts);
            }
            // Engines compile on first use: run the filter over lines (its
            // own text, so patterns and input share material), including
            // the multi-line and connection-id paths.
            if let Ok(f) = crate::filter::f2b::F2bFilter::from_ini(&ini, "fuzz", &opts, "fuzz.conf")
            {
                let tz = jiff::tz::TimeZone::UTC;
                let now = crate::event::Time(1_124_013_600_000);
                for line in text.lines().take(8) {
                    let _ = f.process(line, &tz, now);
                    let _ = f.process_all(line, &tz, now, true);
                }
            }
        }
    }

    /// The control protocol's request parsing.
    pub fn fuzz_control(data: &[u8]) {
        if let Ok(req) = serde_json::from_slice::<crate::control::Request>(data) {
            // What parses must serialise back and parse to the same request.
            if let Ok(text) = serde_json::to_string(&req) {
                assert_eq!(
                    serde_json::from_str::<crate::control::Request>(&text).ok(),
                    Some(req)
                );
            }
        }
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = crate::net::parse_ban_target(s);
        }
    }

    /// The wire sensor on one captured packet: IP and transport headers,
    /// the SIP message, and the pairing (the packet seen from both sides).
    pub fn fuzz_wire(data: &[u8]) {
        use crate::source::sip::{Tracker, parse_sip};
        use crate::source::wire::transport;
        // Built once: an automaton per input would be most of the time.
        static SCANNERS: std::sync::OnceLock<crate::source::scanner::ScannerList> =
            std::sync::OnceLock::new();
        let scanners = SCANNERS.get_or_init(|| {
            crate::source::scanner::ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS)
        });
        let mut t = Tracker::default();
        let payload = match transport(data, &[5060]) {
            Some((_, _, _, _, p)) => p,
            None => data,
        };
        if let Some(m) = parse_sip(payload) {
            let c = std::net::IpAddr::from([192, 0, 2, 1]);
            let _ = t.observe(c, true, &m, scanners);
            let _ = t.observe(c, false, &m, scanners);
        }
    }

    /// Feed parsing (the list format and APIBAN answers).
    pub fn fuzz_feeds(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let p = crate::feed::parse_list(&text, 10_000);
        // Merged networks never overlap.
        for w in p.nets.windows(2) {
            assert!(
                !w[0].contains(&w[1].network()),
                "{} and {} overlap",
                w[0],
                w[1]
            );
        }
        let _ = crate::feed::parse_apiban(&text);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A target: its corpus folder name and its body.
        type Target = (&'static str, fn(&[u8]));

        /// Replays every committed fuzz corpus (and past crashes) through the
        /// target bodies; CI runs this instead of fuzzing.
        #[test]
        fn fuzz_corpora_replay_clean() {
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus");
            let targets: [Target; 9] = [
                ("esl_frames", fuzz_frames),
                ("ami_frames", fuzz_ami),
                ("filters", fuzz_filters),
                ("config", fuzz_config),
                ("ini", fuzz_ini),
                ("control", fuzz_control),
                ("wire", fuzz_wire),
                ("feeds", fuzz_feeds),
                ("hep", fuzz_hep),
            ];
            let mut n = 0;
            for (name, f) in targets {
                for dir in [
                    format!("{root}/{name}"),
                    format!("{}/fuzz/artifacts/{name}", env!("CARGO_MANIFEST_DIR")),
                ] {
                    if let Ok(rd) = std::fs::read_dir(&dir) {
                        for e in rd.flatten() {
                            if let Ok(d) = std::fs::read(e.path()) {
                                f(&d);
                                n += 1;
                            }
                        }
                    }
                }
            }
            assert!(n > 0, "no fuzz corpus found under {root}");
        }
    }
}
