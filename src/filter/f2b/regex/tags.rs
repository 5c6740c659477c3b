//! fail2ban's tags, the table of what each one becomes.
//!
//! `<HOST>`, `<ADDR>`, `<IP4>`, `<IP6>`, `<CIDR>`, `<SUBNET>`, `<DNS>`,
//! `<SKIPLINES>` and `<F-NAME>...</F-NAME>` are fail2ban's own words, not
//! regex syntax: they are replaced by named groups before the pattern is
//! translated or compiled, so they live apart from both.

/// IPv4, dotted quad (leading zeros allowed: logs write them).
const IP4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
/// IPv6, including `::`, embedded IPv4 and a zone index.
const IP6: &str =
    r"(?:[0-9a-fA-F]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]{1,4})?(?:%[\w.]+)?";
/// A host name.
const DNS: &str = r"[\w\-.^_]*\w";

/// Replaces fail2ban's special tags with groups.
pub fn expand_tags(p: &str) -> String {
    // Either address may stand in brackets (`[192.0.2.1]`, `[2001:db8::1]`).
    let addr = format!(r"\[?(?:(?P<ip4>{IP4})|(?P<ip6>{IP6}))\]?");
    let mut s = p.to_string();
    s = s.replace("<HOST>", &format!(r"(?:{addr}|(?P<dns>{DNS}))"));
    s = s.replace("<SUBNET>", &format!(r"{addr}(?:/(?P<cidr>\d{{1,3}}))?"));
    s = s.replace("<ADDR>", &addr);
    s = s.replace("<IP4>", &format!("(?P<ip4>{IP4})"));
    s = s.replace("<IP6>", &format!("(?P<ip6>{IP6})"));
    s = s.replace("<DNS>", &format!("(?P<dns>{DNS})"));
    s = s.replace("<CIDR>", r"(?P<cidr>\d{1,3})");
    // Lines a multi-line pattern steps over, numbered so each is a group
    // of its own (they are taken out of the matched lines).
    let mut n = 0;
    while let Some(i) = s.find("<SKIPLINES>") {
        s.replace_range(
            i..i + "<SKIPLINES>".len(),
            &format!(r"\n(?P<skiplines{n}>(?:.*\n)*?)"),
        );
        n += 1;
    }
    // <F-NAME> ... </F-NAME> → (?P<name> ... )
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(p) = rest.find('<') {
        out.push_str(&rest[..p]);
        let after = &rest[p..];
        let (is_close, name_start) = if after.starts_with("</F-") {
            (true, 4)
        } else if after.starts_with("<F-") {
            (false, 3)
        } else {
            (false, 0)
        };
        if name_start > 0 {
            if let Some(end) = after.find('>') {
                let name = &after[name_start..end];
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    if is_close {
                        out.push(')');
                    } else {
                        out.push_str("(?P<");
                        out.push_str(&group_name(name));
                        out.push('>');
                    }
                    rest = &after[end + 1..];
                    continue;
                }
            }
        }
        out.push('<');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
}

/// The group an `<F-NAME>` tag captures into: lower case, and fail2ban's
/// two renamings (`ID` is the failure id `fid`, `PORT` is `fport`).
fn group_name(tag: &str) -> String {
    match tag.to_ascii_lowercase().replace('-', "_").as_str() {
        "id" => "fid".to_string(),
        "port" => "fport".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Pattern;
    use super::*;

    #[test]
    fn tags_become_groups_and_match() {
        let p = Pattern::new(&expand_tags(
            r"^Failed for <F-USER>\S+</F-USER> from <HOST> port \d+$",
        ))
        .unwrap();
        let c = p
            .captures("Failed for root from 192.0.2.1 port 22")
            .unwrap();
        assert_eq!(c.get("user"), Some("root"));
        assert_eq!(c.get("ip4"), Some("192.0.2.1"));
        let c = p
            .captures("Failed for root from 2001:db8::1 port 22")
            .unwrap();
        assert_eq!(c.get("ip6"), Some("2001:db8::1"));
        let c = p
            .captures("Failed for root from [2001:db8::2] port 22")
            .unwrap();
        assert_eq!(c.get("ip6"), Some("2001:db8::2"));
        let c = p
            .captures("Failed for root from example.com port 22")
            .unwrap();
        assert_eq!(c.get("dns"), Some("example.com"));
    }
}
