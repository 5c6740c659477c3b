//! The probe's port-scoped ban: a source banned by a jail with `port` (and
//! `protocol`) loses only that traffic. The first scoped jail of the
//! configuration is proved, or, without one, the probe's own scope (UDP and
//! TCP to 5060-5061, SIP's ports): traffic in scope stops, an established
//! UDP flow to a port outside it keeps flowing with its conntrack entry,
//! and TCP to a port outside it (22, as SSH) still connects.

use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

use super::netns::{Budget, Pair, ProbeError, addr, inside};
use super::traffic::{self, Listeners};
use super::{Out, PORT, WAIT, ban};
use crate::enforce::{Enforcer, NftEnforcer, PortScope, Proto};
use crate::event::JailId;

/// The probe's own scope when the configuration has none: SIP's ports.
pub fn own_scope() -> Option<PortScope> {
    PortScope::new(&[Proto::Udp, Proto::Tcp], &[(5060, 5061)])
}

/// Ports tried, in order, as the one outside the scope.
const OUTSIDE: [u16; 5] = [22, 2222, 8022, 40022, 1];

const TCP: u8 = 6;
const UDP: u8 = 17;

/// What the scoped proof shares with the rest of the probe.
pub struct Ctx<'a> {
    /// The namespaces.
    pub pair: &'a Pair,
    /// The probe's time.
    pub budget: &'a Budget,
    /// The listeners on the probe's port.
    pub main: &'a Listeners,
    /// Whether the namespace tracks connections.
    pub conntrack: bool,
}

/// Proves `scope` (jail `jail`'s, described by `whose`) with the enforcer;
/// returns the enforcer.
pub fn prove(
    ctx: &Ctx<'_>,
    mut enforcer: NftEnforcer,
    jail: JailId,
    scope: &PortScope,
    whose: &str,
    out: &mut Out,
) -> Result<NftEnforcer, ProbeError> {
    let (pair, budget, main) = (ctx.pair, ctx.budget, ctx.main);
    let lim = |d: Duration| budget.at_most(d);
    let src: IpAddr = addr::SCOPED_V4;
    let label = format!("scoped ban ({whose}, {scope})");
    let Some(&(inside_port, _)) = scope.ports().first() else {
        return Ok(enforcer);
    };
    let Some(outside_port) = OUTSIDE
        .into_iter()
        .find(|&p| !scope.matches(TCP, p) && !scope.matches(UDP, p))
    else {
        out.warn(format!(
            "{label}: it covers every port tried outside it ({OUTSIDE:?}); not proved"
        ));
        return Ok(enforcer);
    };
    budget.check()?;
    let own;
    let in_l = if inside_port == PORT {
        main
    } else {
        own = Listeners::open(&pair.b, inside_port, lim(Duration::from_secs(5)))?;
        &own
    };
    let out_l = Listeners::open(&pair.b, outside_port, lim(Duration::from_secs(5)))?;
    let at = std::net::SocketAddr::new(src, 0);
    let u = inside(&pair.a, lim(Duration::from_secs(5)), move || {
        UdpSocket::bind(at)
    })?
    .map_err(|e| ProbeError::Step(format!("binding UDP {src}: {e}")))?;

    // Before: UDP flows to a port inside and one outside, both answered.
    let a = traffic::udp(&u, &in_l.udp4, 3, "scoped-in", lim(WAIT * 2), true)?;
    let b = traffic::udp(&u, &out_l.udp4, 3, "scoped-out", lim(WAIT * 2), true)?;
    out.check(
        a.answered && b.answered,
        format!(
            "{label}, before the ban: UDP flows from {src} to ports {inside_port} and {outside_port}: {} and {} of 3 arrived, both answered: {}",
            a.arrived,
            b.arrived,
            if a.answered && b.answered { "yes" } else { "NO" }
        ),
    );

    budget.check()?;
    let decisions = vec![ban(jail, src)];
    let (back, applied) = inside(&pair.b, lim(Duration::from_secs(10)), move || {
        let r = enforcer.apply(&decisions);
        // The conntrack flush the daemon runs after answering the batch.
        enforcer.flush_pending();
        (enforcer, r)
    })?;
    enforcer = back;
    match applied {
        Ok(r) if r.is_empty() => out.ok(format!("{label}: banned {src} through the enforcer")),
        Ok(r) => {
            for x in r {
                out.fail(format!(
                    "{label}: the enforcer refused the ban: {}",
                    x.reason
                ));
            }
        }
        Err(e) => out.fail(format!("{label}: the enforcer failed to ban: {e}")),
    }

    // After: what the scope covers stops, the rest passes.
    budget.check()?;
    let udp_in = scope.matches(UDP, inside_port);
    let got = traffic::udp(&u, &in_l.udp4, 3, "scoped-in-after", lim(WAIT), false)?;
    let want = if udp_in { 0 } else { 3 };
    out.check(
        got.arrived == want,
        format!(
            "{label}, after the ban: UDP to port {inside_port} ({}): {} of 3 arrived",
            if udp_in {
                "in scope"
            } else {
                "UDP is not in scope"
            },
            got.arrived
        ),
    );
    let tcp_in = scope.matches(TCP, inside_port);
    let (_, peer) = traffic::tcp_connect(&pair.a, src, in_l, lim(WAIT))?;
    out.check(
        peer.is_some() != tcp_in,
        format!(
            "{label}, after the ban: TCP to port {inside_port} ({}): {}",
            if tcp_in {
                "in scope"
            } else {
                "TCP is not in scope"
            },
            if peer.is_some() {
                "connected"
            } else {
                "not connected"
            }
        ),
    );
    let got = traffic::udp(&u, &out_l.udp4, 3, "scoped-out-after", lim(WAIT * 2), false)?;
    out.check(
        got.arrived == 3,
        format!(
            "{label}, after the ban: the established UDP flow to port {outside_port} (outside the scope): {} of 3 arrived",
            got.arrived
        ),
    );
    let (_, peer) = traffic::tcp_connect(&pair.a, src, &out_l, lim(WAIT * 2))?;
    out.check(
        peer.is_some(),
        format!(
            "{label}, after the ban: TCP to port {outside_port} (outside the scope, as SSH): {}",
            if peer.is_some() {
                "connected"
            } else {
                "NOT connected"
            }
        ),
    );
    if ctx.conntrack {
        let entries = traffic::conntrack_from(&pair.b, &[src], lim(Duration::from_secs(5)))?;
        let covered = entries
            .iter()
            .filter(|e| scope.matches(e.proto, e.dport))
            .count();
        let kept = entries
            .iter()
            .filter(|e| e.proto == UDP && e.dport == outside_port)
            .count();
        out.check(
            covered == 0 && kept > 0,
            format!(
                "{label}, after the ban: conntrack holds {covered} entr{} from {src} in scope and {kept} for the UDP flow to port {outside_port} (only matching entries are flushed)",
                if covered == 1 { "y" } else { "ies" }
            ),
        );
    }
    Ok(enforcer)
}
