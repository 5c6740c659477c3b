//! Pages of a jail's ban list, shared by the control socket, the HTTP API
//! and the CLI: at most `limit` bans after a `cursor`, in a stable order
//! (the ban's start, then its address). Walking `next_cursor` from the first
//! page to the last visits every ban that stays in force during the walk
//! exactly once, whatever is added or lifted meanwhile (a new ban starts
//! later than every cursor handed out, so it comes last).

use std::collections::BinaryHeap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::event::Time;

/// Bans in a page when the request names no `limit`: about 200 KB of JSON,
/// quick to build and to read, and a whole jail for most servers.
pub const DEFAULT_PAGE: usize = 1_000;

/// The largest `limit` accepted: one answer stays around 2 MB of JSON, so a
/// request can neither make the daemon build a copy of a huge list nor hold
/// the core for long.
pub const MAX_PAGE: usize = 10_000;

/// Where a page starts: the sort key of the last ban of the page before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    start: Time,
    addr: IpNet,
}

impl Cursor {
    /// The cursor just after the ban that started at `start` on `addr`.
    pub fn new(start: Time, addr: IpNet) -> Cursor {
        Cursor { start, addr }
    }
}

/// Written `START_ADDRHEX_PREFIX` (e.g. `1764085254659_cb007107_32`): only
/// characters a URL query carries unescaped, and opaque on purpose (clients
/// pass it back unchanged).
impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = match self.addr.addr() {
            IpAddr::V4(a) => format!("{:08x}", u32::from(a)),
            IpAddr::V6(a) => format!("{:032x}", u128::from(a)),
        };
        write!(f, "{}_{hex}_{}", self.start.0, self.addr.prefix_len())
    }
}

impl std::str::FromStr for Cursor {
    type Err = PageError;

    fn from_str(s: &str) -> Result<Cursor, PageError> {
        let bad = || PageError::Cursor(crate::event::escape_text(s, 80));
        let mut parts = s.split('_');
        let (Some(start), Some(hex), Some(len), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let start: i64 = start.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        // from_str_radix would take a sign too.
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let addr = match hex.len() {
            8 => IpAddr::V4(Ipv4Addr::from(
                u32::from_str_radix(hex, 16).map_err(|_| bad())?,
            )),
            32 => IpAddr::V6(Ipv6Addr::from(
                u128::from_str_radix(hex, 16).map_err(|_| bad())?,
            )),
            _ => return Err(bad()),
        };
        let addr = IpNet::new(addr, len).map_err(|_| bad())?;
        Ok(Cursor {
            start: Time(start),
            addr,
        })
    }
}

/// Why a page request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// `limit` out of range.
    #[error("limit must be 1 to {MAX_PAGE} (got {0}); omit it for pages of {DEFAULT_PAGE}")]
    Limit(usize),
    /// A cursor this daemon did not hand out (escaped for display).
    #[error(
        "cursor {0:?} is not one this daemon hands out: pass a page's `next_cursor` back unchanged, or omit it for the first page"
    )]
    Cursor(String),
}

/// One page request, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Bans in the page, 1 to [`MAX_PAGE`].
    pub limit: usize,
    /// Only bans after this one.
    pub after: Option<Cursor>,
}

impl Default for Page {
    fn default() -> Page {
        Page {
            limit: DEFAULT_PAGE,
            after: None,
        }
    }
}

/// One item in the bounded heap of [`Page::select`], ordered by its key
/// alone (the payload needs no order).
struct Keyed<T>(Cursor, T);

impl<T> PartialEq for Keyed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<T> Eq for Keyed<T> {}
impl<T> PartialOrd for Keyed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Keyed<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl Page {
    /// Checks a request's `limit` (default [`DEFAULT_PAGE`]) and `cursor`.
    pub fn new(limit: Option<usize>, cursor: Option<&str>) -> Result<Page, PageError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(PageError::Limit(limit));
        }
        Ok(Page {
            limit,
            after: cursor.map(str::parse).transpose()?,
        })
    }

    /// The page out of `items` (start, address, payload; addresses unique),
    /// sorted, and the cursor of the next page when there is one. Time
    /// O(n log limit), memory O(limit): a page of a huge list costs no copy
    /// of the list.
    pub fn select<T>(
        &self,
        items: impl IntoIterator<Item = (Time, IpNet, T)>,
    ) -> (Vec<(Time, IpNet, T)>, Option<Cursor>) {
        // A max-heap of the `limit` smallest keys seen so far.
        let mut heap: BinaryHeap<Keyed<T>> = BinaryHeap::with_capacity(self.limit.min(4096) + 1);
        let mut more = false;
        for (start, addr, t) in items {
            let key = Cursor { start, addr };
            if self.after.is_some_and(|a| key <= a) {
                continue;
            }
            if heap.len() < self.limit {
                heap.push(Keyed(key, t));
            } else if heap.peek().is_some_and(|top| key < top.0) {
                heap.push(Keyed(key, t));
                heap.pop();
                more = true;
            } else {
                more = true;
            }
        }
        let page: Vec<(Time, IpNet, T)> = heap
            .into_sorted_vec()
            .into_iter()
            .map(|Keyed(k, t)| (k.start, k.addr, t))
            .collect();
        let next = if more {
            page.last().map(|(s, a, _)| Cursor::new(*s, *a))
        } else {
            None
        };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        for c in [
            Cursor::new(Time(1_764_085_254_659), net("203.0.113.7/32")),
            Cursor::new(Time(0), net("2001:db8::/64")),
            Cursor::new(Time(-5), net("0.0.0.0/0")),
        ] {
            let text = c.to_string();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{text}"
            );
            assert_eq!(text.parse::<Cursor>(), Ok(c));
        }
        for bad in [
            "",
            "x",
            "1_cb007107",
            "1_cb007107_33",
            "1_cb00710_32",
            "1_cb007107_32_9",
            "a_cb007107_32",
            "1_zz007107_32",
            "1_+b007107_32",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        let e = "\u{1b}[31mx".parse::<Cursor>().unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(Page::new(None, None), Ok(Page::default()));
        assert_eq!(
            Page::new(Some(MAX_PAGE), None).map(|p| p.limit),
            Ok(MAX_PAGE)
        );
        assert_eq!(Page::new(Some(0), None), Err(PageError::Limit(0)));
        assert_eq!(
            Page::new(Some(MAX_PAGE + 1), None),
            Err(PageError::Limit(MAX_PAGE + 1))
        );
        assert!(Page::new(None, Some("nope")).is_err());
    }

    /// 10,007 bans, many sharing a start time, walked in pages of 1,000
    /// while bans are lifted and added between pages: every ban in force
    /// throughout is seen once, in order, and nothing twice.
    #[test]
    fn a_cursor_walk_sees_everything_once() {
        let mut bans: std::collections::HashMap<IpNet, Time> = (0..10_007u32)
            .map(|i| {
                (
                    IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                    Time(i64::from(i % 97)),
                )
            })
            .collect();
        let stable: Vec<IpNet> = bans
            .keys()
            .copied()
            .filter(|n| n.addr() != IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)))
            .collect();
        let mut seen: Vec<(Time, IpNet)> = Vec::new();
        let mut page = Page::default();
        for round in 0..20 {
            let (items, next) = page.select(bans.iter().map(|(a, s)| (*s, *a, ())));
            assert!(items.len() <= 1000);
            seen.extend(items.iter().map(|(s, a, _)| (*s, *a)));
            // Churn between pages: one lifted, one added (later start).
            bans.remove(&net("10.0.0.5/32"));
            bans.insert(
                IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + round))),
                Time(1000 + i64::from(round)),
            );
            match next {
                Some(c) => page.after = Some(c),
                None => break,
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicate");
        let seen_nets: std::collections::HashSet<IpNet> = seen.iter().map(|(_, a)| *a).collect();
        for n in &stable {
            assert!(seen_nets.contains(n), "{n} missing");
        }
    }

    #[test]
    fn small_lists_are_one_page() {
        let page = Page::new(Some(5), None).unwrap();
        let (items, next) = page.select([
            (Time(2), net("192.0.2.1/32"), 'b'),
            (Time(1), net("192.0.2.9/32"), 'a'),
        ]);
        assert_eq!(items.iter().map(|i| i.2).collect::<String>(), "ab");
        assert_eq!(next, None);
        let (items, next) = Page::new(Some(1), None).unwrap().select([
            (Time(2), net("192.0.2.1/32"), 'b'),
            (Time(1), net("192.0.2.9/32"), 'a'),
        ]);
        assert_eq!(items.len(), 1);
        assert_eq!(next, Some(Cursor::new(Time(1), net("192.0.2.9/32"))));
    }
}
