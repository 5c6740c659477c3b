//! Injection resistance: hostile text (user names, user agents, domains,
//! Call-IDs) in every place a server quotes it, through every built-in
//! filter, the line splitter, the Event Socket parser and the Asterisk
//! manager parser. The only address any of them may ever report is the
//! real source.

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use crate::event::Time;
    use crate::filter::{FilterContext, FilterOptions, builtin};
    use crate::source::esl::{EventMapper, FrameBuffer};
    use crate::source::file::LineSplitter;
    use crate::source::scanner::ScannerList;

    const REAL: &str = "198.51.100.77";

    /// The corpus (`tests/fixtures/hostile-inputs.json`), plus what JSON
    /// cannot hold: invalid UTF-8 and a 64 KiB string.
    fn corpus() -> Vec<Vec<u8>> {
        let text = include_str!("../../tests/fixtures/hostile-inputs.json");
        let list: Vec<String> = serde_json::from_str(text).unwrap_or_default();
        assert!(list.len() >= 20, "the hostile corpus is in the repository");
        let mut out: Vec<Vec<u8>> = list.into_iter().map(String::into_bytes).collect();
        out.push(b"\xff\xfe from ip 1.2.3.4 \xc0\xaf".to_vec());
        out.push([b"A".repeat(64 * 1024), b" from ip 1.2.3.4".to_vec()].concat());
        out
    }

    /// How each server writes a failure, with `U` where it quotes attacker
    /// text and `A` where it writes the source. Kamailio's recommended line
    /// escapes its fields (`{s.escape.common}`), and `$fU` has no raw space.
    fn templates() -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "freeswitch",
                "2026-11-25 15:40:54.659156 98.73% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [{U}@{U}] from ip {A}",
            ),
            (
                "freeswitch",
                "2026-11-25 15:40:54.659156 [WARNING] sofia_reg.c:2531 Can't find user [{U}@{U}] from {A}",
            ),
            (
                "mod-fail2ban",
                "A registration failed user[{U}] ip[{A}] at[2026-11-25T15:40:54.659156+0000]",
            ),
            (
                "asterisk",
                "[2012-02-13 17:21:54] NOTICE[1638] chan_sip.c: Registration from '\"{U}\" <sip:{U}@example.com>' failed for '{A}' - Wrong password",
            ),
            (
                "asterisk",
                "[2016-05-23 10:18:16] NOTICE[19388] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '\"{U}\" <sip:{U}@10.0.0.1>' failed for '{A}:48336' (callid: {U}) - Failed to authenticate",
            ),
            (
                "asterisk",
                "[2013-02-05 23:44:42] NOTICE[436] chan_sip.c: Call from '{U}' ({A}:10836) to extension '{U}' rejected because extension not found in context 'default'.",
            ),
            (
                "asterisk",
                "[2013-05-13 07:10:53] SECURITY[1204] res_security_log.c: SecurityEvent=\"InvalidAccountID\",EventTV=\"1368439853-500975\",Severity=\"Error\",Service=\"SIP\",EventVersion=\"1\",AccountID=\"{U}\",SessionID=\"{U}\",LocalAddress=\"IPV4/UDP/10.0.0.1/5060\",RemoteAddress=\"IPV4/UDP/{A}/5070\"",
            ),
            (
                "kamailio",
                " 2(6039) NOTICE: 2026-11-25T16:25:55 <script>: AUTH FAILED: user={K} ip={A} port=5060 method=REGISTER reason=wrong_password ua={E}",
            ),
            (
                "opensips",
                "Nov 25 16:25:55 pbx opensips[12]: AUTH FAILED: user={K} ip={A} port=5060 method=INVITE reason=wrong_password ua={E}",
            ),
            (
                "kamailio",
                " 2(7928) ALERT: 2026-11-25T16:29:21 <script>: ALERT: pike blocking REGISTER from sip:{K}@10.201.80.1 (IP:{A}:5060)",
            ),
            (
                "sshd",
                "Nov 25 10:00:01 pbx sshd[123]: Failed password for invalid user {U} from {A} port 4242 ssh2",
            ),
            (
                "sshd",
                "Nov 25 10:00:01 pbx sshd[123]: Invalid user {U} from {A} port 4242",
            ),
            (
                "sshd",
                "Nov 25 10:00:01 pbx sshd[123]: User {U} from {A} not allowed because not listed in AllowUsers",
            ),
        ]
    }

    /// Kamailio's `{s.escape.common}` and SIP's URI escaping of a user.
    fn sip_user(u: &[u8]) -> Vec<u8> {
        u.iter()
            .flat_map(|&c| {
                if c.is_ascii_graphic() {
                    vec![c]
                } else {
                    format!("%{c:02X}").into_bytes()
                }
            })
            .collect()
    }
    fn escape_common(u: &[u8]) -> Vec<u8> {
        u.iter()
            .flat_map(|&c| match c {
                b'\n' => b"\\n".to_vec(),
                b'\r' => b"\\r".to_vec(),
                b'"' | b'\'' | b'\\' => vec![b'\\', c],
                0 => b"\\0".to_vec(),
                c => vec![c],
            })
            .collect()
    }

    fn fill(template: &str, u: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = template;
        while let Some(p) = rest.find('{') {
            out.extend_from_slice(&rest.as_bytes()[..p]);
            let tag = &rest[p..(p + 3).min(rest.len())];
            match tag {
                "{A}" => out.extend_from_slice(REAL.as_bytes()),
                "{U}" => out.extend_from_slice(u),
                "{K}" => out.extend_from_slice(&sip_user(u)),
                "{E}" => out.extend_from_slice(&escape_common(u)),
                _ => {
                    out.push(b'{');
                    rest = &rest[p + 1..];
                    continue;
                }
            }
            rest = &rest[p + 3..];
        }
        out.extend_from_slice(rest.as_bytes());
        out
    }

    #[test]
    fn filters_only_ever_report_the_real_source() {
        let real: IpAddr = REAL.parse().unwrap();
        let cx = FilterContext {
            tz: jiff::tz::TimeZone::UTC,
            now: Time(1_795_621_254_000),
        };
        let mut checked = 0;
        for (name, template) in templates() {
            let f = builtin(name, FilterOptions::default()).unwrap();
            // Positive control: with a harmless user every template matches.
            let benign = f.match_line(&fill(template, b"alice"), &cx).map(|m| m.addr);
            assert_eq!(
                benign,
                Some(real),
                "template of {name} must match: {template}"
            );
            for hostile in corpus() {
                let mut text = fill(template, &hostile);
                // As followed from a file: split at newlines, long lines dropped.
                let mut seen = Vec::new();
                let mut splitter = LineSplitter::default();
                text.push(b'\n');
                splitter.push(&text, &mut |line| {
                    if let Some(m) = f.match_line(line, &cx) {
                        seen.push((
                            m.addr,
                            String::from_utf8_lossy(line)
                                .chars()
                                .take(200)
                                .collect::<String>(),
                        ));
                    }
                });
                for (addr, line) in &seen {
                    assert_eq!(*addr, real, "filter {name} reported {addr} for {line:?}");
                }
                checked += 1;
            }
        }
        assert!(checked > 300);
    }

    #[test]
    fn esl_events_only_ever_report_network_ip() {
        let real: IpAddr = REAL.parse().unwrap();
        let mapper = EventMapper {
            jail: crate::event::JailId(0),
            window: crate::source::Window::new(crate::duration::Duration(600)),
            scanners: Arc::new(ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS)),
        };
        for hostile in corpus() {
            // FreeSWITCH percent-encodes values in plain events.
            let enc: String = hostile
                .iter()
                .map(|&c| {
                    if c.is_ascii_alphanumeric() {
                        (c as char).to_string()
                    } else {
                        format!("%{c:02X}")
                    }
                })
                .collect();
            let body = format!(
                "Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister_failure\nto-user: {enc}\nto-host: {enc}\nuser-agent: {enc}\nnetwork-ip: {REAL}\nregistration-type: REGISTER\n\n"
            );
            let frame = format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
                body.len()
            );
            let mut fb = FrameBuffer::default();
            fb.extend(frame.as_bytes());
            let mut got = Vec::new();
            let mut hb = false;
            fb.drain(|f| got.extend(mapper.map(&f, Time(0), &mut hb)))
                .unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].addr, real);
        }
    }

    /// Asterisk's manager writes attacker text raw (AccountID, SessionID,
    /// a digest Response): whatever it holds, line breaks included, the
    /// only address ever counted is RemoteAddress's; a value without a
    /// line break leaves the event counted.
    #[test]
    fn ami_events_only_ever_report_remote_address() {
        use crate::source::ami::frame::MessageBuffer;
        use crate::source::ami::{AmiMapper, Mapped};
        let real: IpAddr = REAL.parse().unwrap();
        let mut whole = 0;
        for hostile in corpus() {
            let mut mapper = AmiMapper::new(crate::event::JailId(0));
            let mut ev = b"Event: ChallengeResponseFailed\r\nPrivilege: security,all\r\nEventTV: 2026-12-01T02:15:00.000+0000\r\nSeverity: Error\r\nService: PJSIP\r\nEventVersion: 1\r\nAccountID: ".to_vec();
            ev.extend_from_slice(&hostile);
            ev.extend_from_slice(b"\r\nSessionID: ");
            ev.extend_from_slice(&hostile);
            ev.extend_from_slice(
                b"\r\nLocalAddress: IPV4/UDP/192.0.2.1/5060\r\nRemoteAddress: IPV4/UDP/",
            );
            ev.extend_from_slice(REAL.as_bytes());
            ev.extend_from_slice(b"/5060\r\nChallenge: 1/2\r\nResponse: ");
            ev.extend_from_slice(&hostile);
            ev.extend_from_slice(b"\r\nExpectedResponse: \r\n\r\n");
            let mut mb = MessageBuffer::default();
            mb.extend(&ev);
            let mut got = Vec::new();
            if mb
                .drain(|m| {
                    if let Mapped::Event(e) = mapper.read(&m, Time(0)) {
                        got.push(e.addr);
                    }
                })
                .is_err()
            {
                // Longer than a line may be: the connection is dropped.
                assert!(hostile.len() > crate::source::ami::frame::MAX_LINE);
                continue;
            }
            assert!(got.iter().all(|a| *a == real), "{got:?}");
            if !hostile.iter().any(|&c| c == b'\r' || c == b'\n') {
                assert_eq!(got.len(), 1, "{:?}", String::from_utf8_lossy(&hostile));
                whole += 1;
            }
        }
        assert!(whole >= 15, "{whole}");
    }
}
