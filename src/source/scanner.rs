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
pub struct ScannerList {
    ac: Option<aho_corasick::AhoCorasick>,
    /// Which list this is, for the memo of the last answer (0: the empty
    /// list, which needs none).
    id: u64,
}

/// The last user agent a thread asked a list about, and the answer: a
/// scanner sends the same agent on every attempt, and the search over it
/// (about 35 ns) costs several times the compare.
struct Memo {
    list: u64,
    agent: Vec<u8>,
    hit: bool,
}

/// Agents longer than this are searched every time, never copied.
const MEMO_MAX: usize = 256;

thread_local! {
    static MEMO: std::cell::RefCell<Memo> = const {
        std::cell::RefCell::new(Memo { list: 0, agent: Vec::new(), hit: false })
    };
}

impl ScannerList {
    /// A list of the given fragments (empty ones are dropped).
    pub fn new<S: AsRef<str>>(items: &[S]) -> ScannerList {
        let items: Vec<&str> = items
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return ScannerList::default();
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        // One automaton for all fragments: a user agent is read once, not
        // once per fragment. Building fails only past size limits that a
        // list of user-agent fragments cannot reach; then nothing matches.
        ScannerList {
            ac: aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                // A few short fragments: a full DFA is small and fastest.
                .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                .build(&items)
                .ok(),
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Whether `user_agent` belongs to a listed tool.
    pub fn matches(&self, user_agent: &str) -> bool {
        self.matches_bytes(user_agent.as_bytes())
    }

    /// [`ScannerList::matches`] on raw bytes (a decoded header value that
    /// need not be UTF-8).
    pub fn matches_bytes(&self, user_agent: &[u8]) -> bool {
        let Some(ac) = &self.ac else { return false };
        if user_agent.len() > MEMO_MAX {
            return ac.is_match(user_agent);
        }
        MEMO.with(|m| {
            // (Never borrowed elsewhere: `try_borrow_mut` cannot fail, and
            // if it did the search would still answer.)
            let Ok(mut m) = m.try_borrow_mut() else {
                return ac.is_match(user_agent);
            };
            if m.list == self.id && m.agent == user_agent {
                return m.hit;
            }
            let hit = ac.is_match(user_agent);
            m.list = self.id;
            m.agent.clear();
            m.agent.extend_from_slice(user_agent);
            m.hit = hit;
            hit
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

    #[test]
    fn the_memo_answers_as_the_search_does() {
        // Two lists with different fragments, asked in turns about the same
        // and different agents: the memo never answers for the wrong list
        // or agent.
        let a = ScannerList::new(&["friendly-scanner"]);
        let b = ScannerList::new(&["yealink"]);
        let long = format!("{}friendly-scanner", "x".repeat(MEMO_MAX));
        let agents = [
            "friendly-scanner",
            "friendly-scanner",
            "Yealink SIP-T46S",
            "friendly-scanneR",
            "",
            long.as_str(),
            "friendly-scanner",
        ];
        for _ in 0..2 {
            for ua in agents {
                for l in [&a, &b, &a.clone()] {
                    let plain = l.ac.as_ref().is_some_and(|ac| ac.is_match(ua));
                    assert_eq!(l.matches(ua), plain, "{ua:?} {}", l.id);
                }
            }
        }
        assert!(a.matches("friendly-scanner") && !b.matches("friendly-scanner"));
        assert!(b.matches("Yealink SIP-T46S") && !a.matches("Yealink SIP-T46S"));
        assert_ne!(a.id, b.id);
    }
}
