//! Blocklist feeds: known-bad addresses blocked before their first packet.
//!
//! Each `[[feed]]` is fetched (a file, or a URL) every `refresh`, parsed
//! (`list`: an address or prefix per line, `#` and `;` comments; `apiban`:
//! APIBAN's paged JSON API), and handed to the enforcer, which replaces the
//! feed's own kernel sets in one transaction. A fetch that fails, or
//! yields nothing, changes nothing: the last good copy stays in the kernel
//! and in `state_dir/feeds/NAME.txt`, from which it is loaded again at the
//! next start.

pub mod config;
pub mod protect;
pub mod runner;

pub use config::{FeedConfig, FeedConfigError, FeedFormat, FeedSource};

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// What went wrong with a fetch.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Reading the file.
    #[error("{path}: {source}")]
    File {
        /// Which.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange.
    #[error("{url}: {message}")]
    Http {
        /// Which.
        url: String,
        /// Why.
        message: String,
    },
    /// Larger than `max_size`.
    #[error("{0}: larger than max_size ({1} bytes); raise max_size or check the source")]
    TooLarge(String, u64),
    /// An APIBAN refusal.
    #[error("APIBAN: {0}")]
    Apiban(String),
    /// Nothing usable in it.
    #[error("{0}: no address in it; keeping the last good copy")]
    Empty(String),
    /// Its entries, merged, cover every possible source of a family.
    #[error(
        "{0}: its entries together cover every {1} address (e.g. 0.0.0.0/1 and 128.0.0.0/1); a blocklist that drops everything is a mistake or an attack, refused; keeping the last good copy"
    )]
    Everything(String, &'static str),
}

/// A parsed feed: merged, sorted networks, and the lines that were not
/// addresses (counted, the first kept for the log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Networks, overlapping ones merged.
    pub nets: Vec<IpNet>,
    /// Lines that were neither an address, a prefix nor a comment.
    pub bad_lines: usize,
    /// The first such line: (line number, text cut to 80 characters).
    pub first_bad: Option<(usize, String)>,
}

/// Parses the `list` format. Host bits of a prefix are cleared
/// (`203.0.113.7/24` is `203.0.113.0/24`); overlapping entries are merged.
pub fn parse_list(text: &str, max_entries: usize) -> Parsed {
    let mut nets = Vec::new();
    let mut p = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let entry = line
            .split(['#', ';'])
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if entry.is_empty() {
            continue;
        }
        match parse_net(entry) {
            Some(n) if nets.len() < max_entries => nets.push(n),
            Some(_) => {}
            None => {
                p.bad_lines += 1;
                if p.first_bad.is_none() {
                    p.first_bad = Some((i + 1, line.chars().take(80).collect()));
                }
            }
        }
    }
    p.nets = IpNet::aggregate(&nets);
    p
}

/// One entry as a network to block: networks that hold no possible packet
/// source are not taken. A `/0` is taken, so that the whole feed is refused
/// for it ([`protect::covers_everything`]), like entries that add up to it.
fn parse_net(s: &str) -> Option<IpNet> {
    crate::net::parse_net(s)
        .ok()
        .filter(|n| crate::net::net_never_a_source_why(n).is_none())
}

/// One APIBAN answer: the next id, and the addresses of this page.
#[derive(Debug, PartialEq, Eq)]
pub enum ApibanPage {
    /// More may follow from `next`.
    Page {
        /// The id to ask for next.
        next: String,
        /// Addresses.
        addrs: Vec<String>,
    },
    /// `"ID": "none"`: nothing newer.
    Done(Vec<String>),
}

/// Reads one APIBAN answer body.
pub fn parse_apiban(body: &str) -> Result<ApibanPage, FeedError> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| FeedError::Apiban(format!("answer is not JSON ({e})")))?;
    if let Some(s) = v["ipaddress"].as_str() {
        // `{"ipaddress": "rate limit exceeded"}` and the like.
        return Err(FeedError::Apiban(s.chars().take(120).collect()));
    }
    let addrs: Vec<String> = v["ipaddress"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .filter(|s| parse_net(s).is_some())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    match v["ID"].as_str() {
        Some("none") => Ok(ApibanPage::Done(addrs)),
        Some("unauthorized") => Err(FeedError::Apiban(
            "unauthorized: check the feed's key".into(),
        )),
        Some(id) if !id.is_empty() && id.len() < 64 => Ok(ApibanPage::Page {
            next: id.to_string(),
            addrs,
        }),
        _ => Err(FeedError::Apiban("answer without an ID".into())),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        // APIBAN answers 400 with a body that still means something.
        .http_status_as_error(false)
        .build()
        .into()
}

fn read_body(
    url: &str,
    resp: ureq::http::Response<ureq::Body>,
    max: u64,
) -> Result<(u16, String), FeedError> {
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let text = body
        .with_config()
        .limit(max)
        .read_to_string()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => FeedError::TooLarge(url.to_string(), max),
            e => FeedError::Http {
                url: url.to_string(),
                message: e.to_string(),
            },
        })?;
    Ok((status, text))
}

/// Fetches and parses a feed (blocking: run it off the async threads).
pub fn fetch(cfg: &FeedConfig) -> Result<Parsed, FeedError> {
    let parsed = match (&cfg.source, cfg.format) {
        (FeedSource::Path(p), FeedFormat::List) => {
            let meta = std::fs::metadata(p).map_err(|source| FeedError::File {
                path: p.display().to_string(),
                source,
            })?;
            if meta.len() > cfg.max_size {
                return Err(FeedError::TooLarge(p.display().to_string(), cfg.max_size));
            }
            let text = std::fs::read_to_string(p).map_err(|source| FeedError::File {
                path: p.display().to_string(),
                source,
            })?;
            parse_list(&text, cfg.max_entries)
        }
        (FeedSource::Url(u), FeedFormat::List) => {
            let resp = agent().get(u).call().map_err(|e| FeedError::Http {
                url: u.clone(),
                message: e.to_string(),
            })?;
            let (status, text) = read_body(u, resp, cfg.max_size)?;
            if status != 200 {
                return Err(FeedError::Http {
                    url: u.clone(),
                    message: format!("HTTP {status}"),
                });
            }
            parse_list(&text, cfg.max_entries)
        }
        (FeedSource::Url(u), FeedFormat::Apiban) => apiban(cfg, u)?,
        (FeedSource::Path(p), FeedFormat::Apiban) => {
            return Err(FeedError::File {
                path: p.display().to_string(),
                source: std::io::Error::other("the apiban format needs a url"),
            });
        }
    };
    let name = || match &cfg.source {
        FeedSource::Url(u) => u.clone(),
        FeedSource::Path(p) => p.display().to_string(),
    };
    if parsed.nets.is_empty() {
        return Err(FeedError::Empty(name()));
    }
    if let Some(family) = protect::covers_everything(&parsed.nets) {
        return Err(FeedError::Everything(name(), family));
    }
    Ok(parsed)
}

/// Pages through APIBAN from the start until `"ID": "none"`.
fn apiban(cfg: &FeedConfig, base: &str) -> Result<Parsed, FeedError> {
    let url = format!("{}/get", base.trim_end_matches('/'));
    let agent = agent();
    let mut id = "100".to_string();
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let body = serde_json::json!({ "set": cfg.set, "id": id }).to_string();
        let mut req = agent.post(&url).header("Content-Type", "application/json");
        if let Some(k) = &cfg.key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let resp = req.send(body.as_bytes()).map_err(|e| FeedError::Http {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let (status, text) = read_body(&url, resp, cfg.max_size)?;
        let page = parse_apiban(&text).map_err(|e| match status {
            200 | 400 => e,
            s => FeedError::Http {
                url: url.clone(),
                message: format!("HTTP {s}: {e}"),
            },
        })?;
        match page {
            ApibanPage::Done(addrs) => {
                all.extend(addrs);
                let text = all.join("\n");
                return Ok(parse_list(&text, cfg.max_entries));
            }
            ApibanPage::Page { next, addrs } => {
                if next == id {
                    return Err(FeedError::Apiban(format!("the ID did not move ({id})")));
                }
                all.extend(addrs);
                id = next;
            }
        }
    }
    Err(FeedError::Apiban("more than 10,000 pages".into()))
}

/// Where the last good copy of a feed is kept.
pub fn cache_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("feeds").join(format!("{name}.txt"))
}

/// Saves the last good copy (one network per line).
pub fn save(state_dir: &Path, name: &str, nets: &[IpNet]) -> std::io::Result<()> {
    let p = cache_path(state_dir, name);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("tmp");
    let text: String = nets.iter().map(|n| format!("{n}\n")).collect();
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, p)
}

/// The last good copy, if there is one.
pub fn load_saved(state_dir: &Path, name: &str, max_entries: usize) -> Option<Vec<IpNet>> {
    let text = std::fs::read_to_string(cache_path(state_dir, name)).ok()?;
    let p = parse_list(&text, max_entries);
    // A copy saved before the refusal existed is refused the same way.
    (!p.nets.is_empty() && protect::covers_everything(&p.nets).is_none()).then_some(p.nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_format() {
        let p = parse_list(
            "# a comment\n203.0.113.7\n198.51.100.0/24 ; spamhaus style\n198.51.100.9\n\n2001:db8::/32\nnot-an-address\n10.0.0.5/8\n::ffff:192.0.2.1\n",
            100,
        );
        let s: Vec<String> = p.nets.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            [
                "10.0.0.0/8",
                "192.0.2.1/32",
                "198.51.100.0/24",
                "203.0.113.7/32",
                "2001:db8::/32"
            ]
        );
        assert_eq!(p.bad_lines, 1);
        assert_eq!(p.first_bad, Some((7, "not-an-address".into())));
        assert_eq!(parse_list("1.1.1.1\n2.2.2.2\n3.3.3.3\n", 2).nets.len(), 2);
    }

    #[test]
    fn apiban_answers() {
        assert_eq!(
            parse_apiban(r#"{"ID":"1234","ipaddress":["203.0.113.7","bad","198.51.100.1"]}"#)
                .unwrap(),
            ApibanPage::Page {
                next: "1234".into(),
                addrs: vec!["203.0.113.7".into(), "198.51.100.1".into()]
            }
        );
        assert_eq!(
            parse_apiban(r#"{"ID":"none","ipaddress":["no new bans"]}"#).unwrap(),
            ApibanPage::Done(vec![])
        );
        assert!(
            parse_apiban(r#"{"ID":"unauthorized"}"#)
                .unwrap_err()
                .to_string()
                .contains("key")
        );
        assert!(
            parse_apiban(r#"{"ipaddress":"rate limit exceeded"}"#)
                .unwrap_err()
                .to_string()
                .contains("rate limit")
        );
        assert!(parse_apiban("<html>").is_err());
    }

    #[test]
    fn last_good_copy_round_trips() {
        let dir = std::env::temp_dir().join(format!("sw-feed-{}", std::process::id()));
        let nets: Vec<IpNet> = vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ];
        save(&dir, "x", &nets).unwrap();
        assert_eq!(load_saved(&dir, "x", 10), Some(nets));
        assert_eq!(load_saved(&dir, "nope", 10), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
