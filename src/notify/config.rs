//! `notify = [...]` in a `[jail.NAME]`: where a ban this node decided is
//! told. Checked, and its secret files read, when the configuration is
//! loaded, so a missing key file is an error with its place, not a failed
//! report at the first ban.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::duration::Duration;

/// Most targets one jail may have.
pub const MAX_TARGETS: usize = 8;
/// Most retries of one webhook delivery.
pub const MAX_RETRIES: u32 = 10;
/// Longest timeout of one HTTP request.
pub const MAX_TIMEOUT: Duration = Duration(60);
/// Largest secret, key or CA file read.
const MAX_FILE: u64 = 64 * 1024;
/// AbuseIPDB's report endpoint (API v2).
pub const ABUSEIPDB_URL: &str = "https://api.abuseipdb.com/api/v2/report";
/// AbuseIPDB's largest category number.
const MAX_CATEGORY: u64 = 23;

/// A secret (a webhook's HMAC key, an API key): never shown, in logs,
/// `Debug` or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) Arc<str>);

impl Secret {
    /// The secret itself, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Certificates (PEM) a target's TLS server must chain to, instead of the
/// public roots: a private CA, or the self-signed certificate of a test.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPem(pub Arc<[u8]>);

impl fmt::Debug for CaPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes of PEM>", self.0.len())
    }
}

/// A webhook: each ban is POSTed to `url` as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// Where (http or https).
    pub url: String,
    /// Signs each body (`X-Sipwarden-Signature: sha256=<hex HMAC-SHA256>`).
    pub secret: Option<Secret>,
    /// Deliveries tried again after the first fails (connection error,
    /// 5xx, 429), with a doubling pause.
    pub retries: u32,
    /// Each request's whole time.
    pub timeout: Duration,
    /// `ca_file`: the roots to trust instead of the public ones.
    pub ca: Option<CaPem>,
}

/// AbuseIPDB reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbuseIpdb {
    /// The API key (read from `key_file`).
    pub key: Secret,
    /// AbuseIPDB category numbers (8 = Fraud VoIP, 18 = Brute-Force).
    pub categories: Vec<u8>,
    /// The report endpoint ([`ABUSEIPDB_URL`] unless overridden).
    pub url: String,
    /// Each request's whole time.
    pub timeout: Duration,
    /// `ca_file`: the roots to trust instead of the public ones.
    pub ca: Option<CaPem>,
}

/// One entry of `notify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyTarget {
    /// `{ type = "webhook", url = "...", ... }`.
    Webhook(Webhook),
    /// `{ type = "abuseipdb", key_file = "...", categories = [...] }`.
    AbuseIpdb(AbuseIpdb),
}

impl NotifyTarget {
    /// `webhook` or `abuseipdb`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            NotifyTarget::Webhook(_) => "webhook",
            NotifyTarget::AbuseIpdb(_) => "abuseipdb",
        }
    }
}

/// Why a `notify` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    /// Not an array of tables.
    #[error(
        "notify must be an array of tables, e.g. [{{ type = \"webhook\", url = \"https://...\" }}]"
    )]
    Shape,
    /// Too many targets.
    #[error("notify has more than {MAX_TARGETS} targets")]
    TooMany,
    /// `type` missing or unknown.
    #[error("notify entry {0}: `type` must be \"webhook\" or \"abuseipdb\"")]
    Type(usize),
    /// A key the target does not have.
    #[error("notify entry {entry}: no key `{key}` for a {kind} (its keys: {keys})")]
    Unknown {
        /// Which entry (from 1).
        entry: usize,
        /// The target's type.
        kind: &'static str,
        /// The key written.
        key: String,
        /// The keys it has.
        keys: &'static str,
    },
    /// A value of the wrong kind or out of range.
    #[error("notify entry {entry}: `{key}` {what}")]
    Value {
        /// Which entry (from 1).
        entry: usize,
        /// The key.
        key: &'static str,
        /// What it must be.
        what: String,
    },
    /// A file that cannot be read.
    #[error("notify entry {entry}: `{key}` {path}: {why}")]
    File {
        /// Which entry (from 1).
        entry: usize,
        /// The key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong (never the file's content).
        why: String,
    },
}

/// Reads `notify`.
pub fn parse_notify(v: &toml::Value) -> Result<Vec<NotifyTarget>, NotifyConfigError> {
    let list = v.as_array().ok_or(NotifyConfigError::Shape)?;
    if list.len() > MAX_TARGETS {
        return Err(NotifyConfigError::TooMany);
    }
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let entry = i + 1;
        let t = item.as_table().ok_or(NotifyConfigError::Shape)?;
        let target = match t.get("type").and_then(|v| v.as_str()) {
            Some("webhook") => NotifyTarget::Webhook(webhook(entry, t)?),
            Some("abuseipdb") => NotifyTarget::AbuseIpdb(abuseipdb(entry, t)?),
            _ => return Err(NotifyConfigError::Type(entry)),
        };
        out.push(target);
    }
    Ok(out)
}

/// The keys of one entry, read one by one.
struct Entry<'a> {
    n: usize,
    t: &'a toml::Table,
}

impl Entry<'_> {
    fn bad(&self, key: &'static str, what: impl Into<String>) -> NotifyConfigError {
        NotifyConfigError::Value {
            entry: self.n,
            key,
            what: what.into(),
        }
    }

    fn only(&self, kind: &'static str, keys: &'static str) -> Result<(), NotifyConfigError> {
        let known: Vec<&str> = keys.split(", ").collect();
        match self
            .t
            .keys()
            .find(|k| *k != "type" && !known.contains(&k.as_str()))
        {
            Some(k) => Err(NotifyConfigError::Unknown {
                entry: self.n,
                kind,
                key: k.chars().take(64).collect(),
                keys,
            }),
            None => Ok(()),
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<&str>, NotifyConfigError> {
        match self.t.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(key, "must be a string")),
        }
    }

    fn timeout(&self) -> Result<Duration, NotifyConfigError> {
        let d = match self.t.get("timeout") {
            None => return Ok(Duration(10)),
            Some(toml::Value::String(s)) => crate::duration::parse_duration(s)
                .map_err(|e| self.bad("timeout", e.to_string()))?,
            Some(toml::Value::Integer(n)) => Duration(u64::try_from(*n).unwrap_or(0)),
            Some(_) => return Err(self.bad("timeout", "must be a duration such as \"10s\"")),
        };
        if d.0 == 0 || d > MAX_TIMEOUT {
            return Err(self.bad("timeout", format!("must be 1s to {MAX_TIMEOUT}")));
        }
        Ok(d)
    }

    /// A URL of scheme http or https with a host; `key_in_it`: refuse
    /// plain http to anything but this host (a key would cross the network
    /// in the clear).
    fn url(
        &self,
        key: &'static str,
        url: &str,
        key_in_it: bool,
    ) -> Result<String, NotifyConfigError> {
        let uri: ureq::http::Uri = url.parse().map_err(|_| self.bad(key, "is not a URL"))?;
        let host = uri.host().unwrap_or("");
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(self.bad(key, "must start with https:// (or http://)")),
        };
        if host.is_empty() {
            return Err(self.bad(key, "has no host"));
        }
        if key_in_it && !https && !is_loopback(host) {
            return Err(self.bad(
                key,
                "must be https:// (the API key would cross the network in the clear); http:// only to this host",
            ));
        }
        Ok(url.to_string())
    }

    fn ca(&self) -> Result<Option<CaPem>, NotifyConfigError> {
        let Some(p) = self.string("ca_file")? else {
            return Ok(None);
        };
        let pem = read_file(self.n, "ca_file", Path::new(p))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter(|i| matches!(i, Ok(ureq::tls::PemItem::Certificate(_))))
            .count();
        if certs == 0 {
            return Err(NotifyConfigError::File {
                entry: self.n,
                key: "ca_file",
                path: p.into(),
                why: "holds no PEM certificate".into(),
            });
        }
        Ok(Some(CaPem(pem.into())))
    }

    fn secret_file(&self, key: &'static str) -> Result<Option<Secret>, NotifyConfigError> {
        let Some(p) = self.string(key)? else {
            return Ok(None);
        };
        let bytes = read_file(self.n, key, Path::new(p))?;
        let text = String::from_utf8(bytes).map_err(|_| NotifyConfigError::File {
            entry: self.n,
            key,
            path: p.into(),
            why: "is not UTF-8 text".into(),
        })?;
        let s = text.trim();
        if s.is_empty() {
            return Err(NotifyConfigError::File {
                entry: self.n,
                key,
                path: p.into(),
                why: "is empty".into(),
            });
        }
        Ok(Some(Secret(s.into())))
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Reads a small file whole; what goes wrong names the file, never its
/// content.
fn read_file(entry: usize, key: &'static str, path: &Path) -> Result<Vec<u8>, NotifyConfigError> {
    let err = |why: String| NotifyConfigError::File {
        entry,
        key,
        path: path.to_path_buf(),
        why,
    };
    if !path.is_absolute() {
        return Err(err("must be an absolute path".into()));
    }
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    if meta.len() > MAX_FILE {
        return Err(err(format!("is larger than {MAX_FILE} bytes")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

fn webhook(n: usize, t: &toml::Table) -> Result<Webhook, NotifyConfigError> {
    let e = Entry { n, t };
    e.only(
        "webhook",
        "url, secret, secret_file, retries, timeout, ca_file",
    )?;
    let url = e
        .string("url")?
        .ok_or_else(|| e.bad("url", "is required"))?;
    let url = e.url("url", url, false)?;
    let inline = e.string("secret")?.map(|s| Secret(s.into()));
    let file = e.secret_file("secret_file")?;
    if inline.is_some() && file.is_some() {
        return Err(e.bad("secret", "and `secret_file` are both set; keep one"));
    }
    if inline.as_ref().is_some_and(|s| s.0.is_empty()) {
        return Err(e.bad("secret", "is empty"));
    }
    let retries = match t.get("retries") {
        None => 3,
        Some(v) => v
            .as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= MAX_RETRIES)
            .ok_or_else(|| e.bad("retries", format!("must be 0 to {MAX_RETRIES}")))?,
    };
    Ok(Webhook {
        url,
        secret: inline.or(file),
        retries,
        timeout: e.timeout()?,
        ca: e.ca()?,
    })
}

fn abuseipdb(n: usize, t: &toml::Table) -> Result<AbuseIpdb, NotifyConfigError> {
    let e = Entry { n, t };
    e.only("abuseipdb", "key_file, categories, url, timeout, ca_file")?;
    let key = e
        .secret_file("key_file")?
        .ok_or_else(|| e.bad("key_file", "is required (the API key is read from a file)"))?;
    let cats = t
        .get("categories")
        .and_then(|v| v.as_array())
        .ok_or_else(|| e.bad("categories", "is required: a list such as [8, 18]"))?;
    let mut categories = Vec::new();
    for c in cats {
        let n = c
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| (1..=MAX_CATEGORY).contains(n))
            .ok_or_else(|| {
                e.bad(
                    "categories",
                    format!("must be AbuseIPDB category numbers, 1 to {MAX_CATEGORY}"),
                )
            })?;
        let n = n as u8;
        if !categories.contains(&n) {
            categories.push(n);
        }
    }
    if categories.is_empty() {
        return Err(e.bad("categories", "must name at least one category"));
    }
    let url = e.url("url", e.string("url")?.unwrap_or(ABUSEIPDB_URL), true)?;
    Ok(AbuseIpdb {
        key,
        categories,
        url,
        timeout: e.timeout()?,
        ca: e.ca()?,
    })
}

/// What a log line may show of a URL: its scheme, host and port (a
/// webhook's path often holds a token).
pub fn shown(url: &str) -> String {
    match url.parse::<ureq::http::Uri>() {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme_str().unwrap_or("?"),
            u.host().unwrap_or("?"),
            u.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "<url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<NotifyTarget>, NotifyConfigError> {
        let v: toml::Table = toml::from_str(&format!("notify = {text}")).unwrap();
        parse_notify(&v["notify"])
    }

    #[test]
    fn targets_and_refusals() {
        let dir = std::env::temp_dir().join(format!("sipwarden-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "k3y-from-file\n").unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let t = parse(&format!(
            "[{{ type = \"webhook\", url = \"https://hooks.example.org/T0K3N\", secret_file = \"{}\" }}, \
               {{ type = \"abuseipdb\", key_file = \"{}\", categories = [8, 18, 8] }}]",
            key.display(),
            key.display()
        ))
        .unwrap();
        let NotifyTarget::Webhook(w) = &t[0] else {
            panic!()
        };
        assert_eq!(w.secret.as_ref().unwrap().expose(), "k3y-from-file");
        assert_eq!((w.retries, w.timeout), (3, Duration(10)));
        let NotifyTarget::AbuseIpdb(a) = &t[1] else {
            panic!()
        };
        assert_eq!(a.categories, [8, 18]);
        assert_eq!(a.url, ABUSEIPDB_URL);
        // Secrets never show.
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("k3y"), "{dbg}");
        assert_eq!(shown(&w.url), "https://hooks.example.org/…");
        for (bad, says) in [
            ("{}", "notify must be an array of tables"),
            (
                "[{ url = \"https://x\" }]",
                "notify entry 1: `type` must be",
            ),
            (
                "[{ type = \"webhook\" }]",
                "notify entry 1: `url` is required",
            ),
            (
                "[{ type = \"webhook\", url = \"ftp://x/\" }]",
                "notify entry 1: `url` must start with https://",
            ),
            (
                "[{ type = \"webhook\", url = \"https://x/\", retries = 11 }]",
                "notify entry 1: `retries` must be 0 to 10",
            ),
            (
                "[{ type = \"webhook\", url = \"https://x/\", timeout = \"2m\" }]",
                "notify entry 1: `timeout` must be 1s to 1m",
            ),
            (
                "[{ type = \"webhook\", url = \"https://x/\", secert = \"a\" }]",
                "notify entry 1: no key `secert` for a webhook",
            ),
            (
                "[{ type = \"abuseipdb\", categories = [18] }]",
                "notify entry 1: `key_file` is required",
            ),
            (
                "[{ type = \"webhook\", url = \"https://x/\", secret_file = \"relative\" }]",
                "notify entry 1: `secret_file` relative: must be an absolute path",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(says), "{bad}: {e}");
        }
        let with_key = |rest: &str| {
            parse(&format!(
                "[{{ type = \"abuseipdb\", key_file = \"{}\", {rest} }}]",
                key.display()
            ))
        };
        for (rest, says) in [
            ("categories = []", "`categories` must name at least one"),
            (
                "categories = [24]",
                "`categories` must be AbuseIPDB category numbers",
            ),
            (
                "categories = [18], url = \"http://api.example.org/report\"",
                "`url` must be https://",
            ),
        ] {
            let e = with_key(rest).unwrap_err().to_string();
            assert!(e.contains(says), "{rest}: {e}");
            assert!(!e.contains("k3y"));
        }
        assert!(with_key("categories = [18], url = \"http://127.0.0.1:9/r\"").is_ok());
        let e = parse(&format!(
            "[{{ type = \"abuseipdb\", key_file = \"{}\", categories = [18] }}]",
            empty.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("is empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
