//! How a configuration error is told: `file:line:col`, the key and its
//! table, the line itself and a caret under the place. The reasons are the
//! components' own typed errors; this file only says where.

use std::fmt;
use std::ops::Range;

use toml::Spanned;

use super::fail2ban::Fail2banError;

/// A configuration error, with the place it points at.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration: {source}; check the path and its permissions")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is wrong at some place.
    #[error(transparent)]
    Invalid(Box<Invalid>),
    /// A fail2ban configuration directory that cannot be run as jails.
    #[error(transparent)]
    Fail2ban(#[from] Fail2banError),
    /// `run --config F --fail2ban-config D` with one jail name in both.
    #[error("jail {name:?} is defined both in {toml} and in {fail2ban}")]
    DefinedTwice {
        /// The jail.
        name: String,
        /// The TOML file.
        toml: String,
        /// The fail2ban directory.
        fail2ban: String,
    },
}

/// A wrong value, key or syntax: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}", .place.tell(&.reason.to_string()))]
pub struct Invalid {
    /// Where.
    pub place: Place,
    /// What is wrong and what is expected.
    pub reason: Reason,
}

/// Why a place in the file is wrong: the owning component's error.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("{}", .0.message().trim_end())]
    Toml(toml::de::Error),
    /// `[defaults]` or `[jail.NAME]`.
    #[error(transparent)]
    Jail(#[from] crate::jail::config::JailConfigError),
    /// `[firewall]`.
    #[error(transparent)]
    Firewall(#[from] crate::enforce::FirewallConfigError),
    /// `[http]`.
    #[error(transparent)]
    Http(#[from] crate::http::HttpConfigError),
    /// `[cluster]`.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterConfigError),
    /// `[[feed]]`.
    #[error(transparent)]
    Feed(#[from] crate::feed::FeedConfigError),
    /// `[[fraud]]`.
    #[error(transparent)]
    Fraud(#[from] crate::fraud::config::FraudConfigError),
}

/// A place in a configuration file: where, which key in which table, and
/// the line with a caret under the place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The file (or `<embedded default>`).
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The key written on that line, if any.
    pub key: Option<String>,
    /// The table the line is in, as written (`[jail.fs]`), unless the line
    /// is the table's own header.
    pub table: Option<String>,
    /// The offending line with a caret under the place.
    pub snippet: String,
}

impl Place {
    /// The place of byte range `span` of `text`, read from `origin`.
    pub fn find(text: &str, origin: &str, span: Range<usize>) -> Place {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |p| start + p);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let src_line = &text[line_start..line_end];
        let key = src_line
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.starts_with('['))
            .map(String::from);
        let table = text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .filter(|_| !src_line.trim().starts_with('['))
            .map(String::from);
        let width = span
            .end
            .saturating_sub(span.start)
            .clamp(1, src_line.len().saturating_sub(column - 1).max(1));
        let snippet = format!(
            "  | {src_line}\n  | {}{}",
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        Place {
            path: origin.to_string(),
            line,
            column,
            key,
            table,
            snippet,
        }
    }

    /// `file:line:col: message`, with the key and table named unless the
    /// message already names the key, then the line and its caret.
    pub fn tell(&self, message: &str) -> String {
        let mut m = String::new();
        if let Some(key) = &self.key {
            if !message.contains(&format!("`{key}`")) {
                m = format!("key `{key}`: ");
            }
        }
        m.push_str(message);
        if let Some(table) = &self.table {
            m = format!("{m} (in {table})");
        }
        format!(
            "{}:{}:{}: {m}\n{}",
            self.path, self.line, self.column, self.snippet
        )
    }
}

/// Configuration text and where it came from: turns the components'
/// spanned errors and warnings into told ones.
#[derive(Clone, Copy)]
pub(super) struct Text<'a> {
    /// The whole text.
    pub text: &'a str,
    /// Its name in messages.
    pub origin: &'a str,
}

impl Text<'_> {
    /// An error at the span a component reported.
    pub fn invalid<R: Into<Reason>>(&self, e: Spanned<R>) -> ConfigError {
        let place = Place::find(self.text, self.origin, e.span());
        ConfigError::Invalid(Box::new(Invalid {
            place,
            reason: e.into_inner().into(),
        }))
    }

    /// A warning, told like an error.
    pub fn warning(&self, w: &Spanned<impl fmt::Display>) -> String {
        Place::find(self.text, self.origin, w.span()).tell(&w.get_ref().to_string())
    }
}
