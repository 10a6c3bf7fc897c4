//! The `[audit]` configuration section. It owns defaults and their reasons; it does not open
//! anything (the writer does) and does not know where the config file lives (the config loader
//! resolves `dir` against `server.data_dir`, the key files against the config file's directory).

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// Smallest `segment_max_bytes`: a few records per segment (tests rotate at this size).
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest `retention_max_age_days` (100 years), so the age in seconds cannot overflow.
pub const MAX_RETENTION_DAYS: u64 = 36_500;
/// Largest `checkpoint_interval_secs`: well inside `verify`'s 30 s unsigned-tail tolerance,
/// with room for a writer that is seconds behind.
pub const MAX_CHECKPOINT_INTERVAL_SECS: u64 = 20;

/// `[audit]`: where and how the decision trail is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Record every decision. Default `true`: the trail is the point of dnsward; turning it off
    /// must be a deliberate choice.
    pub enabled: bool,
    /// Directory of the segment files. Default `"audit"`, relative to `server.data_dir`.
    pub dir: PathBuf,
    /// A segment is closed (and signed) once it reaches this many bytes. Default 64 MiB: small
    /// enough that retention frees space in useful steps and a reader can hold one in memory.
    pub segment_max_bytes: u64,
    /// A segment is closed once it is this old, in seconds. Default 3600: hourly files are easy
    /// to hand to an auditor and let time-bounded searches skip whole files.
    pub segment_max_age_secs: u64,
    /// Closed segments older than this many days are removed. Default 90, a common retention
    /// period for security logs; 0 disables age-based removal.
    pub retention_max_age_days: u64,
    /// Oldest closed segments are removed while the directory holds more than this many bytes.
    /// Default 10 GiB, so a busy resolver cannot fill its disk; 0 disables size-based removal.
    pub retention_max_total_bytes: u64,
    /// Data is fsynced at most this many milliseconds after it was written. Default 1000: a
    /// crash (power loss) loses at most about a second. 0 fsyncs every batch (slower, safest).
    pub fsync_interval_ms: u64,
    /// While records flow, a signed checkpoint over the chain head is written at least this
    /// often, in seconds. Default 5: bounds how much of the tail is covered by the chain alone.
    /// At most 20 with a signing key (see `MAX_CHECKPOINT_INTERVAL_SECS`).
    pub checkpoint_interval_secs: u64,
    /// Ed25519 private key file written by `dnsward audit keygen`. Default none: the chain is
    /// still written, and `verify` reports the log as unsigned.
    pub signing_key: Option<PathBuf>,
    /// Records queued between the query path and the writer thread. Default 65536: 0.4 s at
    /// 150k queries/s, far more than the writer lags under load (it drains every 2 ms, and an
    /// fsync stall is absorbed); beyond it records are counted as dropped and a gap record says
    /// so. Memory is taken only for records actually waiting (about 260 bytes each).
    pub queue_capacity: usize,
    /// What is stored of the client address: `none` (default, the address and port as seen),
    /// `truncate` (IPv4 /24, IPv6 /48, no port) or `hash` (keyed HMAC-SHA256, hex).
    pub anonymize: Anonymize,
    /// The key file for `anonymize = "hash"` (at least 16 bytes, used as is). Required with
    /// `hash`: an unkeyed hash of a 32-bit address is reversed by enumeration.
    pub anonymize_key: Option<PathBuf>,
    /// What queries get while the log cannot be written (disk full, I/O error): `answer`
    /// (default: resolve as usual; every record that cannot be written is counted, and a gap
    /// record says how many once writing works again) or `refuse` (REFUSED with EDE 14 "Not
    /// Ready" until it works again, for deployments where an answer that is not on the record
    /// must not be given; like auditd's `disk_full_action = suspend`).
    pub when_unwritable: WhenUnwritable,
    /// Query records per second, at most, for clients outside `server.allow` (their REFUSED and
    /// FORMERR answers); beyond it they are counted, and a `suppressed` record in the chain says
    /// how many and when. Default 100: enough to see who is knocking, while an outsider who
    /// floods the port cannot fill the log and make retention remove the evidence of what the
    /// resolver's own clients did (at 100k packets/s, unlimited records would cycle the default
    /// 10 GiB in minutes). 0 records every one. Clients inside `allow` are never limited.
    pub outsider_records_per_sec: u32,
}

/// See [`AuditSettings::when_unwritable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenUnwritable {
    #[default]
    Answer,
    Refuse,
}

/// How client addresses are reduced before they enter the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Anonymize {
    #[default]
    None,
    Truncate,
    Hash,
}

impl Anonymize {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Truncate => "truncate",
            Self::Hash => "hash",
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("audit"),
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age_secs: 3600,
            retention_max_age_days: 90,
            retention_max_total_bytes: 10 * 1024 * 1024 * 1024,
            fsync_interval_ms: 1000,
            checkpoint_interval_secs: 5,
            signing_key: None,
            queue_capacity: 65536,
            anonymize: Anonymize::None,
            anonymize_key: None,
            when_unwritable: WhenUnwritable::Answer,
            outsider_records_per_sec: 100,
        }
    }
}

/// `retention_max_total_bytes` in segments, at least: the segment being written (up to one
/// segment) plus one closed segment (a little over one, with its closing lines) must fit, and
/// three is the round number above that.
const MIN_RETAINED_SEGMENTS: u64 = 3;

impl AuditSettings {
    /// The first value that makes no sense, as (field, why); the caller names the file and
    /// line. Zero sizes would close a segment (with a signed checkpoint and an fsync) per
    /// record, a size limit below one segment would remove every closed segment at each close,
    /// and a checkpoint interval beyond `verify`'s unsigned-tail tolerance would make every
    /// live or crashed log fail `verify --pubkey`.
    /// Nothing is checked while the log is disabled, and the checkpoint interval only with a
    /// signing key (without one, no checkpoint is timed).
    pub fn invalid_value(&self) -> Option<(&'static str, String)> {
        if !self.enabled {
            return None;
        }
        let tolerance = crate::audit::verify::UNSIGNED_TAIL_TOLERANCE.as_secs();
        if self.segment_max_bytes < MIN_SEGMENT_BYTES {
            return Some((
                "segment_max_bytes",
                format!("must be at least {MIN_SEGMENT_BYTES}"),
            ));
        }
        if self.segment_max_age_secs == 0 {
            return Some(("segment_max_age_secs", "must be at least 1".into()));
        }
        if self.retention_max_total_bytes != 0
            && self.retention_max_total_bytes
                < self.segment_max_bytes.saturating_mul(MIN_RETAINED_SEGMENTS)
        {
            return Some((
                "retention_max_total_bytes",
                format!(
                    "must be at least {MIN_RETAINED_SEGMENTS} × segment_max_bytes ({}), or 0 \
                     for no size limit: the limit counts the segment being written, and each \
                     closed segment ends a little past segment_max_bytes, so a smaller limit \
                     would remove every closed segment at each close",
                    self.segment_max_bytes.saturating_mul(MIN_RETAINED_SEGMENTS)
                ),
            ));
        }
        if self.retention_max_age_days > MAX_RETENTION_DAYS {
            return Some((
                "retention_max_age_days",
                format!("must be at most {MAX_RETENTION_DAYS} (0: no age limit)"),
            ));
        }
        if self.signing_key.is_some()
            && !(1..=MAX_CHECKPOINT_INTERVAL_SECS).contains(&self.checkpoint_interval_secs)
        {
            return Some((
                "checkpoint_interval_secs",
                format!(
                    "must be from 1 to {MAX_CHECKPOINT_INTERVAL_SECS}: `audit verify --pubkey` \
                     reports records after the last signed checkpoint that span more than \
                     {tolerance} s as an unsigned tail"
                ),
            ));
        }
        if self.queue_capacity == 0 {
            return Some(("queue_capacity", "must be at least 1".into()));
        }
        match (self.anonymize, &self.anonymize_key) {
            // Named at the anonymize line: that is the line the operator wrote.
            (Anonymize::Hash, None) => {
                return Some((
                    "anonymize",
                    "\"hash\" needs anonymize_key: a file of at least 16 secret random bytes \
                     the client addresses are hashed with"
                        .into(),
                ));
            }
            // Refused rather than ignored: an operator who sets a key believes addresses are
            // hashed, and with `none` they would be stored whole.
            (Anonymize::None | Anonymize::Truncate, Some(_)) => {
                return Some((
                    "anonymize_key",
                    format!(
                        "is used only with anonymize = \"hash\", and anonymize is \"{}\": set \
                         anonymize = \"hash\" or remove the key",
                        self.anonymize.as_str()
                    ),
                ));
            }
            _ => {}
        }
        None
    }

    pub fn segment_max_age(&self) -> Duration {
        Duration::from_secs(self.segment_max_age_secs)
    }

    /// The checkpoint interval; at least one second, so a zero in config cannot spin the writer.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_secs.max(1))
    }

    pub fn fsync_interval(&self) -> Duration {
        Duration::from_millis(self.fsync_interval_ms)
    }

    pub fn retention_max_age(&self) -> Option<Duration> {
        (self.retention_max_age_days > 0)
            .then(|| Duration::from_secs(self.retention_max_age_days * 86_400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let parsed: AuditSettings = toml::from_str("").unwrap();
        assert_eq!(parsed, AuditSettings::default());
        let parsed: AuditSettings =
            toml::from_str("anonymize = \"truncate\"\nqueue_capacity = 4").unwrap();
        assert_eq!(parsed.anonymize, Anonymize::Truncate);
        assert_eq!(parsed.queue_capacity, 4);
        assert_eq!(parsed.when_unwritable, WhenUnwritable::Answer);
        let parsed: AuditSettings = toml::from_str("when_unwritable = \"refuse\"").unwrap();
        assert_eq!(parsed.when_unwritable, WhenUnwritable::Refuse);
        assert!(toml::from_str::<AuditSettings>("when_unwritable = \"halt\"").is_err());
        assert!(toml::from_str::<AuditSettings>("nope = 1").is_err());
    }
}
