//! dnsward: a DNS filtering resolver that blocks, or quietly watches, listed domains and records
//! every decision.
//!
//! # Layout
//! - `audit`: the hash-chained, signed decision trail: writer, verify, search, summary, export.
//! - `config`: the TOML file's model and its validated, typed form.
//! - `files`: reading operator-supplied files (regular files only: a FIFO would hang a reload).
//! - `lists`: list file syntax (plain, hosts, adblock, `*.`), loading, and the domain matcher.
//! - `policy`: which list and rule decides a name; the decision record.
//! - `state`: config + ACL + compiled policy as one immutable, swappable snapshot.
//! - `server`: hickory-server listeners and the request path (`handler`), ACL, sinkhole answers.
//! - `preview`: `lists diff`, what an edit on disk changes against the serving generation.
//! - `reload`: SIGHUP and file-watch reloads that swap in a whole new state or keep the old.
//! - `resolve`: getting answers for allowed questions (forwarding to upstreams).
//! - `snapshot`: the copy of every list as loaded and the serving generation's manifest.
//! - `cache`: the positive and negative answer cache (RFC 2308).
//! - `logging`: `tracing` set-up from config and `RUST_LOG`.
//! - `sched`: scheduling classes for background threads (reload builder, audit writer).

pub mod audit;
pub mod cache;
pub mod clock;
pub mod config;
pub mod files;
pub mod lists;
pub mod logging;
pub mod policy;
pub mod preview;
pub mod reload;
pub mod resolve;
pub mod sched;
pub mod server;
pub mod snapshot;
pub mod state;
