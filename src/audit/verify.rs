//! Verification of a log directory, a single segment, or an export file: every chain link and
//! every checkpoint signature, stopping at the first bad spot and naming what it looks like.
//!
//! It owns the classification of damage (modified, deleted, inserted, reordered, truncated
//! tail, missing segment, bad or missing signature). It does not repair anything.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{
    AuditError, keys, query,
    record::{Entry, Timestamp},
    segment::{self, ExportEnd, GENESIS, Hash, Header, HeaderKind, LineReader, LinkView, Record},
};

/// How far from the last signed checkpoint, either way, each record after it may be timed
/// before `verify` (with a public key) fails it as unsigned. The writer signs within
/// `checkpoint_interval_secs` (at most 20, default 5) while records flow, before a record timed
/// more than 15 s after its last signature, and after one timed more than 15 s before it.
pub const UNSIGNED_TAIL_TOLERANCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// See `UNSIGNED_TAIL_TOLERANCE`.
    pub unsigned_tail_tolerance: Duration,
    /// Called after each segment of a directory is read: where a test lets retention run.
    #[cfg(test)]
    after_segment: Option<fn(&Path)>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            unsigned_tail_tolerance: UNSIGNED_TAIL_TOLERANCE,
            #[cfg(test)]
            after_segment: None,
        }
    }
}

/// A place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spot {
    pub file: PathBuf,
    pub seq: Option<u64>,
    /// Byte offset of the line in `file`.
    pub offset: u64,
}

impl fmt::Display for Spot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(seq) = self.seq {
            write!(f, " seq {seq}")?;
        }
        write!(f, " offset {}", self.offset)
    }
}

/// What is wrong at the first bad spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A record's bytes do not match its hash, or it does not link to the record before.
    Modified,
    /// Records are missing: `missing` sequence numbers were skipped.
    Deleted { missing: u64 },
    /// A record that does not belong to the chain sits here.
    Inserted,
    /// An export's end line states other than the records before it hold (`stated_*`: the end
    /// line's; the others: what was followed); with equal counts, it states another last hash.
    EndLineMismatch {
        stated_records: u64,
        stated_last_seq: u64,
        records: u64,
        last_seq: u64,
    },
    /// Two records are out of order.
    Reordered,
    /// A segment's (or an export's) header contradicts the chain that its records continue.
    ModifiedHeader,
    /// A whole segment is missing: the chain jumps from `expected_seq` to `found_seq` at a
    /// segment boundary after a properly closed segment.
    MissingSegment { expected_seq: u64, found_seq: u64 },
    /// A segment file's name says another first seq than its header: renamed, or two files'
    /// contents swapped.
    RenamedSegment { name_seq: u64, header_seq: u64 },
    /// A checkpoint signature does not verify.
    BadSignature,
    /// A checkpoint is signed by another key than any `--pubkey` given; `private_key_given`:
    /// which file given (in order) is the secret key of the one that signed.
    OtherKey { private_key_given: Option<usize> },
    /// A public key was given but the log, a checkpoint, or its newest records are unsigned.
    MissingSignature { reason: MissingSignature },
    /// Not a dnsward audit file of a version this program reads.
    Unreadable,
    /// An export without its end line: an incomplete copy, or one cut short.
    TruncatedExport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSignature {
    /// No checkpoint in the log is signed.
    LogUnsigned,
    /// This checkpoint carries no signature.
    CheckpointUnsigned,
    /// A record after the last signed checkpoint is timed more than the tolerance after it
    /// (the spot is the first such record).
    UnsignedTail,
    /// A record after the last signed checkpoint is timed more than the tolerance before it
    /// (the spot is the first such record).
    BackdatedTail,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Modified => f.write_str("modified record"),
            Self::Deleted { missing } => write!(f, "deleted records ({missing} missing)"),
            Self::Inserted => f.write_str("inserted record"),
            Self::EndLineMismatch {
                stated_records,
                stated_last_seq,
                records,
                last_seq,
            } if (stated_records, stated_last_seq) == (records, last_seq) => f.write_str(
                "export end line does not match its records: it states another hash for the \
                 last record",
            ),
            Self::EndLineMismatch {
                stated_records,
                stated_last_seq,
                records,
                last_seq,
            } => write!(
                f,
                "export end line does not match its records: it states {stated_records} \
                 records ending at seq {stated_last_seq}, the export holds {records} ending at \
                 seq {last_seq}"
            ),
            Self::RenamedSegment {
                name_seq,
                header_seq,
            } => write!(
                f,
                "renamed segment (its name says seq {name_seq}, its header seq {header_seq})"
            ),
            Self::Reordered => f.write_str("reordered records"),
            Self::ModifiedHeader => {
                f.write_str("modified segment header (its records continue the chain)")
            }
            Self::MissingSegment {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "missing segment (expected seq {expected_seq}, next segment starts at {found_seq})"
            ),
            Self::BadSignature => f.write_str("bad checkpoint signature"),
            Self::OtherKey { private_key_given } => {
                f.write_str(
                    "bad checkpoint signature: signed by another key than the --pubkey given",
                )?;
                if private_key_given.is_some() {
                    f.write_str(
                        " (that file is the private signing key of the key that signed: give the \
                         .pub file that keygen wrote, and keep the .key secret)",
                    )?;
                }
                Ok(())
            }
            Self::MissingSignature { reason } => match reason {
                MissingSignature::LogUnsigned => {
                    f.write_str("missing signature: the log is unsigned")
                }
                MissingSignature::CheckpointUnsigned => {
                    f.write_str("missing signature: unsigned checkpoint")
                }
                MissingSignature::UnsignedTail => f.write_str(
                    "missing signature: records after the last signed checkpoint go on past the \
                     tolerance (30 s)",
                ),
                MissingSignature::BackdatedTail => f.write_str(
                    "missing signature: a record after the last signed checkpoint is timed more \
                     than the tolerance (30 s) before it (the writer signs such a record at once; \
                     a crash that cut that write leaves it so until the restart signs the head)",
                ),
            },
            Self::Unreadable => f.write_str(
                "unreadable: not a dnsward-audit segment or export of format version 1 or 2",
            ),
            Self::TruncatedExport => f.write_str(
                "truncated export: no end line (an incomplete copy, or cut short; exports \
                 written before 2026-12-01 have none: export again)",
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub spot: Spot,
}

/// Where the verified chain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainStart {
    /// At the first record ever written (seq 1, zero `prev`).
    Genesis,
    /// After `seq` (older segments removed by retention, or an export of a later range): the
    /// first file's header states the hash of record `seq`, which is taken on trust unless a
    /// signed checkpoint later covers it (it does: checkpoints sign the head, which depends on
    /// every earlier link, including this start).
    After { seq: u64 },
}

/// The state of signatures over the verified range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    /// No checkpoint carries a signature.
    Unsigned,
    /// Signed, and every signature verifies against the key each checkpoint names, but no
    /// public key was given, so who signed is not established.
    NotChecked { checkpoints: u64 },
    /// Every signature verifies against the given public key.
    Verified { checkpoints: u64 },
}

/// A key that signed checkpoints, and the run of checkpoints it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyUse {
    /// The Ed25519 public key, as in a `.pub` file (64 hex digits).
    pub key: String,
    /// The seq of the first and the last checkpoint it signed in this run.
    pub first_seq: u64,
    pub last_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub seq: u64,
    pub head_seq: u64,
    pub time: Timestamp,
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub source: PathBuf,
    /// Records whose link was checked (all lines except headers).
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub chain_start: ChainStart,
    /// Earliest and latest record time (checkpoints excluded).
    pub time_range: Option<(Timestamp, Timestamp)>,
    pub signatures: Signatures,
    pub last_signed_checkpoint: Option<CheckpointInfo>,
    /// The keys that signed, in chain order, one entry per run of checkpoints signed by the
    /// same key: more than one means the key changed (without `--pubkey` that is only
    /// reported; with it, another key fails).
    pub signing_keys: Vec<SigningKeyUse>,
    /// The first unsigned checkpoint after a signed one (without `--pubkey`, where it is only
    /// reported: the key was taken out of the configuration, or the chain rewritten from there
    /// without it).
    pub unsigned_after_signed: Option<u64>,
    /// A torn last line at the very end (crash mid-write): not tampering, but reported.
    pub truncated_tail: Option<Spot>,
    /// Torn tails found at restart and declared by the following segment's header.
    pub recovered: Vec<Spot>,
    pub failure: Option<Failure>,
}

impl VerifyReport {
    /// Whether the log verified (a truncated tail is a warning, not a failure).
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Some(failure) => writeln!(f, "FAILED: {} at {}", failure.kind, failure.spot)?,
            None => writeln!(f, "OK: {}", self.source.display())?,
        }
        write!(f, "records: {}", self.records)?;
        if let (Some(first), Some(last)) = (self.first_seq, self.last_seq) {
            write!(f, " (seq {first}..={last})")?;
        }
        writeln!(f)?;
        match self.chain_start {
            ChainStart::Genesis => writeln!(f, "chain start: genesis")?,
            ChainStart::After { seq } => writeln!(
                f,
                "chain start: after seq {seq} (earlier records removed by retention or not exported)"
            )?,
        }
        if let Some((from, to)) = self.time_range {
            writeln!(f, "time range: {from} .. {to}")?;
        }
        let signature_failed = self.failure.as_ref().is_some_and(|failure| {
            matches!(
                failure.kind,
                FailureKind::BadSignature | FailureKind::OtherKey { .. }
            )
        });
        match self.signatures {
            Signatures::Unsigned if signature_failed => {
                writeln!(f, "signatures: none verified before the failure")?;
            }
            Signatures::Unsigned => writeln!(f, "signatures: unsigned")?,
            Signatures::NotChecked { checkpoints } => writeln!(
                f,
                "signatures: {checkpoints} signed checkpoints, not checked against a trusted key (use --pubkey)"
            )?,
            Signatures::Verified { checkpoints } => {
                writeln!(f, "signatures: {checkpoints} checkpoints verified")?;
            }
        }
        if let Some(cp) = self.last_signed_checkpoint {
            writeln!(
                f,
                "last signed checkpoint: seq {} over head seq {} at {}",
                cp.seq, cp.head_seq, cp.time
            )?;
        }
        for used in &self.signing_keys {
            writeln!(
                f,
                "signed by key {} (checkpoints seq {}..={})",
                used.key, used.first_seq, used.last_seq
            )?;
        }
        let keys_trusted = matches!(self.signatures, Signatures::Verified { .. });
        for pair in self.signing_keys.windows(2) {
            if keys_trusted {
                writeln!(
                    f,
                    "note: the signing key changed at seq {}; both keys are among those given \
                     with --pubkey",
                    pair[1].first_seq
                )?;
            } else {
                writeln!(
                    f,
                    "warning: the signing key changed at seq {}: compare each key above with \
                     the ones you hold (give --pubkey once for each)",
                    pair[1].first_seq
                )?;
            }
        }
        // A key that signs again after another replaced it: a retired key, whose holder may
        // not be the operator any more (a rotation after a leak), or a configuration rolled
        // back. Every signature still verifies; the auditor must know which key to doubt.
        for (i, used) in self.signing_keys.iter().enumerate().skip(2) {
            if let Some(earlier) = self.signing_keys[..i - 1]
                .iter()
                .rfind(|earlier| earlier.key == used.key)
            {
                writeln!(
                    f,
                    "warning: from seq {} the log is signed again by key {}, which signed up to \
                     seq {} and was then replaced: a retired key signing after its successor \
                     (a configuration rolled back, or records re-signed by whoever holds the \
                     old key)",
                    used.first_seq, used.key, earlier.last_seq
                )?;
            }
        }
        if let Some(seq) = self.unsigned_after_signed {
            writeln!(
                f,
                "warning: checkpoints are unsigned from seq {seq} on, after signed ones: the \
                 key was removed from the configuration, or the chain was rewritten from there \
                 without it; records after the last signed checkpoint are not covered by a \
                 signature (--pubkey fails such a log)"
            )?;
        }
        for spot in &self.recovered {
            writeln!(f, "note: torn tail recovered at restart: {spot}")?;
        }
        if let Some(spot) = &self.truncated_tail {
            let after = self
                .last_seq
                .map_or_else(|| "start".to_owned(), |s| format!("seq {s}"));
            writeln!(
                f,
                "warning: truncated tail after {after} at {spot} (crash mid-write; not tampering)"
            )?;
        }
        Ok(())
    }
}

/// Times `verify` starts over when retention removed segments under it (see `verify_with`).
const RETENTION_RACE_RETRIES: usize = 3;

/// Verifies a log directory, a segment file, or an export (JSON lines or CSV).
/// A key file that cannot be read is an error about the `--pubkey` argument, not a verdict on
/// the log.
pub fn verify(path: &Path, pubkey: Option<&Path>) -> Result<VerifyReport, AuditError> {
    verify_signed_by(path, pubkey.as_slice())
}

/// [`verify`] trusting several public keys (`--pubkey` given more than once: the log's key was
/// changed, and the auditor holds each): every signed checkpoint must be signed by one of them.
pub fn verify_signed_by(path: &Path, pubkeys: &[&Path]) -> Result<VerifyReport, AuditError> {
    let keys = pubkeys
        .iter()
        .map(|path| keys::load_verifying_key(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(AuditError::for_flag("--pubkey"))?;
    let report = verify_with(path, &keys, &VerifyOptions::default())?;
    // The signing key's secret given as the public key (both files hold 32 bytes of hex, and
    // half of all secrets also decode as a public key): a wrong argument, not a log that
    // failed, whichever way its bytes happen to read.
    if let Some(Failure {
        kind: FailureKind::OtherKey {
            private_key_given: Some(index),
        },
        ..
    }) = &report.failure
        && let Some(pubkey) = pubkeys.get(*index)
    {
        return Err(AuditError::for_flag("--pubkey")(
            AuditError::PrivateKeyGiven {
                path: (*pubkey).to_owned(),
            },
        ));
    }
    Ok(report)
}

pub fn verify_with(
    path: &Path,
    keys: &[VerifyingKey],
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    if path.is_dir() {
        let mut segments = segment::existing_segments(path)?;
        let mut report = verify_segments(path, keys, options, &segments);
        // Retention removes a prefix of the chain, and may remove several segments at once
        // (after downtime, or a lowered limit) while verify is past the first: a segment gone
        // midway, with every segment before it gone too, is retention's doing, not a hole.
        // Verify again from what is there now.
        for _ in 0..RETENTION_RACE_RETRIES {
            let gone = |file: &Path| {
                matches!(std::fs::symlink_metadata(file),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound)
            };
            let raced = report.failure.as_ref().is_some_and(|failure| {
                failure.kind == FailureKind::Unreadable
                    && gone(&failure.spot.file)
                    && segments
                        .iter()
                        .take_while(|seg| seg.path != failure.spot.file)
                        .all(|seg| gone(&seg.path))
            });
            if !raced {
                break;
            }
            segments = segment::existing_segments(path)?;
            report = verify_segments(path, keys, options, &segments);
        }
        return Ok(report);
    }
    let mut checker = Checker::new(path, keys, options.clone());
    let outcome = checker.file(path, None, true);
    Ok(checker.finish(outcome.err()))
}

/// Verifies the segments of a log directory, as listed. A live log's retention may remove the
/// oldest of them between the listing and their reading: one gone before the chain has
/// started is skipped as removed (retention removes only the oldest), and the chain starts at
/// the first that is still there.
fn verify_segments(
    dir: &Path,
    keys: &[VerifyingKey],
    options: &VerifyOptions,
    segments: &[segment::SegmentFile],
) -> VerifyReport {
    let mut checker = Checker::new(dir, keys, options.clone());
    let count = segments.len();
    let mut outcome = Ok(());
    for (i, seg) in segments.iter().enumerate() {
        let removed = checker.expected.is_none()
            && i + 1 < count
            && matches!(
                std::fs::symlink_metadata(&seg.path),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound
            );
        if removed {
            continue;
        }
        outcome = checker.file(&seg.path, Some(seg.first_seq), i + 1 == count);
        if outcome.is_err() {
            break;
        }
        #[cfg(test)]
        if let Some(hook) = options.after_segment {
            hook(&seg.path);
        }
    }
    checker.finish(outcome.err())
}

struct OwnedLine {
    offset: u64,
    bytes: Vec<u8>,
    complete: bool,
    /// The `prev` column of a CSV export row.
    stated_prev: Option<String>,
}

impl OwnedLine {
    /// The links the line states: a CSV row's `prev` column and a version 1 line's `prev`
    /// member. Version 2 lines in a log leave it implicit.
    fn stated_prevs<'a>(&'a self, view: &'a LinkView<'_>) -> impl Iterator<Item = &'a str> {
        self.stated_prev
            .as_deref()
            .into_iter()
            .chain(view.prev.as_deref())
    }

    /// The first stated link as a hash, if it is written exactly as the writer writes hashes
    /// (64 lower-case hex digits).
    fn stated_hash(&self, view: &LinkView<'_>) -> Option<Hash> {
        let text = self.stated_prevs(view).next()?;
        segment::decode_hash(text.as_bytes())
    }

    /// The line's own hash if it links to `head`: the stored hash is SHA-256(`head` ‖ the
    /// line's canonical bytes), and every link the line states is `head`, byte for byte (a
    /// CSV column is outside the hashed bytes, so even a change of letter case is an edit).
    fn links_to(&self, view: &LinkView<'_>, head: &Hash) -> Option<Hash> {
        let mut stated = self.stated_prevs(view).peekable();
        if stated.peek().is_some() {
            // On the stack: this runs for every line of a version 1 log or CSV export.
            let mut head_text = [0u8; 64];
            // 32 bytes always encode into exactly 64 hex digits.
            let _ = hex::encode_to_slice(head, &mut head_text);
            if stated.any(|stated| stated.as_bytes() != head_text) {
                return None;
            }
        }
        let (body, stored) = segment::split_hash(&self.bytes)?;
        (segment::recompute(head, body) == stored).then_some(stored)
    }
}

struct Checker {
    report: VerifyReport,
    /// The keys given with `--pubkey` (several across a key change); none: signatures are
    /// checked against the key each checkpoint names, which proves nothing about who signed.
    keys: Vec<VerifyingKey>,
    options: VerifyOptions,
    expected: Option<u64>,
    head: Hash,
    prev_file: Option<PrevFile>,
    /// Torn lines declared by a header whose `recovered` record has not been read yet.
    declared_torn: Vec<DeclaredTorn>,
    /// A segment file without a complete line read since the last file that had one: where
    /// records missing before the next header were (no writer leaves such a file but last).
    emptied: Option<PathBuf>,
    signed: u64,
    /// Whether the record lines of the current file must state `prev` (a version 1 segment)
    /// or must not (version 2); `None` in exports, which may hold both.
    lines_state_prev: Option<bool>,
    unsigned: u64,
    /// The first record after the last signed checkpoint (what a live log, one cut by a crash,
    /// or a range export ends in) timed more than the tolerance before or after it, and which
    /// way. The writer signs before a record timed far after its last signature and right
    /// after one timed far before it, so an intact log leaves none unsigned (but for a crash
    /// that cuts the write signing a record of the second kind, until the restart signs the
    /// head): one is a record appended without the key and dated where a search of that period
    /// would find it. Cleared by each signed checkpoint.
    unsigned_outside: Option<(Spot, MissingSignature)>,
    /// What the current segment holds so far, which its checkpoints state (`None` in an export,
    /// where segments are not told apart).
    segment_so_far: Option<SegmentSoFar>,
}

/// The file before the one being read, as far as its successor's header is checked against it.
struct PrevFile {
    path: PathBuf,
    /// Whether it ended with a closing checkpoint.
    closed: bool,
    /// Where its torn last line starts.
    torn: Option<u64>,
    /// The torn line's length and SHA-256, which the `recovered` record after it states.
    torn_digest: Option<(u64, Hash)>,
    /// Where its complete lines end: the torn line's offset, or the file's end.
    end: u64,
    /// The `instance` of its last complete record line; `None` when it holds no record.
    last_instance: Option<Vec<u8>>,
}

/// A torn line a header declared: its place, and what a `recovered` record must state of it.
struct DeclaredTorn {
    spot: Spot,
    len: u64,
    digest: Hash,
}

/// The lines of a segment up to a point: what a checkpoint states of its segment. Readers skip
/// a closed segment by its closing checkpoint's `min_time`/`max_time`, and the signature does
/// not cover them, so they are checked against the records themselves.
#[derive(Default)]
struct SegmentSoFar {
    lines: u64,
    min_time: Option<Timestamp>,
    max_time: Option<Timestamp>,
}

impl Checker {
    fn new(source: &Path, keys: &[VerifyingKey], options: VerifyOptions) -> Self {
        Self {
            report: VerifyReport {
                source: source.to_owned(),
                records: 0,
                first_seq: None,
                last_seq: None,
                chain_start: ChainStart::Genesis,
                time_range: None,
                signatures: Signatures::Unsigned,
                last_signed_checkpoint: None,
                signing_keys: Vec::new(),
                unsigned_after_signed: None,
                truncated_tail: None,
                recovered: Vec::new(),
                failure: None,
            },
            keys: keys.to_vec(),
            options,
            expected: None,
            head: GENESIS,
            prev_file: None,
            declared_torn: Vec::new(),
            emptied: None,
            signed: 0,
            lines_state_prev: None,
            unsigned: 0,
            unsigned_outside: None,
            segment_so_far: None,
        }
    }

    fn fail(kind: FailureKind, file: &Path, seq: Option<u64>, offset: u64) -> Failure {
        Failure {
            kind,
            spot: Spot {
                file: file.to_owned(),
                seq,
                offset,
            },
        }
    }

    /// Checks one file. `named_seq`: the first seq a segment's file name says; `csv`: rows of
    /// a CSV export; `last`: the last file of the log (a torn line there is a truncated tail).
    /// Checks one file: a segment of a log directory (`named_seq`: the first seq its name
    /// says) or, alone, an export or a segment copied out. The file is read once, front to
    /// back, so a pipe (`verify /dev/stdin`) is read like a file.
    fn file(&mut self, path: &Path, named_seq: Option<u64>, last: bool) -> Result<(), Failure> {
        let mut reader = LineReader::open(path)
            .map_err(|_| Self::fail(FailureKind::Unreadable, path, None, 0))?;
        // The header (or a CSV export's column row), as it is: never a CSV record row.
        let first = reader
            .next_line()
            .map_err(|_| Self::fail(FailureKind::Unreadable, path, None, 0))?
            .map(|l| OwnedLine {
                offset: l.offset,
                bytes: l.bytes.to_vec(),
                complete: l.complete,
                stated_prev: None,
            });
        let Some(first) = first else {
            // An empty segment holds nothing of the chain (a crash as it was created); an
            // empty file given alone is a copy that got nothing, not a log that verifies.
            if named_seq.is_none() {
                return Err(Self::fail(FailureKind::TruncatedExport, path, None, 0));
            }
            return self.end_empty_file(path, None, last);
        };
        // A CSV export starts with its column names; a segment or JSON export with a header.
        let csv = named_seq.is_none() && first.bytes.starts_with(query::CSV_EXPORT_START);
        let next_owned = |reader: &mut LineReader<_>| -> Result<Option<OwnedLine>, Failure> {
            let line = reader
                .next_line()
                .map_err(|_| Self::fail(FailureKind::Unreadable, path, None, 0))?;
            Ok(line.map(|l| {
                let (bytes, stated_prev) = if csv && l.complete {
                    // Spreadsheet tools save CSV with CRLF line ends (RFC 4180's own).
                    let row = l.bytes.strip_suffix(b"\r").unwrap_or(l.bytes);
                    query::csv_row_to_line(row)
                        .map_or_else(Default::default, |(line, prev)| (line, Some(prev)))
                } else {
                    (l.bytes.to_vec(), None)
                };
                OwnedLine {
                    offset: l.offset,
                    bytes,
                    complete: l.complete,
                    stated_prev,
                }
            }))
        };
        let export;
        let mut current = if csv {
            export = true;
            self.lines_state_prev = None;
            // The column-name row, exactly (LF or CRLF); the chain start is the first record's
            // `prev`.
            let columns = first.bytes.strip_suffix(b"\r").unwrap_or(&first.bytes);
            if !first.complete && query::CSV_COLUMNS.as_bytes().starts_with(columns) {
                return Err(Self::fail(FailureKind::TruncatedExport, path, None, 0));
            }
            if !first.complete || columns != query::CSV_COLUMNS.as_bytes() {
                return Err(Self::fail(FailureKind::Modified, path, None, 0));
            }
            next_owned(&mut reader)?
        } else {
            if !first.complete {
                // A torn header: in a log directory a crash as the segment was created; alone,
                // a copy cut short before its first record.
                if named_seq.is_none() {
                    return Err(Self::fail(FailureKind::TruncatedExport, path, None, 0));
                }
                return self.end_empty_file(path, Some(0), last);
            }
            let header = Header::parse(&first.bytes)
                .ok_or_else(|| Self::fail(FailureKind::Unreadable, path, None, 0))?;
            let prev = header
                .prev_hash()
                .ok_or_else(|| Self::fail(FailureKind::Unreadable, path, None, 0))?;
            export = header.kind == HeaderKind::Export;
            // A file of a log directory is a segment: one that calls itself an export would be
            // read without its checkpoints' record counts and time ranges, and with an end line
            // anyone can compute instead, so records cut from its start would pass.
            if export && named_seq.is_some() {
                return Err(Self::fail(FailureKind::Modified, path, None, 0));
            }
            self.segment_so_far = (!export).then(SegmentSoFar::default);
            // A writer writes a whole segment in one version, so the header's version says
            // how every line is written; an export may hold lines of both.
            self.lines_state_prev = (!export).then_some(header.version == 1);
            let first_record = next_owned(&mut reader)?;
            // A header that agrees with its records, under another file's name: the file was
            // renamed (or two swapped). A header that disagrees is an edit, named by `header`.
            let agrees = first_record
                .as_ref()
                .and_then(|line| LinkView::parse(&line.bytes))
                .is_none_or(|view| view.seq == header.first_seq);
            if let Some(name_seq) = named_seq.filter(|&seq| seq != header.first_seq && agrees) {
                return Err(Self::fail(
                    FailureKind::RenamedSegment {
                        name_seq,
                        header_seq: header.first_seq,
                    },
                    path,
                    Some(header.first_seq),
                    0,
                ));
            }
            self.header(path, &header, prev, first_record.as_ref())?;
            first_record
        };
        let mut closed = false;
        let mut end_offset = first.offset + first.bytes.len() as u64;
        // Where the complete lines end, and the instance of the last record among them.
        let mut complete_end = end_offset + 1;
        let mut last_instance = None;
        while let Some(line) = current.take() {
            end_offset = line.offset;
            // A segment's closing checkpoint is its last line: the writer goes on in a new
            // file. A record after it was added (within the unsigned-tail tolerance it would
            // otherwise pass, after a clean stop too). A torn line is left to the torn-line
            // rules: it is no record, and whoever declares it must account for it.
            if closed && !export && line.complete {
                let seq = LinkView::parse(&line.bytes).map(|view| view.seq);
                return Err(Self::fail(FailureKind::Inserted, path, seq, line.offset));
            }
            if !line.complete {
                if export {
                    return Err(self.truncated_export(path, line.offset));
                }
                let end = (line.offset, last_instance);
                let digest = (
                    line.bytes.len() as u64,
                    <sha2::Sha256 as sha2::Digest>::digest(&line.bytes).into(),
                );
                return self.end_file(path, closed, Some(line.offset), last, end, Some(digest));
            }
            complete_end = line.offset + line.bytes.len() as u64 + 1;
            last_instance = record_instance(&line.bytes).map(<[u8]>::to_vec);
            let next = next_owned(&mut reader)?;
            if export && let Some(end) = ExportEnd::parse(&line.bytes) {
                return self.export_end(path, &line, &end, next.as_ref());
            }
            if self.expected.is_none() {
                // CSV: take the chain start from the first record's `prev` column.
                // A CSV row that does not render from its own `record` column was edited (a
                // rendered column changed): as on any later row, not an unreadable file.
                let unreadable = if csv {
                    FailureKind::Modified
                } else {
                    FailureKind::Unreadable
                };
                let start = LinkView::parse(&line.bytes)
                    .and_then(|view| Some((view.seq, line.stated_hash(&view)?)))
                    .ok_or_else(|| Self::fail(unreadable, path, None, line.offset))?;
                self.start_chain(start.0, start.1);
            }
            let lookahead = next.as_ref().filter(|n| n.complete);
            closed = match self.line(path, &line, lookahead) {
                Ok(closed) => closed,
                Err(failure) => {
                    return Err(self.moved_not_deleted(failure, next, &mut || {
                        next_owned(&mut reader).ok().flatten()
                    }));
                }
            };
            current = next;
        }
        if export {
            return Err(self.truncated_export(path, end_offset));
        }
        self.end_file(
            path,
            closed,
            None,
            last,
            (complete_end, last_instance),
            None,
        )
    }

    /// A seq that jumps ahead looks like a deletion until the missing record turns up later in
    /// the same file: then it was moved (reordered), not deleted. A record ahead of its place
    /// looks moved until its seq turns up again further down: then it is a copy (inserted).
    /// Only runs on a failure.
    fn moved_not_deleted(
        &self,
        failure: Failure,
        next: Option<OwnedLine>,
        more: &mut dyn FnMut() -> Option<OwnedLine>,
    ) -> Failure {
        let (sought, kind) = match (&failure.kind, failure.spot.seq) {
            (FailureKind::Deleted { .. }, Some(missing)) => (missing, FailureKind::Reordered),
            (FailureKind::Reordered, Some(ahead)) => (ahead, FailureKind::Inserted),
            _ => return failure,
        };
        let mut candidate = next;
        while let Some(line) = candidate {
            if LinkView::parse(&line.bytes).is_some_and(|view| view.seq == sought) {
                let seq = match kind {
                    FailureKind::Reordered => self.found_seq(&failure),
                    _ => failure.spot.seq,
                };
                return Failure {
                    kind,
                    spot: Spot {
                        seq,
                        ..failure.spot
                    },
                };
            }
            candidate = more();
        }
        failure
    }

    /// The seq of the line a deletion was reported at (the first missing seq plus the gap).
    fn found_seq(&self, failure: &Failure) -> Option<u64> {
        match (&failure.kind, failure.spot.seq) {
            (FailureKind::Deleted { missing }, Some(seq)) => Some(seq.saturating_add(*missing)),
            (_, seq) => seq,
        }
    }

    fn truncated_export(&self, path: &Path, offset: u64) -> Failure {
        Self::fail(
            FailureKind::TruncatedExport,
            path,
            Some(self.expected.unwrap_or(1)),
            offset,
        )
    }

    /// An export's end line: the last line, and it names the end of the chain just followed.
    fn export_end(
        &mut self,
        path: &Path,
        line: &OwnedLine,
        end: &ExportEnd,
        after: Option<&OwnedLine>,
    ) -> Result<(), Failure> {
        if let Some(after) = after {
            return Err(Self::fail(FailureKind::Inserted, path, None, after.offset));
        }
        let (last_seq, head) = match self.expected {
            Some(expected) => (expected - 1, self.head),
            // No record: the header's start (CSV exports without rows have no start).
            None => (end.last_seq, stated_or(end, self.head)),
        };
        let stated = segment::decode_hash(end.last_hash.as_bytes());
        if end.last_seq == last_seq && stated == Some(head) && end.records == self.report.records {
            return self.end_file(path, true, None, true, (line.offset, None), None);
        }
        // Records cut from before the end line: named where they are missing.
        if end.last_seq > last_seq {
            return Err(Self::fail(
                FailureKind::Deleted {
                    missing: end.last_seq - last_seq,
                },
                path,
                Some(last_seq.saturating_add(1)),
                line.offset,
            ));
        }
        Err(Self::fail(
            FailureKind::EndLineMismatch {
                stated_records: end.records,
                stated_last_seq: end.last_seq,
                records: self.report.records,
                last_seq,
            },
            path,
            None,
            line.offset,
        ))
    }

    fn start_chain(&mut self, first_seq: u64, prev: Hash) {
        self.expected = Some(first_seq);
        self.head = prev;
        self.report.chain_start = if first_seq == 1 && prev == GENESIS {
            ChainStart::Genesis
        } else {
            ChainStart::After {
                seq: first_seq.saturating_sub(1),
            }
        };
    }

    /// Checks a file's header against the chain so far; `first_record` is the line after it.
    fn header(
        &mut self,
        path: &Path,
        header: &Header,
        prev: Hash,
        first_record: Option<&OwnedLine>,
    ) -> Result<(), Failure> {
        let first = first_record
            .filter(|line| line.complete)
            .and_then(|line| Some((line, LinkView::parse(&line.bytes)?)));
        // The records after the header go on from `seq - 1` with `head`, where the header says
        // otherwise: the header was edited, not the records.
        let continues = |seq: u64, head: &Hash| {
            first
                .as_ref()
                .is_some_and(|(line, view)| view.seq == seq && line.links_to(view, head).is_some())
        };
        // Whether the first record is written in the other version than the header says.
        let other_version = first
            .as_ref()
            .zip(self.lines_state_prev)
            .is_some_and(|((_, view), states_prev)| view.prev.is_some() != states_prev);
        let Some(expected) = self.expected else {
            // The chain starts here: only the header's members agreeing with its first record
            // can be checked.
            if let Some(seq) = first
                .as_ref()
                .map(|(_, view)| view.seq)
                .filter(|&seq| (seq != header.first_seq || other_version) && continues(seq, &prev))
            {
                return Err(Self::fail(FailureKind::ModifiedHeader, path, Some(seq), 0));
            }
            self.start_chain(header.first_seq, prev);
            return Ok(());
        };
        // The previous file's torn tail must be the one this header declares.
        if let Some(PrevFile {
            path: prev_path,
            torn,
            torn_digest,
            ..
        }) = &self.prev_file
        {
            let declared = header.torn_tail.as_ref().is_some_and(|t| {
                Some(t.offset) == *torn && prev_path.file_name().is_some_and(|n| *n == *t.segment)
            });
            match torn {
                // Records missing between the two files (the file that declared the torn line
                // removed with them) are what is wrong here, and are named below.
                Some(offset) if !declared && header.first_seq <= expected => {
                    return Err(Self::fail(FailureKind::Modified, prev_path, None, *offset));
                }
                Some(offset) if declared => {
                    let spot = Spot {
                        file: prev_path.clone(),
                        seq: None,
                        offset: *offset,
                    };
                    if let Some((len, digest)) = torn_digest {
                        self.declared_torn.push(DeclaredTorn {
                            spot: spot.clone(),
                            len: *len,
                            digest: *digest,
                        });
                    }
                    self.report.recovered.push(spot);
                }
                // FORMAT.md: only a torn line may be declared. A declaration without one would
                // pass as a recovered crash that never happened.
                None if header.torn_tail.is_some() => {
                    return Err(Self::fail(
                        FailureKind::ModifiedHeader,
                        path,
                        Some(header.first_seq),
                        0,
                    ));
                }
                _ => {}
            }
        }
        if header.first_seq == expected && prev == self.head && !other_version {
            return Ok(());
        }
        let closed = self.prev_file.as_ref().is_some_and(|prev| prev.closed);
        // Records missing after a file that ends unclosed, when the same writer instance wrote
        // the next record: no restart (which could have written a segment now gone) came
        // between them, so the records were cut from the end of that file. The spot is there.
        // So were they from a file that has a header and no record, or not even a whole
        // header: a writer never leaves one before another segment (a restart removes it).
        let cut_from_prev = self.prev_file.as_ref().filter(|prev| {
            !prev.closed
                && prev.last_instance.as_deref().is_none_or(|instance| {
                    Some(instance)
                        == first
                            .as_ref()
                            .and_then(|(line, _)| record_instance(&line.bytes))
                })
        });
        let cut_at = match (&self.emptied, cut_from_prev) {
            (Some(emptied), _) => Some((emptied.clone(), 0)),
            (None, Some(prev)) => Some((prev.path.clone(), prev.end)),
            (None, None) => None,
        };
        if header.first_seq > expected
            && let Some((file, offset)) = cut_at
        {
            return Err(Self::fail(
                FailureKind::Deleted {
                    missing: header.first_seq - expected,
                },
                &file,
                Some(expected),
                offset,
            ));
        }
        let kind = if continues(expected, &self.head) {
            FailureKind::ModifiedHeader
        } else if other_version {
            // Not the header alone: the record is named where `line` finds it.
            return Ok(());
        } else if header.first_seq > expected && closed {
            FailureKind::MissingSegment {
                expected_seq: expected,
                found_seq: header.first_seq,
            }
        } else if header.first_seq > expected {
            FailureKind::Deleted {
                missing: header.first_seq - expected,
            }
        } else if header.first_seq < expected {
            FailureKind::Inserted
        } else {
            FailureKind::Modified
        };
        Err(Self::fail(kind, path, Some(expected), 0))
    }

    /// Checks one record line; returns whether it is a closing checkpoint.
    fn line(
        &mut self,
        path: &Path,
        line: &OwnedLine,
        next: Option<&OwnedLine>,
    ) -> Result<bool, Failure> {
        // `start_chain` ran before any line.
        let expected = self.expected.unwrap_or(1);
        let view = LinkView::parse(&line.bytes);
        let seq = view.as_ref().map(|v| v.seq);
        let version_fits = |view: &LinkView<'_>| {
            self.lines_state_prev
                .is_none_or(|states_prev| view.prev.is_some() == states_prev)
        };
        if let Some(view) = &view
            && version_fits(view)
            && view.seq == expected
            // The last seq there is: nothing could follow it (a crafted line, not a log).
            && expected < u64::MAX
            && let Some(stored) = line.links_to(view, &self.head)
        {
            let head_before = std::mem::replace(&mut self.head, stored);
            self.expected = Some(expected + 1);
            self.report.records += 1;
            self.report.first_seq.get_or_insert(view.seq);
            self.report.last_seq = Some(view.seq);
            if view.kind == "checkpoint" {
                return self.checkpoint(path, line, view.seq, view.time, head_before);
            }
            if view.kind == "recovered" {
                self.recovered(line)?;
            }
            if let Some(so_far) = &mut self.segment_so_far {
                so_far.lines += 1;
                so_far.min_time = Some(so_far.min_time.map_or(view.time, |t| t.min(view.time)));
                so_far.max_time = Some(so_far.max_time.map_or(view.time, |t| t.max(view.time)));
            }
            let spot = || Spot {
                file: path.to_owned(),
                seq: Some(view.seq),
                offset: line.offset,
            };
            if self.unsigned_outside.is_none()
                && let Some(signed) = self.report.last_signed_checkpoint
            {
                let tolerance = i64::try_from(self.options.unsigned_tail_tolerance.as_micros())
                    .unwrap_or(i64::MAX);
                let (time, signed) = (view.time.as_micros(), signed.time.as_micros());
                if time < signed.saturating_sub(tolerance) {
                    self.unsigned_outside = Some((spot(), MissingSignature::BackdatedTail));
                } else if time > signed.saturating_add(tolerance) {
                    self.unsigned_outside = Some((spot(), MissingSignature::UnsignedTail));
                }
            }
            self.report.time_range = Some(match self.report.time_range {
                Some((from, to)) => (from.min(view.time), to.max(view.time)),
                None => (view.time, view.time),
            });
            return Ok(false);
        }
        let next_view = next.and_then(|n| Some((n, LinkView::parse(&n.bytes)?)));
        let next_is_expected = next_view
            .as_ref()
            .is_some_and(|(_, view)| view.seq == expected);
        let next_fits = next_is_expected
            && next_view
                .as_ref()
                .is_some_and(|(n, view)| n.links_to(view, &self.head).is_some());
        // This line stands where `expected` belongs (the next one is `expected + 1` and links
        // to this line's stored hash) but states another seq: its seq was edited, nothing was
        // deleted or inserted.
        let seq_edited = seq != Some(expected)
            && next_view.as_ref().is_some_and(|(n, view)| {
                view.seq == expected.wrapping_add(1)
                    && segment::split_hash(&line.bytes)
                        .is_some_and(|(_, stored)| n.links_to(view, &stored).is_some())
            });
        let kind = match seq {
            // The next line is the one expected here, and this one comes later: a swap.
            Some(seq) if seq > expected && next_is_expected => FailureKind::Reordered,
            _ if next_fits => FailureKind::Inserted,
            _ if seq_edited => FailureKind::Modified,
            Some(seq) if seq == expected => FailureKind::Modified,
            Some(seq) if seq > expected => FailureKind::Deleted {
                missing: seq - expected,
            },
            Some(_) => FailureKind::Inserted,
            None => FailureKind::Modified,
        };
        // A deletion is named by the first missing seq; anything else by the line found.
        let spot_seq = match kind {
            FailureKind::Deleted { .. } => expected,
            _ if seq_edited => expected,
            _ => seq.unwrap_or(expected),
        };
        Err(Self::fail(kind, path, Some(spot_seq), line.offset))
    }

    fn checkpoint(
        &mut self,
        path: &Path,
        line: &OwnedLine,
        seq: u64,
        time: Timestamp,
        head_before: Hash,
    ) -> Result<bool, Failure> {
        let fail = |kind| Self::fail(kind, path, Some(seq), line.offset);
        let Ok(Record {
            entry: Entry::Checkpoint(cp),
            ..
        }) = Record::parse(&line.bytes)
        else {
            return Err(fail(FailureKind::Modified));
        };
        let head = segment::decode_hash(cp.head.as_bytes());
        if cp.head_seq.checked_add(1) != Some(seq) || head != Some(head_before) {
            return Err(fail(FailureKind::Modified));
        }
        let Some(head) = head else {
            return Err(fail(FailureKind::Modified));
        };
        if let Some(so_far) = &mut self.segment_so_far {
            // The stated range may be wider (a gap record's losses began before it was
            // written), never narrower: that would hide records from a range search.
            let min_holds = match (cp.min_time, so_far.min_time) {
                (Some(stated), Some(found)) => stated <= found,
                (stated, found) => stated.is_none() && found.is_none(),
            };
            let max_holds = match (cp.max_time, so_far.max_time) {
                (Some(stated), Some(found)) => stated >= found,
                (stated, found) => stated.is_none() && found.is_none(),
            };
            if cp.records != so_far.lines || !min_holds || !max_holds {
                return Err(fail(FailureKind::Modified));
            }
            so_far.lines += 1;
        }
        match (&cp.sig, self.keys.is_empty()) {
            (Some(sig), _) => {
                let embedded = cp
                    .key
                    .as_deref()
                    .and_then(|k| segment::decode_hash(k.as_bytes()))
                    .and_then(|k| VerifyingKey::from_bytes(&k).ok());
                let verifies =
                    |key: &VerifyingKey| keys::verify_signature(key, cp.head_seq, &head, time, sig);
                let key = match embedded {
                    Some(embedded) if !self.keys.is_empty() && !self.keys.contains(&embedded) => {
                        // The two key files both hold 32 bytes of hex: say so when a file
                        // given as public is the signing key's secret.
                        let private_key_given = self.keys.iter().position(|given| {
                            SigningKey::from_bytes(given.as_bytes()).verifying_key() == embedded
                        });
                        return Err(fail(FailureKind::OtherKey { private_key_given }));
                    }
                    Some(embedded) => embedded,
                    // A checkpoint that names no key is checked against those given.
                    None => *self
                        .keys
                        .iter()
                        .find(|key| verifies(key))
                        .ok_or_else(|| fail(FailureKind::BadSignature))?,
                };
                if !verifies(&key) {
                    return Err(fail(FailureKind::BadSignature));
                }
                self.signed += 1;
                self.unsigned_outside = None;
                let key_hex = hex::encode(key.as_bytes());
                match self.report.signing_keys.last_mut() {
                    Some(last) if last.key == key_hex => last.last_seq = seq,
                    _ => self.report.signing_keys.push(SigningKeyUse {
                        key: key_hex,
                        first_seq: seq,
                        last_seq: seq,
                    }),
                }
                self.report.last_signed_checkpoint = Some(CheckpointInfo {
                    seq,
                    head_seq: cp.head_seq,
                    time,
                });
            }
            (None, false) if self.signed > 0 => {
                return Err(fail(FailureKind::MissingSignature {
                    reason: MissingSignature::CheckpointUnsigned,
                }));
            }
            (None, _) => {
                self.unsigned += 1;
                if self.signed > 0 {
                    self.report.unsigned_after_signed.get_or_insert(seq);
                }
            }
        }
        Ok(cp.close)
    }

    /// A `recovered` record: the torn line it names, if this read saw that line declared, must
    /// be the one it states (its length, and its digest where the record has one). The torn
    /// bytes are outside the chain; this is what covers them.
    fn recovered(&mut self, line: &OwnedLine) -> Result<(), Failure> {
        let Ok(Record {
            entry:
                Entry::Recovered {
                    segment,
                    offset,
                    torn_bytes,
                    torn_sha256,
                },
            ..
        }) = serde_json::from_slice::<Record>(&line.bytes)
        else {
            return Ok(());
        };
        let Some(at) = self.declared_torn.iter().position(|torn| {
            torn.spot.offset == offset
                && torn
                    .spot
                    .file
                    .file_name()
                    .is_some_and(|name| *name == *segment)
        }) else {
            return Ok(());
        };
        let torn = self.declared_torn.swap_remove(at);
        let digest_differs = torn_sha256
            .is_some_and(|stated| segment::decode_hash(stated.as_bytes()) != Some(torn.digest));
        if torn.len != torn_bytes || digest_differs {
            return Err(Self::fail(
                FailureKind::Modified,
                &torn.spot.file,
                None,
                torn.spot.offset,
            ));
        }
        Ok(())
    }

    fn end_file(
        &mut self,
        path: &Path,
        closed: bool,
        torn: Option<u64>,
        last: bool,
        (end, last_instance): (u64, Option<Vec<u8>>),
        torn_digest: Option<(u64, Hash)>,
    ) -> Result<(), Failure> {
        if let (Some(offset), true) = (torn, last) {
            self.report.truncated_tail = Some(Spot {
                file: path.to_owned(),
                seq: None,
                offset,
            });
        }
        self.emptied = None;
        self.prev_file = Some(PrevFile {
            path: path.to_owned(),
            closed,
            torn,
            torn_digest,
            end,
            last_instance,
        });
        Ok(())
    }

    /// A segment file without a single complete line (a crash as it was created). Only the
    /// last can be one: the restart removes it. Anywhere else it takes nothing from the file
    /// before it, whose torn last line (if any) the next real header must still declare: an
    /// empty file put after a segment with bytes appended must not hide them.
    fn end_empty_file(
        &mut self,
        path: &Path,
        torn: Option<u64>,
        last: bool,
    ) -> Result<(), Failure> {
        if !last {
            self.emptied.get_or_insert_with(|| path.to_owned());
            return Ok(());
        }
        // A restart cut short as it created its segment: the crash before it left the torn
        // line, which no header declares yet, and that is the log's truncated tail.
        if let Some(PrevFile {
            path: previous,
            torn: Some(offset),
            ..
        }) = &self.prev_file
        {
            self.report.truncated_tail = Some(Spot {
                file: previous.clone(),
                seq: None,
                offset: *offset,
            });
            return Ok(());
        }
        self.end_file(path, false, torn, last, (torn.unwrap_or(0), None), None)
    }

    fn finish(mut self, failure: Option<Failure>) -> VerifyReport {
        self.report.signatures = match (self.signed, self.keys.is_empty()) {
            (0, _) => Signatures::Unsigned,
            (n, false) => Signatures::Verified { checkpoints: n },
            (n, true) => Signatures::NotChecked { checkpoints: n },
        };
        let source = self.report.source.clone();
        let failure = failure.or_else(|| {
            if self.keys.is_empty() {
                return None;
            }
            if self.report.last_signed_checkpoint.is_none() {
                return Some(Self::fail(
                    FailureKind::MissingSignature {
                        reason: MissingSignature::LogUnsigned,
                    },
                    &source,
                    None,
                    0,
                ));
            }
            let (spot, reason) = self.unsigned_outside.take()?;
            Some(Self::fail(
                FailureKind::MissingSignature { reason },
                &spot.file,
                spot.seq,
                spot.offset,
            ))
        });
        self.report.failure = failure;
        self.report
    }
}

/// The hash an end line states, or `fallback` if it states none that decodes.
fn stated_or(end: &ExportEnd, fallback: Hash) -> Hash {
    segment::decode_hash(end.last_hash.as_bytes()).unwrap_or(fallback)
}

/// A record line's `instance` value, read where the writer puts it (after `seq`, `prev` in
/// version 1, and `time`): only to name where records were cut, never to check the chain.
fn record_instance(line: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b",\"instance\":\"";
    let lead = &line[..line.len().min(256)];
    let start = memchr::memmem::find(lead, KEY)? + KEY.len();
    let len = memchr::memchr(b'"', &line[start..])?;
    Some(&line[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{
        record::Entry,
        segment::{GENESIS, Header, HeaderKind, SegmentFile, encode_record},
    };

    /// Segments starting at `firsts`, two chained records each, written into `dir`.
    fn two_record_segments(dir: &Path, firsts: &[u64]) -> Vec<SegmentFile> {
        let stop = Entry::Stop {
            records: 0,
            dropped: 0,
        };
        let mut head = GENESIS;
        let mut listed = Vec::new();
        for &first_seq in firsts {
            let mut bytes = Vec::new();
            Header::new(HeaderKind::Segment, first_seq, &head, "i1")
                .encode(&mut bytes)
                .unwrap();
            for seq in first_seq..first_seq + 2 {
                head =
                    encode_record(&mut bytes, seq, &head, Timestamp::now(), "i1", &stop).unwrap();
            }
            let path = dir.join(segment::segment_name(first_seq));
            std::fs::write(&path, &bytes).unwrap();
            listed.push(SegmentFile { path, first_seq });
        }
        listed
    }

    /// Retention removing the oldest segment of a live log after `verify` listed it: the chain
    /// starts at the next one (it was reported as an unreadable segment).
    #[test]
    fn a_segment_removed_after_the_listing_is_skipped_as_retention() {
        let dir = tempfile::tempdir().unwrap();
        let listed = two_record_segments(dir.path(), &[1, 3]);
        std::fs::remove_file(&listed[0].path).unwrap();
        let report = verify_segments(dir.path(), &[], &VerifyOptions::default(), &listed);
        assert!(report.ok(), "{report}");
        assert_eq!(report.chain_start, ChainStart::After { seq: 2 });
        // The newest one gone is not retention's doing.
        std::fs::remove_file(&listed[1].path).unwrap();
        let report = verify_segments(dir.path(), &[], &VerifyOptions::default(), &listed);
        assert!(!report.ok(), "{report}");
    }

    /// Retention removing two segments at once while verify reads the first: the second is
    /// gone when verify comes to it, with the chain already started (it was reported as an
    /// unreadable segment: a false alarm). Verify starts again from what is there.
    #[test]
    fn segments_removed_while_verify_reads_them_are_retention() {
        std::thread_local! {
            static REMOVE: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = two_record_segments(dir.path(), &[1, 3, 5])
            .into_iter()
            .map(|seg| seg.path)
            .collect();
        REMOVE.with(|remove| remove.borrow_mut().extend_from_slice(&paths[..2]));
        let options = VerifyOptions {
            after_segment: Some(|_| {
                for path in REMOVE.with(|remove| std::mem::take(&mut *remove.borrow_mut())) {
                    std::fs::remove_file(path).unwrap();
                }
            }),
            ..VerifyOptions::default()
        };
        let report = verify_with(dir.path(), &[], &options).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!(report.chain_start, ChainStart::After { seq: 4 });
        assert_eq!(report.records, 2);
    }
}
