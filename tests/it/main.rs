//! Integration tests: the real `sipwarden` binary, driven from outside.
//!
//! One test binary (compile time matters on two cores); each area is a module.

mod actions;
mod ami;
mod burst;
mod cli;
mod cluster;
mod common;
mod config;
mod control;
mod dry_run;
mod edges;
mod esl;
mod f2b_regex;
mod faults;
mod feeds;
mod fleet;
mod follow;
mod fraud;
mod glob;
mod hep;
mod http;
mod ignore_files;
mod ipv6;
mod journal;
mod kamailio;
mod kernel_truth;
mod names;
mod nft;
mod notify;
mod owner;
mod package;
mod probe;
mod restart;
mod scope;
mod supervise;
mod wire;

// What a test needs from the machine: shared with the unit tests.
#[path = "../../src/test_support.rs"]
mod test_support;
