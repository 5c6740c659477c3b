//! sipwarden: a SIP-aware intrusion-prevention daemon.
//!
//! The flow, and the modules in its order:
//!
//! ```text
//! source ──► filter ──► event ──► jail ──► enforce
//! (files)   (one line,  (Failure  (count,   (nftables,
//!            one event)  Event)    decide)   or log only)
//! ```
//!
//! [`config`] reads the TOML configuration; [`daemon`] wires the stages
//! together with tokio; [`store`] keeps ban history in SQLite; [`control`]
//! is the socket the CLI talks to.

pub mod config;
pub mod control;
pub mod daemon;
pub mod enforce;
pub mod event;
pub mod filter;
pub mod jail;
pub mod source;
pub mod store;
