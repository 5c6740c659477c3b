//! The Event Socket's side of toll-fraud watching: channel events become
//! [`CallEvent`]s for the pure [`Watch`](crate::fraud::Watch), and its
//! orders become `bgapi uuid_kill` on this connection (each answer
//! checked), ban requests (handed to the daemon) and webhooks.
//!
//! Who and where come from headers FreeSWITCH writes: the account is
//! `variable_sip_auth_username`, else `variable_user_name`, else the
//! gateway (`variable_sip_gateway_name`), else the source address
//! (`Caller-Network-Addr`); never the From user or caller id, which the
//! caller writes. Only inbound A-legs count (`Call-Direction: inbound`,
//! not a `loopback/` leg), so B-legs are not counted twice.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::event::content_type;
use super::frame::{Frame, PlainEvent, header, text};
use crate::event::{Time, escape_text};
use crate::fraud::{CallEvent, CallKind, FraudRule, FraudView, Order, Uuid, Watch};
use crate::source::MAX_SKEW_MS;

/// What the daemon is asked when a rule bans a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanAsk {
    /// The jail whose Event Socket saw the calls.
    pub jail: String,
    /// The A-leg's source address.
    pub addr: IpAddr,
    /// The rule's `bantime` (the jail's when `None`).
    pub bantime: Option<String>,
    /// For the log: rule and account (escaped).
    pub why: String,
}

/// Hands a ban request to the daemon (the normal jail path).
pub type BanPath = Arc<dyn Fn(BanAsk) + Send + Sync>;

/// Kills waiting for FreeSWITCH's answer, per connection at most this many.
const MAX_PENDING: usize = 1024;

/// One connection's fraud watch, kept across reconnections.
pub struct CallWatch {
    /// The ledger and rules.
    pub watch: Mutex<Watch>,
    /// The rules, for their webhooks.
    pub rules: Vec<Arc<FraudRule>>,
    /// The jail the connection belongs to.
    pub jail: String,
    /// Where bans go.
    pub ban: BanPath,
    /// Hang-ups asked, confirmed and failed.
    pub kills: KillStats,
}

/// Counters of `uuid_kill`.
#[derive(Debug, Default)]
pub struct KillStats {
    /// Sent.
    pub sent: AtomicU64,
    /// FreeSWITCH said `+OK`.
    pub confirmed: AtomicU64,
    /// Refused, failed, or not sent (too many waiting).
    pub failed: AtomicU64,
    /// Not sent: [`MAX_PENDING`] were waiting (counted in `failed` too).
    pub unsent: AtomicU64,
}

impl std::fmt::Debug for CallWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallWatch")
            .field("jail", &self.jail)
            .finish()
    }
}

/// A kill sent and not answered yet.
#[derive(Clone, Debug)]
struct Kill {
    uuid: Uuid,
    why: String,
}

/// The kills of one session: replies come in order, job results by id.
#[derive(Debug, Default)]
pub struct Kills {
    awaiting_reply: VecDeque<Kill>,
    awaiting_job: HashMap<String, Kill>,
}

/// Reads headers by name from either event format.
enum Named<'a> {
    Plain(PlainEvent<'a>),
    Json(serde_json::Map<String, serde_json::Value>),
}

impl Named<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Named::Plain(p) => p.get(name),
            Named::Json(m) => match m.get(name)? {
                serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
                serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
                _ => None,
            },
        }
    }

    fn body(&self) -> Cow<'_, str> {
        match self {
            Named::Plain(p) => String::from_utf8_lossy(p.body),
            Named::Json(m) => match m.get("_body") {
                Some(serde_json::Value::String(s)) => Cow::Borrowed(s.as_str()),
                _ => Cow::Borrowed(""),
            },
        }
    }
}

fn named<'a>(f: &Frame<'a>) -> Option<Named<'a>> {
    match &*content_type(f.headers) {
        "text/event-plain" => Some(Named::Plain(PlainEvent::parse(f.body))),
        "text/event-json" => {
            // Only events this file reads are parsed a second time.
            let interesting = memchr::memmem::find(f.body, b"CHANNEL_").is_some()
                || memchr::memmem::find(f.body, b"BACKGROUND_JOB").is_some();
            if !interesting {
                return None;
            }
            match serde_json::from_slice::<serde_json::Value>(f.body).ok()? {
                serde_json::Value::Object(m) => Some(Named::Json(m)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The call event in a channel event of an inbound A-leg, dated by its own
/// time while that is within a minute of `now`.
fn call_event(h: &Named<'_>, now: Time) -> Option<CallEvent> {
    let kind = match &*h.get("Event-Name")? {
        "CHANNEL_CREATE" => CallKind::Create,
        "CHANNEL_ANSWER" => CallKind::Answer,
        "CHANNEL_HANGUP_COMPLETE" => CallKind::Hangup,
        _ => return None,
    };
    if h.get("Call-Direction").as_deref() != Some("inbound")
        || h.get("Channel-Name")
            .is_some_and(|n| n.starts_with("loopback/"))
    {
        return None;
    }
    let uuid = Uuid::parse(h.get("Unique-ID")?.trim())?;
    let source = h
        .get("Caller-Network-Addr")
        .and_then(|a| crate::net::parse_addr(a.trim().as_bytes()))
        .filter(|a| !crate::net::never_a_source(*a));
    let nonempty = |n: &str| h.get(n).filter(|v| !v.trim().is_empty());
    let account: Box<str> = if let Some(u) = nonempty("variable_sip_auth_username") {
        u.trim().into()
    } else if let Some(u) = nonempty("variable_user_name") {
        u.trim().into()
    } else if let Some(g) = nonempty("variable_sip_gateway_name") {
        format!("gateway:{}", g.trim()).into()
    } else {
        format!("addr:{}", source?).into()
    };
    let dest: Box<str> = h
        .get("Caller-Destination-Number")
        .map(|d| d.trim().into())
        .unwrap_or_default();
    let own = h
        .get("Event-Date-Timestamp")
        .and_then(|t| t.trim().parse::<i64>().ok())
        .map(|us| Time(us / 1000));
    let time = own.filter(|t| t.0.abs_diff(now.0) <= MAX_SKEW_MS as u64);
    Some(CallEvent {
        kind,
        uuid,
        account,
        dest,
        source,
        time: time.unwrap_or(now),
    })
}

impl CallWatch {
    /// Reads one frame at `now`: a channel event goes to the ledger, a
    /// reply or job result to `kills`. The orders the ledger gives are
    /// appended to `orders`.
    pub fn frame(&self, f: &Frame<'_>, now: Time, kills: &mut Kills, orders: &mut Vec<Order>) {
        if content_type(f.headers) == "command/reply" {
            let reply = header(f.headers, "Reply-Text")
                .map(text)
                .unwrap_or_default();
            let Some(k) = kills.awaiting_reply.pop_front() else {
                return;
            };
            match reply.strip_prefix("+OK Job-UUID: ") {
                Some(job) if kills.awaiting_job.len() < MAX_PENDING => {
                    kills.awaiting_job.insert(job.trim().to_string(), k);
                }
                Some(_) => {}
                None => {
                    self.kills.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "[{}] fraud: uuid_kill {} refused by FreeSWITCH ({}); {}",
                        self.jail,
                        k.uuid,
                        escape_text(&reply, 120),
                        k.why
                    );
                }
            }
            return;
        }
        let Some(h) = named(f) else { return };
        if h.get("Event-Name").as_deref() == Some("BACKGROUND_JOB") {
            let Some(k) = h
                .get("Job-UUID")
                .and_then(|j| kills.awaiting_job.remove(j.trim()))
            else {
                return;
            };
            let body = h.body();
            if body.trim_start().starts_with("+OK") {
                self.kills.confirmed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("[{}] fraud: hung up call {}; {}", self.jail, k.uuid, k.why);
            } else {
                self.kills.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "[{}] fraud: uuid_kill {} failed ({}); {}",
                    self.jail,
                    k.uuid,
                    escape_text(body.trim(), 120),
                    k.why
                );
            }
            return;
        }
        if let Some(ev) = call_event(&h, now) {
            if let Ok(mut w) = self.watch.lock() {
                orders.extend(w.on_event(&ev, now));
            }
        }
    }

    /// A new session: held accounts' live calls are hung up again.
    pub fn resume(&self, now: Time) -> Vec<Order> {
        self.watch
            .lock()
            .map(|mut w| w.resume(now))
            .unwrap_or_default()
    }

    /// The periodic re-reading of the ledger (live calls grow, windows
    /// slide).
    pub fn tick(&self, now: Time) -> Vec<Order> {
        self.watch
            .lock()
            .map(|mut w| w.tick(now))
            .unwrap_or_default()
    }

    /// Carries out `orders`: logs and webhooks, bans handed to the daemon;
    /// returns the commands to write on the connection, each remembered
    /// in `kills` for its answer.
    pub fn carry_out(&self, orders: Vec<Order>, connection: &str, kills: &mut Kills) -> Vec<u8> {
        let mut commands = Vec::new();
        for o in orders {
            match o {
                Order::Fired(f) => {
                    let calls: Vec<String> = f
                        .calls
                        .iter()
                        .take(20)
                        .map(|(u, d)| format!("{u} to \"{}\"", escape_text(d, 32)))
                        .collect();
                    tracing::warn!(
                        "[{}] fraud: rule {} {} for account \"{}\": {} {} reached {} on {connection}; live calls: [{}]{}",
                        self.jail,
                        f.rule,
                        f.level.as_str(),
                        escape_text(&f.account, 64),
                        f.metric,
                        f.value,
                        f.threshold,
                        calls.join(", "),
                        if f.calls.len() > 20 { " ..." } else { "" }
                    );
                    if f.actions.webhook {
                        let url = self
                            .rules
                            .iter()
                            .find(|r| r.name == f.rule)
                            .and_then(|r| r.webhook.as_deref());
                        if let Some(url) = url {
                            crate::fraud::webhook::post(url, &f, connection);
                        }
                    }
                }
                Order::Hangup {
                    uuid,
                    rule,
                    account,
                    dest,
                } => {
                    let why = format!(
                        "rule {rule}, account \"{}\", number \"{}\"",
                        escape_text(&account, 64),
                        escape_text(&dest, 32)
                    );
                    if kills.awaiting_reply.len() >= MAX_PENDING {
                        self.kills.failed.fetch_add(1, Ordering::Relaxed);
                        // Said at the 1st, 10th, 100th ...: a flood of calls
                        // must not become a flood of log lines.
                        let n = self.kills.unsent.fetch_add(1, Ordering::Relaxed) + 1;
                        if crate::source::rare(n, 1) {
                            tracing::error!(
                                "[{}] fraud: {MAX_PENDING} hang-ups await FreeSWITCH's answer; call {uuid} not hung up ({why}; {n} not sent so far)",
                                self.jail
                            );
                        }
                        continue;
                    }
                    // The one value from an event in a command: a UUID,
                    // written back from its bits.
                    commands.extend_from_slice(format!("bgapi uuid_kill {uuid}\n\n").as_bytes());
                    self.kills.sent.fetch_add(1, Ordering::Relaxed);
                    kills.awaiting_reply.push_back(Kill { uuid, why });
                }
                Order::Ban {
                    addr,
                    rule,
                    account,
                    bantime,
                } => (self.ban)(BanAsk {
                    jail: self.jail.clone(),
                    addr,
                    bantime,
                    why: format!(
                        "fraud rule {rule}, account \"{}\"",
                        escape_text(&account, 64)
                    ),
                }),
            }
        }
        commands
    }

    /// What status shows.
    pub fn view(&self, now: Time) -> FraudView {
        let v = self.watch.lock().map(|w| w.view(now)).unwrap_or_default();
        FraudView {
            hangups_sent: self.kills.sent.load(Ordering::Relaxed),
            hangups_confirmed: self.kills.confirmed.load(Ordering::Relaxed),
            hangups_failed: self.kills.failed.load(Ordering::Relaxed),
            ..v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::esl::FrameBuffer;

    /// A file of the call capture (`None`: the run opted out).
    fn corpus(file: &str) -> Option<Vec<u8>> {
        crate::test_support::corpus_file(&format!("freeswitch-1.10.12/calls/{file}"))
    }

    /// The capture's channel events, plain and JSON: inbound A-legs only
    /// (the voicemail loopback legs and B-legs are not calls of an
    /// account), accounts from the authenticated user, numbers as dialled.
    #[test]
    fn the_capture_reads_as_eight_a_legs_in_both_formats() {
        for file in ["esl-calls-plain.raw", "esl-calls-json.raw"] {
            let Some(raw) = corpus(file) else { return };
            let mut fb = FrameBuffer::default();
            fb.extend(&raw);
            let mut evs = Vec::new();
            fb.drain(|f| {
                if let Some(h) = named(&f) {
                    evs.extend(call_event(&h, Time(1_796_066_170_000)));
                }
            })
            .unwrap();
            let creates: Vec<(&str, &str)> = evs
                .iter()
                .filter(|e| e.kind == CallKind::Create)
                .map(|e| (&*e.account, &*e.dest))
                .collect();
            assert_eq!(creates.len(), 8, "{file}: {creates:?}");
            assert_eq!(creates[0], ("1001", "9196"), "{file}");
            assert!(creates.contains(&("1002", "0900123456")), "{file}");
            assert!(!creates.iter().any(|c| c.1 == "voicemail"), "{file}");
            let answers = evs.iter().filter(|e| e.kind == CallKind::Answer).count();
            assert_eq!(answers, 8, "{file}");
            assert!(
                evs.iter()
                    .all(|e| e.source == Some("10.77.0.5".parse().unwrap())),
                "{file}"
            );
            // Own times within a minute of "now" are kept: 19:16:03.627.
            assert_eq!(evs[0].time, Time(1_796_066_163_627), "{file}");
        }
    }

    /// A Unique-ID that is not a UUID is not followed: it could never be
    /// killed, and it never reaches a command.
    #[test]
    fn a_unique_id_that_is_not_a_uuid_is_not_followed() {
        let body = "Event-Name: CHANNEL_CREATE\nUnique-ID: x%0Aapi%20shutdown\nCall-Direction: inbound\nvariable_sip_auth_username: 1002\nCaller-Destination-Number: 0900\nCaller-Network-Addr: 203.0.113.5\n\n";
        let h = Named::Plain(PlainEvent::parse(body.as_bytes()));
        assert_eq!(call_event(&h, Time(0)), None);
        let ok = body.replace("x%0Aapi%20shutdown", "f4decbab-b940-42da-b61b-9b7852622e57");
        let h = Named::Plain(PlainEvent::parse(ok.as_bytes()));
        let e = call_event(&h, Time(0)).unwrap();
        assert_eq!((&*e.account, &*e.dest), ("1002", "0900"));
        // Without an authenticated user the source address is the account,
        // never the From user.
        let acl = ok.replace(
            "variable_sip_auth_username: 1002\n",
            "variable_sip_from_user: boss\n",
        );
        let h = Named::Plain(PlainEvent::parse(acl.as_bytes()));
        assert_eq!(
            &*call_event(&h, Time(0)).unwrap().account,
            "addr:203.0.113.5"
        );
    }

    /// Past [`MAX_PENDING`] kills awaiting FreeSWITCH's answer a kill is
    /// not sent: counted as failed, and said in the log rarely, not once
    /// per call (a held account calling in a flood, a reconnection with
    /// many held calls). Before, each such call wrote an error line.
    #[test]
    fn kills_past_the_bound_are_counted_and_logged_rarely() {
        #[derive(Clone, Default)]
        struct Log(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let to = log.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || to.clone())
            .finish();
        let cw = CallWatch {
            watch: Mutex::new(Watch::new(&[])),
            rules: Vec::new(),
            jail: "fs".into(),
            ban: Arc::new(|_| {}),
            kills: KillStats::default(),
        };
        let over = 2_000;
        let orders: Vec<Order> = (0..MAX_PENDING + over)
            .map(|n| Order::Hangup {
                uuid: Uuid::parse(&format!("f4decbab-b940-42da-b61b-{n:012x}")).unwrap(),
                rule: "premium".into(),
                account: "1002".into(),
                dest: "0900".into(),
            })
            .collect();
        let mut kills = Kills::default();
        let commands = tracing::subscriber::with_default(sub, || {
            cw.carry_out(orders, "127.0.0.1:8021", &mut kills)
        });
        let sent = String::from_utf8_lossy(&commands)
            .matches("bgapi uuid_kill ")
            .count();
        assert_eq!(sent, MAX_PENDING);
        assert_eq!(cw.kills.failed.load(Ordering::Relaxed), over as u64);
        let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        let lines = text.matches("not hung up").count();
        assert!(
            (1..=4).contains(&lines),
            "{lines} log lines for {over} calls"
        );
    }
}
