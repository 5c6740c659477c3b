//! How a control request is answered, for the CLI's socket and the HTTP API
//! alike: requests are checked and turned into the jails' decisions here;
//! what only the running daemon knows (its status, reloading, the
//! dashboard's data) it supplies through [`Daemon`].

use super::page::Page;
use super::{BanRef, RecentView, Request, Response, UnbanView};
use crate::duration::parse_ban_length;
use crate::event::Time;
use crate::jail::{Decision, DisplayNet, JailSet};
use crate::net::{parse_ban_target, parse_prefix};

/// What the handler needs from the running daemon.
pub trait Daemon {
    /// The jails, to ban and unban by hand.
    fn jails(&mut self) -> &mut JailSet;
    /// The answer to `status` (every jail, or one with a page of its bans).
    fn status(&self, jail: Option<&str>, page: &Page, now: Time) -> Response;
    /// Re-reads the configuration (see [`Request::Reload`]).
    fn reload(&mut self, force: bool) -> Response;
    /// The dashboard's data at `now`.
    fn recent(&self, now: Time) -> RecentView;
}

/// How a control request is answered.
#[derive(Debug)]
pub enum Answer {
    /// Now.
    Now(Response),
    /// Once the firewall answered these decisions: with this on success,
    /// with the firewall's reason when it refused one.
    After(Vec<Decision>, serde_json::Value),
}

/// Answers `req` at `now`: at once, or (`ban`, `unban`) with the decisions
/// the firewall must accept before the asker is told.
pub fn answer(d: &mut impl Daemon, req: Request, now: Time) -> Answer {
    Answer::Now(match req {
        Request::Ping {} => {
            Response::ok(serde_json::json!({ "pong": true, "version": env!("CARGO_PKG_VERSION") }))
        }
        Request::Status {
            jail,
            limit,
            cursor,
        } => match Page::new(limit, cursor.as_deref()) {
            Ok(page) => d.status(jail.as_deref(), &page, now),
            Err(e) => Response::error(e.to_string()),
        },
        Request::Reload { force } => d.reload(force),
        Request::Recent {} => Response::ok(d.recent(now)),
        Request::Ban {
            jail,
            addr,
            duration,
            force,
        } => {
            let net = match parse_ban_target(&addr) {
                Ok(n) => n,
                Err(e) => return Answer::Now(Response::error(e.to_string())),
            };
            let bantime = match duration.as_deref().map(parse_ban_length).transpose() {
                Ok(b) => b,
                Err(e) => return Answer::Now(Response::error(e.to_string())),
            };
            match d.jails().manual_ban(&jail, net, bantime, force, now) {
                Ok(d) => {
                    let view = serde_json::json!({
                        "jail": d.jail_name.to_string(),
                        "addr": DisplayNet(&d.addr).to_string(),
                        "bantime": d.bantime.to_string(),
                        "end": d.end.map(|e| e.to_string()),
                    });
                    return Answer::After(vec![Decision::Ban(d)], view);
                }
                Err(e) => Response::error(e.to_string()),
            }
        }
        Request::FraudBan {
            jail,
            addr,
            duration,
        } => {
            let bantime = match duration.as_deref().map(parse_ban_length).transpose() {
                Ok(b) => b,
                Err(e) => return Answer::Now(Response::error(e.to_string())),
            };
            let net = ipnet::IpNet::from(crate::event::canonical(addr));
            match d.jails().fraud_ban(&jail, net, bantime, now) {
                Ok(d) => {
                    let view = serde_json::json!({
                        "jail": d.jail_name.to_string(),
                        "addr": DisplayNet(&d.addr).to_string(),
                    });
                    return Answer::After(vec![Decision::Ban(d)], view);
                }
                Err(e) => Response::error(e.to_string()),
            }
        }
        Request::Unban { addr, jail, all } => {
            let net = match (&addr, all) {
                (Some(a), false) => match parse_prefix(a) {
                    Ok(n) => Some(n),
                    Err(e) => return Answer::Now(Response::error(e.to_string())),
                },
                (None, false) => {
                    return Answer::Now(Response::error("unban needs an address, or --all"));
                }
                (Some(_), true) => {
                    return Answer::Now(Response::error(
                        "give either an address or --all, not both",
                    ));
                }
                (None, true) => None,
            };
            match d.jails().unban(net, jail.as_deref(), all) {
                Ok(us) => {
                    let view = UnbanView {
                        unbanned: us
                            .iter()
                            .map(|u| BanRef {
                                jail: u.jail_name.to_string(),
                                addr: DisplayNet(&u.addr).to_string(),
                            })
                            .collect(),
                    };
                    let ds: Vec<Decision> = us.into_iter().map(Decision::Unban).collect();
                    let view = serde_json::to_value(view).unwrap_or_default();
                    return Answer::After(ds, view);
                }
                Err(e) => Response::error(e.to_string()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::{BanTime, Duration};
    use crate::jail::JailSpec;

    /// A daemon with jails and nothing else; it counts the calls that only
    /// a running daemon can answer.
    struct Fake {
        jails: JailSet,
        status_calls: std::cell::Cell<u32>,
    }

    impl Daemon for Fake {
        fn jails(&mut self) -> &mut JailSet {
            &mut self.jails
        }
        fn status(&self, _: Option<&str>, _: &Page, _: Time) -> Response {
            self.status_calls.set(self.status_calls.get() + 1);
            Response::ok("status")
        }
        fn reload(&mut self, _: bool) -> Response {
            Response::ok("reloaded")
        }
        fn recent(&self, _: Time) -> RecentView {
            RecentView {
                events: Vec::new(),
                per_minute: Vec::new(),
                top_addrs: Vec::new(),
                top_users: Vec::new(),
            }
        }
    }

    fn fake() -> Fake {
        let spec = JailSpec {
            name: "fs".into(),
            filter: None,
            ignoreself: true,
            policy: crate::jail::tests::policy(5, 600, BanTime::For(Duration(3600))),
            peers: Vec::new(),
            names: Vec::new(),
            ignore_files: Vec::new(),
            ignore_names: Vec::new(),
        };
        Fake {
            jails: JailSet::new(vec!["10.0.0.1/32".parse().unwrap()], &[spec]),
            status_calls: std::cell::Cell::new(0),
        }
    }

    fn now() -> Time {
        Time(1_000_000)
    }

    fn error(a: Answer) -> String {
        match a {
            Answer::Now(r) if !r.ok => r.error.unwrap_or_default(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn ban(addr: &str, duration: Option<&str>) -> Request {
        Request::Ban {
            jail: "fs".into(),
            addr: addr.into(),
            duration: duration.map(String::from),
            force: false,
        }
    }

    #[test]
    fn a_ban_waits_for_the_firewall_with_its_decision() {
        let mut d = fake();
        match answer(&mut d, ban("203.0.113.7", Some("2h")), now()) {
            Answer::After(ds, ok) => {
                assert_eq!(ds.len(), 1);
                let Decision::Ban(b) = &ds[0] else {
                    panic!("not a ban: {ds:?}")
                };
                assert_eq!(b.addr, "203.0.113.7/32".parse::<ipnet::IpNet>().unwrap());
                assert_eq!(b.end, Some(now().plus_millis(7_200_000)));
                assert_eq!(ok["jail"], "fs");
                assert_eq!(ok["addr"], "203.0.113.7");
            }
            Answer::Now(r) => panic!("answered at once: {:?}", r.error),
        }
    }

    #[test]
    fn bad_ban_requests_are_refused_at_once_and_change_nothing() {
        let mut d = fake();
        assert!(
            error(answer(&mut d, ban("not-an-address", None), now())).contains("not-an-address")
        );
        assert!(error(answer(&mut d, ban("203.0.113.7", Some("soon")), now())).contains("soon"));
        let e = error(answer(
            &mut d,
            Request::Ban {
                jail: "nope".into(),
                addr: "203.0.113.7".into(),
                duration: None,
                force: false,
            },
            now(),
        ));
        assert!(e.contains("no running jail named \"nope\""), "{e}");
        // This host's own address is never banned without --force.
        assert!(!error(answer(&mut d, ban("10.0.0.1", None), now())).is_empty());
        let j = d.jails.jail(d.jails.jail_id("fs").unwrap()).unwrap();
        assert!(j.banned().is_empty());
    }

    #[test]
    fn unban_needs_exactly_one_of_an_address_and_all() {
        let mut d = fake();
        let unban = |addr: Option<&str>, all| Request::Unban {
            addr: addr.map(String::from),
            jail: None,
            all,
        };
        assert_eq!(
            error(answer(&mut d, unban(None, false), now())),
            "unban needs an address, or --all"
        );
        assert_eq!(
            error(answer(&mut d, unban(Some("203.0.113.7"), true), now())),
            "give either an address or --all, not both"
        );
        assert!(!error(answer(&mut d, unban(Some("203.0.113.x"), false), now())).is_empty());
    }

    #[test]
    fn an_unban_lifts_what_a_ban_set() {
        let mut d = fake();
        let Answer::After(ds, _) = answer(&mut d, ban("203.0.113.0/24", None), now()) else {
            panic!("the ban was not taken")
        };
        let Decision::Ban(b) = &ds[0] else {
            panic!("not a ban")
        };
        assert!(d.jails.confirm(b));
        let req = Request::Unban {
            addr: Some("203.0.113.0/24".into()),
            jail: None,
            all: false,
        };
        match answer(&mut d, req, now()) {
            Answer::After(ds, ok) => {
                assert!(matches!(ds.as_slice(), [Decision::Unban(u)] if u.addr == b.addr));
                assert_eq!(ok["unbanned"][0]["addr"], "203.0.113.0/24");
            }
            Answer::Now(r) => panic!("answered at once: {:?}", r.error),
        }
    }

    /// Issue 21: a toll-fraud rule's ban goes the way of a ban by hand
    /// (ignoreip respected, never forced) with its own reason; it is never
    /// a request the socket can carry.
    #[test]
    fn fraud_bans_take_the_manual_path_with_their_reason() {
        let mut d = fake();
        let fraud = |addr: &str| Request::FraudBan {
            jail: "fs".into(),
            addr: addr.parse().unwrap(),
            duration: Some("2h".into()),
        };
        let Answer::After(ds, _) = answer(&mut d, fraud("203.0.113.66"), now()) else {
            panic!("the ban was not taken")
        };
        let Decision::Ban(b) = &ds[0] else {
            panic!("not a ban")
        };
        assert_eq!(b.reason, crate::jail::BanReason::Fraud);
        assert_eq!(b.bantime.to_string(), "2h");
        assert!(!error(answer(&mut d, fraud("127.0.0.1"), now())).is_empty());
        assert!(
            serde_json::from_str::<Request>(
                r#"{"cmd":"fraud_ban","jail":"fs","addr":"203.0.113.1"}"#
            )
            .is_err()
        );
        assert!(serde_json::to_string(&fraud("203.0.113.1")).is_err());
    }

    #[test]
    fn a_bad_page_is_refused_before_the_daemon_is_asked() {
        let mut d = fake();
        let req = Request::Status {
            jail: Some("fs".into()),
            limit: Some(0),
            cursor: None,
        };
        assert!(error(answer(&mut d, req, now())).contains("limit must be 1 to"));
        assert_eq!(d.status_calls.get(), 0);
        let req = Request::Status {
            jail: Some("fs".into()),
            limit: Some(5),
            cursor: None,
        };
        assert!(matches!(answer(&mut d, req, now()), Answer::Now(r) if r.ok));
        assert_eq!(d.status_calls.get(), 1);
        let Answer::Now(r) = answer(&mut d, Request::Ping {}, now()) else {
            panic!("ping waits")
        };
        assert!(r.ok);
    }
}
