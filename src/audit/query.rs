//! Reading the log back: streaming `search`, `summary` and `export`, one segment in memory at
//! a time.
//!
//! Speed comes from two things: segments whose closing checkpoint puts them outside the time
//! range are skipped without reading them, and filters run on fields located by a byte scan
//! (the writer's member order is fixed) before any JSON parsing; only matching lines are
//! parsed. It owns output formats (table, JSON lines, CSV); it does not check the chain
//! (`verify` does).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, SyncSender, sync_channel},
    time::Duration,
};

use hickory_proto::rr::RecordType;
use ipnet::IpNet;
use serde::Serialize;

use super::{
    AuditError, AuditSettings,
    record::{Checkpoint, Decision, Entry, TIMESTAMP_LEN, Timestamp, TriggerEntry},
    segment::{self, EXPORT_END_KIND, ExportEnd, GENESIS, Header, HeaderKind, LineReader, Record},
};
use crate::policy::decision::TypeText;

/// How many entries `summary` lists in its top-N tables.
pub const TOP_N: usize = 10;

/// A time window: `from` inclusive, `to` exclusive; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimeRange {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

/// A period as `--since` takes it: a whole number and one unit, `s`, `m`, `h`, `d` or `w`
/// (`90s`, `15m`, `2h`, `7d`, `2w`). Deliberately no more: a general parser reads `30M` as
/// thirty months and `1.5h` or `2 weeks` as what they seem, and a window an auditor did not
/// mean is easy to miss in the output.
pub fn parse_window(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    // An empty number does not parse.
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(number.checked_mul(seconds)?))
}

impl TimeRange {
    /// From `since` ago until now (open end).
    pub fn since(duration: Duration) -> Self {
        Self {
            from: Some(Timestamp::now().minus(duration)),
            to: None,
        }
    }

    /// Builds a range from CLI text: `--since 2h` and/or `--from`/`--to` (RFC 3339). Both
    /// `since` and `from` narrow the range, so the later of the two starts it.
    pub fn parse(
        since: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Self, AuditError> {
        let since = since
            .map(|text| {
                parse_window(text)
                    .map(|d| Timestamp::now().minus(d))
                    .ok_or_else(|| AuditError::InvalidDuration {
                        value: text.to_owned(),
                    })
            })
            .transpose();
        let since = since.map_err(AuditError::for_flag("--since"))?;
        let from = from
            .map(Timestamp::parse_rfc3339)
            .transpose()
            .map_err(AuditError::for_flag("--from"))?;
        let to = to
            .map(Timestamp::parse_rfc3339)
            .transpose()
            .map_err(AuditError::for_flag("--to"))?;
        // The flag that set the start, for the message: the later of the two.
        let start = if from.is_some() && from >= since {
            "--from"
        } else {
            "--since"
        };
        let from = since.max(from);
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(AuditError::EmptyRange { start, from, to });
        }
        Ok(Self { from, to })
    }

    pub fn contains(&self, time: Timestamp) -> bool {
        self.from.is_none_or(|from| time >= from) && self.to.is_none_or(|to| time < to)
    }

    /// Whether a segment holding times `min..=max` can contain anything in range.
    fn overlaps(&self, min: Timestamp, max: Timestamp) -> bool {
        self.from.is_none_or(|from| max >= from) && self.to.is_none_or(|to| min < to)
    }
}

/// The stored time text compared as bytes (the stored form is fixed-width, so byte order is
/// time order).
#[derive(Debug, Clone, Copy)]
struct RangeBytes {
    from: Option<[u8; TIMESTAMP_LEN]>,
    to: Option<[u8; TIMESTAMP_LEN]>,
}

impl RangeBytes {
    fn new(range: &TimeRange) -> Self {
        let render = |t: Timestamp| {
            let mut buf = [0u8; TIMESTAMP_LEN];
            t.format_into(&mut buf);
            buf
        };
        Self {
            from: range.from.map(render),
            to: range.to.map(render),
        }
    }

    fn contains(&self, time: &[u8]) -> bool {
        self.from.is_none_or(|from| time >= &from[..]) && self.to.is_none_or(|to| time < &to[..])
    }
}

/// Which clients a search selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFilter {
    /// An address or network; matches stored addresses inside it and stored (truncated)
    /// networks that overlap it.
    Net(IpNet),
    /// A hashed client (`anonymize = "hash"`), compared as text.
    Hashed(String),
    /// An address in a log whose clients are hashed: stored either way (the setting may have
    /// changed during the log's life).
    AddressOrHash(IpNet, String),
}

impl ClientFilter {
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self::Net(Self::mapped_to_v4(net)));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip.to_canonical())));
        }
        if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Self::Hashed(text.to_ascii_lowercase()));
        }
        Err(AuditError::InvalidClient {
            value: text.to_owned(),
        })
    }

    /// Parses `--client` for a log written with `settings`: with hashed clients, an address
    /// is searched as its hash too (a network cannot be: hashes keep no order).
    pub fn parse_for(text: &str, settings: &AuditSettings) -> Result<Self, AuditError> {
        let filter = Self::parse(text)?;
        if settings.anonymize != crate::audit::Anonymize::Hash {
            return Ok(filter);
        }
        match filter {
            Self::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                match super::writer::hashed_client(settings, net.addr())? {
                    Some(hash) => Ok(Self::AddressOrHash(net, hash)),
                    None => Ok(Self::Net(net)),
                }
            }
            Self::Net(_) => Err(AuditError::HashedNetwork {
                value: text.to_owned(),
            }),
            other => Ok(other),
        }
    }

    /// The log stores IPv4-mapped IPv6 clients as IPv4 (the anonymiser and `client_text` both
    /// do), so a filter written as `::ffff:192.0.2.0/120` selects them as `192.0.2.0/24`.
    fn mapped_to_v4(net: IpNet) -> IpNet {
        match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
                None => net,
            },
            _ => net,
        }
    }

    fn matches(&self, stored: &[u8]) -> bool {
        let Ok(stored) = std::str::from_utf8(stored) else {
            return false;
        };
        match self {
            Self::Hashed(hash) => stored == hash,
            Self::AddressOrHash(net, hash) => {
                stored == hash || Self::Net(*net).matches(stored.as_bytes())
            }
            Self::Net(net) => {
                if let Ok(addr) = stored.parse::<SocketAddr>() {
                    // A client that reached a dual-stack socket over IPv4 may be stored mapped.
                    net.contains(&addr.ip().to_canonical())
                } else if let Ok(stored_net) = stored.parse::<IpNet>() {
                    net.contains(&stored_net) || stored_net.contains(net)
                } else {
                    false
                }
            }
        }
    }
}

/// Which names a search selects: `example.com` matches it and every name under it; `=example.com`
/// matches only that name. Case and a trailing dot are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainFilter {
    /// Lowercase, without the final dot, escapes undone (so not always UTF-8).
    name: Vec<u8>,
    exact: bool,
}

impl DomainFilter {
    /// Parses `--domain`. `.` alone is the root: every name (or, with `=`, only the root).
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        let invalid = |reason: &str| AuditError::InvalidDomain {
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (exact, name) = match text.strip_prefix('=') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if name.is_empty() {
            // An empty `"$DOMAIN"` in a script must not turn into the whole log.
            return Err(invalid("empty (`.` is every name)"));
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("a domain has no spaces or control characters"));
        }
        if name.split('.').any(|label| label.starts_with('*')) {
            return Err(invalid(
                "no wildcards: a domain already matches everything under it (prefix `=` for the \
                 name only)",
            ));
        }
        if !name.is_empty() && name.split('.').any(str::is_empty) {
            return Err(invalid("empty label"));
        }
        // Names are stored as asked on the wire (`xn--` for internationalised labels), so a
        // name typed in Unicode is converted the way a resolver's client would have. One
        // copied from the log in its presentation form (`www.binance\.cc`) is compared as the
        // stored one is: its labels' bytes joined with dots.
        let name = if name.contains('\\') {
            let mut bytes = unescape_presentation(name.as_bytes());
            bytes.make_ascii_lowercase();
            if bytes.last() == Some(&b'.') {
                bytes.pop();
            }
            bytes
        } else if name.is_ascii() {
            name.to_ascii_lowercase().into_bytes()
        } else {
            let ascii = idna::domain_to_ascii(name)
                .map_err(|_| invalid("not a valid internationalised domain name"))?;
            // A final full stop of another script (`。`) is one only after the conversion.
            match ascii.strip_suffix('.') {
                Some(name) => name.as_bytes().to_vec(),
                None => ascii.into_bytes(),
            }
        };
        Ok(Self { name, exact })
    }

    fn matches(&self, qname: &[u8]) -> bool {
        if qname.contains(&b'\\') {
            // Compared as the policy looked the name up: its labels' bytes joined with dots. A
            // label holding a dot (`www.binance\.cc.`) was decided under `binance.cc`, and an
            // auditor asking for `binance.cc` must find it (rare: the common path is untouched).
            return self.matches_plain(&unescape_presentation(qname));
        }
        self.matches_plain(qname)
    }

    fn matches_plain(&self, qname: &[u8]) -> bool {
        let qname = qname.strip_suffix(b".").unwrap_or(qname);
        let name = &self.name[..];
        if qname.eq_ignore_ascii_case(name) {
            return true;
        }
        if name.is_empty() {
            return !self.exact;
        }
        !self.exact
            && qname.len() > name.len()
            && qname[qname.len() - name.len()..].eq_ignore_ascii_case(name)
            && qname[qname.len() - name.len() - 1] == b'.'
    }
}

/// A name in RFC 1035 presentation form (as stored: `\X` for a printable byte, `\DDD` for
/// any other) back to its bytes, the label separators and the escaped dots alike (no final
/// dot).
fn unescape_presentation(text: &[u8]) -> Vec<u8> {
    crate::policy::decision::labels_from_text(text).join(&b'.')
}

/// `--qtype` as stored: the mnemonic (`AAAA`) or `TYPE<n>` (RFC 3597) for types without one.
/// Accepts a mnemonic in any case, `TYPE<n>` or a bare number, so `28`, `type28` and `aaaa` all
/// select the records stored as `AAAA`.
pub fn parse_qtype(text: &str) -> Result<String, AuditError> {
    let invalid = || AuditError::InvalidQtype {
        value: text.to_owned(),
    };
    let upper = text.trim().to_ascii_uppercase();
    let number = upper.strip_prefix("TYPE").unwrap_or(&upper);
    let qtype = if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        RecordType::from(number.parse::<u16>().map_err(|_| invalid())?)
    } else if let Ok(qtype) = upper.parse::<RecordType>() {
        qtype
    } else {
        // Mnemonics the writer stores but hickory's parser does not know (`ZERO` for a query
        // without a question or a FORMERR, `OPT`, `IXFR`): anything stored can be searched.
        (0..=u16::MAX)
            .map(RecordType::from)
            .find(|qtype| TypeText(*qtype).as_static() == Some(upper.as_str()))
            .ok_or_else(invalid)?
    };
    Ok(TypeText(qtype).to_string())
}

/// Whether the log's clients are stored hashed (`anonymize = "hash"`): its newest query record
/// names a client as 32 hex digits. A search by address finds nothing in such a log unless it
/// is hashed with the key that wrote it; the CLI says so when a search comes back empty.
pub fn clients_look_hashed(dir: &Path) -> bool {
    let Ok(segments) = segment::existing_segments(dir) else {
        return false;
    };
    // Streamed, not read whole: one line is wanted, and the newest segment may be 64 MiB.
    for seg in segments.iter().rev() {
        let Ok(mut reader) = LineReader::open(&seg.path) else {
            continue;
        };
        while let Ok(Some(line)) = reader.next_line() {
            if !line.complete {
                break;
            }
            if let Scan::Query(q) = scan(line.bytes) {
                return q.client.len() == 32
                    && q.client
                        .iter()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
            }
        }
    }
    false
}

/// A search: every set criterion must match. Search returns query records only.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub range: TimeRange,
    pub client: Option<ClientFilter>,
    pub domain: Option<DomainFilter>,
    pub qtype: Option<String>,
    pub decision: Option<Decision>,
    pub list: Option<String>,
    pub limit: Option<usize>,
}

/// The fields filters look at, located by a byte scan of a query line.
struct Quick<'a> {
    time: &'a [u8],
    client: &'a [u8],
    qname: &'a [u8],
    qtype: &'a [u8],
    decision: &'a [u8],
    list: Option<&'a [u8]>,
    /// The line after the list's name (where the rule's trigger follows).
    after_list: &'a [u8],
}

/// Whether a line's rule may have matched a CNAME target rather than the question, from the
/// bytes after the list's name: the rule, file, line and trigger in the writer's order. `true`
/// when unsure (escapes, another order): the full parse decides.
fn trigger_may_be_cname(after_list: &[u8]) -> bool {
    let walk = || -> Option<bool> {
        let mut c = Cursor {
            line: after_list,
            at: 0,
        };
        c.key(b",\"rule\":\"")?;
        c.string()?;
        c.key(b",\"file\":\"")?;
        c.string()?;
        c.key(b",\"line\":")?;
        c.digits()?;
        c.key(b",\"trigger\":{\"kind\":\"")?;
        Some(c.string()? == b"cname")
    };
    walk().unwrap_or(true)
}

enum Scan<'a> {
    Query(Quick<'a>),
    /// Not a query record (service or checkpoint).
    Other,
    /// Not in the writer's exact layout (escapes, or written by other software): parse fully.
    Unsure,
}

/// Walks a line in the writer's member order without searching: each step expects the next
/// key right where it must be. Any surprise (an escaped string, another order) gives up and
/// the caller parses the line with serde instead, so this is an optimisation only.
struct Cursor<'a> {
    line: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn key(&mut self, key: &[u8]) -> Option<()> {
        let end = self.at + key.len();
        (self.line.get(self.at..end)? == key).then(|| self.at = end)
    }

    /// A string value whose opening quote was consumed with the key; no escapes allowed.
    fn string(&mut self) -> Option<&'a [u8]> {
        // A plain loop, not `memchr`: values are a few dozen bytes, where a call into the
        // vectorised search costs more than it saves (measured with perf on a 1M-record log).
        let rest = &self.line[self.at..];
        let len = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&rest[..len])
    }

    fn digits(&mut self) -> Option<()> {
        let len = self.line[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        (len > 0).then(|| self.at += len)
    }

    fn skip(&mut self, len: usize) -> Option<()> {
        (self.at + len <= self.line.len()).then(|| self.at += len)
    }
}

fn scan(line: &[u8]) -> Scan<'_> {
    let walk = || -> Option<Scan<'_>> {
        let mut c = Cursor { line, at: 0 };
        c.key(b"{\"seq\":")?;
        c.digits()?;
        if c.key(b",\"prev\":\"").is_some() {
            // Version 1 lines carry the link.
            c.skip(64)?;
            c.key(b"\"")?;
        }
        c.key(b",\"time\":\"")?;
        let time = c.string()?;
        c.key(b",\"instance\":\"")?;
        c.string()?;
        c.key(b",\"type\":\"")?;
        if c.string()? != b"query" {
            return Some(Scan::Other);
        }
        c.key(b",\"generation\":")?;
        c.digits()?;
        c.key(b",\"client\":\"")?;
        let client = c.string()?;
        c.key(b",\"transport\":\"")?;
        c.string()?;
        c.key(b",\"qname\":\"")?;
        let qname = c.string()?;
        c.key(b",\"qtype\":\"")?;
        let qtype = c.string()?;
        c.key(b",\"qclass\":\"")?;
        c.string()?;
        c.key(b",\"decision\":\"")?;
        let decision = c.string()?;
        // Version 2 leaves a null rule out; version 1 wrote `"rule":null`.
        let list = if c.key(b",\"rule\":{\"list\":\"").is_some() {
            Some(c.string()?)
        } else if c.key(b",\"rule\":").is_some() {
            c.key(b"null")?;
            None
        } else {
            // No rule here: make sure there is none later either (a line in another member
            // order). The key cannot occur unescaped inside a JSON string.
            if memchr::memmem::find(&line[c.at..], b"\"rule\":").is_some() {
                return None;
            }
            None
        };
        Some(Scan::Query(Quick {
            time,
            client,
            qname,
            qtype,
            decision,
            list,
            after_list: &line[c.at..],
        }))
    };
    walk().unwrap_or(Scan::Unsure)
}

/// A filter compiled for the byte scan.
struct Compiled<'f> {
    filter: &'f Filter,
    range: RangeBytes,
}

impl Filter {
    /// Whether a parsed record passes every set criterion (query records only; `limit` is the
    /// caller's business).
    pub fn matches(&self, record: &Record) -> bool {
        let Entry::Query(q) = &record.entry else {
            return false;
        };
        self.range.contains(record.time)
            && self.decision.is_none_or(|d| q.decision == d)
            && self
                .qtype
                .as_ref()
                .is_none_or(|t| q.qtype.eq_ignore_ascii_case(t))
            && self
                .list
                .as_ref()
                .is_none_or(|l| q.rule.as_ref().is_some_and(|r| &r.list == l))
            && self.domain.as_ref().is_none_or(|d| {
                d.matches(q.qname.as_bytes())
                    || q.rule.as_ref().is_some_and(|rule| match &rule.trigger {
                        // Cloaking: the question's name is not the one the list named. An
                        // auditor asking who reached a domain means these too.
                        TriggerEntry::Cname { matched, chain } => {
                            d.matches(matched.as_bytes())
                                || chain.iter().any(|name| d.matches(name.as_bytes()))
                        }
                        TriggerEntry::Question => false,
                    })
            })
            && self
                .client
                .as_ref()
                .is_none_or(|c| c.matches(q.client.as_bytes()))
    }
}

impl Compiled<'_> {
    /// Whether a line may match through its rule's CNAME trigger though its question's name
    /// does not (then the full parse decides); checked only on lines with a rule.
    fn via_cname(&self, q: &Quick<'_>) -> bool {
        self.filter.domain.is_some()
            && q.list.is_some()
            && self.all_but_domain(q)
            && trigger_may_be_cname(q.after_list)
    }

    fn quick(&self, q: &Quick<'_>) -> bool {
        self.all_but_domain(q)
            && self
                .filter
                .domain
                .as_ref()
                .is_none_or(|d| d.matches(q.qname))
    }

    fn all_but_domain(&self, q: &Quick<'_>) -> bool {
        let f = self.filter;
        self.range.contains(q.time)
            && f.decision
                .is_none_or(|d| q.decision == d.as_str().as_bytes())
            && f.qtype
                .as_ref()
                .is_none_or(|t| q.qtype.eq_ignore_ascii_case(t.as_bytes()))
            && f.list.as_ref().is_none_or(|l| q.list == Some(l.as_bytes()))
            && f.client.as_ref().is_none_or(|c| c.matches(q.client))
    }
}

/// A closed segment's closing checkpoint and its time; `None` when the segment is still open
/// or was torn by a crash (its range is unknown, so it is read).
fn closing_checkpoint(path: &Path) -> Result<Option<(Timestamp, Checkpoint)>, AuditError> {
    let Some(line) = segment::read_last_line(path)? else {
        return Ok(None);
    };
    Ok(match Record::parse(&line) {
        Ok(Record {
            time,
            entry: Entry::Checkpoint(cp),
            ..
        }) if cp.close => Some((time, cp)),
        _ => None,
    })
}

/// The time range of a closed segment's records (checkpoints left out), from its closing
/// checkpoint: `Some(None)` when it holds none; `None` when unknown (see `closing_checkpoint`).
fn closed_range(path: &Path) -> Result<Option<Option<(Timestamp, Timestamp)>>, AuditError> {
    Ok(closing_checkpoint(path)?.map(|(_, cp)| cp.min_time.zip(cp.max_time)))
}

/// Whether an export of `range` must read a segment: the span from its first record to its
/// closing checkpoint overlaps the range. The checkpoints are left out of the records' time
/// range the closing checkpoint states, but they are records of the chain too: a segment whose
/// queries all precede `from` can close just after it, and in a quiet hour a periodic
/// checkpoint can be the only record inside `--from`/`--to`. Every checkpoint of a segment
/// lies between its first record and its closing checkpoint.
fn wanted(path: &Path, range: &TimeRange) -> Result<bool, AuditError> {
    if range.from.is_none() && range.to.is_none() {
        return Ok(true);
    }
    Ok(match closing_checkpoint(path)? {
        Some((closed, cp)) => {
            let first = cp.min_time.map_or(closed, |min| min.min(closed));
            let last = cp.max_time.map_or(closed, |max| max.max(closed));
            range.overlaps(first, last)
        }
        None => true,
    })
}

/// Records missing between two segments of a log: a segment removed (not by retention, which
/// removes only the oldest) or lost. Search and summary read what is there and say so; export
/// refuses (an export is one unbroken piece of the chain); `verify` names the spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    pub from_seq: u64,
    pub to_seq: u64,
    /// The segment the missing records would come before.
    pub before: PathBuf,
}

impl fmt::Display for Hole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .before
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        write!(
            f,
            "records seq {}..={} are missing before {name} (a segment was removed or lost; \
             `dnsward audit verify` checks the log): the results leave them out",
            self.from_seq, self.to_seq
        )
    }
}

/// The holes between the segments of `dir` that may hold records of `range`, from each
/// segment's last complete line and the next one's first seq (its name): one small read per
/// segment. One that retention removes meanwhile is not checked.
pub fn holes(dir: &Path, range: &TimeRange) -> Result<Vec<Hole>, AuditError> {
    let segments = segment::existing_segments(dir)?;
    let mut holes = Vec::new();
    // The last record line of the latest segment that has one: a segment without any (emptied,
    // or cut to its header) holds nothing, and the records after it are compared with this.
    let mut before: Option<Vec<u8>> = None;
    for segment in &segments {
        if let Some(last) = &before
            && let Some(view) = segment::LinkView::parse(last)
        {
            let expected = view.seq.saturating_add(1);
            if segment.first_seq > expected && hole_may_hold(range, last, &segment.path) {
                holes.push(Hole {
                    from_seq: expected,
                    to_seq: segment.first_seq - 1,
                    before: segment.path.clone(),
                });
            }
        }
        match segment::read_last_complete_line(&segment.path) {
            Ok(Some(line)) if line.starts_with(b"{\"seq\":") => before = Some(line),
            Ok(_) => {}
            Err(error) if removed(&error) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(holes)
}

/// Whether the records missing between a segment ending in `last` and the segment `next` may
/// lie in `range`: they were written after the one and before the other was created, and are
/// timed within seconds of their writing (a minute is allowed each way). Unknown: yes.
fn hole_may_hold(range: &TimeRange, last: &[u8], next: &Path) -> bool {
    const SLACK: Duration = Duration::from_secs(60);
    if range.from.is_none() && range.to.is_none() {
        return true;
    }
    let after = Record::parse(last).map(|record| record.time.minus(SLACK));
    let before = LineReader::open(next).ok().and_then(|mut reader| {
        let line = reader.next_line().ok()??;
        let created = Header::parse(line.bytes)?.created;
        Some(Timestamp::from_micros(
            created.as_micros().saturating_add(SLACK.as_micros() as i64),
        ))
    });
    match (after, before) {
        (Ok(after), Some(before)) => range.overlaps(after, before),
        _ => true,
    }
}

/// One search result: the stored line (with its chain members) and its decoded form.
#[derive(Debug, Clone)]
pub struct Hit {
    pub line: Vec<u8>,
    pub record: Record,
}

/// Candidate lines of one segment, in order, found by a scan worker.
type Batch = Result<Vec<Vec<u8>>, AuditError>;

/// Segments scanned ahead of the reader per worker: bounds memory (a few matching lines per
/// segment at most, plus one segment's bytes per worker) while keeping both cores busy.
const SCAN_AHEAD: usize = 1;

/// The streaming search iterator (see `search`). Scan workers (one per core) read and byte-scan
/// alternate segments ahead of the consumer; the consumer takes their batches in segment order
/// and parses only candidate lines, so results stay oldest first.
pub struct Search {
    filter: Filter,
    receivers: Vec<Receiver<Batch>>,
    segments: usize,
    next_segment: usize,
    batch: std::vec::IntoIter<Vec<u8>>,
    emitted: usize,
    /// Candidate lines that did not parse (see `unreadable`).
    unreadable: u64,
}

impl fmt::Debug for Search {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Search")
            .field("filter", &self.filter)
            .field("segments", &self.segments)
            .field("next_segment", &self.next_segment)
            .finish_non_exhaustive()
    }
}

/// Query records of the log under `dir` that match `filter`, oldest first. Memory stays
/// bounded: each scan worker holds one segment at a time.
pub fn search(dir: &Path, filter: &Filter) -> Result<Search, AuditError> {
    let segments = segment::existing_segments(dir)?;
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(segments.len().max(1));
    let mut receivers = Vec::with_capacity(workers);
    for worker in 0..workers {
        let (tx, rx) = sync_channel::<Batch>(SCAN_AHEAD);
        let mine: Vec<PathBuf> = segments
            .iter()
            .skip(worker)
            .step_by(workers)
            .map(|s| s.path.clone())
            .collect();
        let filter = filter.clone();
        std::thread::Builder::new()
            .name("audit-search".into())
            .spawn(move || scan_worker(&mine, &filter, &tx))
            .map_err(AuditError::Spawn)?;
        receivers.push(rx);
    }
    Ok(Search {
        filter: filter.clone(),
        receivers,
        segments: segments.len(),
        next_segment: 0,
        batch: Vec::new().into_iter(),
        emitted: 0,
        unreadable: 0,
    })
}

/// Sends one batch per segment, in order; stops when the consumer is gone.
fn scan_worker(paths: &[PathBuf], filter: &Filter, tx: &SyncSender<Batch>) {
    let compiled = Compiled {
        filter,
        range: RangeBytes::new(&filter.range),
    };
    for path in paths {
        let batch = scan_segment(path, &compiled);
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
        }
    }
}

fn scan_segment(path: &Path, compiled: &Compiled<'_>) -> Batch {
    let mut found = Vec::new();
    let Some(data) = segment_data(path, &compiled.filter.range)? else {
        return Ok(found);
    };
    let mut certain = 0;
    for line in record_lines(&data) {
        match scan(line) {
            Scan::Query(q) if compiled.quick(&q) => {
                if let Some(limit) = compiled.filter.limit {
                    // Later matches of this segment cannot be shown once the limit is reached,
                    // but only lines that parse are shown: a damaged line the byte walk
                    // accepted must not use up the limit (the full parse of a few lines is
                    // cheap).
                    if Record::parse(line).is_err() {
                        continue;
                    }
                    found.push(line.to_vec());
                    certain += 1;
                    if certain >= limit {
                        break;
                    }
                } else {
                    found.push(line.to_vec());
                }
            }
            Scan::Unsure => found.push(line.to_vec()),
            Scan::Query(q) if compiled.via_cname(&q) => found.push(line.to_vec()),
            Scan::Query(_) | Scan::Other => {}
        }
    }
    Ok(found)
}

impl Search {
    fn next_hit(&mut self) -> Result<Option<Hit>, AuditError> {
        loop {
            if self.filter.limit.is_some_and(|l| self.emitted >= l) {
                return Ok(None);
            }
            if let Some(line) = self.batch.next() {
                let Ok(record) = Record::parse(&line) else {
                    // Damaged lines are `verify`'s business; search shows what it can read,
                    // and counts what it cannot, for the caller to say so.
                    self.unreadable += 1;
                    continue;
                };
                if self.filter.matches(&record) {
                    self.emitted += 1;
                    return Ok(Some(Hit { line, record }));
                }
                continue;
            }
            if self.next_segment >= self.segments {
                return Ok(None);
            }
            let worker = self.next_segment % self.receivers.len();
            self.next_segment += 1;
            match self.receivers[worker].recv() {
                Ok(batch) => self.batch = batch?.into_iter(),
                // A worker ends early only after sending an error, which was returned above.
                Err(_) => return Ok(None),
            }
        }
    }
}

impl Search {
    /// Lines the search could have shown but could not read: a damaged (edited, cut) record
    /// line that a one-byte edit would otherwise hide from search without a trace.
    pub fn unreadable(&self) -> u64 {
        self.unreadable
    }
}

impl Iterator for Search {
    type Item = Result<Hit, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_hit().transpose()
    }
}

/// A name and how often it occurred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Count {
    pub name: String,
    pub count: u64,
}

/// Figures over a time range (`Display` for people, `Serialize` for `--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub range: TimeRange,
    /// Earliest and latest query record in range.
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
    pub queries: u64,
    pub by_decision: BTreeMap<String, u64>,
    pub top_blocked: Vec<Count>,
    /// By address (the source port is left out).
    pub top_clients: Vec<Count>,
    /// Queries decided by a rule of each list (blocked, logged, or allowed by an allow list).
    pub per_list: BTreeMap<String, u64>,
    /// Queries per UTC hour (`2025-01-31T12`).
    pub per_hour: BTreeMap<String, u64>,
    /// Queries without a record of their own (queue full, log not writable, abandoned at a
    /// stop), from gap records whose losses meet the range.
    pub dropped: u64,
    /// Queries from outside `server.allow` answered but not recorded one by one (over
    /// `outsider_records_per_sec`), from suppressed records whose span meets the range.
    pub suppressed: u64,
    /// Record lines that could not be read (damaged: `verify` names them), so not counted:
    /// the figures are short by what they held, and the reader is told so.
    pub unreadable: u64,
}

/// A fast, non-cryptographic hasher: these maps are filled once per record, and their keys
/// come from our own log, not from an attacker choosing collisions at query time.
type CountMap = HashMap<Vec<u8>, u64, foldhash::fast::RandomState>;

#[derive(Default)]
struct Tally {
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
    queries: u64,
    decisions: CountMap,
    blocked: CountMap,
    clients: CountMap,
    lists: CountMap,
    hours: CountMap,
    dropped: u64,
    suppressed: u64,
    unreadable: u64,
    /// Count per `Decision::ALL` entry (a map lookup per record cost 10 % of a summary).
    decision_counts: [u64; Decision::ALL.len()],
    /// The current run of records in one hour: `(hour text, count)`.
    hour: (Vec<u8>, u64),
    /// A question name folded to lower case (names differ in case only, `BINANCE.com` and
    /// `binance.com`, are one domain; clients that randomise case would split them).
    folded: Vec<u8>,
}

fn bump(map: &mut CountMap, key: &[u8], by: u64) {
    match map.get_mut(key) {
        Some(count) => *count += by,
        None => {
            map.insert(key.to_vec(), by);
        }
    }
}

impl Tally {
    /// Queries answered without a record of their own: lost (gap) or over the outsider limit.
    /// Counted when the time they span (not when they were written, which is after an outage
    /// ended) meets the range.
    fn count_losses(&mut self, entry: &Entry, range: &TimeRange) {
        match entry {
            Entry::Gap {
                dropped,
                first,
                last,
            } if range.overlaps(*first, *last) => self.dropped += dropped,
            Entry::Suppressed {
                records,
                first,
                last,
            } if range.overlaps(*first, *last) => self.suppressed += records,
            _ => {}
        }
    }

    fn add(
        &mut self,
        time: &[u8],
        client: &[u8],
        qname: &[u8],
        decision: &[u8],
        list: Option<&[u8]>,
    ) {
        self.queries += 1;
        if self.first.as_deref().is_none_or(|f| time < f) {
            self.first = Some(time.to_vec());
        }
        if self.last.as_deref().is_none_or(|l| time > l) {
            self.last = Some(time.to_vec());
        }
        // Records come in time order, so most records fall in the hour of the one before: count
        // the run and touch the map only when the hour changes.
        let hour = &time[..13.min(time.len())];
        if self.hour.0 != hour {
            self.flush_hour();
            self.hour.0.clear();
            self.hour.0.extend_from_slice(hour);
        }
        self.hour.1 += 1;
        match Decision::ALL
            .iter()
            .position(|d| d.as_str().as_bytes() == decision)
        {
            Some(index) => self.decision_counts[index] += 1,
            None => bump(&mut self.decisions, decision, 1),
        }
        if decision == b"blocked" {
            if qname.iter().any(u8::is_ascii_uppercase) {
                self.folded.clear();
                self.folded.extend(qname.iter().map(u8::to_ascii_lowercase));
                bump(&mut self.blocked, &self.folded, 1);
            } else {
                bump(&mut self.blocked, qname, 1);
            }
        }
        bump(&mut self.clients, client_ip(client), 1);
        if let Some(list) = list {
            bump(&mut self.lists, list, 1);
        }
    }

    fn flush_hour(&mut self) {
        let (hour, count) = std::mem::take(&mut self.hour);
        if count > 0 {
            bump(&mut self.hours, &hour, count);
        }
        // Keep the key's allocation for the next run.
        self.hour.0 = hour;
    }

    /// Moves the counters kept outside the maps into them (before merging or reporting).
    fn settle(&mut self) {
        self.flush_hour();
        for (index, count) in std::mem::take(&mut self.decision_counts)
            .into_iter()
            .enumerate()
        {
            if count > 0 {
                bump(
                    &mut self.decisions,
                    Decision::ALL[index].as_str().as_bytes(),
                    count,
                );
            }
        }
    }

    fn merge(&mut self, mut other: Self) {
        self.settle();
        other.settle();
        self.queries += other.queries;
        self.dropped += other.dropped;
        self.suppressed += other.suppressed;
        self.unreadable += other.unreadable;
        if let Some(f) = other.first
            && self.first.as_ref().is_none_or(|s| f < *s)
        {
            self.first = Some(f);
        }
        if let Some(l) = other.last
            && self.last.as_ref().is_none_or(|s| l > *s)
        {
            self.last = Some(l);
        }
        for (mine, theirs) in [
            (&mut self.decisions, other.decisions),
            (&mut self.blocked, other.blocked),
            (&mut self.clients, other.clients),
            (&mut self.lists, other.lists),
            (&mut self.hours, other.hours),
        ] {
            for (key, count) in theirs {
                *mine.entry(key).or_default() += count;
            }
        }
    }

    fn segment(&mut self, path: &Path, range: &TimeRange) -> Result<(), AuditError> {
        let Some(data) = segment_data(path, range)? else {
            return Ok(());
        };
        let bytes = RangeBytes::new(range);
        self.lines(&data, range, &bytes)
    }

    fn lines(
        &mut self,
        data: &[u8],
        range: &TimeRange,
        bytes: &RangeBytes,
    ) -> Result<(), AuditError> {
        for line in record_lines(data) {
            match scan(line) {
                Scan::Query(q) => {
                    if bytes.contains(q.time) {
                        self.add(q.time, q.client, q.qname, q.decision, q.list);
                    }
                }
                Scan::Other => {
                    let counted = memchr::memmem::find(line, b"\"type\":\"gap\"").is_some()
                        || memchr::memmem::find(line, b"\"type\":\"suppressed\"").is_some();
                    if counted {
                        match Record::parse(line) {
                            Ok(record) => self.count_losses(&record.entry, range),
                            Err(_) => self.unreadable += 1,
                        }
                    }
                }
                Scan::Unsure => {
                    let Ok(record) = Record::parse(line) else {
                        // Damaged: its time is unknown, so it is counted whatever the range.
                        self.unreadable += 1;
                        continue;
                    };
                    match &record.entry {
                        Entry::Query(q) if range.contains(record.time) => {
                            let time = record.time.to_string();
                            self.add(
                                time.as_bytes(),
                                q.client.as_bytes(),
                                q.qname.as_bytes(),
                                q.decision.as_str().as_bytes(),
                                q.rule.as_ref().map(|r| r.list.as_bytes()),
                            );
                        }
                        entry => self.count_losses(entry, range),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The address part of a stored client: a client is a host, and its source port changes per
/// query. `192.0.2.1:5353` → `192.0.2.1`, `[2001:db8::1]:53` → `2001:db8::1`; anonymised forms
/// (no port) are returned as they are.
fn client_ip(client: &[u8]) -> &[u8] {
    let ip = if let Some(rest) = client.strip_prefix(b"[") {
        memchr::memchr(b']', rest).map_or(client, |end| &rest[..end])
    } else {
        match memchr::memchr(b':', client) {
            Some(colon) if memchr::memrchr(b':', client) == Some(colon) => &client[..colon],
            _ => client,
        }
    };
    // An IPv4 client that reached a dual-stack socket is stored as `[::ffff:a.b.c.d]:port`:
    // the same host as `a.b.c.d` (as `--client` treats it), so one row, not two.
    match ip.strip_prefix(b"::ffff:") {
        Some(v4) if v4.contains(&b'.') => v4,
        _ => ip,
    }
}

/// The record lines of a segment's bytes: every complete line after the header. A piece after
/// the last newline is a torn line (a crash mid-write), not a record. Lines are found with
/// `memchr`'s vectorised search, which matters at 10M lines.
fn record_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = None;
    memchr::memchr_iter(b'\n', data).filter_map(move |end| {
        let line = start.map(|s| &data[s..end]);
        start = Some(end + 1);
        line
    })
}

/// A segment's bytes as a reader holds them.
enum SegmentBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Read(bytes) => bytes,
        }
    }
}

/// The bytes of a segment wanted for `range`, or `None` when it is not wanted or is gone
/// (retention removed it after the listing: a search or summary over a busy log goes on with
/// the rest, as if it had started a moment later).
///
/// A closed segment (it ends in its closing checkpoint) is memory-mapped: a 10M-record log is
/// several GB, and copying it through `read` cost as much CPU as scanning it, and a closed
/// segment is never changed again. Any other (the live one, or one torn by a crash) is read: the
/// writer cuts the live segment back to its last complete write after a failed one, and a
/// mapped page past the new end would kill the reader with SIGBUS.
fn segment_data(path: &Path, range: &TimeRange) -> Result<Option<SegmentBytes>, AuditError> {
    let gone = |error: &std::io::Error| error.kind() == std::io::ErrorKind::NotFound;
    let closed = match closed_range(path) {
        Ok(closed) => closed,
        Err(AuditError::Io { source, .. }) if gone(&source) => return Ok(None),
        Err(error) => return Err(error),
    };
    let bounded = range.from.is_some() || range.to.is_some();
    match closed {
        None => match std::fs::read(path) {
            Ok(bytes) => Ok(Some(SegmentBytes::Read(bytes))),
            Err(error) if gone(&error) => Ok(None),
            Err(error) => Err(AuditError::io(path)(error)),
        },
        Some(None) if bounded => Ok(None),
        Some(Some((min, max))) if bounded && !range.overlaps(min, max) => Ok(None),
        Some(_) => {
            let file = match std::fs::File::open(path) {
                Ok(file) => file,
                Err(error) if gone(&error) => return Ok(None),
                Err(error) => return Err(AuditError::io(path)(error)),
            };
            // SAFETY: the mapping is read-only and private to this process, and the segment
            // is closed: the writer never changes it again (retention may remove it, which
            // leaves a mapping intact).
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(AuditError::io(path))?;
            let _ = map.advise(memmap2::Advice::Sequential);
            Ok(Some(SegmentBytes::Mapped(map)))
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `TOP_N` largest counts, ties by name. Selected before anything is sorted or turned into
/// text: a summary over millions of distinct names (a random-subdomain flood) sorted and copied
/// every one of them to keep ten.
fn top(map: CountMap) -> Vec<Count> {
    let mut counts: Vec<(Vec<u8>, u64)> = map.into_iter().collect();
    // UTF-8 byte order is code point order, so names order as their text does.
    let order = |a: &(Vec<u8>, u64), b: &(Vec<u8>, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    if counts.len() > TOP_N {
        counts.select_nth_unstable_by(TOP_N - 1, order);
        counts.truncate(TOP_N);
    }
    counts.sort_unstable_by(order);
    counts
        .into_iter()
        .map(|(name, count)| Count {
            name: text(&name),
            count,
        })
        .collect()
}

/// Figures over the query records in `range`. Segments are spread over the available cores.
pub fn summary(dir: &Path, range: &TimeRange) -> Result<Summary, AuditError> {
    let segments = segment::existing_segments(dir)?;
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(segments.len().max(1));
    let tallies: Vec<Result<Tally, AuditError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let segments = &segments;
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    for seg in segments.iter().skip(w).step_by(workers) {
                        tally.segment(&seg.path, range)?;
                    }
                    Ok(tally)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(AuditError::WriterPanicked)))
            .collect()
    });
    let mut total = Tally::default();
    for tally in tallies {
        total.merge(tally?);
    }
    total.settle();
    let to_map = |map: CountMap| -> BTreeMap<String, u64> {
        map.into_iter().map(|(k, v)| (text(&k), v)).collect()
    };
    Ok(Summary {
        range: *range,
        first: total.first.as_deref().and_then(Timestamp::parse_stored),
        last: total.last.as_deref().and_then(Timestamp::parse_stored),
        queries: total.queries,
        by_decision: to_map(total.decisions),
        top_blocked: top(total.blocked),
        top_clients: top(total.clients),
        per_list: to_map(total.lists),
        per_hour: to_map(total.hours),
        dropped: total.dropped,
        suppressed: total.suppressed,
        unreadable: total.unreadable,
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |t: Option<Timestamp>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
        writeln!(
            f,
            "queries: {} ({} .. {})",
            self.queries,
            show(self.first),
            show(self.last)
        )?;
        if self.dropped > 0 {
            writeln!(
                f,
                "lost, not recorded one by one (queue full, log not writable, or abandoned at a \
                 stop; see gap records): {}",
                self.dropped
            )?;
        }
        if self.suppressed > 0 {
            writeln!(
                f,
                "from outside server.allow (REFUSED, FORMERR), not recorded one by one (over \
                 outsider_records_per_sec, see suppressed records): {}",
                self.suppressed
            )?;
        }
        let table = |f: &mut fmt::Formatter<'_>,
                     title: &str,
                     rows: &mut dyn Iterator<Item = (&str, u64)>| {
            writeln!(f, "\n{title}")?;
            for (name, count) in rows {
                writeln!(f, "  {count:>12}  {}", printable(name))?;
            }
            Ok(())
        };
        table(
            f,
            "by decision:",
            &mut self.by_decision.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        table(
            f,
            "top blocked domains:",
            &mut self.top_blocked.iter().map(|c| (c.name.as_str(), c.count)),
        )?;
        table(
            f,
            "top clients:",
            &mut self.top_clients.iter().map(|c| (c.name.as_str(), c.count)),
        )?;
        table(
            f,
            "per list:",
            &mut self.per_list.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        table(
            f,
            "per hour (UTC):",
            &mut self.per_hour.iter().map(|(k, v)| (k.as_str(), *v)),
        )
    }
}

/// Export and output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// JSON lines: an export header line, then every record line exactly as stored.
    Jsonl,
    /// CSV: one row per record, flattened columns plus the stored line in `record`.
    Csv,
}

/// The CSV column names (the first row of a CSV export and of `search --csv`).
pub const CSV_COLUMNS: &str = "seq,time,instance,type,client,transport,qname,qtype,qclass,decision,list,rule,file,line,trigger,action,rcode,answer,ede,source,latency_us,generation,prev,hash,record";

/// What `export` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    pub records: u64,
    pub segments: u64,
}

/// Streams every record of the log, with its chain members, so the output verifies on its own
/// (`verify` accepts it). Torn tails (crash) are left out, as they are not part of the chain.
pub fn export(
    dir: &Path,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<ExportStats, AuditError> {
    export_range(dir, format, &TimeRange::default(), out)
}

/// As [`export`], for the records of a time range: every record from the first to the last
/// one timed inside it, by `seq`, so the export is one unbroken piece of the chain (records are
/// written in nearly, not strictly, time order, so a few at the edges may lie just outside).
/// The piece goes on through the checkpoint after it if that is signed (see `signed_cover`),
/// so that every exported record is covered by a signature `verify --pubkey` can check.
pub fn export_range(
    dir: &Path,
    format: ExportFormat,
    range: &TimeRange,
    out: &mut dyn Write,
) -> Result<ExportStats, AuditError> {
    export_listed(dir, segment::existing_segments(dir)?, format, range, out)
}

/// Whether an error is a segment file not found: retention removed it after the listing.
fn removed(error: &AuditError) -> bool {
    matches!(error, AuditError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Times the seq bounds of a range export are looked up again, from a fresh listing, when
/// retention removed a segment under the lookup (nothing has been written yet then).
const EXPORT_LISTING_RETRIES: usize = 3;

/// [`export_range`] over `segments`, the directory's listing. Retention may remove the oldest
/// of them before they are read: the export then starts at the oldest still there, as if it
/// had started a moment later (search and summary do the same). One removed after the export
/// has started, so that the export would have a hole, fails it.
fn export_listed(
    dir: &Path,
    mut segments: Vec<segment::SegmentFile>,
    format: ExportFormat,
    range: &TimeRange,
    out: &mut dyn Write,
) -> Result<ExportStats, AuditError> {
    let bounded = range.from.is_some() || range.to.is_some();
    let bounds = |segments: &[segment::SegmentFile]| -> Result<(u64, u64), AuditError> {
        let (low, high, _) =
            seq_bounds(segments, range)?.ok_or(AuditError::NothingInRange { range: *range })?;
        Ok(match signed_cover(segments, high)? {
            Some(cover) => (low, cover),
            // The newest records of a live log, not signed yet: from the signed checkpoint
            // before them instead, which they follow within seconds (`verify --pubkey` takes
            // them as the unsigned tail a live log ends in).
            None => (signed_before(segments, low)?.unwrap_or(low), high),
        })
    };
    let (low, high) = if bounded {
        let mut tries = 0;
        loop {
            match bounds(&segments) {
                Err(error) if removed(&error) && tries < EXPORT_LISTING_RETRIES => {
                    tries += 1;
                    segments = segment::existing_segments(dir)?;
                }
                result => break result?,
            }
        }
    } else {
        (0, u64::MAX)
    };
    let mut sink = ExportSink {
        format,
        out,
        row: String::new(),
        prev: None,
        last_line: Vec::new(),
        stats: ExportStats::default(),
        last_segment: None,
    };
    let mut started = false;
    let mut first_header: Option<Header> = None;
    // The seq of the last record read, to find a hole at the next segment's header.
    let mut last_seq: Option<u64> = None;
    'segments: for (index, seg) in segments.iter().enumerate() {
        let opened = if !started && bounded {
            wanted(&seg.path, range)
                .and_then(|wanted| wanted.then(|| LineReader::open(&seg.path)).transpose())
        } else {
            LineReader::open(&seg.path).map(Some)
        };
        let mut reader = match opened {
            Ok(Some(reader)) => reader,
            Ok(None) => continue,
            Err(error) if removed(&error) && !started => continue,
            Err(error) if removed(&error) => {
                return Err(AuditError::RemovedDuringExport {
                    path: seg.path.clone(),
                });
            }
            Err(error) => return Err(error),
        };
        let mut first = true;
        while let Some(line) = reader.next_line().map_err(AuditError::io(&seg.path))? {
            if !line.complete {
                break;
            }
            if std::mem::take(&mut first) {
                let header = Header::parse(line.bytes).ok_or_else(|| AuditError::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason: "not a dnsward-audit segment header of version 1 or 2",
                })?;
                if !started {
                    sink.prev = Some(header.prev_segment_last_hash.clone());
                }
                // (Before the export starts, lines before the range are only passed over.)
                if started
                    && let Some(last) = last_seq
                    && header.first_seq > last + 1
                {
                    return Err(AuditError::ExportHole(Hole {
                        from_seq: last + 1,
                        to_seq: header.first_seq - 1,
                        before: seg.path.clone(),
                    }));
                }
                first_header.get_or_insert(header);
                continue;
            }
            // (The loop stops at a torn line above: this one is complete.)
            let seq = segment::LinkView::parse(line.bytes).map(|view| view.seq);
            if seq.is_some() {
                last_seq = seq;
            }
            if bounded {
                // A line that does not decode is inside the exported piece if it sits there.
                if seq.is_some_and(|seq| seq > high) {
                    break 'segments;
                }
                if !started && seq.is_none_or(|seq| seq < low) {
                    sink.prev = Some(line_hash(line.bytes));
                    continue;
                }
            }
            if !started {
                started = true;
                let mut header = first_header
                    .clone()
                    .unwrap_or_else(|| Header::new(HeaderKind::Export, 1, &GENESIS, ""));
                header.first_seq = seq.unwrap_or(header.first_seq);
                header.prev_segment_last_hash = sink.prev.clone().unwrap_or_default();
                export_start(&header, format, sink.out)?;
            }
            if !sink.line(index, line.bytes)? {
                return Err(AuditError::Corrupt {
                    path: seg.path.clone(),
                    offset: line.offset,
                    reason: "a record that does not follow from the one before it (changed, \
                             inserted, reordered, or records deleted before it): nothing \
                             exported; `dnsward audit verify` names the damage",
                });
            }
        }
    }
    let ExportSink {
        out,
        mut row,
        last_line,
        stats,
        ..
    } = sink;
    // Segments without a single record: the export is their start and nothing else.
    let start = first_header.as_ref().map(|header| {
        (
            header.first_seq.saturating_sub(1),
            header.prev_hash().unwrap_or(GENESIS),
        )
    });
    if !started && let Some(header) = &first_header {
        export_start(header, format, out)?;
    }
    let (last_seq, last_hash) = segment::LinkView::parse(&last_line)
        .zip(segment::split_hash(&last_line))
        .map(|(view, (_, hash))| (view.seq, hash))
        .or(start)
        .unwrap_or((0, GENESIS));
    let end = ExportEnd::new(stats.records, last_seq, &last_hash).to_line();
    match format {
        ExportFormat::Jsonl => writeln!(out, "{end}"),
        ExportFormat::Csv => {
            row.clear();
            export_end_row(&end, &mut row);
            writeln!(out, "{row}")
        }
    }
    .map_err(AuditError::Output)?;
    Ok(stats)
}

/// The seq of the last signed checkpoint before record `low` in its segment, if any.
fn signed_before(segments: &[segment::SegmentFile], low: u64) -> Result<Option<u64>, AuditError> {
    let Some(seg) = segments.iter().rev().find(|seg| seg.first_seq <= low) else {
        return Ok(None);
    };
    let mut reader = LineReader::open(&seg.path)?;
    let mut found = None;
    while let Some(line) = reader.next_line().map_err(AuditError::io(&seg.path))? {
        let Some(view) = segment::LinkView::parse(line.bytes).filter(|_| line.complete) else {
            continue;
        };
        if view.seq >= low {
            break;
        }
        if view.kind == "checkpoint"
            && matches!(
                Record::parse(line.bytes),
                Ok(Record { entry: Entry::Checkpoint(cp), .. }) if cp.sig.is_some()
            )
        {
            found = Some(view.seq);
        }
    }
    Ok(found)
}

/// The seq of the checkpoint that first covers record `high`, if it is signed: in a signed log
/// the periodic or closing checkpoint seconds later, the one that ends a batch holding a
/// record timed long before it (a writer that fell behind, a late answer), or after a crash
/// the one a restarted writer signs first. The times of the records between do not matter:
/// the writer signs within a batch or a checkpoint interval of any record. `None` in an
/// unsigned log, or when the log ends first.
fn signed_cover(segments: &[segment::SegmentFile], high: u64) -> Result<Option<u64>, AuditError> {
    let start = segments
        .iter()
        .rposition(|seg| seg.first_seq <= high)
        .unwrap_or(0);
    for seg in &segments[start..] {
        let mut reader = LineReader::open(&seg.path)?;
        let mut header = true;
        while let Some(line) = reader.next_line().map_err(AuditError::io(&seg.path))? {
            if !line.complete {
                // A torn tail: the chain goes on in the next segment.
                break;
            }
            if std::mem::take(&mut header) {
                continue;
            }
            let Some(view) = segment::LinkView::parse(line.bytes) else {
                return Ok(None);
            };
            if view.seq <= high {
                continue;
            }
            if view.kind == "checkpoint" {
                let signed = matches!(
                    Record::parse(line.bytes),
                    Ok(Record { entry: Entry::Checkpoint(cp), .. }) if cp.sig.is_some()
                );
                return Ok(signed.then_some(view.seq));
            }
        }
    }
    Ok(None)
}

/// Writes exported lines: the stored line (JSON lines) or its row (CSV), and keeps the links.
struct ExportSink<'a> {
    format: ExportFormat,
    out: &'a mut dyn Write,
    row: String,
    /// The hash (hex) of the line before the next one, for the first exported line's link and
    /// the CSV `prev` column. It runs on across segment boundaries (never reset from a header
    /// after the first): an export must show a break in the chain, not paper over it.
    prev: Option<String>,
    last_line: Vec<u8>,
    stats: ExportStats,
    /// The index of the segment the last exported line came from.
    last_segment: Option<usize>,
}

impl ExportSink<'_> {
    /// Writes one stored line. `Ok(false)`: it does not follow from the line before it (its
    /// hash is not `SHA-256(prev ‖ its bytes)`: changed, inserted, reordered, or a record
    /// before it deleted), and nothing is written; an export of a damaged log is a failure,
    /// not a file that `verify` fails later.
    fn line(&mut self, segment: usize, line: &[u8]) -> Result<bool, AuditError> {
        if !follows(self.prev.as_deref(), line) {
            return Ok(false);
        }
        if self.last_segment.replace(segment) != Some(segment) {
            self.stats.segments += 1;
        }
        let link = self.prev.take().unwrap_or_default();
        match self.format {
            ExportFormat::Jsonl => {
                self.out.write_all(line).map_err(AuditError::Output)?;
                self.out.write_all(b"\n").map_err(AuditError::Output)?;
            }
            ExportFormat::Csv => {
                self.row.clear();
                // A line that does not decode is exported as a row with only `record`,
                // so the damage stays visible to `verify`.
                if !csv_row(line, Some(&link), &mut self.row) {
                    self.row.push_str(",,,,,,,,,,,,,,,,,,,,,,");
                    csv_field(&mut self.row, &link);
                    self.row.push_str(",,");
                    csv_field(&mut self.row, &String::from_utf8_lossy(line));
                }
                self.out
                    .write_all(self.row.as_bytes())
                    .map_err(AuditError::Output)?;
                self.out.write_all(b"\n").map_err(AuditError::Output)?;
            }
        }
        self.prev = Some(line_hash(line));
        self.last_line.clear();
        self.last_line.extend_from_slice(line);
        self.stats.records += 1;
        Ok(true)
    }
}

/// Whether `line` is the record that follows the one whose hash is `prev` (hex): its stored
/// hash is the chain hash over its bytes. A line without a hash follows nothing.
fn follows(prev: Option<&str>, line: &[u8]) -> bool {
    let Some(prev) = prev.and_then(|hex| segment::decode_hash(hex.as_bytes())) else {
        return false;
    };
    segment::split_hash(line)
        .is_some_and(|(body, stored)| segment::recompute(&prev, body) == stored)
}

/// A stored line's hash (hex), or empty if it has none.
fn line_hash(line: &[u8]) -> String {
    segment::split_hash(line)
        .map(|(_, hash)| hex::encode(hash))
        .unwrap_or_default()
}

/// The first line of an export: a header of kind `export` stating where the chain starts, or
/// the CSV column names (there the first row's `prev` states it).
fn export_start(
    header: &Header,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    match format {
        ExportFormat::Jsonl => {
            let mut export = header.clone();
            export.kind = HeaderKind::Export;
            export.created = Timestamp::now();
            export.torn_tail = None;
            let mut buf = Vec::new();
            export.encode(&mut buf)?;
            out.write_all(&buf).map_err(AuditError::Output)
        }
        ExportFormat::Csv => writeln!(out, "{CSV_COLUMNS}").map_err(AuditError::Output),
    }
}

/// Whether a line is a `gap` or `suppressed` record whose losses (written when the log could be
/// written again) fall in `range`: it belongs to that range's export, as to its summary.
fn counts_losses_in(line: &[u8], view: &segment::LinkView<'_>, range: &TimeRange) -> bool {
    (view.kind == "gap" || view.kind == "suppressed")
        && Record::parse(line).is_ok_and(|record| match record.entry {
            Entry::Gap { first, last, .. } | Entry::Suppressed { first, last, .. } => {
                range.overlaps(first, last)
            }
            _ => false,
        })
}

/// The first and last `seq` of records timed inside `range` (a loss count, by the time of its
/// losses), and the last one's time, or `None` if there are none.
fn seq_bounds(
    segments: &[segment::SegmentFile],
    range: &TimeRange,
) -> Result<Option<(u64, u64, Timestamp)>, AuditError> {
    let mut bounds: Option<(u64, u64, Timestamp)> = None;
    for seg in segments {
        if !wanted(&seg.path, range)? {
            continue;
        }
        let mut reader = LineReader::open(&seg.path)?;
        while let Some(line) = reader.next_line().map_err(AuditError::io(&seg.path))? {
            if !line.complete {
                break;
            }
            if let Some(view) = segment::LinkView::parse(line.bytes)
                && (range.contains(view.time) || counts_losses_in(line.bytes, &view, range))
            {
                bounds = Some(match bounds {
                    None => (view.seq, view.seq, view.time),
                    Some((low, high, _)) if view.seq > high => {
                        (low.min(view.seq), view.seq, view.time)
                    }
                    Some((low, high, high_time)) => (low.min(view.seq), high, high_time),
                });
            }
        }
    }
    Ok(bounds)
}

/// The CSV row of an export's end line: `type` is `export_end`, `seq` and `hash` are where the
/// chain ends, and `record` holds the end line itself.
fn export_end_row(end_line: &str, row: &mut String) {
    let Some(end) = ExportEnd::parse(end_line.as_bytes()) else {
        return;
    };
    let mut fields = vec![String::new(); CSV_PREV_COLUMN + 2];
    fields[0] = end.last_seq.to_string();
    fields[3] = EXPORT_END_KIND.to_owned();
    fields[CSV_PREV_COLUMN + 1] = end.last_hash;
    push_csv_row(row, &fields, end_line);
}

/// Appends the columns and then the `record` column.
fn push_csv_row(row: &mut String, fields: &[String], record: &str) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            row.push(',');
        }
        csv_field(row, field);
    }
    row.push(',');
    // The stored line byte for byte: `verify` hashes this column. JSON has no raw line breaks
    // in it; DEL and C1 controls (U+0080-U+009F), which JSON writes raw, stay raw here.
    push_csv_field(row, record, |c| c < ' ');
}

/// Appends one CSV field. Control characters are written as `\n`, `\r`, `\t` or `\u{..}` so a
/// row is always one line; fields with `,` or `"` are quoted.
fn csv_field(row: &mut String, value: &str) {
    push_csv_field(row, value, char::is_control);
}

/// [`csv_field`], escaping only the control characters `escaped` selects.
fn push_csv_field(row: &mut String, value: &str, escaped: impl Fn(char) -> bool) {
    let needs_quotes = value.contains([',', '"']);
    if needs_quotes {
        row.push('"');
    }
    for c in value.chars() {
        match c {
            '"' => row.push_str("\"\""),
            c if escaped(c) => push_escaped_control(row, c),
            c => row.push(c),
        }
    }
    if needs_quotes {
        row.push('"');
    }
}

/// A control character as `\n`, `\r`, `\t` or `\u{..}`.
fn push_escaped_control(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => {
            use fmt::Write as _;
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `text` with its control characters escaped (as in CSV), for a terminal: a stored value
/// (an answer's rdata, a list path) must not move the cursor, colour the screen or start what
/// looks like another row.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            push_escaped_control(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Renders a stored line as a CSV row (no newline); false if the line does not decode. `prev`
/// is the hash of the record before, for the `prev` column (an export knows it; a search
/// result, out of its context, leaves the column empty unless the line states it, as version
/// 1 lines do).
pub fn csv_row(line: &[u8], prev: Option<&str>, row: &mut String) -> bool {
    let Ok(record) = Record::parse(line) else {
        return false;
    };
    let Ok(line_text) = std::str::from_utf8(line) else {
        return false;
    };
    let mut fields: Vec<String> = vec![
        record.seq.to_string(),
        record.time.to_string(),
        record.instance.clone(),
        record.entry.kind().to_owned(),
    ];
    match &record.entry {
        Entry::Query(q) => {
            let (list, rule, file, line_no, trigger) = match &q.rule {
                Some(r) => (
                    r.list.clone(),
                    r.rule.clone(),
                    r.file.clone(),
                    r.line.to_string(),
                    match &r.trigger {
                        TriggerEntry::Question => "question".to_owned(),
                        TriggerEntry::Cname { matched, chain } => {
                            format!("cname {matched} via {}", chain.join(" -> "))
                        }
                    },
                ),
                None => Default::default(),
            };
            fields.extend([
                q.client.clone(),
                q.transport.clone(),
                q.qname.clone(),
                q.qtype.clone(),
                q.qclass.clone(),
                q.decision.as_str().to_owned(),
                list,
                rule,
                file,
                line_no,
                trigger,
                q.action.clone().unwrap_or_default(),
                q.rcode.clone(),
                q.answer.clone(),
                q.ede.map(|e| e.to_string()).unwrap_or_default(),
                q.source.clone(),
                q.latency_us.to_string(),
                q.generation.to_string(),
            ]);
        }
        _ => fields.extend(std::iter::repeat_n(String::new(), 18)),
    }
    fields.push(
        prev.map(str::to_owned)
            .or_else(|| record.prev.clone())
            .unwrap_or_default(),
    );
    fields.push(record.hash.clone());
    push_csv_row(row, &fields, line_text);
    true
}

/// Splits one CSV row into fields (RFC 4180 quoting, no newlines inside fields).
fn csv_split(row: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut quoted = false;
    let mut i = 0;
    while i < row.len() {
        let b = row[i];
        if quoted {
            if b == b'"' {
                if row.get(i + 1) == Some(&b'"') {
                    field.push(b'"');
                    i += 1;
                } else {
                    quoted = false;
                }
            } else {
                field.push(b);
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == b',' {
            fields.push(std::mem::take(&mut field));
        } else {
            field.push(b);
        }
        i += 1;
    }
    fields.push(field);
    fields
}

/// Index of the `prev` column in [`CSV_COLUMNS`].
const CSV_PREV_COLUMN: usize = 22;

/// For `verify` of a CSV export: the stored line in a row's `record` column and the row's
/// `prev` column, provided every other column is exactly what that line renders to (so an
/// edited flattened column counts as a modification too); `None` otherwise.
pub fn csv_row_to_line(row: &[u8]) -> Option<(Vec<u8>, String)> {
    let mut fields = csv_split(row);
    let line = fields.pop()?;
    if let Ok(end_line) = std::str::from_utf8(&line)
        && ExportEnd::parse(&line).is_some()
    {
        let mut rendered = String::new();
        export_end_row(end_line, &mut rendered);
        return (rendered.as_bytes() == row).then(|| (line, String::new()));
    }
    let prev = String::from_utf8(fields.get(CSV_PREV_COLUMN)?.clone()).ok()?;
    let mut rendered = String::new();
    (csv_row(&line, Some(&prev), &mut rendered) && rendered.as_bytes() == row)
        .then_some((line, prev))
}

/// How a CSV export starts (its first column's name); a JSON file starts with `{`.
pub const CSV_EXPORT_START: &[u8] = b"seq,";

/// Output style of `search`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned columns; widths are fixed from the first block of rows, so output streams.
    Table,
    /// The stored lines, chain members included.
    Jsonl,
    Csv,
}

/// Rows buffered to size the table columns before the first is printed.
const TABLE_BLOCK: usize = 1000;

/// Writes search results; returns how many were written.
pub fn write_hits(
    hits: impl Iterator<Item = Result<Hit, AuditError>>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let mut writer = HitWriter::new(format);
    writer.write(hits, out)?;
    Ok(writer.count)
}

const TITLES: [&str; 9] = [
    "TIME", "CLIENT", "QNAME", "QTYPE", "DECISION", "LIST", "RULE", "RCODE", "ANSWER",
];

/// Writes search results in one format over one or more calls (`search --follow` writes the
/// search, then each new record): the CSV header once, the table's header once with columns
/// sized by its first block of rows.
#[derive(Debug)]
pub struct HitWriter {
    format: OutputFormat,
    /// Whether the CSV or table header is out.
    header_written: bool,
    /// Table column widths: the narrowest until the header is out, then fixed.
    widths: [usize; 9],
    /// Hits written so far.
    pub count: u64,
}

impl HitWriter {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            header_written: false,
            widths: TITLES.map(str::len),
            count: 0,
        }
    }

    /// For rows that come later (`--follow`): table columns at least as wide as typical
    /// values, so they line up even when the first block was empty or narrow.
    pub fn following(mut self) -> Self {
        // Time, `[v6]:port` of a /48, a long name, type, decision, list, rule, rcode.
        self.widths = [27, 21, 40, 5, 8, 12, 40, 8, 0];
        self
    }

    pub fn write(
        &mut self,
        hits: impl Iterator<Item = Result<Hit, AuditError>>,
        out: &mut dyn Write,
    ) -> Result<(), AuditError> {
        match self.format {
            OutputFormat::Jsonl => {
                for hit in hits {
                    out.write_all(&hit?.line).map_err(AuditError::Output)?;
                    out.write_all(b"\n").map_err(AuditError::Output)?;
                    self.count += 1;
                }
            }
            OutputFormat::Csv => {
                if !self.header_written {
                    writeln!(out, "{CSV_COLUMNS}").map_err(AuditError::Output)?;
                    self.header_written = true;
                }
                let mut row = String::new();
                for hit in hits {
                    row.clear();
                    csv_row(&hit?.line, None, &mut row);
                    writeln!(out, "{row}").map_err(AuditError::Output)?;
                    self.count += 1;
                }
            }
            OutputFormat::Table => {
                let mut hits = hits;
                if !self.header_written {
                    let mut block = Vec::new();
                    while block.len() < TABLE_BLOCK {
                        match hits.next() {
                            Some(hit) => block.push(table_cells(&hit?)),
                            None => break,
                        }
                    }
                    for row in &block {
                        for (w, cell) in self.widths.iter_mut().zip(row) {
                            *w = (*w).max(cell.chars().count());
                        }
                    }
                    self.header_written = true;
                    table_row(&TITLES.map(str::to_owned), &self.widths, out)?;
                    for row in &block {
                        table_row(row, &self.widths, out)?;
                        self.count += 1;
                    }
                }
                for hit in hits {
                    table_row(&table_cells(&hit?), &self.widths, out)?;
                    self.count += 1;
                }
            }
        }
        Ok(())
    }
}

fn table_cells(hit: &Hit) -> [String; 9] {
    let Entry::Query(q) = &hit.record.entry else {
        return Default::default();
    };
    let (list, rule) = q
        .rule
        .as_ref()
        .map(|r| {
            let via = match &r.trigger {
                TriggerEntry::Cname { matched, .. } => format!(" (via CNAME {matched})"),
                TriggerEntry::Question => String::new(),
            };
            (
                r.list.clone(),
                format!("{}:{} {}{via}", r.file, r.line, r.rule),
            )
        })
        .unwrap_or_default();
    [
        hit.record.time.to_string(),
        printable(&q.client),
        printable(&q.qname),
        printable(&q.qtype),
        q.decision.as_str().to_owned(),
        printable(&list),
        printable(&rule),
        printable(&q.rcode),
        printable(&q.answer),
    ]
}

fn table_row(row: &[String], widths: &[usize; 9], out: &mut dyn Write) -> Result<(), AuditError> {
    let mut text = String::new();
    for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
        if i + 1 == row.len() {
            text.push_str(cell);
        } else {
            text.push_str(&format!("{cell:<w$}  "));
        }
    }
    writeln!(out, "{}", text.trim_end()).map_err(AuditError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of several segments written by the real writer (service records only).
    fn segmented_log(dir: &Path) -> Vec<segment::SegmentFile> {
        use crate::audit::{AuditLog, AuditSettings, InstanceId, ServiceEvent};
        let settings = AuditSettings {
            dir: dir.to_owned(),
            segment_max_bytes: 4096,
            fsync_interval_ms: 0,
            ..AuditSettings::default()
        };
        let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
        for _ in 0..120 {
            handle.service(ServiceEvent::ReloadRefused {
                errors: vec!["x".repeat(60)],
            });
        }
        writer.shutdown().unwrap();
        let segments = segment::existing_segments(dir).unwrap();
        assert!(segments.len() >= 4, "{segments:?}");
        segments
    }

    /// Retention removing the oldest segments between the listing and their reading: the
    /// export starts at the oldest still there, and verifies; one removed after the export has
    /// started (a hole) fails it, naming the file.
    #[test]
    fn an_export_starts_after_segments_removed_under_it_and_fails_on_a_hole() {
        for range in [
            TimeRange::default(),
            TimeRange::parse(Some("1h"), None, None).unwrap(),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let listed = segmented_log(dir.path());
            std::fs::remove_file(&listed[0].path).unwrap();
            std::fs::remove_file(&listed[1].path).unwrap();
            let mut out = Vec::new();
            let stats = export_listed(
                dir.path(),
                listed.clone(),
                ExportFormat::Jsonl,
                &range,
                &mut out,
            )
            .unwrap();
            assert!(stats.records > 0);
            let exports = tempfile::tempdir().unwrap();
            let file = exports.path().join("export.jsonl");
            std::fs::write(&file, &out).unwrap();
            let report = crate::audit::verify(&file, None).unwrap();
            assert!(report.ok(), "{report}");
            assert_eq!(
                report.chain_start,
                crate::audit::verify::ChainStart::After {
                    seq: listed[2].first_seq - 1
                }
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let listed = segmented_log(dir.path());
        std::fs::remove_file(&listed[1].path).unwrap();
        let error = export_listed(
            dir.path(),
            listed.clone(),
            ExportFormat::Jsonl,
            &TimeRange::default(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&error, AuditError::RemovedDuringExport { path } if *path == listed[1].path),
            "{error}"
        );
    }

    #[test]
    fn only_closed_segments_are_mapped_and_a_removed_one_is_skipped() {
        use crate::audit::segment::{GENESIS, Header, HeaderKind, encode_record};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg-00000000000000000001.dwlog");
        let mut bytes = Vec::new();
        Header::new(HeaderKind::Segment, 1, &GENESIS, "i1")
            .encode(&mut bytes)
            .unwrap();
        let stop = Entry::Stop {
            records: 0,
            dropped: 0,
        };
        encode_record(&mut bytes, 1, &GENESIS, Timestamp::now(), "i1", &stop).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let all = TimeRange::default();

        // The live segment (no closing checkpoint) is read, not mapped: when the writer cuts
        // it back after a failed write, what the reader holds stays readable. A mapping
        // would fault (SIGBUS) on the first access past the new end.
        let data = segment_data(&path, &all).unwrap().unwrap();
        assert!(matches!(data, SegmentBytes::Read(_)));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_eq!(&data[..], &bytes[..]);

        // Removed by retention after the listing: skipped, not an error.
        std::fs::remove_file(&path).unwrap();
        assert!(segment_data(&path, &all).unwrap().is_none());
        let range = TimeRange::parse(Some("1h"), None, None).unwrap();
        assert!(segment_data(&path, &range).unwrap().is_none());
    }

    /// The top counts are the largest, ties by name, as a full sort would give them.
    #[test]
    fn top_counts_match_a_full_sort() {
        let mut map = CountMap::default();
        for i in 0u64..500 {
            map.insert(
                format!("n{:03}.example.", i * 7919 % 500).into_bytes(),
                i % 13,
            );
        }
        let mut expected: Vec<(String, u64)> = map
            .iter()
            .map(|(name, count)| (String::from_utf8(name.clone()).unwrap(), *count))
            .collect();
        expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        expected.truncate(TOP_N);
        let got: Vec<(String, u64)> = top(map).into_iter().map(|c| (c.name, c.count)).collect();
        assert_eq!(got, expected);
    }

    /// A gap record is written when the log can be written again, after the losses it counts:
    /// a summary counts it in the range its losses span, not where it was written (an outage
    /// from 10:50 to 11:10 showed in 11:00-12:00 and not at all in 10:00-11:00).
    #[test]
    fn summary_counts_losses_when_they_happened() {
        use crate::audit::record::Checkpoint;
        use crate::audit::segment::{GENESIS, Header, HeaderKind, encode_record};
        let at = |text: &str| Timestamp::parse_rfc3339(text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        Header::new(HeaderKind::Segment, 1, &GENESIS, "i1")
            .encode(&mut bytes)
            .unwrap();
        let gap = Entry::Gap {
            dropped: 5000,
            first: at("2026-12-02T10:50:00Z"),
            last: at("2026-12-02T11:09:59Z"),
        };
        let written = at("2026-12-02T11:10:00Z");
        let head = encode_record(&mut bytes, 1, &GENESIS, written, "i1", &gap).unwrap();
        let close = Entry::Checkpoint(Checkpoint {
            head_seq: 1,
            head: hex::encode(head),
            key: None,
            sig: None,
            close: true,
            min_time: Some(at("2026-12-02T10:50:00Z")),
            max_time: Some(written),
            records: 1,
        });
        encode_record(&mut bytes, 2, &head, written, "i1", &close).unwrap();
        std::fs::write(dir.path().join("seg-00000000000000000001.dwlog"), &bytes).unwrap();
        assert!(crate::audit::verify(dir.path(), None).unwrap().ok());

        let dropped = |from: &str, to: &str| {
            let range = TimeRange {
                from: Some(at(from)),
                to: Some(at(to)),
            };
            summary(dir.path(), &range).unwrap().dropped
        };
        assert_eq!(
            dropped("2026-12-02T10:00:00Z", "2026-12-02T11:00:00Z"),
            5000
        );
        assert_eq!(
            dropped("2026-12-02T11:00:00Z", "2026-12-02T11:05:00Z"),
            5000
        );
        assert_eq!(dropped("2026-12-02T11:30:00Z", "2026-12-02T12:00:00Z"), 0);
        assert_eq!(dropped("2026-12-02T09:00:00Z", "2026-12-02T10:00:00Z"), 0);

        // An export of the outage's hour holds the gap record, as the summary counts it.
        let range = TimeRange {
            from: Some(at("2026-12-02T10:00:00Z")),
            to: Some(at("2026-12-02T11:00:00Z")),
        };
        let mut out = Vec::new();
        export_range(dir.path(), ExportFormat::Jsonl, &range, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"type\":\"gap\""), "{text}");
    }

    #[test]
    fn a_damaged_match_does_not_use_up_the_limit() {
        use crate::audit::segment::{GENESIS, Header, HeaderKind, encode_record};
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        Header::new(HeaderKind::Segment, 1, &GENESIS, "i1")
            .encode(&mut bytes)
            .unwrap();
        let query = |name: &str| Entry::Query(crate::audit::record::QueryEntry::sample(name));
        let mut head = GENESIS;
        let mut damaged = Vec::new();
        head = encode_record(&mut damaged, 1, &head, Timestamp::now(), "i1", &query("a.")).unwrap();
        // Its leading members intact (the byte walk takes it), its end cut off.
        damaged.truncate(damaged.len() - 20);
        damaged.push(b'\n');
        bytes.extend_from_slice(&damaged);
        encode_record(&mut bytes, 2, &head, Timestamp::now(), "i1", &query("b.")).unwrap();
        std::fs::write(dir.path().join("seg-00000000000000000001.dwlog"), &bytes).unwrap();

        let filter = Filter {
            decision: Some(Decision::Blocked),
            limit: Some(1),
            ..Filter::default()
        };
        let names: Vec<String> = search(dir.path(), &filter)
            .unwrap()
            .map(|hit| match hit.unwrap().record.entry {
                Entry::Query(q) => q.qname,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["b."]);
    }

    #[test]
    fn every_stored_qtype_mnemonic_parses() {
        for (text, stored) in [
            ("aaaa", "AAAA"),
            ("28", "AAAA"),
            ("type28", "AAAA"),
            ("TYPE65", "HTTPS"),
            ("TYPE65534", "TYPE65534"),
            ("zero", "ZERO"),
            ("0", "ZERO"),
            ("OPT", "OPT"),
            ("ixfr", "IXFR"),
            ("axfr", "AXFR"),
        ] {
            assert_eq!(parse_qtype(text).unwrap(), stored, "{text}");
        }
        for bad in ["", "AAAAA", "TYPE", "TYPE65536", "-1"] {
            assert!(parse_qtype(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tally_counts_hour_runs_and_decisions_across_merges() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        let t = |hour: u8| format!("2025-01-31T{hour:02}:10:00.000000Z");
        a.add(t(12).as_bytes(), b"10.0.0.1:1", b"x.", b"allowed", None);
        a.add(
            t(12).as_bytes(),
            b"10.0.0.1:2",
            b"y.",
            b"blocked",
            Some(b"l"),
        );
        // The same name in other letter case: one domain.
        a.add(
            t(13).as_bytes(),
            b"10.0.0.2:1",
            b"Y.",
            b"blocked",
            Some(b"l"),
        );
        // Out of order: back to an hour already counted.
        a.add(
            t(12).as_bytes(),
            b"10.0.0.2:1",
            b"z.",
            b"logged",
            Some(b"w"),
        );
        b.add(
            t(13).as_bytes(),
            b"[2001:db8::1]:5",
            b"x.",
            b"allowed",
            None,
        );
        b.add(t(14).as_bytes(), b"[2001:db8::1]:5", b"x.", b"odd", None);
        a.merge(b);
        a.settle();
        let get = |map: &CountMap, key: &str| map.get(key.as_bytes()).copied();
        assert_eq!(a.queries, 6);
        assert_eq!(get(&a.hours, "2025-01-31T12"), Some(3));
        assert_eq!(get(&a.hours, "2025-01-31T13"), Some(2));
        assert_eq!(get(&a.hours, "2025-01-31T14"), Some(1));
        assert_eq!(get(&a.decisions, "allowed"), Some(2));
        assert_eq!(get(&a.decisions, "blocked"), Some(2));
        assert_eq!(get(&a.decisions, "logged"), Some(1));
        assert_eq!(get(&a.decisions, "odd"), Some(1));
        assert_eq!(get(&a.blocked, "y."), Some(2));
        assert_eq!(get(&a.clients, "10.0.0.2"), Some(2));
        assert_eq!(get(&a.clients, "2001:db8::1"), Some(2));
        assert_eq!(get(&a.lists, "l"), Some(2));
        // Settling twice must not count twice.
        a.settle();
        assert_eq!(get(&a.hours, "2025-01-31T12"), Some(3));
    }

    #[test]
    fn record_lines_skip_the_header_and_a_torn_tail() {
        let lines: Vec<&[u8]> = record_lines(b"header\none\ntwo\ntorn").collect();
        assert_eq!(lines, vec![&b"one"[..], b"two"]);
        assert_eq!(record_lines(b"header only, torn").count(), 0);
        assert_eq!(record_lines(b"").count(), 0);
    }

    #[test]
    fn domain_filter_exact_and_suffix() {
        let unicode = DomainFilter::parse("bücher.example").unwrap();
        assert!(unicode.matches(b"www.xn--bcher-kva.example."));
        let suffix = DomainFilter::parse("Binance.com.").unwrap();
        assert!(suffix.matches(b"binance.com."));
        assert!(suffix.matches(b"www.BINANCE.com."));
        assert!(!suffix.matches(b"notbinance.com."));
        assert!(!suffix.matches(b"binance.com.evil."));
        let exact = DomainFilter::parse("=binance.com").unwrap();
        assert!(exact.matches(b"binance.com"));
        assert!(!exact.matches(b"www.binance.com."));
        // A label holding a dot is found where the policy decided it (its bytes joined with
        // dots), in either escape form; not by the exact name it only resembles.
        assert!(suffix.matches(b"www.binance\\.com."));
        assert!(suffix.matches(b"www.binance\\046com."));
        assert!(suffix.matches(b"\\098inance.com."));
        assert!(!suffix.matches(b"www.binance\\.com\\.evil."));
        assert!(!exact.matches(b"www.binance\\.com."));
        // The name as search shows it, escapes and all, finds the record it was copied from.
        let shown = DomainFilter::parse("=www.binance\\.com").unwrap();
        assert!(shown.matches(b"www.binance\\.com."));
        assert!(shown.matches(b"www.binance\\046com."));
        assert!(
            DomainFilter::parse("\\098inance.com")
                .unwrap()
                .matches(b"binance.com.")
        );
        // A final ideographic full stop is a root dot once converted.
        let ideographic = DomainFilter::parse("bücher.example。").unwrap();
        assert!(ideographic.matches(b"www.xn--bcher-kva.example."));
        // An empty value (an unset shell variable) is refused, not every name; `.` is that.
        assert!(DomainFilter::parse("").is_err());
        assert!(DomainFilter::parse("=").is_err());
        assert!(
            DomainFilter::parse(".")
                .unwrap()
                .matches(b"anything.example.")
        );
    }

    #[test]
    fn client_filter_addresses_networks_and_truncated() {
        let net = ClientFilter::parse("192.0.2.0/25").unwrap();
        assert!(net.matches(b"192.0.2.7:5353"));
        assert!(!net.matches(b"192.0.2.200:5353"));
        assert!(
            net.matches(b"192.0.2.0/24"),
            "overlapping truncated network"
        );
        let one = ClientFilter::parse("2001:db8::1").unwrap();
        assert!(one.matches(b"[2001:db8::1]:53"));
        assert!(!one.matches(b"[2001:db8::2]:53"));
        assert!(ClientFilter::parse("not-an-ip").is_err());
        // IPv4 clients written either way select each other.
        let mapped = ClientFilter::parse("::ffff:192.0.2.7").unwrap();
        assert!(mapped.matches(b"192.0.2.7:53"));
        let mapped_net = ClientFilter::parse("::ffff:192.0.2.0/120").unwrap();
        assert!(mapped_net.matches(b"192.0.2.7:53"));
        assert!(mapped_net.matches(b"192.0.2.0/24"));
        let v4 = ClientFilter::parse("192.0.2.7").unwrap();
        assert!(v4.matches(b"[::ffff:192.0.2.7]:53"));
    }

    #[test]
    fn client_ip_drops_the_port() {
        assert_eq!(client_ip(b"192.0.2.1:5353"), b"192.0.2.1");
        assert_eq!(client_ip(b"[2001:db8::1]:53"), b"2001:db8::1");
        assert_eq!(client_ip(b"2001:db8:1::/48"), b"2001:db8:1::/48");
        assert_eq!(client_ip(b"192.0.2.0/24"), b"192.0.2.0/24");
        assert_eq!(client_ip(b"[::ffff:192.0.2.7]:53"), b"192.0.2.7");
        assert_eq!(client_ip(b"[::ffff:1]:53"), b"::ffff:1");
    }

    #[test]
    fn csv_split_handles_quotes() {
        assert_eq!(
            csv_split(b"a,\"b,\"\"c\"\"\",d"),
            vec![b"a".to_vec(), b"b,\"c\"".to_vec(), b"d".to_vec()]
        );
    }

    #[test]
    fn time_range_parse() {
        let range = TimeRange::parse(
            None,
            Some("2025-01-01T00:00:00Z"),
            Some("2025-01-02T00:00:00Z"),
        )
        .unwrap();
        assert!(range.contains(Timestamp::parse_rfc3339("2025-01-01T12:00:00Z").unwrap()));
        assert!(!range.contains(Timestamp::parse_rfc3339("2025-01-02T00:00:00Z").unwrap()));
        assert!(TimeRange::parse(Some("2 fortnights?"), None, None).is_err());
        assert!(
            TimeRange::parse(Some("2h"), None, None)
                .unwrap()
                .from
                .is_some()
        );
    }
}
