//! Webhook delivery: one POST of the report's JSON, signed when the target
//! has a secret, tried again a bounded number of times with a doubling
//! pause. Blocking: it runs on an action worker, never on the run loop.
//! The pause is passed in, so tests count pauses instead of sleeping.

use std::time::Duration as StdDuration;

use ring::hmac;

use super::config::{CaPem, Webhook};

/// The first pause between tries; each next one doubles.
const FIRST_PAUSE: StdDuration = StdDuration::from_secs(1);
/// The longest pause between tries (a server's `Retry-After` included).
const MAX_PAUSE: StdDuration = StdDuration::from_secs(60);

/// The signature header's value: `sha256=` and the lowercase hex HMAC-SHA256
/// of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// An HTTP client for one target: its timeout, no redirects (a redirect
/// could carry a key elsewhere), and its own roots when it has a CA file.
pub fn agent(timeout: crate::duration::Duration, ca: Option<&CaPem>) -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .timeout_global(Some(StdDuration::from_secs(timeout.0)))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(concat!("sipwarden/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&ca.0)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        b = b.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    b.build().into()
}

/// How one delivery ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// A 2xx answer, after this many tries.
    Ok {
        /// Tries made (1 = at once).
        tries: u32,
    },
    /// No 2xx answer; why, after this many tries.
    Failed {
        /// Tries made.
        tries: u32,
        /// The last answer's status or error (no URL, no secret).
        why: String,
    },
}

/// What one try answered.
enum Try {
    Done,
    /// Worth trying again (connection error, 5xx, 429), with the server's
    /// `Retry-After` when it gave one.
    Again(String, Option<StdDuration>),
    /// Not worth trying again (another 4xx, 3xx).
    Stop(String),
}

/// The pause before try `n` (from 2): 1 s, 2 s, 4 s ... up to
/// [`MAX_PAUSE`], or the server's `Retry-After` (also at most that).
pub fn pause_before(n: u32, retry_after: Option<StdDuration>) -> StdDuration {
    retry_after
        .unwrap_or_else(|| FIRST_PAUSE.saturating_mul(1u32 << n.saturating_sub(2).min(16)))
        .min(MAX_PAUSE)
}

/// `Retry-After` in seconds (the date form is not used by the services
/// this talks to, and is ignored).
pub fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<StdDuration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(StdDuration::from_secs)
}

fn try_once(agent: &ureq::Agent, w: &Webhook, body: &[u8]) -> Try {
    let mut req = agent
        .post(&w.url)
        .header("Content-Type", "application/json");
    if let Some(s) = &w.secret {
        req = req.header("X-Sipwarden-Signature", signature(s.expose(), body));
    }
    match req.send(body) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match status {
                200..=299 => Try::Done,
                429 | 500..=599 => Try::Again(format!("HTTP {status}"), retry_after(&resp)),
                _ => Try::Stop(format!("HTTP {status}")),
            }
        }
        Err(e) => Try::Again(error_text(&e), None),
    }
}

/// An error as a log may show it: ureq's errors name no URL and no header.
pub fn error_text(e: &ureq::Error) -> String {
    crate::event::escape_text(&e.to_string(), 300)
}

/// Delivers `body` to `w`: one try and at most `w.retries` more, with
/// `pause` called before each retry.
pub fn deliver(
    agent: &ureq::Agent,
    w: &Webhook,
    body: &[u8],
    pause: &mut dyn FnMut(StdDuration),
) -> Delivered {
    let mut tries = 0;
    let mut wait = None;
    loop {
        tries += 1;
        if tries > 1 {
            pause(pause_before(tries, wait));
        }
        match try_once(agent, w, body) {
            Try::Done => return Delivered::Ok { tries },
            Try::Stop(why) => return Delivered::Failed { tries, why },
            Try::Again(why, after) => {
                if tries > w.retries {
                    return Delivered::Failed { tries, why };
                }
                wait = after;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (HMAC-SHA256, key "Jefe").
    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pauses_double_and_stay_bounded() {
        let p: Vec<u64> = (2..=9).map(|n| pause_before(n, None).as_secs()).collect();
        assert_eq!(p, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(pause_before(40, None).as_secs(), 60);
        assert_eq!(
            pause_before(2, Some(StdDuration::from_secs(7))).as_secs(),
            7
        );
        assert_eq!(
            pause_before(2, Some(StdDuration::from_secs(86_400))).as_secs(),
            60
        );
    }
}
