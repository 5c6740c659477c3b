//! Attack-tool fingerprints: user agents that only scanners send.

/// User agents of known attack tools, matched case-insensitively as
/// substrings. The list is data (`[scanners] user_agents`), this is its
/// default.
pub const DEFAULT_SCANNERS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "VaxSIPUserAgent",
    "pplsip",
    "SIPScan",
    "sip-scan",
    "sundayddr",
    "iWar",
];

/// A list of scanner user-agent fragments, searched all at once.
#[derive(Clone, Debug, Default)]
pub struct ScannerList(Option<aho_corasick::AhoCorasick>);

impl ScannerList {
    /// A list of the given fragments (empty ones are dropped).
    pub fn new<S: AsRef<str>>(items: &[S]) -> ScannerList {
        let items: Vec<&str> = items
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return ScannerList(None);
        }
        // One automaton for all fragments: a user agent is read once, not
        // once per fragment. Building fails only past size limits that a
        // list of user-agent fragments cannot reach; then nothing matches.
        ScannerList(
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                // A few short fragments: a full DFA is small and fastest.
                .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                .build(&items)
                .ok(),
        )
    }

    /// Whether `user_agent` belongs to a listed tool.
    pub fn matches(&self, user_agent: &str) -> bool {
        self.0.as_ref().is_some_and(|ac| ac.is_match(user_agent))
    }

    /// [`ScannerList::matches`] on raw bytes (a decoded header value that
    /// need not be UTF-8).
    pub fn matches_bytes(&self, user_agent: &[u8]) -> bool {
        self.0.as_ref().is_some_and(|ac| ac.is_match(user_agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_case_insensitive_substrings() {
        let l = ScannerList::new(DEFAULT_SCANNERS);
        assert!(l.matches("friendly-scanner"));
        assert!(l.matches("SIPVicious 0.3.3"));
        assert!(l.matches("sipcli/v1.8"));
        assert!(!l.matches("Yealink SIP-T46S 66.86.0.15"));
        assert!(!l.matches(""));
        assert!(!ScannerList::new::<&str>(&[]).matches("friendly-scanner"));
    }
}
