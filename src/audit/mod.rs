//! The audit log: every decision and service event, hash-chained, signed, searchable.
//!
//! This module owns the on-disk store and everything that reads it; it does not decide anything
//! and does not know about the DNS server (the server hands it `DecisionRecord`s).
//!
//! # Layout
//! - `settings`: the `[audit]` config section (`AuditSettings`).
//! - `record`: the stored record model (`Entry`, `QueryEntry`, service entries) and `Timestamp`.
//! - `segment`: the byte format (see `FORMAT.md`): segment headers, record lines, the chain hash.
//! - `keys`: Ed25519 key files (`keygen`) and the checkpoint signature message.
//! - `writer`: `AuditLog::open` → `AuditHandle` (query path, never blocks) + `AuditWriter` (thread).
//! - `verify`: chain and signature verification of a directory or an export file.
//! - `query`: streaming `search`, `summary` and `export`.
//! - `follow`: `search --follow`, the search and then each new matching record.
//! - `cli`: the `dnsward audit …` subcommands.
//!
//! The byte format is specified in `src/audit/FORMAT.md`.

pub mod cli;
pub mod follow;
mod json;
pub mod keys;
pub mod query;
pub mod record;
pub mod segment;
pub mod settings;
pub mod verify;
pub mod writer;

use std::path::PathBuf;

pub use query::{ExportFormat, Filter, Summary, TimeRange, export, search, summary};
pub use record::{Entry, QueryEntry, Timestamp};
pub use settings::{Anonymize, AuditSettings, WhenUnwritable};
pub use verify::{VerifyReport, verify, verify_signed_by};
pub use writer::{
    AuditHandle, AuditLog, AuditWriter, InstanceId, ListFile, ServiceEvent, ShownClient,
};

/// Everything that can go wrong in the audit library. Tampering found by `verify` is not an error
/// (it is the answer, in `VerifyReport`); these are failures to do the work at all.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing to the audit output: {0}")]
    Output(#[source] std::io::Error),
    #[error("{path}: not a key file: {reason}")]
    Key { path: PathBuf, reason: &'static str },
    #[error("{path}: {reason}")]
    KeyDir { path: PathBuf, reason: &'static str },
    #[error(
        "{path}: this is the private signing key of the key that signed the log: give the \
         .pub file that keygen wrote, and keep the .key secret"
    )]
    PrivateKeyGiven { path: PathBuf },
    #[error("{path}: refusing to overwrite an existing key file")]
    KeyExists { path: PathBuf },
    #[error("{path}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("nothing exported: {0}")]
    ExportHole(query::Hole),
    #[error(
        "{path}: removed while it was being exported (retention, on a log that fills its size \
         limit faster than the export reads it): the export would have a hole; export again, \
         or a range that starts later"
    )]
    RemovedDuringExport { path: PathBuf },
    #[error("audit.anonymize = \"hash\" needs audit.anonymize_key")]
    MissingAnonymizeKey,
    #[error("{path}: the anonymize key must be at least 16 bytes, found {len}")]
    ShortAnonymizeKey { path: PathBuf, len: usize },
    #[error("invalid time {value:?} (expected RFC 3339, e.g. 2025-01-31T12:00:00Z): {source}")]
    InvalidTime {
        value: String,
        #[source]
        source: time::error::Parse,
    },
    #[error(
        "time {value:?} is past 9999-12-31T23:59:59.999999Z, the last time the log's stored \
         form can hold"
    )]
    TimeOutOfRange { value: String },
    #[error(
        "invalid duration {value:?}: expected a whole number and a unit s, m, h, d or w \
         (90s, 15m, 2h, 7d)"
    )]
    InvalidDuration { value: String },
    #[error("invalid client {value:?}: expected an IP address or a CIDR network")]
    InvalidClient { value: String },
    #[error(
        "{value}: a network cannot be searched in a log whose clients are hashed (anonymize = \
         \"hash\"): give one address, or a stored hash"
    )]
    HashedNetwork { value: String },
    #[error("invalid decision {value:?}: expected allowed, blocked, logged, refused or error")]
    InvalidDecision { value: String },
    #[error("{}: no audit log here (no segment files); check --dir or [audit] dir", dir.display())]
    NoLog { dir: PathBuf },
    #[error("{flag}: {source}")]
    Argument {
        flag: &'static str,
        #[source]
        source: Box<Self>,
    },
    #[error("no records in the time range{}{}", range.from.map(|t| format!(" from {t}")).unwrap_or_default(), range.to.map(|t| format!(" until {t}")).unwrap_or_default())]
    NothingInRange { range: query::TimeRange },
    #[error("{start} {from} is not before --to {to}: the range is empty")]
    EmptyRange {
        /// `--from` or `--since`, whichever started the range.
        start: &'static str,
        from: Timestamp,
        to: Timestamp,
    },
    #[error("invalid qtype {value:?}: expected a record type such as A, AAAA, HTTPS or TYPE65")]
    InvalidQtype { value: String },
    #[error("invalid domain {value:?}: {reason}")]
    InvalidDomain { value: String, reason: String },
    #[error(
        "{}: in use by another running dnsward ({holder}); two writers on one log would fork \
         its chain, so give each instance its own server.data_dir (or [audit] dir)",
        dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
    /// An error in a file a setting names: says which setting.
    #[error("{key}: {source}")]
    Setting {
        key: &'static str,
        #[source]
        source: Box<Self>,
    },
    #[error("the audit writer thread could not be started: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the audit writer thread panicked")]
    WriterPanicked,
    #[error("encoding a record: {0}")]
    Encode(#[source] serde_json::Error),
}

impl AuditError {
    /// Names the `[audit]` setting an error is about.
    pub fn for_setting(key: &'static str) -> impl FnOnce(Self) -> Self {
        move |error| Self::Setting {
            key,
            source: Box::new(error),
        }
    }

    /// Names the command-line argument an error is about.
    pub fn for_flag(flag: &'static str) -> impl FnOnce(Self) -> Self {
        move |error| Self::Argument {
            flag,
            source: Box::new(error),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
