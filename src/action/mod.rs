//! fail2ban's actions beside the kernel ban: mail on ban, AbuseIPDB
//! reports, the user's own scripts.
//!
//! ```text
//! jail's `action =` / `actions = [...]` ──► ActionRef (spec.rs)
//!        action.d/NAME.conf ──► Action (load.rs: [Definition], [Init], tags)
//! accepted ban ──► Ticket ──► Command (text + f2bV_* environment)
//!                                 ──► Runner (runner.rs: `sh -c`, a small pool, a timeout each)
//! ```
//!
//! An action's commands run as fail2ban runs them: `sh -c TEXT`. The text is
//! the action file's command with its options substituted (the operator's
//! configuration); what an attacker can influence (`<matches>`, `<F-USER>`,
//! ...) is never part of it: such a tag becomes `${f2bV_NAME}` and its value
//! travels in that environment variable (see [`load::DynamicTag`]).
//!
//! The firewall actions sipwarden replaces (iptables, nftables, ...) are
//! never run ([`spec::replaced_by_sipwarden`]).

pub mod load;
pub mod runner;
pub mod set;
pub mod spec;

pub use load::{Action, Command, Phase, Ticket};
pub use runner::{ActionStats, ActionsView, Runner};
pub use set::ActionSet;
pub use spec::{ActionRef, SpecError};
