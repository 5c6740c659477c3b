//! Reading a fail2ban filter file into an [`F2bFilter`]: the filter
//! spec's options (`sshd[mode=aggressive]`), `[Init]` and option tags
//! substituted, every regex translated and compiled, the date detector and
//! the literal prefilter built.
//!
//! Apart from running lines: this runs once per (re)load and turns the
//! user's files into errors with file and key, the rest never fails.

use std::collections::BTreeMap;
use std::path::Path;

use super::dates::DateDetector;
use super::ini::Ini;
use super::prefilter;
use super::regex::{Pattern, expand_tags};
use super::{F2bError, F2bFilter};

/// Splits `name[opt=v, opt2="x y"]` into the name and its options.
pub fn parse_filter_spec(spec: &str) -> (String, BTreeMap<String, String>) {
    let spec = spec.trim();
    let Some(open) = spec.find('[') else {
        return (spec.to_string(), BTreeMap::new());
    };
    let name = spec[..open].trim().to_string();
    let body = spec[open + 1..]
        .trim_end()
        .strip_suffix(']')
        .unwrap_or(&spec[open + 1..]);
    let mut opts = BTreeMap::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut parts = Vec::new();
    for c in body.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, ',') => parts.push(std::mem::take(&mut cur)),
            (None, c) => cur.push(c),
        }
    }
    parts.push(cur);
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            opts.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    (name, opts)
}

/// Replaces `<option>` tags with option values (innermost first), leaving
/// fail2ban's own tags (`<HOST>`, `<F-USER>`...) for the regex stage.
fn substitute(ini: &Ini, opts: &BTreeMap<String, String>, v: &str) -> String {
    let lookup = |name: &str| -> Option<String> {
        if let Some((sec, key)) = name.split_once('/') {
            return ini
                .raw(sec, key)
                .map(|raw| ini.interpolate(sec, raw, &BTreeMap::new(), 0));
        }
        if let Some(v) = opts.get(name) {
            return Some(ini.interpolate("Definition", v, opts, 0));
        }
        ini.raw("Definition", name)
            .map(|raw| ini.interpolate("Definition", raw, opts, 0))
    };
    let mut s = v.to_string();
    for _ in 0..40 {
        let mut changed = false;
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        let b = s.as_bytes();
        while i < b.len() {
            // `(?P<name>` and `(?<!` / `(?<=` are regex syntax, not tags.
            let syntax = (i >= 3 && &b[i - 3..i] == b"(?P") || (i >= 2 && &b[i - 2..i] == b"(?");
            if b[i] == b'<' && !syntax {
                if let Some(rel) = s[i + 1..].find(['<', '>']) {
                    let j = i + 1 + rel;
                    if b[j] == b'>' {
                        let name = &s[i + 1..j];
                        let plausible = !name.is_empty()
                            && name
                                .bytes()
                                .all(|c| c.is_ascii_alphanumeric() || b"_-/.".contains(&c));
                        if plausible && !name.starts_with("F-") && !name.starts_with("/F-") {
                            if let Some(val) = lookup(name) {
                                out.push_str(&val);
                                i = j + 1;
                                changed = true;
                                continue;
                            }
                        }
                    }
                }
            }
            let ch = s[i..].chars().next().unwrap_or('\0');
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
        s = out;
        if !changed {
            break;
        }
    }
    s
}

impl F2bFilter {
    /// Loads `filter.d/NAME` (with `.d`/`.local` layers) from `dir` with
    /// options (`mode=aggressive`...), which override `[Init]`.
    pub fn load(
        dir: &Path,
        spec: &str,
        extra: &BTreeMap<String, String>,
    ) -> Result<F2bFilter, F2bError> {
        let (name, mut opts) = parse_filter_spec(spec);
        opts.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base = dir.join("filter.d").join(&name);
        if !base.with_extension("conf").is_file() && !base.with_extension("local").is_file() {
            return Err(F2bError::Missing(base.display().to_string()));
        }
        let ini = Ini::load(&base)?;
        F2bFilter::from_ini(&ini, &name, &opts, &base.display().to_string())
    }

    /// Builds a filter from already-read configuration.
    pub fn from_ini(
        ini: &Ini,
        name: &str,
        caller: &BTreeMap<String, String>,
        file: &str,
    ) -> Result<F2bFilter, F2bError> {
        // [Init] values, then the caller's, are the options tags see first.
        let mut opts: BTreeMap<String, String> = ini
            .sections
            .get("Init")
            .map(|s| s.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (k, v) in caller {
            opts.insert(k.clone(), v.clone());
        }
        let get = |key: &str| -> Option<String> {
            let raw = opts
                .get(key)
                .cloned()
                .or_else(|| ini.raw("Definition", key).map(String::from))?;
            let v = ini.interpolate("Definition", &raw, &opts, 0);
            Some(substitute(ini, &opts, &v))
        };
        let maxlines: usize = get("maxlines")
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1);
        // Over a multi-line buffer `^` and `$` mean line starts and ends.
        let flags = if maxlines > 1 { "(?m)" } else { "" };
        let compile_list = |key: &str| -> Result<Vec<Pattern>, F2bError> {
            get(key)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    Pattern::new(&format!("{flags}{}", expand_tags(l))).map_err(|source| {
                        F2bError::Regex {
                            file: file.to_string(),
                            key: key.to_string(),
                            source,
                        }
                    })
                })
                .collect()
        };
        let prefregex = match get("prefregex").filter(|p| !p.trim().is_empty()) {
            Some(p) => Some(
                Pattern::new(&format!("{flags}{}", expand_tags(p.trim()))).map_err(|source| {
                    F2bError::Regex {
                        file: file.to_string(),
                        key: "prefregex".into(),
                        source,
                    }
                })?,
            ),
            None => None,
        };
        let dates = match get("datepattern").filter(|d| !d.trim().is_empty()) {
            Some(d) => DateDetector::from_datepattern(&d).map_err(|source| F2bError::Date {
                file: file.to_string(),
                source,
            })?,
            None => DateDetector::default_templates(),
        };
        let failregex = compile_list("failregex")?;
        // Every match must name a host or failure id, from the failregex
        // or the prefregex, as fail2ban requires.
        let names_one = |p: &Pattern| {
            ["(?P<ip4>", "(?P<ip6>", "(?P<dns>", "(?P<fid>", "(?P<mlfid>"]
                .iter()
                .any(|g| p.as_str().contains(g))
        };
        if !prefregex.as_ref().is_some_and(names_one) {
            if let Some(p) = failregex.iter().find(|p| !names_one(p)) {
                return Err(F2bError::NoHost {
                    file: file.to_string(),
                    regex: p.as_str().to_string(),
                });
            }
        }
        let ignoreregex = compile_list("ignoreregex")?;
        let mlfid = failregex
            .iter()
            .chain(&prefregex)
            .any(|p| p.as_str().contains("(?P<mlfid>"));
        // Single lines only: a multi-line buffer's match spans lines.
        let prefilter = if maxlines <= 1 {
            prefilter::build(failregex.iter().chain(&ignoreregex), dates.max_lead())
        } else {
            None
        };
        let nofail = failregex
            .iter()
            .chain(&prefregex)
            .any(|p| p.as_str().contains("(?P<nofail>"));
        Ok(F2bFilter {
            name: name.to_string(),
            prefregex,
            failregex,
            ignoreregex,
            dates,
            prefilter,
            maxlines,
            stateful: maxlines > 1 || mlfid,
            nofail,
            state: std::sync::Mutex::default(),
            journalmatch: get("journalmatch"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fail2ban-regex 1.0.2 says "No failure-id group" for these and loads
    /// nothing; a prefregex with the host, or `<F-ID>`, is enough.
    #[test]
    fn a_failregex_that_names_no_host_is_refused_as_fail2ban_does() {
        let load = |pref: &str, fail: &str| {
            let mut ini = Ini::default();
            if !pref.is_empty() {
                ini.set("Definition", "prefregex", pref);
            }
            ini.set("Definition", "failregex", fail);
            F2bFilter::from_ini(&ini, "nh", &BTreeMap::new(), "nh.conf")
        };
        for fail in ["bad thing", "bad thing from <CIDR>", "<mdre-more>"] {
            let e = load("", fail).unwrap_err().to_string();
            assert!(
                e.starts_with("nh.conf: failregex ") && e.contains("No failure-id group"),
                "{e}"
            );
        }
        let e = load("", "bad thing from <HOST>\nbad")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"bad\""), "{e}");
        assert!(load("^.*from <HOST>$", "bad thing").is_ok());
        assert!(
            load(
                "^<F-MLFID>x:</F-MLFID> <F-CONTENT>.+</F-CONTENT>$",
                "bad thing"
            )
            .is_ok()
        );
        for fail in [
            "from <ADDR>",
            "from <SUBNET>",
            "bad <F-ID>thing</F-ID>",
            r"from (?P<ip4>\S+)",
        ] {
            assert!(load("", fail).is_ok(), "{fail}");
        }
    }

    #[test]
    fn filter_spec_options() {
        let (n, o) = parse_filter_spec("sshd[mode=aggressive, port=\"22, 2222\"]");
        assert_eq!(n, "sshd");
        assert_eq!(o.get("mode").map(String::as_str), Some("aggressive"));
        assert_eq!(o.get("port").map(String::as_str), Some("22, 2222"));
        assert_eq!(parse_filter_spec("asterisk").0, "asterisk");
    }

    #[test]
    fn a_datepattern_that_does_not_compile_names_the_file_and_the_line() {
        let mut ini = Ini::default();
        ini.set("Definition", "failregex", "^fail from <HOST>$");
        ini.set("Definition", "datepattern", "**^%H:%M:%S (**");
        let Err(e) = F2bFilter::from_ini(&ini, "x", &BTreeMap::new(), "filter.d/x.conf") else {
            panic!("an unbalanced datepattern compiled");
        };
        let e = e.to_string();
        assert!(
            e.starts_with("filter.d/x.conf: datepattern: datepattern \"^%H:%M:%S (\": "),
            "{e}"
        );
    }
}
