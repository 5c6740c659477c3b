//! fail2ban 1.1's `ignoreip = file:/path` in the running daemon: read before
//! the first event, read again when the file changes, a broken edit keeping
//! the last good list (no kernel needed: `backend = "none"`).

use std::time::Duration;

use crate::common::{Daemon, TempDir, append, daemon_section};

fn failure(ip: &str) -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
    format!(
        "{now} 12.50% [WARNING] sofia_reg.c:1787 SIP auth failure (REGISTER) on sofia profile 'internal' for [1000@pbx] from ip {ip}\n"
    )
}

#[test]
fn an_ignoreip_file_is_followed_and_a_broken_edit_keeps_the_last_good_list() {
    let dir = TempDir::new("ignfile");
    let log = dir.path("freeswitch.log");
    let list = dir.path("ignore.txt");
    std::fs::write(&log, "").unwrap();
    std::fs::write(&list, "# the office\n203.0.113.1\n").unwrap();
    let cfg = dir.path("sipwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[defaults]\nmaxretry = 1\nignoreself = false\n[firewall]\nbackend = \"none\"\n\
             [jail.freeswitch]\nfilter = \"freeswitch\"\nlogtimezone = \"UTC\"\nlogpath = \"{}\"\n\
             ignoreip = [\"127.0.0.1\", \"file:{}\"]\n",
            daemon_section(&dir),
            log.display(),
            list.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let wait = |what: &str| d.wait_for(what, Duration::from_secs(10));
    assert!(wait(&format!("{}: following", log.display())).is_some());
    let shown = format!("ignoreip file {}", list.display());
    assert!(wait(&format!("{shown}: 1 address(es)")).is_some());

    // Read before the first event: the listed address is never counted.
    append(&log, &(failure("203.0.113.1") + &failure("203.0.113.2")));
    assert!(wait("[freeswitch] Ban 203.0.113.2").is_some());
    assert!(d.lines_with("Ban 203.0.113.1").is_empty());

    // A typo: refused with file:line, the last good list stays in force.
    std::fs::write(&list, "203.0.113.1\n203.0.113.x\n").unwrap();
    let warned = wait("keeping the last good list").expect("a broken edit is told");
    assert!(
        warned.contains(&format!("{}:2:", list.display())),
        "{warned}"
    );
    append(&log, &(failure("203.0.113.1") + &failure("203.0.113.3")));
    assert!(wait("[freeswitch] Ban 203.0.113.3").is_some());
    assert!(d.lines_with("Ban 203.0.113.1").is_empty());

    // A good edit: read again without a reload.
    std::fs::write(&list, "203.0.113.4\n198.51.100.0/24 # branch\n").unwrap();
    assert!(wait(&format!("{shown}: 2 address(es)")).is_some());
    append(&log, &(failure("198.51.100.7") + &failure("203.0.113.1")));
    assert!(wait("[freeswitch] Ban 203.0.113.1").is_some());
    assert!(d.lines_with("Ban 198.51.100.7").is_empty());
    assert!(d.stop().is_some_and(|s| s.success()));
}
