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

/// A list of scanner user-agent fragments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScannerList(Vec<String>);

impl ScannerList {
    /// A list of the given fragments (empty ones are dropped).
    pub fn new<S: AsRef<str>>(items: &[S]) -> ScannerList {
        ScannerList(
            items
                .iter()
                .map(|s| s.as_ref().trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }

    /// Whether `user_agent` belongs to a listed tool.
    pub fn matches(&self, user_agent: &str) -> bool {
        if self.0.is_empty() || user_agent.is_empty() {
            return false;
        }
        let ua = user_agent.as_bytes();
        // Case-insensitive substring search without allocating.
        self.0.iter().any(|s| {
            let s = s.as_bytes();
            s.len() <= ua.len() && ua.windows(s.len()).any(|w| w.eq_ignore_ascii_case(s))
        })
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
