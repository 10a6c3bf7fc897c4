//! Library-level tests of the audit log: the real writer thread on a temporary directory, then
//! verify, search, summary and export on what it wrote, and each kind of tampering.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use dnsward::{
    audit::{
        self, AuditLog, AuditSettings, Entry, Filter, InstanceId, ServiceEvent, TimeRange,
        cli::{AuditCommand, DirArg, RangeArgs},
        keys,
        query::{ClientFilter, DomainFilter, ExportFormat},
        record::{Decision, QueryEntry, RuleEntry, Timestamp, TriggerEntry},
        segment::{self, Record},
        verify::{ChainStart, FailureKind, MissingSignature, Signatures},
    },
    policy::decision::DecisionRecord,
};
use hickory_proto::rr::RecordType;
use proptest::prelude::*;

mod audit_common;
use audit_common::{BASE_SECS, all_records, decision, query_record, segments};

fn settings(dir: &Path) -> AuditSettings {
    AuditSettings {
        dir: dir.to_owned(),
        segment_max_bytes: 16 * 1024,
        fsync_interval_ms: 0,
        ..AuditSettings::default()
    }
}

/// Writes `count` queries (numbered from `first`) through the real writer and stops cleanly.
fn write_log(settings: &AuditSettings, first: u64, count: u64) -> audit::writer::WriterStats {
    let (handle, writer) = AuditLog::open(settings, InstanceId::random()).unwrap();
    handle.service(ServiceEvent::Start {
        version: "test".into(),
        config: "config/dnsward.toml".into(),
    });
    for i in first..first + count {
        handle.record(decision(i));
    }
    let stats = writer.shutdown().unwrap();
    assert_eq!(
        handle.dropped(),
        0,
        "the default queue holds a test's burst"
    );
    stats
}

/// The segment holding record `seq`, its lines, and the index of that record's line.
fn find_line(dir: &Path, seq: u64) -> (PathBuf, Vec<Vec<u8>>, usize) {
    for path in segments(dir) {
        let data = std::fs::read(&path).unwrap();
        let lines: Vec<Vec<u8>> = data
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        let needle = format!("{{\"seq\":{seq},");
        if let Some(i) = lines.iter().position(|l| l.starts_with(needle.as_bytes())) {
            return (path, lines, i);
        }
    }
    panic!("seq {seq} not found");
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).unwrap();
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn written_records_read_back_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let stats = write_log(&settings, 0, 500);
    assert_eq!(stats.records, 500);
    assert!(
        segments(tmp.path()).len() > 3,
        "small segments rotate by size"
    );

    let records = all_records(tmp.path());
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(matches!(records[0].entry, Entry::Start { .. }));
    let queries: Vec<&QueryEntry> = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Query(q) => Some(q),
            _ => None,
        })
        .collect();
    assert_eq!(queries.len(), 500);
    let q0 = queries[0];
    assert_eq!(q0.decision, Decision::Blocked);
    assert_eq!(q0.client, "192.0.2.1:40000");
    assert_eq!(q0.action.as_deref(), Some("nxdomain"));
    assert_eq!(q0.source, "local");
    assert_eq!(q0.ede, Some(15));
    let rule = q0.rule.as_ref().unwrap();
    assert_eq!(
        (rule.list.as_str(), rule.file.as_str(), rule.line),
        ("crypto", "lists/crypto.txt", 3)
    );
    assert_eq!(queries[1].source, "198.51.100.1:53");
    let last = records.last().unwrap();
    assert!(matches!(&last.entry, Entry::Checkpoint(cp) if cp.close));
    assert!(records.iter().any(|r| matches!(
        r.entry,
        Entry::Stop {
            records: 500,
            dropped: 0
        }
    )));

    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, seqs.len() as u64);
    assert_eq!(report.chain_start, ChainStart::Genesis);
    assert_eq!(report.signatures, Signatures::Unsigned);
    assert!(report.truncated_tail.is_none());
    let (from, to) = report.time_range.unwrap();
    assert_eq!(from, Timestamp::from_micros(BASE_SECS as i64 * 1_000_000));
    assert!(to > from);
}

fn signed_log(tmp: &Path, count: u64) -> (AuditSettings, PathBuf) {
    let keydir = tmp.join("keys");
    std::fs::create_dir_all(&keydir).unwrap();
    let (secret, public) = keys::keygen(&keydir).unwrap();
    let settings = AuditSettings {
        signing_key: Some(secret),
        ..settings(&tmp.join("log"))
    };
    write_log(&settings, 0, count);
    (settings, public)
}

#[test]
fn signatures_verify_against_the_right_key_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 300);
    let report = audit::verify(&settings.dir, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
    assert!(matches!(report.signatures, Signatures::Verified { checkpoints } if checkpoints > 1));
    assert_eq!(
        report.last_signed_checkpoint.unwrap().seq,
        report.last_seq.unwrap()
    );

    let report = audit::verify(&settings.dir, None).unwrap();
    assert!(report.ok());
    assert!(matches!(report.signatures, Signatures::NotChecked { .. }));

    let other = tmp.path().join("other");
    let (_, other_public) = keys::keygen(&other).unwrap();
    let report = audit::verify(&settings.dir, Some(&other_public)).unwrap();
    assert_eq!(
        report.failure.as_ref().unwrap().kind,
        FailureKind::OtherKey {
            private_key_given: None
        }
    );
    assert!(
        report
            .to_string()
            .contains("none verified before the failure"),
        "{report}"
    );
    // The private key file given where the public one belongs: an error about --pubkey that
    // names it as such (exit 2, not a failed log), whether its 32 bytes happen to decode as a
    // public key (then it would be another key) or not.
    let secret = settings.signing_key.clone().unwrap();
    let error = audit::verify(&settings.dir, Some(&secret)).unwrap_err();
    assert!(
        matches!(
            error,
            audit::AuditError::Argument {
                flag: "--pubkey",
                ..
            }
        ) && error.to_string().contains("give the .pub file"),
        "{error}"
    );

    // An unsigned log checked with a key.
    let unsigned = tmp.path().join("unsigned");
    write_log(&self::settings(&unsigned), 0, 10);
    let report = audit::verify(&unsigned, Some(&public)).unwrap();
    assert_eq!(
        report.failure.unwrap().kind,
        FailureKind::MissingSignature {
            reason: MissingSignature::LogUnsigned
        }
    );
}

#[test]
fn periodic_checkpoints_while_records_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let keydir = tmp.path().join("k");
    let (secret, public) = keys::keygen(&keydir).unwrap();
    let settings = AuditSettings {
        signing_key: Some(secret),
        checkpoint_interval_secs: 1,
        segment_max_bytes: 64 * 1024 * 1024,
        ..settings(&tmp.path().join("log"))
    };
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    // Poll until a checkpoint appears after the queries (the writer signs the empty chain
    // when it opens the log; that one is not periodic).
    loop {
        handle.record(decision(i));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
        if signed_checkpoint_after_a_query(&settings.dir).is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic checkpoint"
        );
    }
    writer.shutdown().unwrap();
    let report = audit::verify(&settings.dir, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
}

#[test]
fn changed_byte_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    write_log(&settings, 0, 300);
    let (path, mut lines, i) = find_line(tmp.path(), 120);
    let at = lines[i].len() / 2;
    lines[i][at] = if lines[i][at] == b'x' { b'y' } else { b'x' };
    write_lines(&path, &lines);
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    assert_eq!(failure.kind, FailureKind::Modified);
    assert_eq!(failure.spot.seq, Some(120));
    assert_eq!(failure.spot.file, path);
    let offset: usize = lines[..i].iter().map(Vec::len).sum();
    assert_eq!(failure.spot.offset, offset as u64);
}

#[test]
fn deleted_record_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let (path, mut lines, i) = find_line(tmp.path(), 77);
    lines.remove(i);
    write_lines(&path, &lines);
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    assert_eq!(failure.kind, FailureKind::Deleted { missing: 1 });
    assert_eq!(failure.spot.seq, Some(77));
    assert_eq!(file_name(&failure.spot.file), file_name(&path));
}

/// Records cut from the end of a middle segment, its closing checkpoint with them, are named
/// where they were cut (the segment's end, or its torn last line), not at the next segment's
/// start: one writer instance wrote on across the two files, so no restart came between.
#[test]
fn records_cut_from_a_middle_segment_are_named_where_cut() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let middle = segments(tmp.path())[1].clone();
    let intact = std::fs::read(&middle).unwrap();
    let lines: Vec<&[u8]> = intact.split_inclusive(|&b| b == b'\n').collect();
    assert!(lines.len() > 6);
    let kept: Vec<u8> = lines[..4].concat();
    let first_cut: u64 = std::str::from_utf8(&lines[4][7..])
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let missing = lines.len() as u64 - 4;
    for torn in [&b""[..], &lines[4][..40]] {
        std::fs::write(&middle, [&kept[..], torn].concat()).unwrap();
        let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
        assert_eq!(
            failure.kind,
            FailureKind::Deleted { missing },
            "{}",
            failure.spot
        );
        assert_eq!(
            (&failure.spot.file, failure.spot.seq, failure.spot.offset),
            (&middle, Some(first_cut), kept.len() as u64)
        );
    }
}

/// A middle segment emptied, cut to its header, or cut inside its header holds none of its
/// records: verify names that file, and search and summary are told of the missing records
/// (no writer leaves such a file before another segment).
#[test]
fn an_emptied_middle_segment_is_named_and_its_records_missing() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let segs = segments(tmp.path());
    let middle = segs[1].clone();
    let intact = std::fs::read(&middle).unwrap();
    let header_len = intact.iter().position(|&b| b == b'\n').unwrap() + 1;
    let first_seq: u64 = file_name(&middle)[4..24].parse().unwrap();
    let next_seq: u64 = file_name(&segs[2])[4..24].parse().unwrap();
    for (left, offset) in [
        (&intact[..0], 0),
        (&intact[..header_len], header_len as u64),
        (&intact[..30], 0),
    ] {
        std::fs::write(&middle, left).unwrap();
        let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
        assert_eq!(
            failure.kind,
            FailureKind::Deleted {
                missing: next_seq - first_seq
            },
            "{}",
            failure.spot
        );
        assert_eq!(
            (&failure.spot.file, failure.spot.seq, failure.spot.offset),
            (&middle, Some(first_seq), offset)
        );
        let holes = audit::query::holes(tmp.path(), &TimeRange::default()).unwrap();
        assert_eq!(
            holes
                .iter()
                .map(|hole| (hole.from_seq, hole.to_seq))
                .collect::<Vec<_>>(),
            [(first_seq, next_seq - 1)]
        );
    }
}

#[test]
fn inserted_record_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let (path, mut lines, i) = find_line(tmp.path(), 50);
    // A copy of an earlier record placed after a later one.
    let copy = lines[i].clone();
    lines.insert(i + 3, copy);
    write_lines(&path, &lines);
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    assert_eq!(failure.kind, FailureKind::Inserted);
    assert_eq!(failure.spot.seq, Some(50));

    // A forged record with a fresh seq.
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let (path, mut lines, i) = find_line(tmp.path(), 60);
    let forged = String::from_utf8(lines[i].clone())
        .unwrap()
        .replace("\"seq\":60,", "\"seq\":61,");
    lines.insert(i + 1, forged.into_bytes());
    write_lines(&path, &lines);
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    assert_eq!(failure.kind, FailureKind::Inserted);
    assert_eq!(failure.spot.seq, Some(61));

    // A copy of a later record placed before an earlier one (it was named as reordered).
    let failure = tamper(90, |lines, i| {
        let copy = lines[i + 5].clone();
        lines.insert(i, copy);
    });
    assert_eq!(failure.kind, FailureKind::Inserted);
    assert_eq!(failure.spot.seq, Some(95));
}

/// Writes 300 records, edits the lines of the segment holding `seq` (given the index of that
/// record's line), and returns what verify finds first.
fn tamper(seq: u64, edit: impl FnOnce(&mut Vec<Vec<u8>>, usize)) -> audit::verify::Failure {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let (path, mut lines, i) = find_line(tmp.path(), seq);
    edit(&mut lines, i);
    write_lines(&path, &lines);
    audit::verify(tmp.path(), None).unwrap().failure.unwrap()
}

#[test]
fn reordered_records_are_named() {
    let failure = tamper(90, |lines, i| lines.swap(i, i + 1));
    assert_eq!(failure.kind, FailureKind::Reordered);
    assert_eq!(failure.spot.seq, Some(91));

    // Farther apart: two records five places apart swapped, then one moved five places on.
    // The seq jumps ahead as after a deletion, but the missing record is further down.
    let failure = tamper(140, |lines, i| {
        assert!(i + 5 < lines.len(), "both records in one segment");
        lines.swap(i, i + 5);
    });
    assert_eq!(failure.kind, FailureKind::Reordered);
    assert_eq!(failure.spot.seq, Some(145));

    let failure = tamper(140, |lines, i| {
        let moved = lines.remove(i);
        lines.insert(i + 5, moved);
    });
    assert_eq!(failure.kind, FailureKind::Reordered);
    assert_eq!(failure.spot.seq, Some(141));
}

#[test]
fn truncated_tail_is_a_warning_not_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let last = segments(tmp.path()).pop().unwrap();
    let data = std::fs::read(&last).unwrap();
    std::fs::write(&last, &data[..data.len() - 40]).unwrap();
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    let spot = report.truncated_tail.clone().unwrap();
    assert_eq!(spot.file, last);
    assert!(report.to_string().contains("truncated tail after seq"));
}

/// An empty segment file takes nothing from the file before it: bytes appended to a middle
/// segment, with an empty file named after it, fail verify (they passed); and where the empty
/// file is last (a restart cut short as it created its segment, after a crash), the crash's
/// torn line before it is the log's truncated tail (no warning was given).
#[test]
fn an_empty_segment_file_does_not_hide_a_torn_line_before_it() {
    let empty_after = |segment: &Path| {
        let first: u64 = file_name(segment)[4..24].parse().unwrap();
        let empty = segment.with_file_name(format!("seg-{:020}.dwlog", first + 1));
        std::fs::write(&empty, b"").unwrap();
    };
    let append = |segment: &Path, bytes: &[u8]| {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(segment)
            .unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        std::fs::metadata(segment).unwrap().len() - bytes.len() as u64
    };
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 500);
    let segs = segments(tmp.path());
    assert!(segs.len() >= 3);
    append(&segs[1], b"{\"seq\":5,\"note\":\"appended\"");
    empty_after(&segs[1]);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(!report.ok(), "{report}");

    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 500);
    let last = segments(tmp.path()).pop().unwrap();
    let torn_at = append(&last, b"{\"seq\":9999,\"ti");
    empty_after(&last);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    let spot = report
        .truncated_tail
        .clone()
        .expect("the torn line reported");
    assert_eq!((spot.file, spot.offset), (last, torn_at));
}

/// A crash tore the last segment; the restart wrote its new segment's header (declaring the
/// torn line) and died in its first line; the next restart removes that file and writes the
/// `recovered` record again, naming the crash's torn line, not the removed file's (whose name
/// the new segment takes, so the record pointed into the new file's own lines).
#[test]
fn a_restart_after_a_failed_restart_names_the_first_torn_line() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    write_log(&settings, 0, 50);
    let crashed = segments(tmp.path()).pop().unwrap();
    let torn = b"{\"seq\":99,\"ti";
    let torn_at = std::fs::metadata(&crashed).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&crashed)
        .unwrap();
    std::io::Write::write_all(&mut file, torn).unwrap();
    drop(file);
    let last = all_records(tmp.path()).pop().unwrap();
    let last_hash: [u8; 32] = hex::decode(&last.hash).unwrap().try_into().unwrap();
    let mut header = segment::Header::new(
        segment::HeaderKind::Segment,
        last.seq + 1,
        &last_hash,
        "failed-restart",
    );
    header.torn_tail = Some(segment::TornTail {
        segment: file_name(&crashed),
        offset: torn_at,
    });
    let mut bytes = Vec::new();
    header.encode(&mut bytes).unwrap();
    bytes.extend_from_slice(b"{\"seq\":");
    let failed = crashed.with_file_name(format!("seg-{:020}.dwlog", last.seq + 1));
    std::fs::write(&failed, &bytes).unwrap();

    write_log(&settings, 50, 5);
    let reported: Vec<_> = all_records(tmp.path())
        .into_iter()
        .filter_map(|record| match record.entry {
            Entry::Recovered {
                segment,
                offset,
                torn_bytes,
                ..
            } => Some((segment, offset, torn_bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(
        reported,
        [(file_name(&crashed), torn_at, torn.len() as u64)]
    );
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
}

#[test]
fn missing_middle_segment_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 500);
    let segs = segments(tmp.path());
    assert!(segs.len() >= 4);
    std::fs::remove_file(&segs[2]).unwrap();
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    let first_of_removed = segment::list_segments(tmp.path()).unwrap();
    let expected: u64 = file_name(&segs[2])[4..24].parse().unwrap();
    assert!(matches!(
        failure.kind,
        FailureKind::MissingSegment { expected_seq, found_seq }
            if expected_seq == expected && found_seq == first_of_removed[2].first_seq
    ));
    assert_eq!(failure.spot.file, segs[3]);

    // Search and summary are told where records are missing (the CLI warns of it), and an
    // export refuses to run across the hole: it would be a piece of the chain that does not
    // verify.
    let removed_first: u64 = file_name(&segs[2])[4..24].parse().unwrap();
    let removed_last: u64 = file_name(&segs[3])[4..24].parse::<u64>().unwrap() - 1;
    let holes = audit::query::holes(tmp.path(), &TimeRange::default()).unwrap();
    // A period long before the segments were written cannot be missing any of their records.
    let long_ago = TimeRange::parse(
        None,
        Some("2000-01-01T00:00:00Z"),
        Some("2001-01-01T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(audit::query::holes(tmp.path(), &long_ago).unwrap(), []);
    let recent = TimeRange::parse(Some("1h"), None, None).unwrap();
    assert_eq!(audit::query::holes(tmp.path(), &recent).unwrap().len(), 1);
    assert_eq!(
        holes,
        [audit::query::Hole {
            from_seq: removed_first,
            to_seq: removed_last,
            before: segs[3].clone(),
        }]
    );
    for (format, range) in [
        (ExportFormat::Jsonl, TimeRange::default()),
        (ExportFormat::Csv, TimeRange::default()),
        (
            ExportFormat::Jsonl,
            TimeRange::parse(Some("1000w"), None, None).unwrap(),
        ),
    ] {
        let error =
            audit::query::export_range(tmp.path(), format, &range, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&error, audit::AuditError::ExportHole(hole) if *hole == holes[0]),
            "{error}"
        );
    }
    // A crash's torn line at the end of the segment before the hole does not hide it.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segs[1])
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"seq\":7,\"ti").unwrap();
    drop(file);
    assert_eq!(
        audit::query::holes(tmp.path(), &TimeRange::default()).unwrap(),
        holes
    );
    // A range after the hole exports and verifies (query times: the service records are
    // timed now, the bench's queries long ago).
    let time_of = |seq: u64| {
        all_records(tmp.path())
            .into_iter()
            .find(|record| record.seq == seq)
            .unwrap()
            .time
            .to_string()
    };
    let range = TimeRange::parse(
        None,
        Some(&time_of(removed_last + 5)),
        Some(&time_of(removed_last + 20)),
    )
    .unwrap();
    let mut out = Vec::new();
    audit::query::export_range(tmp.path(), ExportFormat::Jsonl, &range, &mut out).unwrap();
    let exports = tempfile::tempdir().unwrap();
    let exported = exports.path().join("after-hole.jsonl");
    std::fs::write(&exported, &out).unwrap();
    assert!(audit::verify(&exported, None).unwrap().ok());
}

/// Two segment files with their contents swapped: named as a renamed segment at the first of
/// them (it was reported as a missing segment).
#[test]
fn swapped_segment_files_are_named_as_renamed() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 300);
    let segs = segments(tmp.path());
    assert!(segs.len() >= 4);
    let (a, b) = (
        std::fs::read(&segs[1]).unwrap(),
        std::fs::read(&segs[2]).unwrap(),
    );
    std::fs::write(&segs[1], &b).unwrap();
    std::fs::write(&segs[2], &a).unwrap();
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    let name_seq: u64 = file_name(&segs[1])[4..24].parse().unwrap();
    let header_seq: u64 = file_name(&segs[2])[4..24].parse().unwrap();
    assert_eq!(
        failure.kind,
        FailureKind::RenamedSegment {
            name_seq,
            header_seq
        }
    );
    assert_eq!(failure.spot.file, segs[1]);
}

/// Rewrites every record from `seq` on with a correct chain (what an attacker without the key
/// can do), after changing record `seq`'s qname.
fn rechain_from(dir: &Path, seq: u64) {
    let mut head: Option<[u8; 32]> = None;
    for path in segments(dir) {
        let data = std::fs::read(&path).unwrap();
        let mut out = Vec::new();
        for (n, line) in data.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let mut text = String::from_utf8(line.to_vec()).unwrap();
            if n == 0 {
                if let Some(h) = head {
                    let header: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let old = header["prev_segment_last_hash"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    text = text.replace(&old, &hex::encode(h));
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
                continue;
            }
            let record = Record::parse(text.as_bytes()).unwrap();
            if record.seq < seq {
                head = Some(segment::decode_hash(record.hash.as_bytes()).unwrap());
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
                continue;
            }
            if record.seq == seq {
                text = text.replace("www.binance.com.", "www.innocent.org.");
            }
            let prev = head.unwrap();
            // The link a line states: a version 1 `prev`, a checkpoint's `head`.
            if let Some(stated) = &record.prev {
                text = text.replace(stated, &hex::encode(prev));
            }
            if let Entry::Checkpoint(cp) = &record.entry {
                text = text.replace(&cp.head, &hex::encode(prev));
            }
            let (body, _) = segment::split_hash(text.as_bytes()).unwrap();
            let hash = segment::recompute(&prev, body);
            let body = String::from_utf8(body.to_vec()).unwrap();
            text = format!("{body},\"hash\":\"{}\"}}", hex::encode(hash));
            head = Some(hash);
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        std::fs::write(&path, out).unwrap();
    }
}

#[test]
fn rechaining_without_the_key_fails_on_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 300);
    let target = all_records(&settings.dir)
        .into_iter()
        .find(|r| {
            r.seq >= 100 && matches!(&r.entry, Entry::Query(q) if q.qname.contains("binance"))
        })
        .unwrap()
        .seq;
    rechain_from(&settings.dir, target);
    // The chain itself is consistent again...
    let (_, lines, i) = find_line(&settings.dir, target);
    assert!(String::from_utf8_lossy(&lines[i]).contains("innocent"));
    // ...but the next signed checkpoint is not.
    let failure = audit::verify(&settings.dir, Some(&public))
        .unwrap()
        .failure
        .unwrap();
    assert_eq!(failure.kind, FailureKind::BadSignature);
    assert!(failure.spot.seq.unwrap() > target);
    // Without the auditor's key, the checkpoints still contradict their embedded key.
    let failure = audit::verify(&settings.dir, None).unwrap().failure.unwrap();
    assert_eq!(failure.kind, FailureKind::BadSignature);
}

/// A record appended after a segment's closing checkpoint, correctly chained and timed within
/// the unsigned-tail tolerance: the writer never writes after a close, so it is inserted.
#[test]
fn a_record_after_a_closing_checkpoint_is_inserted() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 30);
    let last = segments(&settings.dir).pop().unwrap();
    let mut data = std::fs::read(&last).unwrap();
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let close = Record::parse(lines[lines.len() - 1]).unwrap();
    assert!(matches!(&close.entry, Entry::Checkpoint(cp) if cp.close));
    let query = lines
        .iter()
        .map(|line| String::from_utf8(line.to_vec()).unwrap())
        .find(|line| line.contains("\"type\":\"query\""))
        .unwrap();
    let seq = Record::parse(query.as_bytes()).unwrap().seq;
    let forged = query.replacen(
        &format!("{{\"seq\":{seq},"),
        &format!("{{\"seq\":{},", close.seq + 1),
        1,
    );
    let (body, _) = segment::split_hash(forged.as_bytes()).unwrap();
    let prev = segment::decode_hash(close.hash.as_bytes()).unwrap();
    let hash = segment::recompute(&prev, body);
    let offset = data.len() as u64;
    data.extend_from_slice(body);
    data.extend_from_slice(format!(",\"hash\":\"{}\"}}\n", hex::encode(hash)).as_bytes());
    std::fs::write(&last, &data).unwrap();
    for key in [None, Some(&public)] {
        let failure = audit::verify(&settings.dir, key.map(|k| k.as_path()))
            .unwrap()
            .failure
            .expect("an appended record is found");
        assert_eq!(failure.kind, FailureKind::Inserted);
        assert_eq!(
            (&failure.spot.file, failure.spot.seq, failure.spot.offset),
            (&last, Some(close.seq + 1), offset)
        );
    }
}

/// Batches (one UDP receive batch's records) count record by record against the queue bound:
/// all written when there is room, all counted when there is none, and a queue smaller than a
/// batch still takes what fits.
#[test]
fn batches_of_records_are_written_or_counted_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (handle, writer) = AuditLog::open(&settings(tmp.path()), InstanceId::random()).unwrap();
    let mut batch: Vec<DecisionRecord> = (0..10).map(decision).collect();
    handle.record_batch(&mut batch);
    assert!(batch.is_empty());
    writer.shutdown().unwrap();
    assert_eq!(handle.dropped(), 0);
    let queries = |dir: &Path| {
        all_records(dir)
            .into_iter()
            .filter(|r| matches!(r.entry, Entry::Query(_)))
            .count() as u64
    };
    assert_eq!(queries(tmp.path()), 10);

    let small = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        queue_capacity: 4,
        ..settings(small.path())
    };
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    let mut batch: Vec<DecisionRecord> = (0..10).map(decision).collect();
    handle.record_batch(&mut batch);
    let dropped = handle.dropped();
    writer.shutdown().unwrap();
    let written = queries(small.path());
    assert!(
        written >= 4,
        "the queue had room for four: {written} written"
    );
    assert_eq!(written + dropped, 10);
}

/// Records handed over while the writer stops (a TCP answer finishing during the stop) are
/// written before the stop record, or counted in the stop figures: none vanish in the channel.
#[test]
fn records_sent_during_the_stop_are_written_or_counted() {
    for _ in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let settings = AuditSettings {
            segment_max_bytes: 64 * 1024 * 1024,
            fsync_interval_ms: 1000,
            queue_capacity: 1024,
            ..settings(tmp.path())
        };
        let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = {
            let handle = handle.clone();
            let stopping = std::sync::Arc::clone(&stopping);
            std::thread::spawn(move || {
                let mut sent = 0;
                // Before the stop, through it, and a little after.
                let mut after = 0;
                while after < 1_000 {
                    handle.record(decision(sent));
                    sent += 1;
                    if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        after += 1;
                    }
                }
                sent
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let stats = writer.shutdown().unwrap();
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = sender.join().unwrap();
        let records = all_records(tmp.path());
        let written = records
            .iter()
            .filter(|r| matches!(r.entry, Entry::Query(_)))
            .count() as u64;
        let stop_at = records
            .iter()
            .position(|r| matches!(r.entry, Entry::Stop { .. }))
            .expect("a stop record");
        assert!(
            records[stop_at..]
                .iter()
                .all(|r| !matches!(r.entry, Entry::Query(_))),
            "no query record after the stop record"
        );
        assert_eq!(
            written + handle.dropped(),
            sent,
            "{sent} sent: {written} written, {} counted as dropped (stats: {stats:?})",
            handle.dropped()
        );
        assert!(audit::verify(tmp.path(), None).unwrap().ok());
    }
}

/// A log in `dir` whose queue holds two records (a burst overflows it), in one segment.
fn two_slot_queue(dir: &Path) -> AuditSettings {
    AuditSettings {
        queue_capacity: 2,
        segment_max_bytes: 64 * 1024 * 1024,
        ..settings(dir)
    }
}

#[test]
fn full_queue_is_recorded_as_a_gap_with_the_right_count() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = two_slot_queue(tmp.path());
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    let burst = 20_000;
    for i in 0..burst {
        handle.record(decision(i));
    }
    let dropped = handle.dropped();
    let stats = writer.shutdown().unwrap();
    assert!(
        dropped > 0,
        "a 2-slot queue must overflow under a 20k burst"
    );
    let records = all_records(tmp.path());
    let gap_total: u64 = records
        .iter()
        .map(|r| match &r.entry {
            Entry::Gap {
                dropped,
                first,
                last,
            } => {
                assert!(first <= last);
                *dropped
            }
            _ => 0,
        })
        .sum();
    let written = records
        .iter()
        .filter(|r| matches!(r.entry, Entry::Query(_)))
        .count() as u64;
    assert_eq!(gap_total, dropped);
    assert_eq!(written + dropped, burst);
    assert_eq!(stats.dropped, dropped);
    assert!(audit::verify(tmp.path(), None).unwrap().ok());
    let summary = audit::summary(tmp.path(), &TimeRange::default()).unwrap();
    assert_eq!(summary.dropped, dropped);
}

#[test]
fn retention_removes_old_segments_and_the_rest_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        segment_max_bytes: 8 * 1024,
        retention_max_total_bytes: 40 * 1024,
        ..settings(tmp.path())
    };
    write_log(&settings, 0, 1000);
    let segs = segment::list_segments(tmp.path()).unwrap();
    let total: u64 = segs
        .iter()
        .map(|s| std::fs::metadata(&s.path).unwrap().len())
        .sum();
    assert!(total <= 40 * 1024 + 8 * 1024, "total {total}");
    assert!(segs[0].first_seq > 1, "the oldest segments are gone");
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(
        report.chain_start,
        ChainStart::After {
            seq: segs[0].first_seq - 1
        }
    );
}

/// The smallest size limit the config takes, three segments, keeps a closed segment besides the
/// newest: the newest counts, and each closed one ends past `segment_max_bytes`.
#[test]
fn the_smallest_size_limit_keeps_a_closed_segment_besides_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        segment_max_bytes: 8 * 1024,
        retention_max_total_bytes: 3 * 8 * 1024,
        ..settings(tmp.path())
    };
    assert_eq!(settings.invalid_value(), None);
    write_log(&settings, 0, 1000);
    let segs = segment::list_segments(tmp.path()).unwrap();
    assert!(segs.len() >= 2, "{segs:?}");
    assert!(segs[0].first_seq > 1, "the oldest segments are gone");
    assert!(audit::verify(tmp.path(), None).unwrap().ok());
}

/// Segments closed more than `retention_max_age_days` ago are removed when the writer next
/// starts (or closes a segment), the newer ones stay, and the rest still verifies.
#[test]
fn age_retention_removes_segments_older_than_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        retention_max_age_days: 30,
        ..settings(tmp.path())
    };
    write_log(&settings, 0, 300);
    let old = segments(tmp.path());
    assert!(old.len() >= 3, "{old:?}");
    let day = std::time::Duration::from_secs(86_400);
    let aged = |path: &Path, days: u32| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - day * days)
            .unwrap();
    };
    // The oldest two past the limit, the third just inside it.
    aged(&old[0], 45);
    aged(&old[1], 31);
    aged(&old[2], 29);
    write_log(&settings, 300, 10);
    let now = segments(tmp.path());
    assert!(!old[0].exists() && !old[1].exists(), "{now:?}");
    assert_eq!(now[0], old[2], "the segment inside the limit is kept");
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    let first_seq = segment::list_segments(tmp.path()).unwrap()[0].first_seq;
    assert_eq!(report.chain_start, ChainStart::After { seq: first_seq - 1 });
}

#[test]
fn restart_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let first = write_log(&settings, 0, 100);
    write_log(&settings, 100, 100);
    let records = all_records(tmp.path());
    let starts: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.entry, Entry::Start { .. }))
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1].seq, first.last_seq + 1);
    assert_ne!(starts[0].instance, starts[1].instance);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.chain_start, ChainStart::Genesis);
}

/// 100 records, then a crash mid-write: `partial` (a line without its newline) at the end of
/// the last segment. Returns that segment and the torn line's offset.
fn log_torn_by_a_crash(settings: &AuditSettings, partial: &[u8]) -> (PathBuf, u64) {
    write_log(settings, 0, 100);
    let last = segments(&settings.dir).pop().unwrap();
    let mut data = std::fs::read(&last).unwrap();
    let torn_at = data.len() as u64;
    data.extend_from_slice(partial);
    std::fs::write(&last, &data).unwrap();
    (last, torn_at)
}

#[test]
fn crash_torn_tail_then_restart_is_recovered_not_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let (_, torn_at) = log_torn_by_a_crash(&settings, b"{\"seq\":999,\"prev\":\"00");
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok() && report.truncated_tail.is_some(), "{report}");

    write_log(&settings, 100, 50);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    assert!(report.truncated_tail.is_none());
    assert_eq!(report.recovered.len(), 1);
    assert_eq!(report.recovered[0].offset, torn_at);
    assert!(all_records(tmp.path()).iter().any(|r| matches!(
        &r.entry,
        Entry::Recovered { offset, .. } if *offset == torn_at
    )));
}

/// The torn line a restart declared is outside the chain, but its `recovered` record states
/// its length and digest: an edit of those bytes is named there.
#[test]
fn an_edited_torn_line_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let (torn, torn_at) = log_torn_by_a_crash(&settings, b"{\"seq\":999,\"time\":\"20");
    write_log(&settings, 100, 50);
    assert!(audit::verify(tmp.path(), None).unwrap().ok());
    let intact = std::fs::read(&torn).unwrap();
    let edited = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = intact.clone();
        edit(&mut bytes);
        std::fs::write(&torn, &bytes).unwrap();
        let failure = audit::verify(tmp.path(), None).unwrap().failure;
        std::fs::write(&torn, &intact).unwrap();
        failure.expect("the edit is found")
    };
    let at = usize::try_from(torn_at).unwrap();
    for failure in [
        edited(&|bytes| bytes[at + 3] = b'x'),
        edited(&|bytes| bytes.extend_from_slice(b"12-01")),
        edited(&|bytes| bytes.truncate(at + 4)),
    ] {
        assert_eq!(failure.kind, FailureKind::Modified);
        assert_eq!((&failure.spot.file, failure.spot.offset), (&torn, torn_at));
    }
    assert!(audit::verify(tmp.path(), None).unwrap().ok());
}

/// The segment after a torn one removed: named as the records it held, missing, not as an
/// edit of the torn segment (whose torn line only that segment's header declared).
#[test]
fn a_segment_removed_after_a_torn_one_is_named_as_missing_records() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let (torn, _) = log_torn_by_a_crash(&settings, b"{\"seq\":999,\"prev\":\"00");
    let before_restart = segments(tmp.path()).len();
    write_log(&settings, 100, 50);
    write_log(&settings, 150, 50);
    let after_torn = segments(tmp.path())[before_restart].clone();
    let first_missing = segment::list_segments(tmp.path()).unwrap()[before_restart].first_seq;
    std::fs::remove_file(&after_torn).unwrap();
    let report = audit::verify(tmp.path(), None).unwrap();
    let failure = report.failure.expect("records are missing");
    assert!(
        matches!(
            failure.kind,
            FailureKind::Deleted { .. } | FailureKind::MissingSegment { .. }
        ),
        "{:?} at {}",
        failure.kind,
        failure.spot
    );
    assert_eq!(failure.spot.seq, Some(first_missing), "{}", failure.spot);
    assert_ne!(failure.spot.file, torn);
    // Its torn line was never declared: no note says it was recovered.
    assert!(report.recovered.is_empty(), "{:?}", report.recovered);
}

/// A restart after a crash writes a new segment whose header declares the torn line; if that
/// restart dies too, right after the header, the next one removes the header-only segment (it
/// holds nothing of the chain) and must declare the torn line itself, or the chain has an
/// undeclared torn line in its middle.
#[test]
fn a_removed_header_only_segment_hands_on_its_torn_tail_declaration() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let (torn, torn_at) = log_torn_by_a_crash(&settings, b"{\"seq\":999,\"time\":\"20");
    // What the restart that died left: only the header of its new segment.
    let tail = segment::read_tail(&torn, (0, [0; 32])).unwrap();
    let mut header = segment::Header::new(
        segment::HeaderKind::Segment,
        tail.last_seq + 1,
        &tail.last_hash,
        "00000000000000aa",
    );
    header.torn_tail = Some(segment::TornTail {
        segment: file_name(&torn),
        offset: torn_at,
    });
    let mut line = Vec::new();
    header.encode(&mut line).unwrap();
    let header_only = tmp.path().join(segment::segment_name(tail.last_seq + 1));
    std::fs::write(&header_only, &line).unwrap();

    write_log(&settings, 100, 50);
    let next = segment::list_segments(tmp.path())
        .unwrap()
        .into_iter()
        .find(|s| s.first_seq == tail.last_seq + 1)
        .expect("the restart's segment starts where the header-only one did");
    let first_line = std::fs::read(&next.path).unwrap();
    let first_line = first_line.split(|&b| b == b'\n').next().unwrap();
    let declared = segment::Header::parse(first_line).unwrap().torn_tail;
    assert_eq!(
        declared,
        Some(segment::TornTail {
            segment: file_name(&torn),
            offset: torn_at
        })
    );
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    assert!(report.truncated_tail.is_none(), "{report}");
    assert_eq!(report.recovered.len(), 1, "{report}");
    assert_eq!(report.recovered[0].offset, torn_at);
}

/// Retention that cannot remove a segment (here the oldest name is a directory, which
/// `unlink` refuses) is a disk-space problem: the writer warns and goes on logging.
#[test]
fn a_segment_retention_cannot_remove_does_not_stop_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        segment_max_bytes: 8 * 1024,
        ..settings(tmp.path())
    };
    write_log(&settings, 0, 500);
    let oldest = segments(tmp.path()).remove(0);
    std::fs::remove_file(&oldest).unwrap();
    std::fs::create_dir(&oldest).unwrap();
    std::fs::write(oldest.join("keep"), b"x").unwrap();

    let stats = write_log(
        &AuditSettings {
            retention_max_total_bytes: 16 * 1024,
            ..settings.clone()
        },
        500,
        500,
    );
    assert_eq!(stats.records, 500);
    assert!(oldest.is_dir(), "the segment retention could not remove");
    let queries = segments(tmp.path())
        .iter()
        .filter(|path| path.is_file())
        .flat_map(|path| {
            let data = std::fs::read(path).unwrap();
            let lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            lines
        })
        .filter_map(|line| Record::parse(&line).ok())
        .filter(|r| matches!(&r.entry, Entry::Query(q) if q.latency_us >= 100 + 500))
        .count();
    assert_eq!(queries, 500, "every record of the second run is in the log");
}

fn export_file(
    dir: &Path,
    format: ExportFormat,
    range: &TimeRange,
    path: &Path,
) -> audit::query::ExportStats {
    let mut file = std::fs::File::create(path).unwrap();
    audit::query::export_range(dir, format, range, &mut file).unwrap()
}

#[test]
fn exports_verify_on_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 400);
    for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
        let path = tmp.path().join(format!("export-{format:?}"));
        let stats = export_file(&settings.dir, format, &TimeRange::default(), &path);
        assert!(stats.records > 400);
        let report = audit::verify(&path, Some(&public)).unwrap();
        assert!(report.ok(), "{format:?}: {report}");
        assert_eq!(report.records, stats.records);
        assert_eq!(report.chain_start, ChainStart::Genesis);

        if format == ExportFormat::Csv {
            // Version 2 lines do not state their link; the CSV `prev` column does, and an
            // edited one is a modification.
            let text = std::fs::read_to_string(&path).unwrap();
            let row = text.lines().nth(5).unwrap();
            let prev = row.split(',').nth(22).unwrap();
            assert_eq!(prev.len(), 64, "{row}");
            // Another hash, or the same one in capitals (the column is outside the hashed
            // bytes, so only an exact match is the writer's).
            for edited in ["0".repeat(64), prev.to_uppercase()] {
                let tampered = text.replacen(row, &row.replacen(prev, &edited, 1), 1);
                std::fs::write(&path, &tampered).unwrap();
                let failure = audit::verify(&path, Some(&public))
                    .unwrap()
                    .failure
                    .unwrap();
                assert_eq!(failure.kind, FailureKind::Modified, "{edited}");
            }
            std::fs::write(&path, text).unwrap();
        }
        // An edited export fails, in either format.
        let text = std::fs::read_to_string(&path).unwrap();
        let tampered = text.replacen("www.binance.com.", "www.binance.org.", 1);
        std::fs::write(&path, tampered).unwrap();
        let report = audit::verify(&path, Some(&public)).unwrap();
        assert_eq!(
            report.failure.unwrap().kind,
            FailureKind::Modified,
            "{format:?}"
        );
    }
}

/// An export of a time range: every record from the first to the last one inside it, as one
/// unbroken piece of the chain that verifies on its own from its stated start.
#[test]
fn an_export_of_a_time_range_verifies_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    write_log(&settings, 0, 600);
    assert!(segments(tmp.path()).len() > 3, "the range spans segments");
    let at = |millis: u64| Timestamp::from_micros(((BASE_SECS * 1000 + millis) * 1000) as i64);
    // Queries 100..=399 (one a millisecond from BASE).
    let range = TimeRange {
        from: Some(at(100)),
        to: Some(at(400)),
    };
    for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
        let path = tmp.path().join(format!("range-{format:?}"));
        let stats = export_file(&settings.dir, format, &range, &path);
        let report = audit::verify(&path, None).unwrap();
        assert!(report.ok(), "{format:?}: {report}");
        assert_eq!(report.records, stats.records);
        let first = report.first_seq.unwrap();
        assert_eq!(report.chain_start, ChainStart::After { seq: first - 1 });
        // The queries in the export are exactly those of the range (latency = 100 + i).
        let text = std::fs::read_to_string(&path).unwrap();
        let latencies: Vec<u64> = text
            .lines()
            .filter_map(|line| {
                let line = match format {
                    ExportFormat::Jsonl => line.to_owned(),
                    ExportFormat::Csv => audit::query::csv_row_to_line(line.as_bytes())
                        .map(|(line, _)| String::from_utf8(line).unwrap())?,
                };
                match Record::parse(line.as_bytes()).ok()?.entry {
                    Entry::Query(q) => Some(q.latency_us),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(latencies, (200..500).collect::<Vec<u64>>(), "{format:?}");
    }
    // The hour before the first query (the service records are timed now, long after).
    let nothing = TimeRange {
        from: Some(Timestamp::from_micros(
            (BASE_SECS as i64 - 3600) * 1_000_000,
        )),
        to: Some(at(0)),
    };
    assert!(matches!(
        audit::query::export_range(
            &settings.dir,
            ExportFormat::Jsonl,
            &nothing,
            &mut Vec::new()
        ),
        Err(audit::AuditError::NothingInRange { .. })
    ));
}

/// A segment whose queries all precede `--from` but whose closing checkpoint lies inside the
/// range: that checkpoint is the first record timed in the range, so the export starts there
/// (with the signed chain head it carries), not at a later one.
#[test]
fn a_range_export_starts_at_a_closing_checkpoint_inside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    // Queries are timed at BASE_SECS (long ago); checkpoints and service records now.
    write_log(&settings, 0, 600);
    let closing: Vec<(u64, Timestamp)> = segments(tmp.path())
        .iter()
        .filter_map(|path| {
            let data = std::fs::read(path).unwrap();
            let last = data.trim_ascii_end().rsplit(|&b| b == b'\n').next()?;
            let record = Record::parse(last).ok()?;
            matches!(record.entry, Entry::Checkpoint(ref cp) if cp.close)
                .then_some((record.seq, record.time))
        })
        .collect();
    assert!(closing.len() > 3, "the log spans segments");
    // From a closing checkpoint timed after the one before it (two closes can share a
    // microsecond): the queries of its segment are all before it, and so is the start record.
    let k = (1..closing.len())
        .find(|&k| closing[k - 1].1 < closing[k].1)
        .expect("checkpoints a microsecond apart");
    let (seq, time) = closing[k];
    let range = TimeRange {
        from: Some(time),
        to: None,
    };
    let mut out = Vec::new();
    audit::query::export_range(&settings.dir, ExportFormat::Jsonl, &range, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let first = Record::parse(text.lines().nth(1).unwrap().as_bytes()).unwrap();
    assert_eq!(first.seq, seq, "{}", text.lines().nth(1).unwrap());
    let path = tmp.path().join("range.jsonl");
    std::fs::write(&path, &text).unwrap();
    let report = audit::verify(&path, None).unwrap();
    assert!(report.ok(), "{report}");
}

/// In a quiet hour a periodic checkpoint can be the only record inside a range, in a segment
/// whose queries (and closing checkpoint) lie outside it: the export still finds it.
#[test]
fn a_range_holding_only_a_periodic_checkpoint_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let keydir = tmp.path().join("keys");
    std::fs::create_dir_all(&keydir).unwrap();
    let (secret, _public) = keys::keygen(&keydir).unwrap();
    let settings = AuditSettings {
        signing_key: Some(secret),
        checkpoint_interval_secs: 1,
        segment_max_age_secs: 2,
        ..settings(&tmp.path().join("log"))
    };
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    // One query (timed long ago); then a periodic checkpoint, then the close by age.
    handle.record(decision(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let closed = loop {
        let records = all_records(&settings.dir);
        if records
            .iter()
            .any(|r| matches!(&r.entry, Entry::Checkpoint(cp) if cp.close))
        {
            break records;
        }
        assert!(std::time::Instant::now() < deadline, "no close by age");
        std::thread::sleep(Duration::from_millis(50));
    };
    writer.shutdown().unwrap();
    let periodic = closed
        .iter()
        .skip_while(|r| !matches!(r.entry, Entry::Query(_)))
        .find(|r| matches!(&r.entry, Entry::Checkpoint(cp) if !cp.close))
        .expect("a periodic checkpoint before the close");
    let range = TimeRange {
        from: Some(periodic.time),
        to: Some(Timestamp::from_micros(periodic.time.as_micros() + 1)),
    };
    let mut out = Vec::new();
    audit::query::export_range(&settings.dir, ExportFormat::Jsonl, &range, &mut out)
        .expect("the checkpoint is in the range");
    let exported: Vec<u64> = out
        .split(|&b| b == b'\n')
        .filter_map(|line| Record::parse(line).ok())
        .map(|record| record.seq)
        .collect();
    assert!(exported.contains(&periodic.seq), "{exported:?}");
}

/// An export ends with a line naming the end of its chain: a copy cut short, by whole lines
/// or mid-line, fails as a truncated export instead of verifying as a shorter log; records
/// cut from before a kept end line are missing; a CSV saved with CRLF line ends still verifies.
#[test]
fn a_cut_export_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 200);
    for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
        let path = tmp.path().join(format!("export-{format:?}"));
        export_file(&settings.dir, format, &TimeRange::default(), &path);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let verify_text = |text: &str| {
            std::fs::write(&path, text).unwrap();
            audit::verify(&path, Some(&public)).unwrap()
        };
        let report = verify_text(&text);
        assert!(report.ok(), "{format:?}: {report}");

        // The first 24 lines only: every one intact, the first checkpoint signed.
        let head: String = lines[..24].iter().map(|l| format!("{l}\n")).collect();
        let failure = verify_text(&head).failure.unwrap();
        assert_eq!(failure.kind, FailureKind::TruncatedExport, "{format:?}");
        // The last line cut in half.
        let half = &text[..text.len() - lines.last().unwrap().len() / 2 - 1];
        let failure = verify_text(half).failure.unwrap();
        assert_eq!(failure.kind, FailureKind::TruncatedExport, "{format:?}");
        // Cut before its first record (nothing, or part of the first line): without a key
        // too, where no missing signature would fail it.
        for cut in ["", &text[..3], &text[..40]] {
            std::fs::write(&path, cut).unwrap();
            for key in [None, Some(public.as_path())] {
                let report = audit::verify(&path, key).unwrap();
                let failure = report.failure.as_ref().map(|f| f.kind.clone());
                assert_eq!(
                    failure,
                    Some(FailureKind::TruncatedExport),
                    "{format:?}, {} bytes: {report}",
                    cut.len()
                );
            }
        }
        // Ten records cut before the end line.
        let n = lines.len();
        let mut cut: Vec<&str> = lines[..n - 11].to_vec();
        cut.push(lines[n - 1]);
        let cut: String = cut.iter().map(|l| format!("{l}\n")).collect();
        let failure = verify_text(&cut).failure.unwrap();
        assert_eq!(
            failure.kind,
            FailureKind::Deleted { missing: 10 },
            "{format:?}"
        );
        // The end line's record count edited: named as the end line's, with both counts
        // (it was "modified record" at a seq the export does not hold).
        let records = report.records;
        let quote = if format == ExportFormat::Csv {
            "\"\""
        } else {
            "\""
        };
        let edited = text.replace(
            &format!("{quote}records{quote}:{records},"),
            &format!("{quote}records{quote}:{},", records + 1),
        );
        assert_ne!(edited, text);
        let report = verify_text(&edited);
        let failure = report.failure.clone().unwrap();
        assert!(
            matches!(failure.kind, FailureKind::EndLineMismatch { stated_records, records: found, .. }
                if stated_records == records + 1 && found == records),
            "{format:?}: {report}"
        );
        assert_eq!(failure.spot.seq, None);
        assert!(
            report
                .to_string()
                .contains(&format!("it states {} records", records + 1)),
            "{report}"
        );
        // Anything after the end line.
        let failure = verify_text(&format!("{text}{}\n", lines[n - 2]))
            .failure
            .unwrap();
        assert_eq!(failure.kind, FailureKind::Inserted, "{format:?}");
        if format == ExportFormat::Csv {
            let report = verify_text(&text.replace('\n', "\r\n"));
            assert!(report.ok(), "CRLF: {report}");
        }
    }
}

/// A directory without segments (a mistyped `--dir`) is an error for every reader, not an
/// empty log that verifies.
#[test]
fn a_missing_log_is_an_error_not_an_empty_log() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    for dir in [missing.as_path(), tmp.path()] {
        let no_log = |error: audit::AuditError| {
            assert!(matches!(error, audit::AuditError::NoLog { .. }), "{error}");
        };
        no_log(audit::search(dir, &Filter::default()).unwrap_err());
        no_log(audit::summary(dir, &TimeRange::default()).unwrap_err());
        no_log(audit::export(dir, ExportFormat::Jsonl, &mut Vec::new()).unwrap_err());
    }
    assert!(matches!(
        audit::verify(tmp.path(), None).unwrap_err(),
        audit::AuditError::NoLog { .. }
    ));
}

#[test]
fn search_filters_and_formats() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 600);
    let count = |filter: Filter| {
        audit::search(tmp.path(), &filter)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .len()
    };
    assert_eq!(count(Filter::default()), 600);
    let blocked = Filter {
        decision: Some(Decision::Blocked),
        ..Filter::default()
    };
    assert_eq!(count(blocked.clone()), 200);
    let domain = |d: &str| Filter {
        domain: Some(DomainFilter::parse(d).unwrap()),
        ..Filter::default()
    };
    assert_eq!(count(domain("binance.com")), 200);
    assert_eq!(count(domain("=binance.com")), 0);
    assert_eq!(count(domain("=WWW.binance.com")), 200);
    assert_eq!(count(domain("example.org")), 400);
    let client = |c: &str| Filter {
        client: Some(ClientFilter::parse(c).unwrap()),
        ..Filter::default()
    };
    assert_eq!(count(client("192.0.2.1")), 150);
    assert_eq!(count(client("192.0.2.0/30")), 450); // .1 .2 .3
    assert_eq!(
        count(Filter {
            qtype: Some("aaaa".into()),
            ..Filter::default()
        }),
        300
    );
    assert_eq!(
        count(Filter {
            list: Some("crypto".into()),
            ..Filter::default()
        }),
        200
    );
    assert_eq!(
        count(Filter {
            limit: Some(7),
            ..blocked.clone()
        }),
        7
    );
    // Time: records are 1 ms apart from BASE; [BASE+100ms, BASE+200ms) holds 100.
    let at = |ms: i64| Timestamp::from_micros(BASE_SECS as i64 * 1_000_000 + ms * 1000);
    assert_eq!(
        count(Filter {
            range: TimeRange {
                from: Some(at(100)),
                to: Some(at(200)),
            },
            ..Filter::default()
        }),
        100
    );

    // The CLI formats.
    let run = |json: bool, csv: bool| {
        let mut out = Vec::new();
        let ok = audit::cli::run(
            AuditCommand::Search {
                dir: DirArg { dir: None },
                range: RangeArgs {
                    since: None,
                    from: None,
                    to: None,
                },
                client: Some("192.0.2.1".into()),
                domain: Some("binance.com".into()),
                qtype: None,
                decision: Some("blocked".into()),
                list: None,
                limit: Some(3),
                follow: false,
                json,
                csv,
            },
            &settings(tmp.path()),
            &mut out,
        )
        .unwrap();
        assert!(ok);
        String::from_utf8(out).unwrap()
    };
    let table = run(false, false);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(rows[0].starts_with("TIME"));
    let qname_col = rows[0].find("QNAME").unwrap();
    assert!(
        rows.iter()
            .skip(1)
            .all(|r| r[qname_col..].starts_with("www.binance.com.")),
        "{table}"
    );
    let json = run(true, false);
    assert_eq!(json.lines().count(), 3);
    for line in json.lines() {
        let record = Record::parse(line.as_bytes()).unwrap();
        assert!(matches!(record.entry, Entry::Query(ref q) if q.client.starts_with("192.0.2.1:")));
    }
    let csv = run(false, true);
    assert_eq!(csv.lines().count(), 4);
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .contains(",www.binance.com.,A,IN,blocked,crypto,")
    );
}

/// The search's byte scan is only a shortcut: a line whose members come in another order
/// (written by other software) is read in full, so its rule still counts.
#[test]
fn lines_in_another_member_order_are_still_found() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 30);
    let list = |name: &str| Filter {
        list: Some(name.into()),
        ..Filter::default()
    };
    let count = |filter: Filter| audit::search(tmp.path(), &filter).unwrap().count();
    assert_eq!(count(list("crypto")), 10);
    // Move the first blocked query's rule (seq 2, after the start record) behind its rcode.
    let (path, mut lines, i) = find_line(tmp.path(), 2);
    let text = String::from_utf8(lines[i].clone()).unwrap();
    let start = text.find(",\"rule\":").unwrap();
    let end = text.find(",\"action\":").unwrap();
    let rule = &text[start..end];
    let moved =
        text.replacen(rule, "", 1)
            .replacen(",\"answer\":", &format!("{rule},\"answer\":"), 1);
    assert!(
        moved.contains("\"rcode\":\"NXDOMAIN\",\"rule\":{\"list\":\"crypto\""),
        "{moved}"
    );
    lines[i] = moved.into_bytes();
    write_lines(&path, &lines);
    assert_eq!(count(list("crypto")), 10);
    let summary = audit::summary(tmp.path(), &TimeRange::default()).unwrap();
    assert_eq!(summary.per_list.get("crypto"), Some(&10));
}

#[test]
fn summary_figures() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 600);
    let summary = audit::summary(tmp.path(), &TimeRange::default()).unwrap();
    assert_eq!(summary.queries, 600);
    assert_eq!(summary.by_decision["blocked"], 200);
    assert_eq!(summary.by_decision["allowed"], 400);
    assert_eq!(summary.top_blocked[0].name, "www.binance.com.");
    assert_eq!(summary.top_blocked[0].count, 200);
    assert_eq!(summary.per_list["crypto"], 200);
    assert_eq!(summary.per_hour["2025-01-31T12"], 600);
    // Clients are counted by address, whatever their source port.
    let clients: Vec<(&str, u64)> = summary
        .top_clients
        .iter()
        .map(|c| (c.name.as_str(), c.count))
        .collect();
    assert_eq!(
        clients,
        [
            ("192.0.2.1", 150),
            ("192.0.2.2", 150),
            ("192.0.2.3", 150),
            ("192.0.2.4", 150)
        ]
    );
    let text = summary.to_string();
    assert!(text.contains("queries: 600"));
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["by_decision"]["blocked"], 200);

    let half = TimeRange {
        from: None,
        to: Some(Timestamp::from_micros(
            BASE_SECS as i64 * 1_000_000 + 300_000,
        )),
    };
    assert_eq!(audit::summary(tmp.path(), &half).unwrap().queries, 300);
}

/// With hashed clients, `--client ADDRESS` is searched as that address's hash (with the
/// configured key); a network cannot be, and says why.
#[test]
fn hashed_clients_are_found_by_address() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("client.key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
    let log = tmp.path().join("log");
    let settings = AuditSettings {
        anonymize: audit::Anonymize::Hash,
        anonymize_key: Some(key),
        ..settings(&log)
    };
    write_log(&settings, 0, 40);
    let text: String = segments(&log)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        !text.contains("\"client\":\"192.0.2."),
        "no address is stored"
    );
    let count = |client: &str| {
        let filter = Filter {
            client: Some(ClientFilter::parse_for(client, &settings).unwrap()),
            ..Filter::default()
        };
        audit::search(&log, &filter).unwrap().count()
    };
    // Clients 192.0.2.1-4 in turn.
    assert_eq!(count("192.0.2.1"), 10);
    assert_eq!(count("192.0.2.9"), 0);
    let error = ClientFilter::parse_for("192.0.2.0/24", &settings).unwrap_err();
    assert!(error.to_string().contains("hashed"), "{error}");
    assert!(audit::query::clients_look_hashed(&log));
}

#[test]
fn truncate_anonymisation_is_applied_before_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        anonymize: audit::Anonymize::Truncate,
        ..settings(tmp.path())
    };
    write_log(&settings, 0, 20);
    let text: String = segments(tmp.path())
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(text.contains("\"client\":\"192.0.2.0/24\""));
    assert!(!text.contains("192.0.2.1:"));
    assert!(audit::verify(tmp.path(), None).unwrap().ok());
    let filter = Filter {
        client: Some(ClientFilter::parse("192.0.2.3").unwrap()),
        ..Filter::default()
    };
    assert_eq!(audit::search(tmp.path(), &filter).unwrap().count(), 20);
    assert!(!audit::query::clients_look_hashed(tmp.path()));
}

fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9.\\-\"\\\\,]{0,30}"]
}

prop_compose! {
    fn query_entry()(
        generation in any::<u64>(),
        strings in proptest::collection::vec(text_strategy(), 10),
        decision in prop_oneof![Just(Decision::Allowed), Just(Decision::Blocked), Just(Decision::Logged), Just(Decision::Refused), Just(Decision::Error)],
        has_rule in any::<bool>(),
        cname in proptest::option::of(proptest::collection::vec(text_strategy(), 0..3)),
        line in any::<u32>(),
        ede in proptest::option::of(any::<u16>()),
        latency_us in any::<u64>(),
    ) -> QueryEntry {
        QueryEntry {
            generation,
            client: strings[0].clone(),
            transport: strings[1].clone(),
            qname: strings[2].clone(),
            qtype: strings[3].clone(),
            qclass: strings[4].clone(),
            decision,
            rule: has_rule.then(|| RuleEntry {
                list: strings[5].clone(),
                rule: strings[6].clone(),
                file: strings[7].clone(),
                line,
                trigger: match &cname {
                    Some(chain) => TriggerEntry::Cname { matched: strings[8].clone(), chain: chain.clone() },
                    None => TriggerEntry::Question,
                },
            }),
            action: has_rule.then(|| strings[9].clone()),
            rcode: strings[9].clone(),
            answer: strings[8].clone(),
            ede,
            source: strings[0].clone(),
            latency_us,
        }
    }
}

proptest! {
    #[test]
    fn record_encoding_round_trips(entry in query_entry(), seq in 1u64.., micros in 0i64..4_102_444_800_000_000) {
        let entry = Entry::Query(entry);
        let time = Timestamp::from_micros(micros);
        let mut buf = Vec::new();
        let hash = segment::encode_record(&mut buf, seq, &[3; 32], time, "inst", &entry).unwrap();
        prop_assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let line = &buf[..buf.len() - 1];
        let record = Record::parse(line).unwrap();
        prop_assert_eq!(&record.entry, &entry);
        prop_assert_eq!(record.seq, seq);
        prop_assert_eq!(record.time, time);
        let (body, stored) = segment::split_hash(line).unwrap();
        prop_assert_eq!(stored, hash);
        prop_assert_eq!(segment::recompute(&[3; 32], body), hash);
        // The CSV rendering of any record reads back to the same line.
        let mut row = String::new();
        let prev = hex::encode([3; 32]);
        prop_assert!(dnsward::audit::query::csv_row(line, Some(&prev), &mut row));
        prop_assert_eq!(
            dnsward::audit::query::csv_row_to_line(row.as_bytes()),
            Some((line.to_vec(), prev))
        );
    }
}

/// A log written in format version 1 (by dnsward at 305c444: a `prev` member in every line, null
/// members written out, signed) still verifies, searches and summarises, and the writer continues
/// its chain in version 2.
#[test]
fn version_1_logs_still_verify_search_and_continue() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let tmp = tempfile::tempdir().unwrap();
    let v1_segment = "seg-00000000000000000001.dwlog";
    std::fs::copy(
        data.join("audit-v1").join(v1_segment),
        tmp.path().join(v1_segment),
    )
    .unwrap();
    let public = data.join("audit-v1.pub");

    let report = audit::verify(tmp.path(), Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 9);
    assert!(matches!(
        report.signatures,
        Signatures::Verified { checkpoints: 1 }
    ));

    let hits = |filter: Filter| -> Vec<String> {
        audit::search(tmp.path(), &filter)
            .unwrap()
            .map(|hit| match hit.unwrap().record.entry {
                Entry::Query(q) => q.qname,
                other => panic!("search returned {other:?}"),
            })
            .collect()
    };
    let blocked = hits(Filter {
        list: Some("exchanges".into()),
        ..Filter::default()
    });
    assert_eq!(blocked, ["www.binance.com.", "okx.com."]);
    assert_eq!(hits(Filter::default()).len(), 5);
    let summary = audit::summary(tmp.path(), &TimeRange::default()).unwrap();
    assert_eq!(summary.queries, 5);
    assert_eq!(summary.by_decision.get("blocked"), Some(&2));

    // An altered `prev` member is an altered line.
    let (path, mut lines, i) = find_line(tmp.path(), 5);
    let text = String::from_utf8(lines[i].clone()).unwrap();
    let stated = Record::parse(text.trim_end().as_bytes())
        .unwrap()
        .prev
        .unwrap();
    lines[i] = text.replace(&stated, &"0".repeat(64)).into_bytes();
    let original = std::fs::read(&path).unwrap();
    write_lines(&path, &lines);
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    assert_eq!(
        (failure.kind, failure.spot.seq),
        (FailureKind::Modified, Some(5))
    );
    std::fs::write(&path, original).unwrap();

    // The writer continues the chain in version 2: no `prev`, no null members.
    write_log(&settings(tmp.path()), 0, 30);
    let newest = segments(tmp.path()).pop().unwrap();
    let text = std::fs::read_to_string(&newest).unwrap();
    let header = segment::Header::parse(text.lines().next().unwrap().as_bytes()).unwrap();
    assert_eq!((header.version, header.first_seq), (2, 10));
    assert!(!text.contains("\"prev\":"), "{text}");
    let queries = text.lines().filter(|l| l.contains("\"type\":\"query\""));
    assert!(queries.clone().all(|l| !l.contains(":null")), "{text}");
    assert_eq!(queries.count(), 30);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.chain_start, ChainStart::Genesis);
    assert_eq!(hits(Filter::default()).len(), 35);
}

/// Page-cache residency of a file in bytes, from util-linux's `fincore`.
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux-extra) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The writer drops what it has synced from the page cache (a busy log would otherwise fill
/// memory with pages nobody reads, each a fresh page to copy into).
#[test]
fn synced_segments_leave_the_page_cache() {
    // Under the target directory: a disk file system (a tmpfs /tmp keeps pages regardless).
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let settings = AuditSettings {
        segment_max_bytes: 1 << 20,
        ..settings(tmp.path())
    };
    write_log(&settings, 0, 12_000);
    let segments = segments(tmp.path());
    assert!(segments.len() >= 3, "rotated: {segments:?}");
    let sizes: u64 = segments
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let cached: u64 = segments.iter().map(|p| cached_bytes(p)).sum();
    assert!(sizes > 3 << 20, "{sizes}");
    assert_eq!(cached, 0, "of {sizes} bytes written");
    // Reading still works (pages come back from disk) and the log verifies.
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
}

/// A signed log of a few records in three or more small segments: small enough to edit every
/// byte or line of it in turn. Returns its settings, the public key file and its segments.
fn small_signed_log(tmp: &Path) -> (AuditSettings, PathBuf, Vec<PathBuf>) {
    let keydir = tmp.join("keys");
    std::fs::create_dir_all(&keydir).unwrap();
    let (secret, public) = keys::keygen(&keydir).unwrap();
    let settings = AuditSettings {
        signing_key: Some(secret),
        segment_max_bytes: 1500,
        ..settings(&tmp.join("log"))
    };
    write_log(&settings, 0, 8);
    let files = segments(&settings.dir);
    assert!(files.len() >= 3, "several segments: {files:?}");
    (settings, public, files)
}

/// Changes one byte at a time, everywhere in `files` (a letter's case, since hex digits must be
/// written in lower case; any other byte's low bit), and returns the flips that `verify` of `target` still accepts, as `file:offset
/// old->new`. `skip` says which offsets of a file are not checked by design.
fn accepted_flips(
    target: &Path,
    files: &[PathBuf],
    public: &Path,
    skip: impl Fn(&Path, &[u8], usize) -> bool,
) -> Vec<String> {
    let mut accepted = Vec::new();
    for file in files {
        let original = std::fs::read(file).unwrap();
        for at in 0..original.len() {
            if skip(file, &original, at) {
                continue;
            }
            let mut changed = original.clone();
            changed[at] ^= if changed[at].is_ascii_alphabetic() {
                0x20
            } else {
                0x01
            };
            std::fs::write(file, &changed).unwrap();
            let report = audit::verify(target, Some(public)).unwrap();
            if report.ok() {
                accepted.push(format!(
                    "{}:{at} {:?}->{:?}",
                    file_name(file),
                    original[at] as char,
                    changed[at] as char
                ));
            }
        }
        std::fs::write(file, &original).unwrap();
    }
    accepted
}

/// The byte range of a header member's value (`"created":"…"`) in a file's first line.
fn header_value(data: &[u8], member: &str) -> std::ops::Range<usize> {
    let header_end = data.iter().position(|&b| b == b'\n').unwrap();
    let header = &data[..header_end];
    let key = format!("\"{member}\":\"");
    let start = header
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap()
        + key.len();
    let len = header[start..].iter().position(|&b| b == b'"').unwrap();
    start..start + len
}

/// "Change one byte" anywhere: every single-byte change to a signed log, and to its exports,
/// fails verification with the public key. The exceptions are by design and documented: the
/// header's informational `created` and `instance` values, and the last byte of the log (a
/// final line without its newline is a crash's torn tail, a warning).
#[test]
fn every_changed_byte_fails_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public, files) = small_signed_log(tmp.path());
    let last_file = files.last().unwrap().clone();
    let informational = |data: &[u8], at: usize| {
        header_value(data, "created").contains(&at) || header_value(data, "instance").contains(&at)
    };
    let accepted = accepted_flips(&settings.dir, &files, &public, |file, data, at| {
        informational(data, at) || (file == last_file && at == data.len() - 1)
    });
    assert!(accepted.is_empty(), "accepted after a change: {accepted:?}");

    for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
        let path = tmp.path().join(format!("export-{format:?}"));
        export_file(&settings.dir, format, &TimeRange::default(), &path);
        let accepted = accepted_flips(
            &path,
            std::slice::from_ref(&path),
            &public,
            |_, data, at| format == ExportFormat::Jsonl && informational(data, at),
        );
        assert!(
            accepted.is_empty(),
            "{format:?}: accepted after a change: {accepted:?}"
        );
    }
}

/// Deleting any one line, or swapping any two neighbours, anywhere in a signed log fails
/// verification with the public key. The one exception is the documented limit: the log's
/// last line (its closing checkpoint) removed looks like a log that ended a line earlier.
#[test]
fn every_deleted_or_swapped_line_fails_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public, files) = small_signed_log(tmp.path());
    let mut accepted = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let data = std::fs::read(file).unwrap();
        let lines: Vec<Vec<u8>> = data
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        let last_file = index + 1 == files.len();
        for at in 0..lines.len() {
            let mut edits = Vec::new();
            if !(last_file && at + 1 == lines.len()) {
                let mut deleted = lines.clone();
                deleted.remove(at);
                edits.push(("deleted", deleted));
            }
            if at + 1 < lines.len() {
                let mut swapped = lines.clone();
                swapped.swap(at, at + 1);
                edits.push(("swapped with the next", swapped));
            }
            for (what, edited) in edits {
                write_lines(file, &edited);
                if audit::verify(&settings.dir, Some(&public)).unwrap().ok() {
                    accepted.push(format!("{} line {at} {what}", file_name(file)));
                }
            }
        }
        std::fs::write(file, &data).unwrap();
    }
    assert!(accepted.is_empty(), "accepted after an edit: {accepted:?}");
    assert!(
        audit::verify(&settings.dir, Some(&public)).unwrap().ok(),
        "the log is whole again"
    );
}

/// A header whose `first_seq` was edited is named as a modified header, not as records
/// inserted or deleted: its records still continue the chain. Both in the middle of the log
/// and in the file the chain starts with.
#[test]
fn an_edited_header_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    write_log(&settings, 0, 300);
    let files = segments(tmp.path());
    assert!(files.len() >= 3);
    for (file, delta) in [(&files[1], -1i64), (&files[1], 1), (&files[0], 2)] {
        let text = std::fs::read_to_string(file).unwrap();
        let first_seq: i64 = text
            .split("\"first_seq\":")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .parse()
            .unwrap();
        let edited = text.replacen(
            &format!("\"first_seq\":{first_seq},"),
            &format!("\"first_seq\":{},", first_seq + delta),
            1,
        );
        std::fs::write(file, edited).unwrap();
        let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
        assert_eq!(
            failure.kind,
            FailureKind::ModifiedHeader,
            "{delta}: {failure:?}"
        );
        assert_eq!(failure.spot.file, *file);
        assert_eq!(failure.spot.seq, Some(first_seq as u64));
        assert_eq!(failure.spot.offset, 0);
        std::fs::write(file, text).unwrap();
    }
    // The version says how the lines are written (version 1 lines state `prev`): a header
    // claiming the other one is an edited header too.
    for file in [&files[0], &files[1]] {
        let text = std::fs::read_to_string(file).unwrap();
        let edited = text.replacen("\"version\":2,", "\"version\":1,", 1);
        assert_ne!(edited, text);
        std::fs::write(file, edited).unwrap();
        let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
        assert_eq!(failure.kind, FailureKind::ModifiedHeader, "{failure:?}");
        assert_eq!(failure.spot.file, *file);
        std::fs::write(file, text).unwrap();
    }
    // A record given a version 1 `prev` (its hash not redone) is a modified record, named at
    // the record, not at the header.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    let header_len = text.find('\n').unwrap() + 1;
    let edited = format!(
        "{}{}",
        &text[..header_len],
        text[header_len..].replacen(',', &format!(",\"prev\":\"{}\",", "0".repeat(64)), 1)
    );
    std::fs::write(&files[1], edited).unwrap();
    let failure = audit::verify(tmp.path(), None).unwrap().failure.unwrap();
    assert_eq!(failure.kind, FailureKind::Modified, "{failure:?}");
    assert_eq!(failure.spot.offset, header_len as u64);
    std::fs::write(&files[1], text).unwrap();
    assert!(audit::verify(tmp.path(), None).unwrap().ok());
}

/// `export --output` writes the whole export or nothing: a failed export leaves a file already
/// at the path as it was (and nothing beside it), a complete one replaces it, and a path inside
/// the log's directory, where the file could replace a segment, is refused.
#[test]
fn export_to_a_file_is_all_or_nothing_and_never_inside_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 50);
    let exports = tempfile::tempdir().unwrap();
    let target = exports.path().join("daily.jsonl");
    std::fs::write(&target, "yesterday's export\n").unwrap();
    let export = |from: Option<&str>, to: Option<&str>, output: &Path| {
        audit::cli::run(
            AuditCommand::Export {
                dir: DirArg { dir: None },
                range: RangeArgs {
                    since: None,
                    from: from.map(str::to_owned),
                    to: to.map(str::to_owned),
                },
                format: ExportFormat::Jsonl,
                output: Some(output.to_owned()),
            },
            &settings(tmp.path()),
            &mut Vec::new(),
        )
    };

    let error = export(
        Some("2001-01-01T00:00:00Z"),
        Some("2001-01-02T00:00:00Z"),
        &target,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("no records in the time range"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "yesterday's export\n"
    );
    let left: Vec<_> = std::fs::read_dir(exports.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing but the old file: {left:?}");

    assert!(export(None, None, &target).unwrap());
    assert!(audit::verify(&target, None).unwrap().ok());

    let segment = segments(tmp.path()).remove(0);
    let before = std::fs::read(&segment).unwrap();
    let error = export(None, None, &segment).unwrap_err().to_string();
    assert!(
        error.contains("--output") && error.contains("inside the audit log directory"),
        "{error}"
    );
    assert_eq!(std::fs::read(&segment).unwrap(), before);
    assert!(audit::verify(tmp.path(), None).unwrap().ok());

    // A replaced file keeps its permissions (an export holds client addresses).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(export(None, None, &target).unwrap());
    let mode = std::fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A symbolic link stays one: the file it names is replaced.
    let link = exports.path().join("latest.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::write(&target, "old\n").unwrap();
    assert!(export(None, None, &link).unwrap());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(audit::verify(&target, None).unwrap().ok());
    // A pipe is written into, not replaced.
    let fifo = exports.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    assert!(export(None, None, &fifo).unwrap());
    let piped = exports.path().join("piped.jsonl");
    std::fs::write(&piped, reader.join().unwrap()).unwrap();
    assert!(audit::verify(&piped, None).unwrap().ok());
    use std::os::unix::fs::FileTypeExt as _;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// A signing log's settings under `tmp/log` (keys under `tmp/keys`), one segment, and the
/// public key file.
fn signed_settings(tmp: &Path, checkpoint_interval_secs: u64) -> (AuditSettings, PathBuf) {
    let keydir = tmp.join("keys");
    std::fs::create_dir_all(&keydir).unwrap();
    let (secret, public) = keys::keygen(&keydir).unwrap();
    let settings = AuditSettings {
        signing_key: Some(secret),
        checkpoint_interval_secs,
        segment_max_bytes: 64 * 1024 * 1024,
        ..settings(&tmp.join("log"))
    };
    (settings, public)
}

/// An allowed `A` query for `qname` from 192.0.2.1, arrived at `time`.
fn query_timed(time: std::time::SystemTime, qname: &str) -> DecisionRecord {
    query_record(
        time,
        "192.0.2.1:5300".parse().unwrap(),
        "udp",
        qname,
        RecordType::A,
        false,
        100,
    )
}

/// How many query records the log holds.
fn query_records_in(dir: &Path) -> usize {
    all_records(dir)
        .iter()
        .filter(|r| matches!(r.entry, Entry::Query(_)))
        .count()
}

/// Waits for the first signed checkpoint after the log's first query record.
fn wait_for_signed_checkpoint_after_a_query(dir: &Path) -> Record {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(checkpoint) = signed_checkpoint_after_a_query(dir) {
            return checkpoint;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first signed checkpoint after the log's first query record.
fn signed_checkpoint_after_a_query(dir: &Path) -> Option<Record> {
    all_records(dir)
        .into_iter()
        .skip_while(|r| !matches!(r.entry, Entry::Query(_)))
        .find(|r| matches!(&r.entry, Entry::Checkpoint(cp) if cp.sig.is_some()))
}

/// Whether line `at` of `lines` is a signed checkpoint.
fn is_signed_checkpoint(lines: &[Vec<u8>], at: usize) -> bool {
    matches!(
        Record::parse(&lines[at]),
        Ok(Record { entry: Entry::Checkpoint(cp), .. }) if cp.sig.is_some()
    )
}

/// With `--pubkey`, the records after the last signed checkpoint (what a live log, or one a
/// crash cut, ends in) must be timed within 30 s of it, either way. The writer keeps to that:
/// a record timed far after its last signature gets a signed checkpoint before it (here the
/// first query of a run on a log that ends signed: this run has signed nothing yet), and one
/// timed far before it (a late answer), or after the clock itself (queued before the clock
/// was set back; arrival times in the future stand for it), one ending its batch.
#[test]
fn the_unsigned_tail_is_the_records_within_the_tolerance_of_the_last_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_settings(tmp.path(), 1);
    let now = std::time::SystemTime::now();
    let query_at = |secs: u64| query_timed(now + Duration::from_secs(secs), "quiet.example.");
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    handle.record(query_at(0));
    writer.shutdown().unwrap();
    let before = all_records(&settings.dir).len() as u64;
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    handle.record(query_at(0));
    // The periodic checkpoint after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let signed_seq = loop {
        let signed = all_records(&settings.dir).into_iter().find(|r| {
            r.seq > before + 2 && matches!(&r.entry, Entry::Checkpoint(cp) if cp.sig.is_some())
        });
        if let Some(signed) = signed {
            break signed.seq;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (_, lines, at) = find_line(&settings.dir, before + 2);
    assert!(
        String::from_utf8_lossy(&lines[at]).contains("\"type\":\"query\""),
        "the second run's query"
    );
    assert!(is_signed_checkpoint(&lines, at - 1), "signed for before it");
    // One hand-over, so no timed checkpoint falls between them.
    handle.record_batch(&mut vec![query_at(40), query_at(80)]);
    writer.shutdown().unwrap();
    let report = audit::verify(&settings.dir, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
    let (path, lines, at) = find_line(&settings.dir, signed_seq + 1);
    assert!(
        is_signed_checkpoint(&lines, at + 2),
        "their batch ends signed"
    );
    // Cut after the first (a crash): it is timed 40 s after the last signature.
    write_lines(&path, &lines[..at + 1]);
    let report = audit::verify(&settings.dir, Some(&public)).unwrap();
    let failure = report.failure.expect("an unsigned tail");
    assert_eq!(
        failure.kind,
        FailureKind::MissingSignature {
            reason: MissingSignature::UnsignedTail
        }
    );
    let offset: usize = lines[..at].iter().map(Vec::len).sum();
    assert_eq!(
        (failure.spot.file, failure.spot.seq, failure.spot.offset),
        (path.clone(), Some(signed_seq + 1), offset as u64)
    );

    // A record timed a minute before the last signature (a query whose upstream answered
    // late): its batch ends in a signature; left unsigned, it fails as backdated.
    let held = AuditSettings {
        dir: tmp.path().join("held"),
        ..settings.clone()
    };
    let (handle, writer) = AuditLog::open(&held, InstanceId::random()).unwrap();
    handle.record(query_at(0));
    let signed_seq = wait_for_signed_checkpoint_after_a_query(&held.dir).seq;
    let mut late = query_at(1);
    late.time = now - Duration::from_secs(60);
    handle.record_batch(&mut vec![late, query_at(1)]);
    writer.shutdown().unwrap();
    let report = audit::verify(&held.dir, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
    let (path, lines, at_late) = find_line(&held.dir, signed_seq + 1);
    assert!(
        is_signed_checkpoint(&lines, at_late + 2),
        "the batch ends signed"
    );
    write_lines(&path, &lines[..at_late + 2]);
    let report = audit::verify(&held.dir, Some(&public)).unwrap();
    let failure = report.failure.expect("a backdated unsigned record");
    assert_eq!(
        failure.kind,
        FailureKind::MissingSignature {
            reason: MissingSignature::BackdatedTail
        }
    );
    assert_eq!(failure.spot.seq, Some(signed_seq + 1));
}

/// What `search` shows on a terminal cannot move its cursor or start a row of its own: control
/// characters in stored values (an answer written before answers were escaped, a path) are
/// shown escaped. A CSV export keeps the stored lines byte for byte, DEL and C1 characters
/// (which JSON leaves raw) too, so it verifies.
#[test]
fn control_characters_are_escaped_on_screen_and_kept_in_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    handle.service(ServiceEvent::Start {
        version: "test".into(),
        config: "config\u{7f}/\u{85}dnsward.toml".into(),
    });
    let mut query = query_record(
        std::time::SystemTime::now(),
        "192.0.2.1:5300".parse().unwrap(),
        "udp",
        "evil.example.",
        RecordType::HINFO,
        false,
        100,
    );
    query.answer = dnsward::policy::decision::AnswerText::new(&std::sync::Arc::from(
        "HINFO x\n2026-12-02T10:00:00.000000Z  10.9.9.9:5353  innocent.example.  A  \
         allowed \u{1b}[31mRED\u{9b}0m",
    ));
    handle.record(query);
    writer.shutdown().unwrap();

    let mut out = Vec::new();
    let search = AuditCommand::Search {
        dir: DirArg { dir: None },
        range: RangeArgs {
            since: None,
            from: None,
            to: None,
        },
        client: None,
        domain: None,
        qtype: None,
        decision: None,
        list: None,
        limit: None,
        follow: false,
        json: false,
        csv: false,
    };
    assert!(audit::cli::run(search, &settings, &mut out).unwrap());
    let table = String::from_utf8(out).unwrap();
    assert_eq!(table.lines().count(), 2, "a heading and one row: {table}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
    assert!(
        table.contains("HINFO x\\n2026-12-02T10:00:00.000000Z") && table.contains("\\u{1b}[31m"),
        "{table}"
    );

    let exports = tempfile::tempdir().unwrap();
    let csv = exports.path().join("all.csv");
    export_file(tmp.path(), ExportFormat::Csv, &TimeRange::default(), &csv);
    assert!(
        std::fs::read_to_string(&csv)
            .unwrap()
            .contains("config\u{7f}/\u{85}dnsward")
    );
    let report = audit::verify(&csv, None).unwrap();
    assert!(report.ok(), "{report}");
}

/// Crafted seqs at the ends of the range fail as damage: a chain cannot go on past the last
/// seq (it wrapped to 0 and verified), and no header can start at seq 0 (its records' seq
/// then underflowed).
#[test]
fn seqs_past_the_ends_of_the_range_are_damage() {
    use audit::segment::{Header, HeaderKind, encode_record};
    let stop = Entry::Stop {
        records: 0,
        dropped: 0,
    };
    let crafted = |first_seq: u64, seqs: &[u64]| {
        let dir = tempfile::tempdir().unwrap();
        let start = [7u8; 32];
        let mut bytes = Vec::new();
        Header::new(HeaderKind::Segment, first_seq, &start, "i1")
            .encode(&mut bytes)
            .unwrap();
        let mut head = start;
        for &seq in seqs {
            head = encode_record(&mut bytes, seq, &head, Timestamp::now(), "i1", &stop).unwrap();
        }
        std::fs::write(dir.path().join(segment::segment_name(first_seq)), &bytes).unwrap();
        let report = audit::verify(dir.path(), None).unwrap();
        (dir, report)
    };
    let (_dir, intact) = crafted(u64::MAX - 1, &[u64::MAX - 1]);
    assert!(intact.ok(), "{intact}");
    let (_dir, wrapped) = crafted(u64::MAX - 1, &[u64::MAX - 1, u64::MAX, 0]);
    let failure = wrapped
        .failure
        .clone()
        .expect("no record after the last seq");
    assert_eq!(failure.spot.seq, Some(u64::MAX), "{wrapped}");
    let (_dir, from_zero) = crafted(0, &[0, 1]);
    assert!(!from_zero.ok(), "{from_zero}");
}

/// Settings for a log in `log` signed with `key`.
fn signed_log_settings(log: &Path, key: &Path) -> AuditSettings {
    AuditSettings {
        signing_key: Some(key.to_owned()),
        ..settings(log)
    }
}

/// Two key pairs, `a` and `b`, in `dir`: (private, public) each.
fn two_key_pairs(dir: &Path) -> ((PathBuf, PathBuf), (PathBuf, PathBuf)) {
    (
        keys::keygen(&dir.join("a")).unwrap(),
        keys::keygen(&dir.join("b")).unwrap(),
    )
}

/// Without `--pubkey`, `verify` names the keys that signed and warns when the key changed or
/// signing stopped: a log re-chained without the key from some point on passed as a plain OK.
#[test]
fn verify_names_the_signing_keys_and_warns_when_signing_changes_or_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let ((key_a, public_a), (key_b, public_b)) = two_key_pairs(tmp.path());
    let log = tmp.path().join("log");
    let signed_by = |key: &PathBuf| signed_log_settings(&log, key);
    write_log(&signed_by(&key_a), 0, 10);
    let report = audit::verify(&log, None).unwrap();
    assert!(report.ok(), "{report}");
    let hex_a = std::fs::read_to_string(&public_a)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(report.signing_keys.len(), 1);
    assert_eq!(report.signing_keys[0].key, hex_a);
    assert!(
        report
            .to_string()
            .contains(&format!("signed by key {hex_a}")),
        "{report}"
    );
    assert!(!report.to_string().contains("warning"), "{report}");

    write_log(&signed_by(&key_b), 10, 10);
    write_log(&settings(&log), 20, 10);
    let first_unsigned = all_records(&log)
        .into_iter()
        .find(|r| matches!(&r.entry, Entry::Checkpoint(cp) if cp.sig.is_none()))
        .unwrap()
        .seq;
    let report = audit::verify(&log, None).unwrap();
    assert!(report.ok(), "{report}");
    let hex_b = std::fs::read_to_string(&public_b)
        .unwrap()
        .trim()
        .to_owned();
    let keys: Vec<&str> = report.signing_keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, [hex_a.as_str(), hex_b.as_str()]);
    assert_eq!(report.unsigned_after_signed, Some(first_unsigned));
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "warning: the signing key changed at seq {}",
            report.signing_keys[1].first_seq
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "warning: checkpoints are unsigned from seq {first_unsigned} on"
        )),
        "{text}"
    );
}

/// A key change: the auditor who holds both public keys verifies the whole log by giving both;
/// with either one alone, the checkpoints of the other fail as signed by another key.
#[test]
fn a_log_signed_by_two_keys_verifies_with_both_given() {
    let tmp = tempfile::tempdir().unwrap();
    let ((key_a, public_a), (key_b, public_b)) = two_key_pairs(tmp.path());
    let log = tmp.path().join("log");
    let signed_by = |key: &PathBuf| signed_log_settings(&log, key);
    write_log(&signed_by(&key_a), 0, 10);
    write_log(&signed_by(&key_b), 10, 10);
    let report = audit::verify_signed_by(&log, &[&public_a, &public_b]).unwrap();
    assert!(report.ok(), "{report}");
    assert!(matches!(report.signatures, Signatures::Verified { .. }));
    assert_eq!(report.signing_keys.len(), 2);
    let text = report.to_string();
    assert!(
        text.contains("note: the signing key changed at seq"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
    // Given in the other order, the same.
    assert!(
        audit::verify_signed_by(&log, &[&public_b, &public_a])
            .unwrap()
            .ok()
    );
    for (alone, other) in [(&public_a, 1), (&public_b, 0)] {
        let report = audit::verify_signed_by(&log, &[alone]).unwrap();
        let failure = report.failure.as_ref().expect("a failure");
        assert_eq!(
            failure.kind,
            FailureKind::OtherKey {
                private_key_given: None
            },
            "{report}"
        );
        // The first checkpoint of the key not given.
        let spot = failure.spot.seq.unwrap();
        let first_of_other = report_keys_first_seq(&log, other);
        assert_eq!(spot, first_of_other, "{report}");
    }
    // The first key signing again after the second replaced it: verified, with a warning.
    write_log(&signed_by(&key_a), 20, 10);
    let report = audit::verify_signed_by(&log, &[&public_a, &public_b]).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.signing_keys.len(), 3);
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "warning: from seq {} the log is signed again by key",
            report.signing_keys[2].first_seq
        )),
        "{text}"
    );
    // And again: each warning cites the run of that key just before (A, B, A, B, A).
    write_log(&signed_by(&key_b), 30, 10);
    write_log(&signed_by(&key_a), 40, 10);
    let report = audit::verify_signed_by(&log, &[&public_a, &public_b]).unwrap();
    let runs = &report.signing_keys;
    assert_eq!(runs.len(), 5);
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "from seq {} the log is signed again by key {}, which signed up to seq {} ",
            runs[4].first_seq, runs[4].key, runs[2].last_seq
        )),
        "{text}"
    );
    // A secret given among the public keys is named as that argument.
    let error = audit::verify_signed_by(&log, &[&public_a, &key_b])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--pubkey") && error.contains(&key_b.display().to_string()),
        "{error}"
    );
}

/// The first checkpoint seq signed by the `index`-th key in chain order.
fn report_keys_first_seq(log: &Path, index: usize) -> u64 {
    audit::verify(log, None).unwrap().signing_keys[index].first_seq
}

/// Exports `range` of the log in `dir` as JSON lines and as CSV, and verifies each with
/// `public`: the two reports, each checked to pass.
fn verified_range_exports(
    dir: &Path,
    range: &TimeRange,
    public: &Path,
) -> Vec<audit::VerifyReport> {
    let exports = tempfile::tempdir().unwrap();
    [ExportFormat::Jsonl, ExportFormat::Csv]
        .into_iter()
        .map(|format| {
            let path = exports.path().join(format!("{format:?}"));
            export_file(dir, format, range, &path);
            let report = audit::verify(&path, Some(public)).unwrap();
            assert!(report.ok(), "{format:?}: {report}");
            report
        })
        .collect()
}

/// A range export of a signed log runs on through the next signed checkpoint (seconds after
/// the range), so every record in it is covered by a signature: an export of a range without
/// a checkpoint inside failed `verify --pubkey` as unsigned, and one ending between two
/// checkpoints left its last records unsigned.
#[test]
fn a_range_export_runs_on_to_the_next_signed_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_settings(tmp.path(), 1);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    let start = std::time::SystemTime::now();
    let query_at = |ms: u64| query_timed(start + Duration::from_millis(ms), "range.example.");
    handle.record_batch(&mut (0..5).map(query_at).collect());
    let checkpoint = wait_for_signed_checkpoint_after_a_query(&settings.dir);
    handle.record_batch(&mut (5..10).map(query_at).collect());
    writer.shutdown().unwrap();

    let at = |ms: u64| Timestamp::from_system_time(start + Duration::from_millis(ms));
    let range = TimeRange {
        from: Some(at(1)),
        to: Some(at(3)),
    };
    let records = all_records(&settings.dir);
    let in_range: Vec<u64> = records
        .iter()
        .filter(|r| range.contains(r.time) && matches!(r.entry, Entry::Query(_)))
        .map(|r| r.seq)
        .collect();
    assert_eq!(in_range.len(), 2);
    for report in verified_range_exports(&settings.dir, &range, &public) {
        assert_eq!(report.first_seq, Some(in_range[0]));
        assert_eq!(report.last_seq, Some(checkpoint.seq), "{report}");
        assert_eq!(report.last_signed_checkpoint.unwrap().seq, checkpoint.seq);
    }
}

/// Copies the files of a log directory (a live log as a crash would leave it).
fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for path in segments(from) {
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// A signing writer signs the head it continues from before it writes a record: a log that
/// crashed in its first seconds, and one that crashed again after a restart, verify with
/// `--pubkey`. Before it signed at start, the first failed as unsigned (no checkpoint yet).
#[test]
fn a_signing_writer_signs_the_head_it_starts_from() {
    let tmp = tempfile::tempdir().unwrap();
    // No periodic checkpoint during the test.
    let (settings, public) = signed_settings(tmp.path(), 20);
    let now = std::time::SystemTime::now();
    let query_at = |secs: u64| query_timed(now + Duration::from_secs(secs), "crash.example.");
    // Runs a writer on `dir`, records one query timed `secs` from now, and copies the log to
    // `crashed` as soon as the query is written: what a kill -9 then would leave.
    let run_and_crash = |dir: &Path, secs: u64, crashed: &Path| {
        let (handle, writer) = AuditLog::open(
            &AuditSettings {
                dir: dir.to_owned(),
                ..settings.clone()
            },
            InstanceId::random(),
        )
        .unwrap();
        let before = query_records_in(dir);
        handle.record(query_at(secs));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while query_records_in(dir) == before {
            assert!(std::time::Instant::now() < deadline, "the query is written");
            std::thread::sleep(Duration::from_millis(10));
        }
        copy_log(dir, crashed);
        writer.shutdown().unwrap();
    };

    let first = tmp.path().join("first");
    run_and_crash(&settings.dir, 0, &first);
    let report = audit::verify(&first, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");

    let second = tmp.path().join("second");
    run_and_crash(&first, 1, &second);
    let report = audit::verify(&second, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(query_records_in(&second), 2);
}

/// Pages of `path` in the page cache not yet written to disk (Linux `cachestat`, 6.5 and
/// later).
#[allow(unsafe_code)]
fn dirty_pages(path: &Path) -> u64 {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        offset: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = std::fs::File::open(path).unwrap();
    let range = Range { offset: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: both pointers are to live values of the layout the system call defines.
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    assert_eq!(result, 0, "cachestat: {}", std::io::Error::last_os_error());
    stat.dirty + stat.writeback
}

/// A restart continues the chain from the last record a crashed writer left, so that record
/// is made durable first: the crashed run's last writes may still be only in the page cache,
/// and a power cut after the new run's first sync would leave a hole in the chain.
#[test]
fn a_restart_syncs_the_segment_it_continues() {
    // A disk file system (a tmpfs keeps every page dirty).
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = tmp.path().join("log");
    write_log(&settings(&log), 0, 20);
    // As a crash leaves it: the last segment rewritten without its stop record and closing
    // checkpoint, and not synced.
    let last = segments(&log).pop().unwrap();
    let text = std::fs::read_to_string(&last).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    std::fs::remove_file(&last).unwrap();
    std::fs::write(&last, lines[..lines.len() - 2].concat()).unwrap();
    // The kernel writes dirty pages back by itself after 30 s, or sooner under memory
    // pressure; if it already has, this run cannot show the sync (and does not fail for it).
    let dirty_before = dirty_pages(&last);

    let (_handle, writer) = AuditLog::open(&settings(&log), InstanceId::random()).unwrap();
    assert_eq!(
        dirty_pages(&last),
        0,
        "of {dirty_before} dirty before the restart"
    );
    if dirty_before == 0 {
        eprintln!("note: the crashed segment was written back before the restart");
    }
    writer.shutdown().unwrap();
    assert!(audit::verify(&log, None).unwrap().ok());
}

/// A leftover header-only segment that cannot be removed at start (a read-only or failing
/// disk) starts the writer in an outage, like a failed write, instead of refusing to start: the
/// queries meanwhile are counted, and once the directory can be changed again the chain goes on
/// with a gap record.
#[test]
fn a_leftover_segment_that_cannot_be_removed_is_an_outage_not_a_refusal() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = tmp.path().join("log");
    let stats = write_log(&settings(&log), 0, 5);
    // What a restart that died right after writing its new segment's header leaves.
    let last = all_records(&log).pop().unwrap();
    let mut header = Vec::new();
    segment::Header::new(
        segment::HeaderKind::Segment,
        stats.last_seq + 1,
        &segment::decode_hash(last.hash.as_bytes()).unwrap(),
        "crashed",
    )
    .encode(&mut header)
    .unwrap();
    let leftover = log.join(segment::segment_name(stats.last_seq + 1));
    std::fs::write(&leftover, header).unwrap();

    let immutable = Immutable(vec![log.clone()]);
    immutable.set(true);
    let settings = AuditSettings {
        when_unwritable: audit::WhenUnwritable::Refuse,
        ..settings(&log)
    };
    let (handle, writer) =
        AuditLog::open(&settings, InstanceId::random()).expect("starts in an outage, not refused");
    assert!(handle.refusing(), "the log cannot be written yet");
    counted_then_continued(&log, &handle, writer, &immutable);
}

/// Files or directories made immutable (`chattr +i`: writes, and changes to a directory's
/// entries, refused as on a read-only mount) for as long as this lives.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(&self, on: bool) {
        let status = std::process::Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .args(&self.0)
            .status()
            .expect("chattr (e2fsprogs) runs");
        assert!(status.success(), "chattr on {:?}", self.0);
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// A writer that cannot write its log counts a query handed to it; once `immutable` is lifted,
/// its retry continues the log, which verifies with that query in one gap record.
fn counted_then_continued(
    log: &Path,
    handle: &audit::AuditHandle,
    writer: audit::AuditWriter,
    immutable: &Immutable,
) {
    handle.record(decision(100));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handle.dropped() == 0 {
        assert!(std::time::Instant::now() < deadline, "the query is counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(handle.refusing(), "the log cannot be written yet");
    immutable.set(false);
    while handle.refusing() {
        assert!(
            std::time::Instant::now() < deadline,
            "the retry continues the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.shutdown().unwrap();
    let report = audit::verify(log, None).unwrap();
    assert!(report.ok(), "{report}");
    let gaps: u64 = all_records(log)
        .iter()
        .filter_map(|r| match r.entry {
            Entry::Gap { dropped, .. } => Some(dropped),
            _ => None,
        })
        .sum();
    assert_eq!(gaps, 1);
}

/// A segment that cannot be read at start (here a directory where the file should be; as
/// well, a file left unreadable by a run as another user) still stops the writer from starting:
/// only a log that cannot be changed for now is taken for an outage.
#[test]
fn a_segment_that_cannot_be_read_at_start_is_a_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let stats = write_log(&settings(&log), 0, 5);
    let unreadable = log.join(segment::segment_name(stats.last_seq + 1));
    std::fs::create_dir(&unreadable).unwrap();
    let error = AuditLog::open(&settings(&log), InstanceId::random())
        .map(|_| ())
        .expect_err("refused");
    assert!(
        error
            .to_string()
            .contains(&unreadable.display().to_string()),
        "{error}"
    );
}

/// The records of a range just before a crash are signed by the checkpoint the restarted
/// writer signs first, however much later that is: a range export runs on through it, and
/// verifies with `--pubkey`.
#[test]
fn a_range_export_before_a_crash_runs_on_to_the_restarts_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_settings(tmp.path(), 20);
    // Timed two minutes ago: the restart's checkpoint comes long after them.
    let start = std::time::SystemTime::now() - Duration::from_secs(120);
    let query_at = |ms: u64| query_timed(start + Duration::from_millis(ms), "crash.example.");
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    handle.record_batch(&mut (0..4).map(query_at).collect());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while query_records_in(&settings.dir) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queries are written"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let crashed = tmp.path().join("crashed");
    copy_log(&settings.dir, &crashed);
    writer.shutdown().unwrap();
    let restarted = AuditSettings {
        dir: crashed.clone(),
        ..settings.clone()
    };
    let (_handle, writer) = AuditLog::open(&restarted, InstanceId::random()).unwrap();
    writer.shutdown().unwrap();

    let at = |ms: u64| Timestamp::from_system_time(start + Duration::from_millis(ms));
    let range = TimeRange {
        from: Some(at(1)),
        to: Some(at(3)),
    };
    let exports = tempfile::tempdir().unwrap();
    let path = exports.path().join("before-the-crash.jsonl");
    export_file(&crashed, ExportFormat::Jsonl, &range, &path);
    let report = audit::verify(&path, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
    let signed = report.last_signed_checkpoint.unwrap();
    assert_eq!(report.last_seq, Some(signed.seq));
    assert!(signed.time > at(60_000), "the restart's checkpoint");
}

/// A checkpoint's time range and line count, which searches and summaries use to skip a
/// closed segment and which its signature does not cover, must match the segment's records:
/// a closing checkpoint rewritten (with its line's hash) to a range that hides the segment
/// from a time-range search passed `verify --pubkey`.
#[test]
fn a_checkpoint_stating_another_time_range_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 50);
    let last = segments(&settings.dir).pop().unwrap();
    let text = std::fs::read_to_string(&last).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let closing = Record::parse(lines.last().unwrap().as_bytes()).unwrap();
    let Entry::Checkpoint(cp) = &closing.entry else {
        panic!("the segment ends in its closing checkpoint");
    };
    assert!(cp.close);
    let before = Record::parse(lines[lines.len() - 2].as_bytes()).unwrap();
    let prev = segment::decode_hash(before.hash.as_bytes()).unwrap();
    let long_ago = "2001-01-01T00:00:00.000000Z";
    let edited = lines
        .last()
        .unwrap()
        .replace(&cp.min_time.unwrap().to_string(), long_ago)
        .replace(&cp.max_time.unwrap().to_string(), long_ago);
    let (body, _) = segment::split_hash(edited.as_bytes()).unwrap();
    let hash = segment::recompute(&prev, body);
    let body = String::from_utf8(body.to_vec()).unwrap();
    *lines.last_mut().unwrap() = format!("{body},\"hash\":\"{}\"}}", hex::encode(hash));
    std::fs::write(&last, lines.join("\n") + "\n").unwrap();
    assert!(
        std::fs::read_to_string(&last).unwrap().contains(long_ago),
        "edited"
    );

    let report = audit::verify(&settings.dir, Some(&public)).unwrap();
    let failure = report.failure.expect("the checkpoint no longer matches");
    assert_eq!(failure.kind, FailureKind::Modified);
    assert_eq!(
        (failure.spot.file, failure.spot.seq),
        (last, Some(closing.seq))
    );
}

/// `audit search` into a pipe whose reader has gone (`| head -1`) ends as a normal end: a
/// plain search exits 0 without an error message (it said "Broken pipe" and exited 1), and
/// `--follow` with a filter that matches nothing more ends when it is next idle (it waited for
/// a match to write, forever).
#[test]
fn search_ends_quietly_when_its_reader_goes() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 500);
    let dir = tmp.path().to_str().unwrap();
    let search = |extra: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dnsward"))
            .args(["audit", "search", "--dir", dir])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Gone before anything could be written.
        drop(child.stdout.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("`audit search {extra:?}` did not end when its reader went");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    for extra in [
        &["--json"][..],
        &["--follow", "--json", "--domain", "=nothing.example"][..],
    ] {
        let output = search(extra);
        assert!(
            output.status.success(),
            "{extra:?}: {:?} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A segment's stated time range covers the losses its gap records count (they began before
/// the gap record could be written), so a range search or summary of that time reads the
/// segment; `verify` accepts a stated range wider than the records' own times.
#[test]
fn a_segment_range_covers_the_losses_of_its_gap_records() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = two_slot_queue(tmp.path());
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    // Timed an hour ahead, so only the losses and the writer's own records are timed now.
    let ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
    for _ in 0..20_000 {
        handle.record(query_timed(ahead, "burst.example."));
    }
    writer.shutdown().unwrap();
    assert!(handle.dropped() > 0, "the burst overflowed the queue");
    for path in segments(tmp.path()) {
        let records = all_records_of(&path);
        let Some(Entry::Checkpoint(closing)) = records.last().map(|r| &r.entry) else {
            panic!("a closed segment");
        };
        for record in &records {
            if let Entry::Gap { first, .. } = &record.entry {
                assert!(
                    closing.min_time.is_some_and(|min| min <= *first),
                    "{:?} does not cover a gap from {first}",
                    closing.min_time
                );
            }
        }
    }
    assert!(audit::verify(tmp.path(), None).unwrap().ok());
}

fn all_records_of(path: &Path) -> Vec<Record> {
    std::fs::read(path)
        .unwrap()
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| Record::parse(line).ok())
        .collect()
}

/// Runs `dnsward audit ARGS` with standard output `stdout`; returns its output once it ends.
fn run_audit(args: &[&str], stdout: std::process::Stdio) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dnsward"))
        .arg("audit")
        .args(args)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

/// `export --output /dev/stdout` is the export and nothing else, into a pipe or a file given
/// as standard output (written into, never replaced); `verify` whose reader has gone still
/// answers by its exit status.
#[test]
fn exports_to_standard_output_and_verify_into_a_closed_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 50);
    let dir = tmp.path().to_str().unwrap();
    let export = ["export", "--dir", dir, "--output", "/dev/stdout"];

    let piped = run_audit(&export, std::process::Stdio::piped());
    assert!(piped.status.success(), "{piped:?}");
    let exports = tempfile::tempdir().unwrap();
    let copy = exports.path().join("copy.jsonl");
    std::fs::write(&copy, &piped.stdout).unwrap();
    let report = audit::verify(&copy, None).unwrap();
    assert!(report.ok(), "nothing after the end line: {report}");

    let log = exports.path().join("session.log");
    std::fs::write(&log, "earlier output\n").unwrap();
    let into_file = run_audit(
        &export,
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .into(),
    );
    assert!(into_file.status.success(), "{into_file:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("earlier output\n{\"format\":\"dnsward-audit\""),
        "{text:.200}"
    );

    let dangling = exports.path().join("dangling.jsonl");
    std::os::unix::fs::symlink(exports.path().join("nowhere"), &dangling).unwrap();
    let refused = run_audit(
        &[
            "export",
            "--dir",
            dir,
            "--output",
            dangling.to_str().unwrap(),
        ],
        std::process::Stdio::piped(),
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("symbolic link to nothing"));

    // Damaged, and its reader gone before the verdict was printed: still exit 1.
    let (path, mut lines, i) = find_line(tmp.path(), 20);
    lines.remove(i);
    write_lines(&path, &lines);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dnsward"))
        .args(["audit", "verify", "--dir", dir])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

/// A wrong command line exits 2 with a message naming the argument, never 1 (verify's "the log
/// failed"); `--limit 0`, a `--since` outside the documented units (`30M` would be months to a
/// general parser) and `--since` with `--from` are refused; `-o -` is standard output.
#[test]
fn bad_arguments_exit_2_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 20);
    let dir = tmp.path().to_str().unwrap();
    let missing_key = tmp.path().join("typo.pub");
    // A path named on the command line that is not there is a typo, not a failed log.
    let missing = tmp.path().join("typo.jsonl");
    let missing = missing.to_str().unwrap();
    let missing_dir = tmp.path().join("no-such-dir");
    let missing_dir = missing_dir.to_str().unwrap();
    let into_missing_dir = format!("{missing_dir}/export.jsonl");
    let dangling = tmp.path().join("dangling.jsonl");
    std::os::unix::fs::symlink(tmp.path().join("gone.jsonl"), &dangling).unwrap();
    let dangling = dangling.to_str().unwrap();
    let refused: [(&[&str], &str); 13] = [
        (&["verify", missing], "PATH: "),
        (&["verify", dangling], "PATH: "),
        (&["verify", "--dir", missing_dir], "--dir: "),
        (&["search", "--dir", missing_dir], "--dir: "),
        (&["summary", "--dir", missing_dir], "--dir: "),
        (
            &["export", "--dir", dir, "-o", &into_missing_dir],
            "--output: ",
        ),
        (
            &[
                "verify",
                "--dir",
                dir,
                "--pubkey",
                missing_key.to_str().unwrap(),
            ],
            "--pubkey",
        ),
        (&["search", "--dir", dir, "--limit", "0"], "--limit"),
        (&["search", "--dir", dir, "--since", "30M"], "--since"),
        (&["search", "--dir", dir, "--since", "1.5h"], "--since"),
        (&["summary", "--dir", dir, "--since", "-1h"], "--since"),
        (
            &[
                "search",
                "--dir",
                dir,
                "--since",
                "2h",
                "--from",
                "2026-01-01T00:00:00Z",
            ],
            "--since",
        ),
        (
            &[
                "search",
                "--dir",
                dir,
                "--from",
                "2026-01-02T00:00:00Z",
                "--to",
                "2026-01-01T00:00:00Z",
            ],
            "--from",
        ),
    ];
    for (args, flag) in refused {
        let output = run_audit(args, std::process::Stdio::piped());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?} names {flag}: {stderr}");
    }
    // The configured directory gone missing is no typo: the log failed (exit 1).
    let config = tmp.path().join("gone.toml");
    std::fs::write(&config, format!("[audit]\ndir = \"{missing_dir}\"\n")).unwrap();
    let gone = std::process::Command::new(env!("CARGO_BIN_EXE_dnsward"))
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    // Weeks are a documented unit (the records here are from long ago: none in the window).
    let weeks = run_audit(
        &["search", "--dir", dir, "--since", "2w"],
        std::process::Stdio::piped(),
    );
    assert!(weeks.status.success(), "{weeks:?}");

    let export = run_audit(
        &["export", "--dir", dir, "-o", "-"],
        std::process::Stdio::piped(),
    );
    assert!(export.status.success(), "{export:?}");
    assert!(!tmp.path().join("-").exists() && !std::path::Path::new("-").exists());
    let file = tmp.path().join("stdout.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    let report = audit::verify(&file, None).unwrap();
    assert!(report.ok(), "{report}");
}

/// The attack: cut the first records of the oldest segment, restate its header's chain start,
/// and call the file an export with an end line (all computable without the key). As an
/// export, its checkpoints' record counts were not checked, and `verify --pubkey` passed. A
/// file of a log directory is a segment.
#[test]
fn a_segment_that_calls_itself_an_export_is_modified() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 300);
    let log = settings.dir;
    assert!(audit::verify(&log, Some(&public)).unwrap().ok());
    let oldest = segments(&log).remove(0);
    let data = std::fs::read(&oldest).unwrap();
    let mut lines: Vec<Vec<u8>> = data
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let cut = 5;
    let (_, last_cut) = segment::split_hash(lines[cut].strip_suffix(b"\n").unwrap()).unwrap();
    let mut header = segment::Header::parse(lines[0].strip_suffix(b"\n").unwrap()).unwrap();
    header.kind = segment::HeaderKind::Export;
    header.first_seq += cut as u64;
    header.prev_segment_last_hash = hex::encode(last_cut);
    let mut header_line = Vec::new();
    header.encode(&mut header_line).unwrap();
    lines.drain(..=cut);
    let records = lines.len() as u64;
    let last = Record::parse(lines.last().unwrap()).unwrap();
    let (_, last_hash) =
        segment::split_hash(lines.last().unwrap().strip_suffix(b"\n").unwrap()).unwrap();
    let end = segment::ExportEnd::new(records, last.seq, &last_hash).to_line();
    lines.insert(0, header_line);
    lines.push(format!("{end}\n").into_bytes());
    std::fs::remove_file(&oldest).unwrap();
    let renamed = log.join(segment::segment_name(header.first_seq));
    write_lines(&renamed, &lines);
    let report = audit::verify(&log, Some(&public)).unwrap();
    let failure = report.failure.clone().expect("the cut is found");
    assert_eq!(failure.kind, FailureKind::Modified, "{report}");
    assert_eq!((failure.spot.file, failure.spot.offset), (renamed, 0));
}

/// A header that declares a torn line the segment before it does not have is a modified
/// header (it passed, and `verify` reported a crash recovery that never happened).
#[test]
fn a_torn_tail_declared_without_a_torn_line_is_a_modified_header() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 300);
    let log = settings.dir;
    let files = segments(&log);
    assert!(files.len() >= 2, "{files:?}");
    let (before, after) = (&files[0], &files[1]);
    let data = std::fs::read(after).unwrap();
    let mut lines: Vec<Vec<u8>> = data
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let mut header = segment::Header::parse(lines[0].strip_suffix(b"\n").unwrap()).unwrap();
    header.torn_tail = Some(segment::TornTail {
        segment: file_name(before),
        offset: 100,
    });
    let mut header_line = Vec::new();
    header.encode(&mut header_line).unwrap();
    lines[0] = header_line;
    write_lines(after, &lines);
    let report = audit::verify(&log, Some(&public)).unwrap();
    let failure = report.failure.clone().expect("the declaration is found");
    assert_eq!(failure.kind, FailureKind::ModifiedHeader, "{report}");
    assert_eq!(&failure.spot.file, after);
}

/// A record's seq edited in place (nothing deleted or inserted: the next record follows it)
/// is a modified record at that place, not "20 records deleted" or "inserted".
#[test]
fn an_edited_seq_is_a_modified_record() {
    for edited in ["125", "104"] {
        let failure = tamper(105, |lines, i| {
            let line = String::from_utf8(lines[i].clone()).unwrap();
            lines[i] = line
                .replace("\"seq\":105,", &format!("\"seq\":{edited},"))
                .into_bytes();
        });
        assert_eq!(
            failure.kind,
            FailureKind::Modified,
            "seq 105 edited to {edited}"
        );
        assert_eq!(failure.spot.seq, Some(105), "seq 105 edited to {edited}");
    }
}

/// A CSV export whose first record row has a rendered column edited is modified there, as any
/// later row is (it was reported as not an export at all).
#[test]
fn an_edited_first_csv_row_is_modified() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(&settings(tmp.path()), 0, 20);
    let exports = tempfile::tempdir().unwrap();
    let csv = exports.path().join("all.csv");
    export_file(tmp.path(), ExportFormat::Csv, &TimeRange::default(), &csv);
    assert!(audit::verify(&csv, None).unwrap().ok());
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut rows: Vec<String> = text.lines().map(str::to_owned).collect();
    for row in [1, 2] {
        let mut fields: Vec<&str> = rows[row].splitn(3, ',').collect();
        let time = fields[1].replacen("20", "19", 1);
        fields[1] = &time;
        let edited = fields.join(",");
        let original = std::mem::replace(&mut rows[row], edited);
        std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
        let report = audit::verify(&csv, None).unwrap();
        let failure = report.failure.clone().expect("the edit is found");
        assert_eq!(failure.kind, FailureKind::Modified, "row {row}: {report}");
        rows[row] = original;
    }
}

/// A query record appended after the last signed checkpoint without the key, dated a week
/// back so that a search of that week finds it: within the 30 s an unsigned tail may span
/// (it is before the signature), it passed `verify --pubkey`.
#[test]
fn a_backdated_record_after_the_last_signature_fails_with_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_log(tmp.path(), 50);
    let log = settings.dir;
    assert!(audit::verify(&log, Some(&public)).unwrap().ok());
    let last_segment = segments(&log).pop().unwrap();
    let data = std::fs::read(&last_segment).unwrap();
    let last_line = data[..data.len() - 1]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap();
    let (_, head) = segment::split_hash(last_line).unwrap();
    let next_seq = Record::parse(last_line).unwrap().seq + 1;
    let mut bytes = Vec::new();
    segment::Header::new(segment::HeaderKind::Segment, next_seq, &head, "forged")
        .encode(&mut bytes)
        .unwrap();
    let week_ago = std::time::SystemTime::now() - Duration::from_secs(7 * 86_400);
    let forged = query_record(
        week_ago,
        "192.0.2.66:5353".parse().unwrap(),
        "udp",
        "innocent.example.",
        RecordType::A,
        false,
        7,
    );
    segment::encode_line(
        &mut bytes,
        next_seq,
        &head,
        Timestamp::from_system_time(week_ago),
        "forged",
        |out| {
            audit::record::write_query_members(out, &forged, "192.0.2.66:5353");
            Ok(())
        },
    )
    .unwrap();
    let path = log.join(segment::segment_name(next_seq));
    std::fs::write(&path, &bytes).unwrap();
    let report = audit::verify(&log, Some(&public)).unwrap();
    let failure = report.failure.clone().expect("the forged record is found");
    assert_eq!(
        failure.kind,
        FailureKind::MissingSignature {
            reason: MissingSignature::BackdatedTail
        },
        "{report}"
    );
    assert_eq!(
        (failure.spot.file, failure.spot.seq),
        (path, Some(next_seq))
    );
    // Without the key it is the chain's word alone: it verifies (and says the log is signed
    // up to a checkpoint before it).
    assert!(audit::verify(&log, None).unwrap().ok());
}

/// The writer signs a batch holding a record timed far from its last signature at once (here
/// queries of 2025, as a late answer or a clock set back would give): a copy of the live log
/// taken right after they are written verifies with the key. Left unsigned until the next
/// periodic checkpoint, they failed as backdated.
#[test]
fn records_timed_far_from_the_last_signature_are_signed_with_their_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keys::keygen(&tmp.path().join("k")).unwrap();
    let log = tmp.path().join("log");
    let settings = AuditSettings {
        signing_key: Some(key),
        checkpoint_interval_secs: 20,
        ..settings(&log)
    };
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    for i in 0..10 {
        handle.record(decision(i));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while all_records(&log)
        .iter()
        .filter(|record| matches!(record.entry, Entry::Query(_)))
        .count()
        < 10
    {
        assert!(std::time::Instant::now() < deadline, "not written");
        std::thread::sleep(Duration::from_millis(10));
    }
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for path in segments(&log) {
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    writer.shutdown().unwrap();
    let report = audit::verify(&copy, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
}

/// A range export runs on to the signed checkpoint after its last record whatever the times of
/// the records between: here that checkpoint ends a batch of records timed 100 s and 40 s
/// before it was written (a writer that fell behind). The export stopped short of it when a
/// record between was timed over 50 s after the range, and then failed `verify --pubkey`.
#[test]
fn a_range_export_runs_on_to_the_signature_after_a_late_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (settings, public) = signed_settings(tmp.path(), 1);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    let now = std::time::SystemTime::now();
    handle.record(query_timed(now, "now.example."));
    wait_for_signed_checkpoint_after_a_query(&settings.dir);
    handle.record_batch(&mut vec![
        query_timed(now - Duration::from_secs(100), "late.example."),
        query_timed(now - Duration::from_secs(40), "later.example."),
    ]);
    writer.shutdown().unwrap();
    let at = |secs: u64| Timestamp::from_system_time(now - Duration::from_secs(secs));
    let range = TimeRange {
        from: Some(at(101)),
        to: Some(at(99)),
    };
    for report in verified_range_exports(&settings.dir, &range, &public) {
        assert_eq!(
            report.records, 3,
            "the two queries and the signature: {report}"
        );
    }
}

/// A range export of a live log's newest records, which no signature covers yet, starts at
/// the signed checkpoint before them: they are then the unsigned tail a live log ends in, and
/// `verify --pubkey` takes them. Without it the export held no signature and failed as
/// unsigned.
#[test]
fn a_range_export_of_the_newest_records_starts_at_the_signature_before_them() {
    let tmp = tempfile::tempdir().unwrap();
    // No periodic checkpoint during the test.
    let (settings, public) = signed_settings(tmp.path(), 20);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    let now = std::time::SystemTime::now();
    for ms in [0, 1, 2] {
        handle.record(query_timed(
            now + Duration::from_millis(ms),
            "live.example.",
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while query_records_in(&settings.dir) < 3 {
        assert!(std::time::Instant::now() < deadline, "not written");
        std::thread::sleep(Duration::from_millis(10));
    }
    let range = TimeRange {
        from: Some(Timestamp::from_system_time(now + Duration::from_millis(2))),
        to: Some(Timestamp::from_system_time(now + Duration::from_millis(3))),
    };
    for report in verified_range_exports(&settings.dir, &range, &public) {
        assert!(report.last_signed_checkpoint.is_some(), "{report}");
    }
    writer.shutdown().unwrap();
}

/// A restart onto a log that cannot be written at all (a file system mounted read-only: here
/// the directory and every file in it made immutable, which refuses writes the same way)
/// starts in an outage: the lock is taken through a read-only descriptor, queries are counted,
/// and once the disk takes writes again the chain goes on with a gap record. It had refused to
/// start, because the lock file could not be opened for writing.
#[test]
fn a_restart_onto_a_read_only_log_starts_in_an_outage() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = tmp.path().join("log");
    write_log(&settings(&log), 0, 5);
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(paths.iter().any(|path| path.ends_with(".lock")));
    paths.push(log.clone());

    let immutable = Immutable(paths);
    immutable.set(true);
    let settings = AuditSettings {
        when_unwritable: audit::WhenUnwritable::Refuse,
        ..settings(&log)
    };
    let (handle, writer) =
        AuditLog::open(&settings, InstanceId::random()).expect("starts, not refused");
    // A second writer still finds the directory taken.
    let second = AuditLog::open(&settings, InstanceId::random());
    assert!(
        matches!(second, Err(audit::AuditError::InUse { .. })),
        "{second:?}"
    );
    counted_then_continued(&log, &handle, writer, &immutable);
}
