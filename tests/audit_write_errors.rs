//! The audit writer when its files cannot be written. A file size limit (`RLIMIT_FSIZE`) makes
//! writes past it fail with EFBIG, as a full disk makes them fail with ENOSPC; the writer must
//! go on counting, retry, and record every loss in a gap record, with the chain intact. Its own
//! test binary, because the limit applies to the whole process.

use std::time::{Duration, Instant};

use dnsward::audit::{self, AuditLog, AuditSettings, Entry, InstanceId, TimeRange};

mod audit_common;
use audit_common::{all_records, decision, segments};

/// Bytes a file of this process may grow to: a few hundred records.
const FILE_LIMIT: u64 = 128 * 1024;

#[allow(unsafe_code)]
fn limit_file_size(bytes: u64) {
    // SAFETY: plain libc calls with valid arguments. Without SIGXFSZ ignored, the first write
    // past the limit would kill the process instead of failing.
    unsafe {
        assert_ne!(libc::signal(libc::SIGXFSZ, libc::SIG_IGN), libc::SIG_ERR);
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

#[test]
fn failed_writes_are_counted_in_a_gap_record_and_the_chain_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        dir: tmp.path().to_owned(),
        // No size rotation: only the failures start new segments.
        segment_max_bytes: 1 << 30,
        fsync_interval_ms: 0,
        ..AuditSettings::default()
    };
    limit_file_size(FILE_LIMIT);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    // Far more than a file may hold: a write fails, and what it held is lost.
    let burst = 3_000;
    for i in 0..burst {
        // Waits for room in the queue, so every record reaches the writer.
        assert!(
            handle.record_wait(decision(i)),
            "the writer is still running"
        );
    }
    let gap_written = || {
        all_records(tmp.path())
            .iter()
            .any(|record| matches!(record.entry, Entry::Gap { .. }))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gap_written() {
        assert!(
            Instant::now() < deadline,
            "no gap record after the failed write"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The log goes on after its gap record.
    let after = 100;
    for i in burst..burst + after {
        assert!(handle.record_wait(decision(i)));
    }
    let stats = writer.shutdown().unwrap();

    let records = all_records(tmp.path());
    let mut lost = 0;
    let mut written_after_gap = 0;
    let mut written = 0;
    for record in &records {
        match &record.entry {
            Entry::Gap { dropped, .. } => lost += dropped,
            Entry::Query(_) if lost > 0 => {
                written += 1;
                written_after_gap += 1;
            }
            Entry::Query(_) => written += 1,
            _ => {}
        }
    }
    assert!(lost > 0, "records lost to the failed write are counted");
    assert!(
        written_after_gap >= after,
        "queries are logged again after the gap"
    );
    assert_eq!(
        written + lost,
        burst + after,
        "every record is written or counted"
    );
    assert_eq!(stats.records, written);
    assert_eq!(stats.dropped, lost);
    assert_eq!(handle.dropped(), lost);
    assert!(
        segments(tmp.path())
            .iter()
            .all(|path| std::fs::metadata(path).unwrap().len() <= FILE_LIMIT),
        "no segment went past the limit"
    );
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
    assert!(report.truncated_tail.is_none(), "{report}");
    let summary = audit::summary(tmp.path(), &TimeRange::default()).unwrap();
    assert_eq!(summary.dropped, lost);
}
