//! The command line's grammar: the clap definitions of every verb. The man
//! page and the shell completions are generated from them (`sipwarden man`,
//! `sipwarden completions SHELL`, run by packaging/build-deb.sh), so a doc
//! comment here is a line of the manual.

// `<HOST>` in help text is fail2ban's tag, printed as is, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// SIP-aware intrusion prevention: counts failures per source address and
/// bans in the kernel.
#[derive(Parser, Debug)]
#[command(name = "sipwarden", version, about, max_term_width = 100)]
pub struct Cli {
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every verb that talks to the running daemon.
#[derive(Args, Debug, Clone)]
pub struct Talk {
    /// Control socket [default: `[daemon] socket` of the configuration,
    /// else /run/sipwarden/sipwarden.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration whose `[daemon] socket` to use.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of text (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file [default: /etc/sipwarden/sipwarden.toml, else the
        /// embedded default].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log decisions only; touch no firewall (same as `backend = "none"`).
        #[arg(long)]
        dry_run: bool,
        /// Also run the enabled jails of this fail2ban configuration
        /// (e.g. /etc/fail2ban: jail.conf, jail.d/, jail.local, filter.d/);
        /// sipwarden's nftables enforcer bans instead of fail2ban's actions.
        #[arg(long, value_name = "DIR")]
        fail2ban_config: Option<PathBuf>,
    },
    /// Check this machine and the configuration; one line per check, with
    /// what to fix. Exits non-zero when a check fails.
    Doctor {
        /// Configuration file [default: /etc/sipwarden/sipwarden.toml, else the
        /// embedded default].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Instead of the checks (root): prove in a private pair of network
        /// namespaces that a ban drops UDP and TCP before conntrack and stops
        /// an established flow, then report what on this host could let a
        /// banned source past sipwarden's chain (XDP, tc redirects, netdev
        /// chains, NFQUEUE, earlier prerouting chains). Exits 0 (pass), 1
        /// (the probe failed), 2 (passed, but the host can bypass it) or 130
        /// (interrupted; the namespaces are deleted first).
        #[arg(long)]
        probe: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `sipwarden man > sipwarden.1`.
    Man,
    /// Print the sipwarden TOML equivalent of a fail2ban configuration.
    ImportFail2ban {
        /// fail2ban configuration directory (e.g. /etc/fail2ban).
        dir: PathBuf,
    },
    /// Validate a configuration file; exits non-zero on error.
    Check {
        /// Configuration file [default: /etc/sipwarden/sipwarden.toml, else the
        /// embedded default].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run fail2ban's annotated sample logs against fail2ban filter files
    /// and report pass/fail per evaluation.
    Samples {
        /// fail2ban configuration directory (holding filter.d/).
        #[arg(long, value_name = "DIR")]
        config: PathBuf,
        /// Directory of annotated sample logs (one file per filter name).
        #[arg(long, value_name = "DIR")]
        logs: PathBuf,
        /// Only this filter.
        #[arg(long, value_name = "NAME")]
        filter: Option<String>,
        /// Print the report as JSON (`total`, `passed`, `failed`, ...).
        #[arg(long)]
        json: bool,
    },
    /// Run a log file through a filter, like fail2ban-regex: a built-in filter
    /// name, a fail2ban filter file (`path/to/sshd.conf[mode=aggressive]`), or
    /// a regex with <HOST>.
    TestFilter {
        /// The log file.
        log: PathBuf,
        /// Built-in name, fail2ban filter file, or regex.
        filter: String,
        /// Print the counts as JSON (`lines`, `matched`, `ignored`, `missed`).
        #[arg(long)]
        json: bool,
        /// Print up to this many missed lines.
        #[arg(long, value_name = "N", default_value_t = 0)]
        show_missed: usize,
        /// Print every missed line (as fail2ban-regex's option).
        #[arg(long)]
        print_all_missed: bool,
        /// Print every matched line (as fail2ban-regex's option).
        #[arg(long)]
        print_all_matched: bool,
        /// Zone of zone-less timestamps.
        #[arg(long, default_value = "local")]
        logtimezone: String,
    },
    /// Jails with their counts, or one jail in detail with its banned addresses.
    Status {
        /// Show this jail in detail.
        jail: Option<String>,
        /// Show one page of this many bans (at most 10,000) instead of every
        /// ban; with --json the page carries `next_cursor` when more follow.
        #[arg(long, value_name = "N", requires = "jail")]
        limit: Option<usize>,
        /// Start the page after this cursor (a page's `next_cursor`).
        #[arg(long, value_name = "CURSOR", requires = "jail")]
        cursor: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Ban an address or prefix by hand.
    Ban {
        /// The jail the ban belongs to.
        jail: String,
        /// Address or CIDR prefix (e.g. 203.0.113.7, 198.51.100.0/24).
        addr: String,
        /// Ban length, e.g. 30m, 2h, 1d; -1 for permanent [default: the jail's bantime].
        #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true)]
        duration: Option<String>,
        /// Ban even an address in ignoreip or one of this host's.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Lift a ban (in every jail unless --jail), or every ban with --all.
    Unban {
        /// Address or CIDR prefix.
        #[arg(required_unless_present = "all")]
        addr: Option<String>,
        /// Only in this jail.
        #[arg(long)]
        jail: Option<String>,
        /// Every ban (of --jail, or of all jails).
        #[arg(long, conflicts_with = "addr")]
        all: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Re-read the configuration; one that does not parse, is empty or would
    /// remove every running jail is refused and the old one keeps running.
    Reload {
        /// Apply it even when empty or removing every running jail (their
        /// bans are lifted).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        talk: Talk,
    },
    /// Check that the daemon answers.
    Ping {
        #[command(flatten)]
        talk: Talk,
    },
    /// fail2ban-client spellings: `set JAIL banip ADDR`, `set JAIL unbanip ADDR`.
    Set {
        /// The jail.
        jail: String,
        /// `banip` or `unbanip`.
        #[arg(value_parser = ["banip", "unbanip"])]
        action: String,
        /// Address or prefix.
        addr: String,
        #[command(flatten)]
        talk: Talk,
    },
}

/// `sipwarden config ...`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the embedded default configuration (commented: it is the reference).
    Default,
}
