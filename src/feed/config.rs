//! `[[feed]]`: blocklists loaded into kernel sets of their own. The keys
//! as written ([`RawFeed`]), resolved and checked by [`FeedConfig::from_raw`].

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::duration::Duration;

/// One `[[feed]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    name: Spanned<String>,
    url: Option<Spanned<String>>,
    path: Option<PathBuf>,
    format: Option<FeedFormat>,
    key: Option<String>,
    set: Option<String>,
    refresh: Option<Duration>,
    max_size: Option<u64>,
    max_entries: Option<usize>,
}

/// Where a feed comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedSource {
    /// A URL (`http://` or `https://`).
    Url(String),
    /// A local file.
    Path(PathBuf),
}

/// How a feed is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    /// One address or prefix per line.
    List,
    /// APIBAN's `POST <base>/get` pages.
    Apiban,
}

/// One `[[feed]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedConfig {
    /// Its name (kernel sets `feed_<name>_v4` and `_v6`).
    pub name: String,
    /// Where from.
    pub source: FeedSource,
    /// How it is written.
    pub format: FeedFormat,
    /// APIBAN key (`Authorization: Bearer`).
    pub key: Option<String>,
    /// APIBAN set (`sip` by default).
    pub set: String,
    /// How often it is fetched again.
    pub refresh: std::time::Duration,
    /// Largest download, in bytes (per page for APIBAN).
    pub max_size: u64,
    /// Most entries kept.
    pub max_entries: usize,
}

/// A wrong `[[feed]]` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedConfigError {
    /// A name that cannot name kernel sets.
    #[error("feed name must be 1-24 lowercase letters, digits or '_' (it names kernel sets)")]
    Name,
    /// Two feeds with one name.
    #[error("a second feed named {0:?}")]
    SecondName(String),
    /// A URL of another scheme.
    #[error("url must start with http:// or https://")]
    Scheme,
    /// Both or neither of `url` and `path`.
    #[error("a [[feed]] needs exactly one of url and path")]
    UrlOrPath,
    /// `format = "apiban"` on a file.
    #[error("format \"apiban\" needs a url")]
    ApibanFile,
}

impl FeedConfig {
    /// Checks every `[[feed]]` (names are unique among them); an error
    /// carries the span of the offending value, or of the whole table.
    pub fn from_raw(raw: &[Spanned<RawFeed>]) -> Result<Vec<FeedConfig>, Spanned<FeedConfigError>> {
        let mut feeds: Vec<FeedConfig> = Vec::new();
        for rf in raw {
            let span = rf.span();
            let f = rf.get_ref();
            let name = f.name.get_ref();
            let at_name = |e| Spanned::new(f.name.span(), e);
            if name.is_empty()
                || name.len() > 24
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(at_name(FeedConfigError::Name));
            }
            if feeds.iter().any(|g| &g.name == name) {
                return Err(at_name(FeedConfigError::SecondName(name.clone())));
            }
            let source = match (&f.url, &f.path) {
                (Some(u), None) => {
                    let url = u.get_ref();
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(Spanned::new(u.span(), FeedConfigError::Scheme));
                    }
                    FeedSource::Url(url.clone())
                }
                (None, Some(p)) => FeedSource::Path(p.clone()),
                _ => return Err(Spanned::new(span, FeedConfigError::UrlOrPath)),
            };
            let format = f.format.unwrap_or(FeedFormat::List);
            if format == FeedFormat::Apiban && !matches!(source, FeedSource::Url(_)) {
                return Err(Spanned::new(span, FeedConfigError::ApibanFile));
            }
            feeds.push(FeedConfig {
                name: name.clone(),
                source,
                format,
                key: f.key.clone(),
                set: f.set.clone().unwrap_or_else(|| "sip".into()),
                refresh: std::time::Duration::from_secs(
                    f.refresh.unwrap_or(Duration(3600)).0.max(1),
                ),
                max_size: f.max_size.unwrap_or(16 * 1024 * 1024),
                max_entries: f.max_entries.unwrap_or(1_000_000),
            });
        }
        Ok(feeds)
    }
}
