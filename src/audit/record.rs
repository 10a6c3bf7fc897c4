//! The stored record model: what one line of the audit log says, as typed data.
//!
//! It owns the mapping from the server's `DecisionRecord` to the stored `QueryEntry` (all its
//! fields, with the client address possibly anonymised by the writer) and the service entries.
//! It does not own the byte layout around a record (`seq`, `prev`, `hash`: see `segment`).

use std::{
    cell::Cell,
    fmt,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::json;
use crate::policy::decision::{
    AnswerSource, ClassText, DecisionKind, DecisionRecord, RcodeText, RuleMatch, Trigger, TypeText,
    action_name,
};

/// A UTC instant with microsecond precision, stored as RFC 3339 with exactly six fractional
/// digits and `Z` (`2025-01-31T12:00:00.000123Z`). The fixed width makes stored times compare
/// correctly as bytes, which the query fast path relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Length of the stored form.
pub const TIMESTAMP_LEN: usize = 27;

impl Timestamp {
    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Times before 1970 are clamped to the epoch: DNS queries do not come from the past, and
    /// a clock that says so is wrong anyway.
    pub fn from_system_time(time: SystemTime) -> Self {
        let micros = time
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self(micros)
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(u64::try_from(self.0).unwrap_or(0))
    }

    /// Subtracts a duration, saturating at the epoch.
    pub fn minus(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(micros).max(0))
    }

    /// 9999-12-31T23:59:59.999999Z, the last time the stored form can hold.
    pub const LAST: Self = Self(253_402_300_799_999_999);

    /// Parses the stored form exactly (fast, no allocation); `None` for anything else.
    pub fn parse_stored(text: &[u8]) -> Option<Self> {
        if text.len() != TIMESTAMP_LEN
            || text[4] != b'-'
            || text[7] != b'-'
            || text[10] != b'T'
            || text[13] != b':'
            || text[16] != b':'
            || text[19] != b'.'
            || text[26] != b'Z'
        {
            return None;
        }
        let num = |range: std::ops::Range<usize>| -> Option<i64> {
            text[range].iter().try_fold(0i64, |acc, &b| {
                b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
            })
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let micros = num(20..26)?;
        if !(1..=12).contains(&month)
            || !(1..=days_in_month(year, month)).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        Some(Self(
            ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000) + micros,
        ))
    }

    /// Parses any RFC 3339 time (with an offset or `Z`, any fraction), as typed by a user.
    pub fn parse_rfc3339(text: &str) -> Result<Self, crate::audit::AuditError> {
        if let Some(stamp) = Self::parse_stored(text.as_bytes()) {
            return Ok(stamp);
        }
        let parsed =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|source| crate::audit::AuditError::InvalidTime {
                    value: text.to_owned(),
                    source,
                })?;
        // Rounded up to the microsecond: stored times are whole microseconds, so a bound
        // between two of them must fall after the earlier one, whichever side it limits
        // (`--from` inclusive, `--to` exclusive); truncating let `--from ….0000005Z` take a
        // record stamped before it.
        let micros = (parsed.unix_timestamp_nanos() + 999).div_euclid(1000);
        // An offset can carry 9999-12-31 past the year 9999 in UTC; the stored form has four
        // year digits, so such a bound would be written as year 0000 and compared as that.
        if micros > i128::from(Self::LAST.0) {
            return Err(crate::audit::AuditError::TimeOutOfRange {
                value: text.to_owned(),
            });
        }
        Ok(Self(i64::try_from(micros).unwrap_or(0).max(0)))
    }

    /// The stored form, written into a fixed buffer (no allocation on the writer's path).
    pub fn format_into(self, out: &mut [u8; TIMESTAMP_LEN]) {
        thread_local! {
            /// The date and time of day of the last second formatted on this thread: the
            /// writer formats thousands of records per second, and the calendar arithmetic
            /// was most of this function's cost.
            static LAST_SECOND: Cell<(i64, [u8; SECOND_LEN])> =
                const { Cell::new((i64::MIN, [0; SECOND_LEN])) };
        }
        const SECOND_LEN: usize = 20; // `YYYY-MM-DDTHH:MM:SS.`
        let put = |out: &mut [u8], at: usize, width: usize, mut value: i64| {
            for i in (0..width).rev() {
                // `value % 10` is 0..=9 for the non-negative values passed here.
                out[at + i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let (cached_secs, mut second) = LAST_SECOND.get();
        if cached_secs != secs {
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            let (year, month, day) = civil_from_days(days);
            put(&mut second, 0, 4, year);
            second[4] = b'-';
            put(&mut second, 5, 2, month);
            second[7] = b'-';
            put(&mut second, 8, 2, day);
            second[10] = b'T';
            put(&mut second, 11, 2, rem / 3600);
            second[13] = b':';
            put(&mut second, 14, 2, rem / 60 % 60);
            second[16] = b':';
            put(&mut second, 17, 2, rem % 60);
            second[19] = b'.';
            LAST_SECOND.set((secs, second));
        }
        out[..SECOND_LEN].copy_from_slice(&second);
        put(out, SECOND_LEN, 6, micros);
        out[26] = b'Z';
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; TIMESTAMP_LEN];
        self.format_into(&mut buf);
        // The buffer holds only ASCII digits and separators written above.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; TIMESTAMP_LEN];
        self.format_into(&mut buf);
        let text = std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse_stored(text.as_bytes())
            .ok_or_else(|| serde::de::Error::custom("expected YYYY-MM-DDTHH:MM:SS.ffffffZ"))
    }
}

// Howard Hinnant's `days_from_civil` / `civil_from_days` (proleptic Gregorian calendar).
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The decision vocabulary of the log (mirrors `DecisionKind`, with serde names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allowed,
    Blocked,
    Logged,
    Refused,
    Error,
}

impl Decision {
    pub const ALL: [Self; 5] = [
        Self::Allowed,
        Self::Blocked,
        Self::Logged,
        Self::Refused,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Blocked => "blocked",
            Self::Logged => "logged",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(text))
    }
}

impl From<DecisionKind> for Decision {
    fn from(kind: DecisionKind) -> Self {
        match kind {
            DecisionKind::Allowed => Self::Allowed,
            DecisionKind::Blocked => Self::Blocked,
            DecisionKind::Logged => Self::Logged,
            DecisionKind::Refused => Self::Refused,
            DecisionKind::Error => Self::Error,
        }
    }
}

/// Which name triggered the match (`Trigger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TriggerEntry {
    Question,
    Cname { matched: String, chain: Vec<String> },
}

/// The list and rule that decided (`RuleMatch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    pub list: String,
    pub rule: String,
    pub file: String,
    pub line: u32,
    pub trigger: TriggerEntry,
}

/// One query's record: every field of `DecisionRecord` except `time`, which is the line's time.
/// Field order here is the order on disk, which the query fast path relies on
/// (`client` before `qname` before `qtype` before `decision` before `rule.list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryEntry {
    pub generation: u64,
    /// `ip:port`, or the anonymised form (`192.0.2.0/24`, `2001:db8:1::/48`, or a hex hash).
    pub client: String,
    pub transport: String,
    pub qname: String,
    pub qtype: String,
    pub qclass: String,
    pub decision: Decision,
    /// Absent when no rule matched (version 1 wrote `null`; both read as `None`). Leaving out
    /// the members that are null in most records keeps the line, and so its hashing and
    /// writing, short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleEntry>,
    /// `nxdomain`, `nodata`, `null`, `sinkhole` or `refused`; absent when answered normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub rcode: String,
    pub answer: String,
    /// The RFC 8914 code, absent when none was attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ede: Option<u16>,
    /// `local`, `cache`, or the upstream's `ip:port`.
    pub source: String,
    pub latency_us: u64,
}

impl QueryEntry {
    /// Builds the stored form; `client` is the (possibly anonymised) client text.
    pub fn from_decision(record: &DecisionRecord, client: String) -> Self {
        Self {
            generation: record.generation,
            client,
            transport: record.transport.to_owned(),
            qname: record.qname.to_string(),
            qtype: TypeText(record.qtype).to_string(),
            qclass: ClassText(record.qclass).to_string(),
            decision: record.decision.into(),
            rule: record.rule.as_deref().map(rule_entry),
            action: record.action.map(|a| action_name(a).to_owned()),
            rcode: RcodeText(record.rcode).to_string(),
            answer: record.answer.as_deref().unwrap_or_default().to_owned(),
            ede: record.ede,
            source: record.source.to_string(),
            latency_us: record.latency_us,
        }
    }
}

fn rule_entry(rule: &RuleMatch) -> RuleEntry {
    RuleEntry {
        list: rule.list.to_string(),
        rule: rule.rule.to_string(),
        file: rule.file.to_string(),
        line: rule.line,
        trigger: match &rule.trigger {
            Trigger::Question => TriggerEntry::Question,
            Trigger::Cname { matched, chain } => TriggerEntry::Cname {
                matched: matched.clone(),
                chain: chain.clone(),
            },
        },
    }
}

/// Appends a query record's members, from `"type":"query"` to `"latency_us"`, by hand: this
/// runs once per query on the writer thread, which shares the CPU with the server, and serde's
/// generic path (with a `flatten`) cost about three times as much. The bytes are exactly those
/// `serde_json` writes for `Entry::Query(QueryEntry::from_decision(record, client))` (tested).
pub fn write_query_members(out: &mut Vec<u8>, record: &DecisionRecord, client: &str) {
    out.extend_from_slice(b"\"type\":\"query\",\"generation\":");
    json::number(out, record.generation);
    out.extend_from_slice(b",\"client\":");
    json::plain_string(out, client);
    out.extend_from_slice(b",\"transport\":");
    json::plain_string(out, record.transport);
    out.extend_from_slice(b",\"qname\":\"");
    // The presentation form is printable ASCII; only its `\\` and `"` need JSON escapes.
    let start = out.len();
    record.qname.write_text(out);
    if out[start..].iter().any(|&b| b == b'\\' || b == b'"') {
        let text = out.split_off(start);
        json::escaped_bytes(out, &text);
    }
    out.push(b'"');
    out.extend_from_slice(b",\"qtype\":");
    match TypeText(record.qtype).as_static() {
        Some(text) => json::plain_string(out, text),
        None => json::display(out, &TypeText(record.qtype)),
    }
    out.extend_from_slice(b",\"qclass\":");
    match ClassText(record.qclass).as_static() {
        Some(text) => json::plain_string(out, text),
        None => json::display(out, &ClassText(record.qclass)),
    }
    out.extend_from_slice(b",\"decision\":\"");
    out.extend_from_slice(Decision::from(record.decision).as_str().as_bytes());
    out.push(b'"');
    match &record.rule {
        None => {}
        Some(rule) => {
            out.extend_from_slice(b",\"rule\":{");
            json::key(out, "list");
            json::string(out, &rule.list);
            out.push(b',');
            json::key(out, "rule");
            json::string(out, &rule.rule);
            out.push(b',');
            json::key(out, "file");
            json::string(out, &rule.file);
            out.push(b',');
            json::key(out, "line");
            json::number(out, rule.line);
            out.extend_from_slice(b",\"trigger\":");
            match &rule.trigger {
                Trigger::Question => out.extend_from_slice(b"{\"kind\":\"question\"}"),
                Trigger::Cname { matched, chain } => {
                    out.extend_from_slice(b"{\"kind\":\"cname\",\"matched\":");
                    json::string(out, matched);
                    out.extend_from_slice(b",\"chain\":[");
                    for (index, name) in chain.iter().enumerate() {
                        if index > 0 {
                            out.push(b',');
                        }
                        json::string(out, name);
                    }
                    out.extend_from_slice(b"]}");
                }
            }
            out.push(b'}');
        }
    }
    if let Some(action) = record.action {
        out.extend_from_slice(b",\"action\":");
        json::plain_string(out, action_name(action));
    }
    out.extend_from_slice(b",\"rcode\":");
    match RcodeText(record.rcode).as_static() {
        Some(text) => json::plain_string(out, text),
        None => json::display(out, &RcodeText(record.rcode)),
    }
    out.extend_from_slice(b",\"answer\":\"");
    // UTF-8: copied whole from a `str`.
    json::escaped_bytes(out, record.answer.as_bytes());
    out.push(b'"');
    if let Some(code) = record.ede {
        out.extend_from_slice(b",\"ede\":");
        json::number(out, code);
    }
    out.extend_from_slice(b",\"source\":");
    match record.source {
        AnswerSource::Upstream(addr) => {
            out.push(b'"');
            json::socket_addr_text(out, addr);
            out.push(b'"');
        }
        source => json::display(out, &source),
    }
    out.extend_from_slice(b",\"latency_us\":");
    json::number(out, record.latency_us);
}

/// The client text stored when no anonymisation applies.
pub fn client_text(addr: SocketAddr) -> String {
    addr.to_string()
}

/// The configuration file as loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigLoad {
    /// Absolute path.
    pub path: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// One list file as loaded: enough to prove later which content was in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListLoad {
    pub name: String,
    pub path: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub rules: u64,
}

/// What a line of the log records. The `type` member names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Not boxed: an entry lives only between its creation and its serialisation in the writer, and
// almost every entry is a query, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Entry {
    Query(QueryEntry),
    /// The process started logging.
    Start {
        version: String,
        config: String,
    },
    /// Clean stop: query records written and records dropped by this instance.
    Stop {
        records: u64,
        dropped: u64,
    },
    /// A configuration/list generation was loaded and put in service.
    Load {
        generation: u64,
        /// The configuration file of this generation (absent in logs written before
        /// 2026-12-01).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<ConfigLoad>,
        lists: Vec<ListLoad>,
        /// Settings of `config` that do not run yet: they take effect at a restart, and until
        /// then the process runs on those it started with (absent when none; written since
        /// 2026-12-02). Without it the file hash cited here would claim more than is in force.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        waiting_for_restart: Vec<String>,
    },
    /// A reload was refused; the previous generation stays in service.
    ReloadRefused {
        errors: Vec<String>,
    },
    /// `dropped` records were lost because the queue was full between `first` and `last`.
    Gap {
        dropped: u64,
        first: Timestamp,
        last: Timestamp,
    },
    /// `records` queries from clients outside `server.allow` between `first` and `last` were
    /// answered but not recorded one by one: over `outsider_records_per_sec` (written since
    /// 2026-12-02).
    Suppressed {
        records: u64,
        first: Timestamp,
        last: Timestamp,
    },
    /// On open, the previous segment ended in a torn line (a crash mid-write): its bytes from
    /// `offset` on are not part of the chain.
    Recovered {
        segment: String,
        offset: u64,
        torn_bytes: u64,
        /// SHA-256 (hex) of the torn bytes, so that the fragment the chain leaves out cannot be
        /// edited unseen either (absent in logs written before 2026-12-04).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        torn_sha256: Option<String>,
    },
    /// A checkpoint over the chain head (`head_seq`, `head` = hash of that record, this line's
    /// time), signed when a key is configured. `close` marks the last line of a segment, which
    /// also carries the segment's time range and record count so readers can skip it.
    Checkpoint(Checkpoint),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub head_seq: u64,
    pub head: String,
    /// Hex Ed25519 public key of the signer (so a log signed by another key is named as such).
    pub key: Option<String>,
    /// Hex Ed25519 signature over `keys::checkpoint_message`.
    pub sig: Option<String>,
    pub close: bool,
    pub min_time: Option<Timestamp>,
    pub max_time: Option<Timestamp>,
    pub records: u64,
}

impl Entry {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Query(_) => "query",
            Self::Start { .. } => "start",
            Self::Stop { .. } => "stop",
            Self::Load { .. } => "load",
            Self::ReloadRefused { .. } => "reload_refused",
            Self::Gap { .. } => "gap",
            Self::Suppressed { .. } => "suppressed",
            Self::Recovered { .. } => "recovered",
            Self::Checkpoint(_) => "checkpoint",
        }
    }
}

/// A blocked `A` query for `qname` from 192.0.2.1, for tests that need records on disk.
#[cfg(test)]
impl QueryEntry {
    pub(crate) fn sample(qname: &str) -> Self {
        Self {
            generation: 1,
            client: "192.0.2.1:5353".into(),
            transport: "udp".into(),
            qname: qname.into(),
            qtype: "A".into(),
            qclass: "IN".into(),
            decision: Decision::Blocked,
            rule: None,
            action: None,
            rcode: "NXDOMAIN".into(),
            answer: String::new(),
            ede: None,
            source: "local".into(),
            latency_us: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::ResponseCode,
        rr::{DNSClass, RecordType},
    };

    use super::*;

    #[test]
    fn timestamp_round_trip_and_known_value() {
        let stamp = Timestamp::from_micros(1_738_324_800_000_123);
        assert_eq!(stamp.to_string(), "2025-01-31T12:00:00.000123Z");
        assert_eq!(
            Timestamp::parse_stored(b"2025-01-31T12:00:00.000123Z"),
            Some(stamp)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T13:00:00.000123+01:00").unwrap(),
            stamp
        );
        assert_eq!(
            Timestamp::from_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        // A bound between two stored microseconds falls after the earlier one.
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T12:00:00.0001225Z").unwrap(),
            stamp
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T12:00:00.000123000Z").unwrap(),
            stamp
        );
        // Days past the month's end and seconds past 59 are not times, in the stored form as
        // in any other (the stored form is parsed by its own fast path).
        for bad in [
            "2026-02-31T00:00:00.000000Z",
            "2026-02-29T00:00:00.000000Z",
            "2026-04-31T00:00:00.000000Z",
            "2026-12-01T11:26:99.000000Z",
            "2026-12-01T11:26:60.000000Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert!(Timestamp::parse_stored(b"2024-02-29T00:00:00.000000Z").is_some());
        assert!(Timestamp::parse_stored(b"2000-02-29T00:00:00.000000Z").is_some());
        assert!(Timestamp::parse_stored(b"1900-02-29T00:00:00.000000Z").is_none());
        // The last time the stored form holds, and an offset that carries a bound past it.
        assert_eq!(Timestamp::LAST.to_string(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp::parse_rfc3339("9999-12-31T23:59:59.999999Z").unwrap(),
            Timestamp::LAST
        );
        let error = Timestamp::parse_rfc3339("9999-12-31T23:00:00-02:00").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("past 9999-12-31T23:59:59.999999Z"),
            "{error}"
        );
    }

    #[test]
    fn timestamps_in_and_across_seconds_format_right() {
        // The second's text is cached per thread: within a second, across its boundary (and a
        // day's, a year's), and back again.
        let cases = [
            (1_738_324_800_999_999, "2025-01-31T12:00:00.999999Z"),
            (1_738_324_801_000_000, "2025-01-31T12:00:01.000000Z"),
            (1_738_324_801_000_042, "2025-01-31T12:00:01.000042Z"),
            (1_738_324_800_000_001, "2025-01-31T12:00:00.000001Z"),
            (1_735_689_599_999_999, "2024-12-31T23:59:59.999999Z"),
            (1_735_689_600_000_000, "2025-01-01T00:00:00.000000Z"),
        ];
        for (micros, text) in cases {
            assert_eq!(Timestamp::from_micros(micros).to_string(), text);
        }
    }

    #[test]
    fn timestamp_civil_round_trip_over_centuries() {
        for day in (-1000..200_000).step_by(37) {
            let stamp = Timestamp::from_micros(day * 86_400_000_000 + 3_723_000_456);
            if stamp.as_micros() < 0 {
                continue;
            }
            assert_eq!(
                Timestamp::parse_stored(stamp.to_string().as_bytes()),
                Some(stamp)
            );
        }
    }

    /// The hand-written encoder against serde on the owned entry, byte for byte.
    fn assert_same_bytes(record: &DecisionRecord, client: &str) {
        let owned = Entry::Query(QueryEntry::from_decision(record, client.into()));
        let mut by_hand = b"{".to_vec();
        write_query_members(&mut by_hand, record, client);
        by_hand.push(b'}');
        assert_eq!(
            String::from_utf8(by_hand).unwrap(),
            serde_json::to_string(&owned).unwrap()
        );
    }

    #[test]
    fn hand_written_query_members_match_serde() {
        use crate::policy::decision::{AnswerSource, AnswerText, QName, RuleMatch, Trigger};
        let mut record = DecisionRecord {
            time: SystemTime::now(),
            generation: 3,
            client: "[2001:db8::1]:53".parse().unwrap(),
            transport: "tcp",
            qname: QName::from_wire(b"\x03a\"b\x07Example\x00").unwrap(),
            qtype: RecordType::AAAA,
            qclass: DNSClass::IN,
            decision: DecisionKind::Logged,
            rule: Some(std::sync::Arc::new(RuleMatch {
                list: "watch \"list\"".into(),
                rule: "*.example".into(),
                file: "lists/w\\x.txt".into(),
                line: 9,
                trigger: Trigger::Cname {
                    matched: "c.example.".into(),
                    chain: vec!["a.example.".into(), "c.example.".into()],
                },
            })),
            action: None,
            rcode: ResponseCode::NoError,
            answer: AnswerText::from("CNAME c.example., TXT \"x\\ty\""),
            ede: None,
            source: AnswerSource::Upstream("192.0.2.53:53".parse().unwrap()),
            latency_us: 77,
        };
        assert_same_bytes(&record, "x");
        record.rule = None;
        record.source = AnswerSource::Cache;
        record.action = Some(crate::config::BlockAction::Sinkhole);
        record.ede = Some(15);
        record.answer = AnswerText::NONE;
        record.qtype = RecordType::Unknown(65280);
        record.qclass = DNSClass::Unknown(7);
        record.rcode = ResponseCode::Unknown(3841);
        assert_same_bytes(&record, "2001:db8:1::/48");
        let stored = QueryEntry::from_decision(&record, String::new());
        assert_eq!(
            (
                stored.qtype.as_str(),
                stored.qclass.as_str(),
                stored.rcode.as_str()
            ),
            ("TYPE65280", "CLASS7", "RCODE3841")
        );
        record.rule = Some(std::sync::Arc::new(RuleMatch {
            list: "l".into(),
            rule: "r".into(),
            file: "f".into(),
            line: 1,
            trigger: Trigger::Question,
        }));
        record.rcode = ResponseCode::NXDomain;
        assert_same_bytes(&record, "c");
    }

    #[test]
    fn qname_text_escapes_like_a_zone_file() {
        let name =
            crate::policy::decision::QName::from_wire(b"\x04a.b\\\x03\x00\xffZ\x01*\x00").unwrap();
        assert_eq!(name.to_string(), "a\\.b\\\\.\\000\\255Z.*.");
        assert_eq!(crate::policy::decision::QName::ROOT.to_string(), ".");
        // Long names (beyond the inline size) are kept whole.
        let long: String = (0..5).map(|i| format!("{}{i}.", "x".repeat(40))).collect();
        let name: crate::policy::decision::QName = long.parse().unwrap();
        assert_eq!(name.to_string(), long);
        assert_eq!(name.wire().len(), 5 * 42 + 1);
        assert_eq!(
            crate::policy::decision::QName::from_wire(name.wire())
                .unwrap()
                .to_string(),
            long
        );
        assert!(crate::policy::decision::QName::from_wire(b"\x05ab\x00").is_none());
    }

    #[test]
    fn qname_text_reads_back_to_its_labels() {
        use crate::policy::decision::{QName, labels_from_text};
        let wire = b"\x04a.b\\\x03\x00\xff \x01*\x07example\x00";
        let name = QName::from_wire(wire).unwrap();
        let labels = labels_from_text(name.to_string().as_bytes());
        let expected: Vec<Vec<u8>> = name.labels().map(<[u8]>::to_vec).collect();
        assert_eq!(labels, expected);
        assert_eq!(labels[0], b"a.b\\");
        assert!(labels_from_text(b".").is_empty());
        assert_eq!(
            labels_from_text(b"a\\032b.x"),
            vec![b"a b".to_vec(), b"x".to_vec()]
        );
    }

    #[test]
    fn decision_names() {
        for d in Decision::ALL {
            assert_eq!(Decision::parse(d.as_str()), Some(d));
        }
        assert_eq!(Decision::parse("BLOCKED"), Some(Decision::Blocked));
        assert_eq!(Decision::parse("nope"), None);
    }
}
