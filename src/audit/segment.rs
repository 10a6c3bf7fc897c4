//! The byte format of the log (documented in `FORMAT.md`): segment file names, the header line,
//! record lines and the chain hash over them, and plain readers of segment files.
//!
//! It owns encoding and decoding of single lines and the layout of a directory; it does not
//! decide when to rotate (writer) or what a broken link means (verify).

use std::{
    borrow::Cow,
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    AuditError, json,
    record::{Entry, TIMESTAMP_LEN, Timestamp},
};

/// The `format` member of every header line.
pub const FORMAT_NAME: &str = "dnsward-audit";
/// The format version this code writes. Version 1 (whose record lines also carried `prev`) is
/// still read and verified; readers refuse any other version.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version readers accept.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// `prev` of the very first record of a log.
pub const GENESIS: Hash = [0; 32];
/// File name prefix and extension of segments: `seg-<first seq, 20 digits>.dwlog`, so names sort
/// in chain order.
pub const SEGMENT_PREFIX: &str = "seg-";
pub const SEGMENT_EXT: &str = ".dwlog";

/// A SHA-256 chain hash.
pub type Hash = [u8; 32];

/// What a header line introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderKind {
    /// A segment file in the log directory.
    Segment,
    /// An export file: all records of a log, verifiable on its own.
    Export,
}

/// The first line of a segment or export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub kind: HeaderKind,
    /// `seq` of the first record that follows.
    pub first_seq: u64,
    /// Hex hash of the record before `first_seq` (all zeros at the start of a log): the chain
    /// link of the first record that follows.
    pub prev_segment_last_hash: String,
    pub created: Timestamp,
    pub instance: String,
    /// Set when the previous segment ended in a torn line (crash mid-write): that segment's
    /// bytes from `offset` on are not part of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn_tail: Option<TornTail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TornTail {
    pub segment: String,
    pub offset: u64,
}

impl Header {
    pub fn new(kind: HeaderKind, first_seq: u64, prev: &Hash, instance: &str) -> Self {
        Self {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            kind,
            first_seq,
            prev_segment_last_hash: hex::encode(prev),
            created: Timestamp::now(),
            instance: instance.to_owned(),
            torn_tail: None,
        }
    }

    /// Appends the header line (with its newline) to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) -> Result<(), AuditError> {
        serde_json::to_writer(&mut *buf, self).map_err(AuditError::Encode)?;
        buf.push(b'\n');
        Ok(())
    }

    /// Parses a header line; `None` if it is not a header of this format and a version this
    /// code reads, or names a `first_seq` no record can have (seqs start at 1).
    pub fn parse(line: &[u8]) -> Option<Self> {
        let header: Self = serde_json::from_slice(line).ok()?;
        (header.format == FORMAT_NAME
            && (OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&header.version)
            && header.first_seq >= 1)
            .then_some(header)
    }

    pub fn prev_hash(&self) -> Option<Hash> {
        decode_hash(self.prev_segment_last_hash.as_bytes())
    }
}

/// The last line of an export: where the exported chain ends. Without it, an export cut short
/// (an incomplete copy, `head`) would verify as a shorter log; `verify` requires it in every
/// export and checks it against the chain it has just followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEnd {
    pub format: String,
    /// Always `export_end`.
    pub kind: String,
    /// Record lines in the export.
    pub records: u64,
    /// `seq` of the last exported record (`first_seq - 1` of the header when none).
    pub last_seq: u64,
    /// Its hash (the header's `prev_segment_last_hash` when none), 64 lower-case hex digits.
    pub last_hash: String,
}

/// The `kind` of the export's end line.
pub const EXPORT_END_KIND: &str = "export_end";

impl ExportEnd {
    pub fn new(records: u64, last_seq: u64, last_hash: &Hash) -> Self {
        Self {
            format: FORMAT_NAME.to_owned(),
            kind: EXPORT_END_KIND.to_owned(),
            records,
            last_seq,
            last_hash: hex::encode(last_hash),
        }
    }

    /// The line, without its newline.
    pub fn to_line(&self) -> String {
        // A struct of strings and numbers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses an end line; `None` for anything else (record lines start with `{"seq":`).
    pub fn parse(line: &[u8]) -> Option<Self> {
        if !line.starts_with(b"{\"format\"") {
            return None;
        }
        let end: Self = serde_json::from_slice(line).ok()?;
        (end.format == FORMAT_NAME && end.kind == EXPORT_END_KIND).then_some(end)
    }
}

/// Appends one record line (with its newline) to `buf` and returns its chain hash. `entry` is
/// any `Entry`; query records, written once per query, take the hand-written
/// [`encode_line`] path instead (`record::write_query_members`), which yields the same bytes.
pub fn encode_record<E: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    seq: u64,
    prev: &Hash,
    time: Timestamp,
    instance: &str,
    entry: &E,
) -> Result<Hash, AuditError> {
    encode_line(buf, seq, prev, time, instance, |buf| {
        let start = buf.len();
        serde_json::to_writer(&mut *buf, entry).map_err(AuditError::Encode)?;
        unwrap_object(buf, start)
    })
}

/// Turns the JSON object written at `buf[start..]` into its bare members (`{…}` → `…`), so they
/// continue a record line's object.
pub fn unwrap_object(buf: &mut Vec<u8>, start: usize) -> Result<(), AuditError> {
    if buf.len() < start + 2 || buf[start] != b'{' || buf.last() != Some(&b'}') {
        return Err(AuditError::Encode(serde::ser::Error::custom(
            "an entry must serialise as a non-empty JSON object",
        )));
    }
    buf.pop();
    buf.remove(start);
    Ok(())
}

/// Appends one record line: `{"seq":…,"time":…,"instance":…,` then the members that `members`
/// writes (starting with `"type"`), then `,"hash":"…"}` and a newline. Returns the chain hash.
///
/// `hash = SHA-256(prev as 32 raw bytes ‖ the object without the hash member)`, i.e. the exact
/// bytes written up to the `,"hash"` plus the closing `}`. Verifiers hash the bytes as written;
/// nothing is ever re-serialised, so the hash does not depend on a JSON library. `prev` (the
/// previous record's hash) is not written: every reader of the chain has just read it, and
/// leaving it out saves a sixth of every line's bytes, hashing and writing (format version 2).
pub fn encode_line(
    buf: &mut Vec<u8>,
    seq: u64,
    prev: &Hash,
    time: Timestamp,
    instance: &str,
    members: impl FnOnce(&mut Vec<u8>) -> Result<(), AuditError>,
) -> Result<Hash, AuditError> {
    let start = buf.len();
    buf.extend_from_slice(b"{\"seq\":");
    buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    buf.extend_from_slice(b",\"time\":\"");
    let mut time_buf = [0u8; TIMESTAMP_LEN];
    time.format_into(&mut time_buf);
    buf.extend_from_slice(&time_buf);
    buf.extend_from_slice(b"\",\"instance\":");
    json::string(buf, instance);
    buf.push(b',');
    if let Err(error) = members(buf) {
        buf.truncate(start);
        return Err(error);
    }
    buf.push(b'}');
    let hash = chain_hash(prev, &buf[start..]);
    // Replace the closing brace by `,"hash":"…"}`.
    buf.pop();
    buf.extend_from_slice(b",\"hash\":\"");
    let mut hex_buf = [0u8; 64];
    // 32 bytes always encode into exactly 64 hex digits, so this cannot fail.
    let _ = hex::encode_to_slice(hash, &mut hex_buf);
    buf.extend_from_slice(&hex_buf);
    buf.extend_from_slice(b"\"}\n");
    Ok(hash)
}

/// `SHA-256(prev ‖ canonical)`, where `canonical` is the record object without `hash`.
pub fn chain_hash(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical);
    hasher.finalize().into()
}

const HASH_SUFFIX_LEN: usize = 9 + 64 + 2; // `,"hash":"` + 64 hex + `"}`

/// Splits a record line (without newline) into the hash over its canonical bytes (recomputed
/// with `prev`) and the stored hash. `None` if the line does not end in a hash member.
pub fn split_hash(line: &[u8]) -> Option<(&[u8], Hash)> {
    let cut = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let (body, suffix) = line.split_at(cut);
    if !suffix.starts_with(b",\"hash\":\"") || !suffix.ends_with(b"\"}") {
        return None;
    }
    let stored = decode_hash(&suffix[9..73])?;
    Some((body, stored))
}

/// Recomputes a record line's hash: `SHA-256(prev ‖ body ‖ "}")`.
pub fn recompute(prev: &Hash, body: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(body);
    hasher.update(b"}");
    hasher.finalize().into()
}

/// Decodes a hash written as the writer writes them: 64 lower-case hex digits. Upper case is
/// refused, so that every byte of a stored hash is checked: `A` for `a` is a changed byte.
/// By table: verification decodes one per line, and `hex::decode_to_slice` took a quarter of
/// its time.
pub fn decode_hash(hex_text: &[u8]) -> Option<Hash> {
    /// The value of each lower-case hex digit; 0xff for every other byte.
    const DIGITS: [u8; 256] = {
        let mut table = [0xff; 256];
        let mut byte = 0;
        while byte < 256 {
            table[byte] = match byte as u8 {
                digit @ b'0'..=b'9' => digit - b'0',
                letter @ b'a'..=b'f' => letter - b'a' + 10,
                _ => 0xff,
            };
            byte += 1;
        }
        table
    };
    if hex_text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(hex_text.chunks_exact(2)) {
        let (high, low) = (DIGITS[usize::from(pair[0])], DIGITS[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    (invalid & 0xf0 == 0).then_some(out)
}

/// A record line fully decoded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Only in version 1 lines; version 2 leaves the link implicit (see [`encode_line`]).
    #[serde(default)]
    pub prev: Option<String>,
    pub time: Timestamp,
    pub instance: String,
    #[serde(flatten)]
    pub entry: Entry,
    pub hash: String,
}

impl Record {
    pub fn parse(line: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

/// The chain members of a record line, without decoding the entry.
#[derive(Debug, Deserialize)]
pub struct LinkView<'a> {
    pub seq: u64,
    /// Only in version 1 lines.
    #[serde(default, borrow)]
    pub prev: Option<Cow<'a, str>>,
    pub time: Timestamp,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
}

impl<'a> LinkView<'a> {
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        Self::parse_as_written(line).or_else(|| serde_json::from_slice(line).ok())
    }

    /// The leading members as the writer writes them, read by a byte walk: `{"seq":N,` (then
    /// `"prev":"<hex>",` in version 1 lines) `"time":"<stored time>","instance":"<id>",`
    /// `"type":"<name>"`; `None` on any surprise, for the full JSON parse to decide. Verification parses every line
    /// of a log, and the JSON parser, which must also skip every later member, took most of its
    /// time. What follows `type` is not looked at: the hash covers every byte.
    fn parse_as_written(line: &'a [u8]) -> Option<Self> {
        let rest = line.strip_prefix(b"{\"seq\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // JSON has no leading zeros; the full parse refuses them.
        if digits == 0 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        let mut rest = rest[digits..].strip_prefix(b",")?;
        let mut prev = None;
        if let Some(after) = rest.strip_prefix(b"\"prev\":\"") {
            let (hex, after) = after.split_at_checked(64)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            prev = Some(Cow::Borrowed(std::str::from_utf8(hex).ok()?));
            rest = after.strip_prefix(b"\",")?;
        }
        let rest = rest.strip_prefix(b"\"time\":\"")?;
        let (time, rest) = rest.split_at_checked(TIMESTAMP_LEN)?;
        let time = Timestamp::parse_stored(time)?;
        let rest = rest.strip_prefix(b"\",\"instance\":\"")?;
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        let rest = rest[end..].strip_prefix(b"\",\"type\":\"")?;
        let end = memchr::memchr(b'"', rest)?;
        let (kind, rest) = rest.split_at(end);
        if kind.is_empty()
            || !kind.iter().all(|&b| b.is_ascii_lowercase() || b == b'_')
            || !matches!(rest.get(1), Some(b',' | b'}'))
        {
            return None;
        }
        Some(Self {
            seq,
            prev,
            time,
            kind: Cow::Borrowed(std::str::from_utf8(kind).ok()?),
        })
    }
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_EXT}")
}

/// A segment file in a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub first_seq: u64,
}

impl SegmentFile {
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The segments of `dir` in chain order. A missing directory is an empty log.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, AuditError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(dir)(e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(AuditError::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|n| n.strip_suffix(SEGMENT_EXT))
        else {
            continue;
        };
        if let Ok(first_seq) = digits.parse() {
            segments.push(SegmentFile {
                path: entry.path(),
                first_seq,
            });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// The segments of a log a reader was pointed at: an error if there are none, so a mistyped
/// directory is not reported as an empty log.
pub fn existing_segments(dir: &Path) -> Result<Vec<SegmentFile>, AuditError> {
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        return Err(AuditError::NoLog {
            dir: dir.to_owned(),
        });
    }
    Ok(segments)
}

/// Reads a file line by line with byte offsets, reusing one buffer.
pub struct LineReader<R> {
    reader: R,
    offset: u64,
    buf: Vec<u8>,
}

/// One line: its offset, its bytes without the newline, and whether the newline was there.
#[derive(Debug)]
pub struct Line<'a> {
    pub offset: u64,
    pub bytes: &'a [u8],
    pub complete: bool,
}

impl LineReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = File::open(path).map_err(AuditError::io(path))?;
        Ok(Self::new(BufReader::with_capacity(256 * 1024, file)))
    }
}

impl<R: BufRead> LineReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            offset: 0,
            buf: Vec::with_capacity(1024),
        }
    }

    pub fn next_line(&mut self) -> std::io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let read = self.reader.read_until(b'\n', &mut self.buf)?;
        if read == 0 {
            return Ok(None);
        }
        let offset = self.offset;
        self.offset += read as u64;
        let complete = self.buf.last() == Some(&b'\n');
        if complete {
            self.buf.pop();
        }
        Ok(Some(Line {
            offset,
            bytes: &self.buf,
            complete,
        }))
    }
}

/// The state at the end of a segment, as the writer needs it to continue the chain.
#[derive(Debug, Clone)]
pub struct Tail {
    pub header: Option<Header>,
    /// `seq` of the last complete record (`first_seq - 1` if none).
    pub last_seq: u64,
    pub last_hash: Hash,
    /// Offset of a torn last line (crash mid-write), if any.
    pub torn_at: Option<u64>,
    pub file_len: u64,
    /// Whether the last complete record is a signed checkpoint (over every record before it).
    pub ends_signed: bool,
}

/// Scans a segment to its end. `fallback` is the head to assume when the segment holds no
/// complete record (or not even a complete header): the previous segment's tail.
pub fn read_tail(path: &Path, fallback: (u64, Hash)) -> Result<Tail, AuditError> {
    let mut reader = LineReader::open(path)?;
    let mut tail = Tail {
        header: None,
        last_seq: fallback.0,
        last_hash: fallback.1,
        torn_at: None,
        file_len: 0,
        ends_signed: false,
    };
    while let Some(line) = reader.next_line().map_err(AuditError::io(path))? {
        tail.file_len = line.offset + line.bytes.len() as u64 + u64::from(line.complete);
        if !line.complete {
            tail.torn_at = Some(line.offset);
            break;
        }
        if tail.header.is_none() {
            let header = Header::parse(line.bytes).ok_or_else(|| AuditError::Corrupt {
                path: path.to_owned(),
                offset: line.offset,
                reason: "not a dnsward-audit segment header of version 1 or 2",
            })?;
            if let Some(prev) = header.prev_hash() {
                tail.last_seq = header.first_seq.saturating_sub(1);
                tail.last_hash = prev;
            }
            tail.header = Some(header);
            continue;
        }
        let (Some(view), Some((_, hash))) = (LinkView::parse(line.bytes), split_hash(line.bytes))
        else {
            return Err(AuditError::Corrupt {
                path: path.to_owned(),
                offset: line.offset,
                reason: "unreadable record line; run `dnsward audit verify`",
            });
        };
        tail.last_seq = view.seq;
        tail.last_hash = hash;
        tail.ends_signed = view.kind == "checkpoint"
            && matches!(
                Record::parse(line.bytes),
                Ok(Record { entry: Entry::Checkpoint(cp), .. }) if cp.sig.is_some()
            );
    }
    Ok(tail)
}

/// The last complete line of a file (without newline) before any torn tail (a crash's), read
/// from the end; `None` if it has fewer than two complete lines.
pub fn read_last_complete_line(path: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    read_back(path, true)
}

/// The last complete line of a file (without newline), read from the end; `None` if the file
/// ends in a torn line or has fewer than two lines.
pub fn read_last_line(path: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    read_back(path, false)
}

/// Reads a file's end in growing windows until the last complete line is whole in one;
/// `past_torn`: a torn tail is skipped, else it means `None`.
fn read_back(path: &Path, past_torn: bool) -> Result<Option<Vec<u8>>, AuditError> {
    let mut file = File::open(path).map_err(AuditError::io(path))?;
    let len = file.metadata().map_err(AuditError::io(path))?.len();
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))
            .map_err(AuditError::io(path))?;
        let mut buf = Vec::with_capacity(window as usize);
        (&mut file)
            .take(window)
            .read_to_end(&mut buf)
            .map_err(AuditError::io(path))?;
        if !past_torn && buf.last() != Some(&b'\n') {
            return Ok(None);
        }
        // The end of the last complete line, then the start of it.
        if let Some(end) = memchr::memrchr(b'\n', &buf)
            && let Some(nl) = memchr::memrchr(b'\n', &buf[..end])
        {
            return Ok(Some(buf[nl + 1..end].to_vec()));
        }
        if start == 0 {
            return Ok(None);
        }
        window *= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{Decision, QueryEntry};

    fn query() -> Entry {
        Entry::Query(QueryEntry {
            generation: 1,
            client: "192.0.2.1:5353".into(),
            transport: "udp".into(),
            qname: "www.example.com.".into(),
            qtype: "A".into(),
            qclass: "IN".into(),
            decision: Decision::Allowed,
            rule: None,
            action: None,
            rcode: "NoError".into(),
            answer: "A 192.0.2.9".into(),
            ede: None,
            source: "cache".into(),
            latency_us: 12,
        })
    }

    #[test]
    fn record_line_hash_covers_the_bytes_as_written() {
        let mut buf = Vec::new();
        let time = Timestamp::from_micros(1_700_000_000_000_000);
        let hash = encode_record(&mut buf, 7, &GENESIS, time, "abcd", &query()).unwrap();
        assert_eq!(buf.last(), Some(&b'\n'));
        let line = &buf[..buf.len() - 1];
        let (body, stored) = split_hash(line).unwrap();
        assert_eq!(stored, hash);
        assert_eq!(recompute(&GENESIS, body), hash);
        assert!(line.starts_with(b"{\"seq\":7,\"time\":\"2023-11-14T22:13:20.000000Z\""));
        // The link is implicit: a different `prev` gives a different hash for the same bytes.
        assert_ne!(recompute(&[1; 32], body), hash);
        let record = Record::parse(line).unwrap();
        assert_eq!(record.seq, 7);
        assert_eq!(record.entry, query());
        assert_eq!(record.time, time);
        // One changed byte changes the hash.
        let mut tampered = line.to_vec();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        let (body, stored) = split_hash(&tampered).unwrap();
        assert_ne!(recompute(&GENESIS, body), stored);
    }

    /// The byte walk reads what the JSON parser reads from the writer's lines, and leaves
    /// every other shape to it.
    #[test]
    fn link_view_byte_walk_agrees_with_the_json_parse() {
        let mut buf = Vec::new();
        let time = Timestamp::from_micros(1_700_000_000_000_123);
        encode_record(&mut buf, 42, &GENESIS, time, "0123456789abcdef", &query()).unwrap();
        let written = String::from_utf8(buf[..buf.len() - 1].to_vec()).unwrap();
        let version_1 = written.replacen(
            "{\"seq\":42,",
            &format!("{{\"seq\":42,\"prev\":\"{}\",", "ab".repeat(32)),
            1,
        );
        for line in [&written, &version_1] {
            let fast = LinkView::parse_as_written(line.as_bytes()).expect(line);
            let full: LinkView<'_> = serde_json::from_str(line).unwrap();
            assert_eq!(
                (fast.seq, fast.prev.as_deref(), fast.time, &*fast.kind),
                (full.seq, full.prev.as_deref(), full.time, &*full.kind)
            );
        }
        // Shapes the walk does not take; the full parse still reads (or refuses) them.
        let escaped = written.replacen("0123456789abcdef", "01234567\\u0041", 1);
        let reordered = written.replacen("{\"seq\":42,", "{\"type\":\"query\",\"seq\":42,", 1);
        let leading_zero = written.replacen("{\"seq\":42,", "{\"seq\":042,", 1);
        for line in [&escaped, &reordered, &leading_zero] {
            assert!(
                LinkView::parse_as_written(line.as_bytes()).is_none(),
                "{line}"
            );
        }
        assert_eq!(LinkView::parse(escaped.as_bytes()).unwrap().seq, 42);
        assert!(LinkView::parse(leading_zero.as_bytes()).is_none());
    }

    #[test]
    fn hashes_decode_from_lower_case_hex_only() {
        let hash: Hash = std::array::from_fn(|i| (i * 37 + 5) as u8);
        let text = hex::encode(hash);
        assert_eq!(decode_hash(text.as_bytes()), Some(hash));
        assert_eq!(decode_hash(text.to_uppercase().as_bytes()), None);
        assert_eq!(decode_hash(&text.as_bytes()[..62]), None);
        for bad in [b'g', b'G', b' ', b'"', 0xff, b'/', b':', b'`'] {
            let mut changed = text.clone().into_bytes();
            changed[17] = bad;
            assert_eq!(decode_hash(&changed), None, "{}", bad as char);
        }
    }

    #[test]
    fn segment_names_sort_in_chain_order() {
        assert_eq!(segment_name(1), "seg-00000000000000000001.dwlog");
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn header_round_trip() {
        let header = Header::new(HeaderKind::Segment, 5, &[7; 32], "inst");
        let mut buf = Vec::new();
        header.encode(&mut buf).unwrap();
        assert_eq!(Header::parse(&buf[..buf.len() - 1]), Some(header));
        assert_eq!(Header::parse(b"{\"format\":\"other\"}"), None);
    }
}
