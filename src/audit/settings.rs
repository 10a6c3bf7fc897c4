//! The `[audit]` configuration section. It owns defaults and their reasons; it does not open
//! anything (the writer does) and does not know where the config file lives (the caller resolves
//! relative paths with `resolve_paths`).

use std::{path::Path, path::PathBuf, time::Duration};

use serde::Deserialize;

/// `[audit]`: where and how the decision trail is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Record every decision. Default `true`: the trail is the point of dnsward; turning it off
    /// must be a deliberate choice.
    pub enabled: bool,
    /// Directory of the segment files. Default `"audit"`, relative to the config file's directory
    /// (see `resolve_paths`), so a checkout runs without root.
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

impl AuditSettings {
    /// Makes `dir`, `signing_key` and `anonymize_key` absolute against `base` (the config file's
    /// directory) when they are relative.
    pub fn resolve_paths(&mut self, base: &Path) {
        fn resolve(path: &mut PathBuf, base: &Path) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        resolve(&mut self.dir, base);
        if let Some(key) = &mut self.signing_key {
            resolve(key, base);
        }
        if let Some(key) = &mut self.anonymize_key {
            resolve(key, base);
        }
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

    #[test]
    fn relative_paths_resolve_against_base() {
        let mut settings = AuditSettings {
            signing_key: Some("keys/audit.key".into()),
            ..AuditSettings::default()
        };
        settings.resolve_paths(Path::new("/etc/dnsward"));
        assert_eq!(settings.dir, Path::new("/etc/dnsward/audit"));
        assert_eq!(
            settings.signing_key.as_deref(),
            Some(Path::new("/etc/dnsward/keys/audit.key"))
        );
    }
}
