//! The audit writer when its files cannot be written. A file size limit (`RLIMIT_FSIZE`) makes
//! writes past it fail with EFBIG, as a full disk makes them fail with ENOSPC; the writer must
//! go on counting, retry, and record every loss in a gap record, with the chain intact. Its own
//! test binary, because the limit applies to the whole process (and its tests take turns).

use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use dnsward::audit::{
    self, AuditHandle, AuditLog, AuditSettings, Entry, InstanceId, TimeRange, keys,
    segment::Record,
    writer::{ServiceEvent, WriterStats},
};

mod audit_common;
use audit_common::{all_records, decision};

/// Bytes a file of this process may grow to: a few hundred records.
const FILE_LIMIT: u64 = 128 * 1024;

/// The limit is the process's: one test at a time.
static TURN: Mutex<()> = Mutex::new(());

#[allow(unsafe_code)]
fn limit_file_size(bytes: u64) {
    outputs_through_a_pipe();
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

/// The limit is the whole process's, and the test harness prints each result to standard
/// output: where that is a file (`cargo test > log`), a print while a test holds a limit of a
/// byte fails, and the harness dies without a word. Standard output and error go through a pipe
/// to a `cat` started before any limit instead (a child keeps the limits it started with).
#[allow(unsafe_code)]
fn outputs_through_a_pipe() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: fstat of a descriptor number into a zeroed buffer of its type.
            let mut stat = unsafe { std::mem::zeroed::<libc::stat>() };
            let is_file = unsafe { libc::fstat(fd, &mut stat) } == 0
                && stat.st_mode & libc::S_IFMT == libc::S_IFREG;
            if !is_file {
                continue;
            }
            // SAFETY: `fd` is open (fstat said so); the copy is owned by `file` alone.
            let file = unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) };
            let mut cat = std::process::Command::new("cat")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::from(file))
                .spawn()
                .expect("cat runs");
            let pipe = cat.stdin.take().expect("cat's stdin is a pipe");
            // SAFETY: both descriptors are open; `fd` now names the pipe.
            assert_eq!(unsafe { libc::dup2(pipe.as_raw_fd(), fd) }, fd);
            CATS[usize::from(fd == libc::STDERR_FILENO)]
                .store(cat.id() as i32, std::sync::atomic::Ordering::SeqCst);
            // Waited for at exit (`drain_cats`), so all the output is out when the process ends.
            std::mem::forget(cat);
        }
        // SAFETY: registers a function without arguments that only closes and waits.
        assert_eq!(unsafe { libc::atexit(drain_cats) }, 0);
    });
}

/// The `cat`s copying standard output and error (0: none).
static CATS: [std::sync::atomic::AtomicI32; 2] = [
    std::sync::atomic::AtomicI32::new(0),
    std::sync::atomic::AtomicI32::new(0),
];

/// At exit: closes the pipes to the `cat`s and waits until they have written everything.
#[allow(unsafe_code)]
extern "C" fn drain_cats() {
    for (cat, fd) in CATS.iter().zip([libc::STDOUT_FILENO, libc::STDERR_FILENO]) {
        let pid = cat.load(std::sync::atomic::Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: closing our end of the pipe and waiting for our own child.
            unsafe {
                libc::close(fd);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn settings(dir: &Path) -> AuditSettings {
    AuditSettings {
        dir: dir.to_owned(),
        // No size rotation: only the failures start new segments.
        segment_max_bytes: 1 << 30,
        fsync_interval_ms: 0,
        ..AuditSettings::default()
    }
}

/// Hands records `from..to` to the writer, waiting for room in the queue: every record
/// reaches the writer.
fn send(handle: &AuditHandle, from: u64, to: u64) {
    for i in from..to {
        assert!(
            handle.record_wait(decision(i)),
            "the writer is still running"
        );
    }
}

fn wait_for_gap_record(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !all_records(dir)
        .iter()
        .any(|record| matches!(record.entry, Entry::Gap { .. }))
    {
        assert!(
            Instant::now() < deadline,
            "no gap record after the failed write"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Hands records to the writer a few at a time, from `*sent` on, until one is in the log after
/// a gap record. A few at a time: the segment the log resumed in may fill up and fail again
/// (the tests' segments all end that way), and a record written before that must show the log
/// took records again. At most 3,000: after that, `check` reports the failure.
fn send_until_logged_after_gap(handle: &AuditHandle, dir: &Path, sent: &mut u64) {
    let logged_after_gap = || {
        all_records(dir)
            .iter()
            .skip_while(|record| !matches!(record.entry, Entry::Gap { .. }))
            .any(|record| matches!(record.entry, Entry::Query(_)))
    };
    for _ in 0..300 {
        send(handle, *sent, *sent + 10);
        *sent += 10;
        std::thread::sleep(Duration::from_millis(20));
        if logged_after_gap() {
            return;
        }
    }
}

/// The records the log's gap records say were lost.
fn lost_in_gaps(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|record| match record.entry {
            Entry::Gap { dropped, .. } => dropped,
            _ => 0,
        })
        .sum()
}

/// What every failure must leave: each of the `sent` records written or counted exactly once
/// (in gap records, the writer's stats and the handle's count), the chain intact, and queries
/// logged again after the first gap record. Returns the count lost.
fn check(dir: &Path, sent: u64, stats: WriterStats, handle: &AuditHandle, pubkey: Option<&Path>) {
    let mut lost = 0;
    let mut written = 0;
    let mut written_after_gap = 0;
    for record in &all_records(dir) {
        match &record.entry {
            Entry::Gap { dropped, .. } => lost += dropped,
            Entry::Query(_) => {
                written += 1;
                written_after_gap += u64::from(lost > 0);
            }
            _ => {}
        }
    }
    assert!(lost > 0, "records lost to the failed writes are counted");
    assert!(
        written_after_gap > 0,
        "queries are logged again after the gap"
    );
    assert_eq!(written + lost, sent, "every record written or counted");
    assert_eq!(stats.records, written);
    assert_eq!(stats.dropped, lost, "counted once");
    assert_eq!(handle.dropped(), lost);
    let report = audit::verify(dir, pubkey).unwrap();
    assert!(report.ok(), "{report}");
    assert!(report.truncated_tail.is_none(), "{report}");
    let summary = audit::summary(dir, &TimeRange::default()).unwrap();
    assert_eq!(summary.dropped, lost);
}

/// A burst far past what a file may hold, so a write fails and what it held is lost; then
/// `meanwhile`, then the log must have resumed with a gap record, and take more records.
fn burst_past_the_limit(meanwhile: impl FnOnce()) {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    limit_file_size(FILE_LIMIT);
    let (handle, writer) = AuditLog::open(&settings(tmp.path()), InstanceId::random()).unwrap();
    let burst = 3_000;
    send(&handle, 0, burst);
    meanwhile();
    wait_for_gap_record(tmp.path());
    let mut sent = burst;
    send_until_logged_after_gap(&handle, tmp.path(), &mut sent);
    let stats = writer.shutdown().unwrap();
    check(tmp.path(), sent, stats, &handle, None);
}

#[test]
fn failed_writes_are_counted_in_a_gap_record_and_the_chain_still_verifies() {
    burst_past_the_limit(|| {});
}

/// While nothing can be written at all, every retry's gap record fails too; the loss it
/// carried is counted again by the next one, once.
#[test]
fn a_gap_record_that_cannot_be_written_is_counted_once() {
    burst_past_the_limit(|| {
        // Not even a segment header fits: several retries (one a second) fail.
        limit_file_size(1);
        std::thread::sleep(Duration::from_millis(3_500));
        limit_file_size(FILE_LIMIT);
    });
}

/// A key pair in `tmp/keys` (secret, public) and the log directory `tmp/log`.
fn key_and_log_dir(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let keydir = tmp.join("keys");
    std::fs::create_dir_all(&keydir).unwrap();
    let (secret, public) = keys::keygen(&keydir).unwrap();
    (secret, public, tmp.join("log"))
}

/// Segments that fill up at the limit: the write that closes them (the closing checkpoint)
/// fails, with signed checkpoints flowing; the writer's own records are not counted as lost.
#[test]
fn a_segment_close_that_fails_with_signed_checkpoints() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public, dir) = key_and_log_dir(tmp.path());
    let settings = AuditSettings {
        segment_max_bytes: FILE_LIMIT,
        checkpoint_interval_secs: 1,
        signing_key: Some(secret),
        ..settings(&dir)
    };
    limit_file_size(FILE_LIMIT);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    let mut sent = 0;
    for _ in 0..6 {
        send(&handle, sent, sent + 250);
        sent += 250;
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for_gap_record(&dir);
    send_until_logged_after_gap(&handle, &dir, &mut sent);
    let stats = writer.shutdown().unwrap();
    check(&dir, sent, stats, &handle, Some(&public));
}

/// An outage that lasts until the writer stops (the log's directory is gone, so not even a
/// reopen works): no gap record can say what was lost, so the writer's own counts (the stop's
/// figures, the handle's count for metrics) must be right.
#[test]
fn an_outage_that_outlasts_the_writer_is_in_its_counts() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let moved = tmp.path().join("moved");
    limit_file_size(FILE_LIMIT);
    let (handle, writer) = AuditLog::open(&settings(&dir), InstanceId::random()).unwrap();
    let burst = 3_000;
    send(&handle, 0, burst);
    // Once the writer has its segment open (on a busy machine it may not have started on the
    // burst yet, and would then find no directory to open one in, and write nothing at all):
    let deadline = Instant::now() + Duration::from_secs(20);
    while audit_common::segments(&dir).is_empty() {
        assert!(Instant::now() < deadline, "no segment opened");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The open segment stays writable through its descriptor until the limit; a reopen
    // finds a plain file where the directory was.
    std::fs::rename(&dir, &moved).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let stats = writer.shutdown().unwrap();
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&moved, &dir).unwrap();
    let written = all_records(&dir)
        .iter()
        .filter(|record| matches!(record.entry, Entry::Query(_)))
        .count() as u64;
    assert!(written < burst, "writes failed");
    assert_eq!(stats.records, written, "queries in the log");
    assert_eq!(stats.dropped, burst - written, "the rest, counted");
    assert_eq!(handle.dropped(), stats.dropped);
    let report = audit::verify(&dir, None).unwrap();
    assert!(report.ok(), "{report}");
}

/// A first run that writes queries 0..10 and stops cleanly, under the usual file size limit.
fn ten_queries_and_a_clean_stop(settings: &AuditSettings) -> WriterStats {
    limit_file_size(FILE_LIMIT);
    let (handle, writer) = AuditLog::open(settings, InstanceId::random()).unwrap();
    send(&handle, 0, 10);
    writer.shutdown().unwrap()
}

/// A restart after a crash (a torn last line) onto a full disk: the `recovered` record cannot
/// be written. The writer starts anyway, in an outage (counting what it cannot write), and
/// carries on once there is room, the torn line declared and every loss in a gap record.
#[test]
fn a_restart_onto_a_full_disk_after_a_crash_starts_in_an_outage() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    ten_queries_and_a_clean_stop(&settings);
    let last = audit_common::segments(tmp.path()).pop().unwrap();
    let torn_at = std::fs::metadata(&last).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"seq\":99,\"ti").unwrap();
    drop(file);

    // Not even a segment header fits, through a few retries (one a second).
    limit_file_size(1);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random())
        .expect("a full disk at start is an outage, not a refusal to start");
    handle.service(ServiceEvent::Start {
        version: "restarted".into(),
        config: "dnsward.toml".into(),
    });
    for i in 10..20 {
        handle.record(decision(i));
    }
    std::thread::sleep(Duration::from_millis(2_500));
    limit_file_size(FILE_LIMIT);
    wait_for_gap_record(tmp.path());
    let mut sent = 20;
    send_until_logged_after_gap(&handle, tmp.path(), &mut sent);
    let stats = writer.shutdown().unwrap();
    let records = all_records(tmp.path());
    // The torn line is reported once the log can be written: the crash's, in the crashed
    // segment, not a leftover of a failed retry.
    let crashed = last.file_name().unwrap().to_string_lossy().into_owned();
    let reported: Vec<_> = records
        .iter()
        .filter_map(|record| match &record.entry {
            Entry::Recovered {
                segment,
                offset,
                torn_bytes,
                ..
            } => Some((segment.clone(), *offset, *torn_bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(reported, [(crashed, torn_at, 13)]);
    // The start record that arrived during the outage is held and written after the gap
    // record, not lost with the queries.
    let gap = records
        .iter()
        .position(|record| matches!(record.entry, Entry::Gap { .. }))
        .unwrap();
    assert!(
        records[gap..].iter().any(|record| matches!(
            &record.entry,
            Entry::Start { version, .. } if version == "restarted"
        )),
        "{:#?}",
        &records[gap..]
    );
    // The first instance's ten queries, then this one's: each written or counted once.
    let lost = lost_in_gaps(&records);
    let written = records
        .iter()
        .filter(|record| matches!(record.entry, Entry::Query(_)))
        .count() as u64;
    assert!(lost >= 10, "the queries of the outage are counted: {lost}");
    assert_eq!(written + lost, sent);
    assert_eq!(stats.records, written - 10);
    assert_eq!(stats.dropped, lost);
    assert_eq!(handle.dropped(), lost);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
}

/// Retention runs at start even when the first write then fails: a restart after a crash onto
/// a disk filled by the log's own expired segments removes them (before, retention waited for
/// the write that ends the outage, which never came while they filled the disk).
#[test]
fn retention_runs_at_a_start_whose_first_write_fails() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        retention_max_age_days: 90,
        ..settings(tmp.path())
    };
    for _ in 0..3 {
        ten_queries_and_a_clean_stop(&settings);
    }
    let segments = audit_common::segments(tmp.path());
    assert_eq!(segments.len(), 3, "{segments:?}");
    let hundred_days_ago = std::time::SystemTime::now() - Duration::from_secs(100 * 86_400);
    for segment in &segments {
        std::fs::File::options()
            .write(true)
            .open(segment)
            .unwrap()
            .set_modified(hundred_days_ago)
            .unwrap();
    }
    // A crash's torn line: the restart must write first (the `recovered` record).
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(segments.last().unwrap())
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"seq\":99,\"ti").unwrap();
    drop(file);

    limit_file_size(1);
    // Nothing fits: the first write fails, and the writer starts in an outage.
    let (_handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    // (Besides them, the empty file of the failed write.)
    let now = audit_common::segments(tmp.path());
    assert!(
        !now.contains(&segments[0]) && !now.contains(&segments[1]) && now.contains(&segments[2]),
        "the expired closed segments are gone, the one the chain continues from kept: {now:?}"
    );
    limit_file_size(FILE_LIMIT);
    writer.shutdown().unwrap();
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
}

/// A writer on `dir` whose first write (of `decision(0)`) fails, as nothing fits: in an
/// outage from the start.
fn start_in_an_outage(dir: &Path) -> (AuditHandle, audit::AuditWriter) {
    limit_file_size(1);
    let (handle, writer) = AuditLog::open(&settings(dir), InstanceId::random()).unwrap();
    handle.record(decision(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.dropped() == 0 {
        assert!(Instant::now() < deadline, "the first write did not fail");
        std::thread::sleep(Duration::from_millis(20));
    }
    (handle, writer)
}

/// Service records that arrive during an outage are held for after it, up to 64 (a reload
/// loop must not grow the writer's memory without bound); the rest are counted in the gap
/// record like lost queries. (Those in the write that failed are lost with it, as queries.)
#[test]
fn service_records_held_in_an_outage_are_capped_and_the_rest_counted() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (handle, writer) = start_in_an_outage(tmp.path());
    for i in 0..70 {
        handle.service(ServiceEvent::Start {
            version: format!("held {i}"),
            config: "dnsward.toml".into(),
        });
    }
    std::thread::sleep(Duration::from_millis(1_500));
    limit_file_size(FILE_LIMIT);
    wait_for_gap_record(tmp.path());
    let stats = writer.shutdown().unwrap();
    let records = all_records(tmp.path());
    let held: Vec<&str> = records
        .iter()
        .filter_map(|record| match &record.entry {
            Entry::Start { version, .. } => Some(version.as_str()),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (0..64).map(|i| format!("held {i}")).collect();
    assert_eq!(held, expected, "the first 64, in order: {records:?}");
    let lost = lost_in_gaps(&records);
    // The query of the failed write, and the six service records past the cap.
    assert_eq!(lost, 7);
    assert_eq!(stats.dropped, 7);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
}

/// An outage that began with a write of the writer's own (a quiet log's segment closed for its
/// age) loses no record, so a retry has nothing to write: it must still show the disk takes a
/// write before the log counts as writable, or `when_unwritable = "refuse"` answers queries
/// again onto a disk that takes nothing.
#[test]
fn the_log_is_writable_again_only_once_a_write_succeeds() {
    let (records, stats, _tmp) = quiet_outage_with(false, false);
    assert_eq!((stats.records, stats.dropped), (5, 0), "{stats:?}");
    assert_eq!(lost_in_gaps(&records), 0);
}

/// A quiet signed log whose segment close fails on a full disk (nothing lost), then, during
/// the outage, a service record to hold (`held`) or only outsider queries over their budget
/// (`suppressed`). Returns the log's records once the disk takes writes again, having checked
/// that no retry counted the log writable before a write succeeded.
fn quiet_outage_with(
    held: bool,
    suppressed: bool,
) -> (Vec<Record>, WriterStats, tempfile::TempDir) {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public, dir) = key_and_log_dir(tmp.path());
    let settings = AuditSettings {
        segment_max_age_secs: 1,
        when_unwritable: audit::WhenUnwritable::Refuse,
        signing_key: Some(secret),
        outsider_records_per_sec: 1,
        ..settings(&dir)
    };
    limit_file_size(FILE_LIMIT);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    send(&handle, 0, 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_records(&dir).len() < 7 {
        assert!(Instant::now() < deadline, "the records were not written");
        std::thread::sleep(Duration::from_millis(20));
    }
    limit_file_size(1);
    while !handle.refusing() {
        assert!(Instant::now() < deadline, "the segment close did not fail");
        std::thread::sleep(Duration::from_millis(20));
    }
    if held {
        handle.service(ServiceEvent::Start {
            version: "held".into(),
            config: "dnsward.toml".into(),
        });
    }
    if suppressed {
        let now = std::time::SystemTime::now();
        while handle.suppressed() < 2 {
            handle.admits_outsider(now);
        }
    }
    for _ in 0..35 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            handle.refusing(),
            "writable again without a write that succeeded"
        );
    }
    limit_file_size(FILE_LIMIT);
    while handle.refusing() {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "not writable again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = writer.shutdown().unwrap();
    let report = audit::verify(&dir, Some(&public)).unwrap();
    assert!(report.ok(), "{report}");
    (all_records(&dir), stats, tmp)
}

/// A service record held through an outage that is written, then lost again with a failed
/// retry, is held again, not also counted lost (the retry's signature before it took its
/// place in the account of what the write held).
#[test]
fn a_held_record_is_held_again_not_counted_lost() {
    let (records, stats, _tmp) = quiet_outage_with(true, false);
    let held = records
        .iter()
        .filter(|r| matches!(&r.entry, Entry::Start { version, .. } if version == "held"))
        .count();
    assert_eq!(held, 1, "{records:?}");
    assert_eq!(lost_in_gaps(&records), 0, "{records:?}");
    assert_eq!(stats.dropped, 0);
}

/// Outsider queries counted during an outage wait for their interval to be written: a retry
/// with only those pending must still prove the disk before the log counts as writable.
#[test]
fn suppressed_counts_alone_do_not_end_an_outage() {
    let (records, _stats, _tmp) = quiet_outage_with(false, true);
    let suppressed: u64 = records
        .iter()
        .map(|r| match r.entry {
            Entry::Suppressed { records, .. } => records,
            _ => 0,
        })
        .sum();
    assert_eq!(suppressed, 2, "{records:?}");
}

/// A restart after a crash onto a full disk, with every segment past the retention age (the
/// server was down for months): the failed first write leaves an empty new segment, and
/// retention must not take that for the newest segment and remove the one the chain continues
/// from (the chain would restart at seq 1, and the torn line go unreported).
#[test]
fn an_outage_at_start_keeps_the_segment_the_chain_continues_from() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let settings = settings(tmp.path());
    let first_run = ten_queries_and_a_clean_stop(&settings);
    let months_ago = std::time::SystemTime::now() - Duration::from_secs(200 * 86_400);
    for path in audit_common::segments(tmp.path()) {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut &file, b"{\"seq\":99,\"ti").unwrap();
        file.set_modified(months_ago).unwrap();
    }

    limit_file_size(1);
    let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    limit_file_size(FILE_LIMIT);
    let mut sent = 10;
    send(&handle, sent, sent + 10);
    sent += 10;
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_records(tmp.path())
        .iter()
        .filter(|record| matches!(record.entry, Entry::Query(_)))
        .count()
        < 10
    {
        assert!(Instant::now() < deadline, "the log did not resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.shutdown().unwrap();
    let records = all_records(tmp.path());
    // Retention removed the old segment once the log resumed; what is left continues its chain.
    let first = records.first().unwrap();
    assert!(
        first.seq > first_run.last_seq,
        "the chain restarted at seq {} after {}",
        first.seq,
        first_run.last_seq
    );
    assert!(
        records
            .iter()
            .any(|record| matches!(record.entry, Entry::Recovered { .. })),
        "the torn line is reported: {records:?}"
    );
    assert_eq!(sent, 20);
    let report = audit::verify(tmp.path(), None).unwrap();
    assert!(report.ok(), "{report}");
}

/// Records lost during an outage are dated by their queries, not by when the writer let them
/// go: a gap's span must hold the times of the queries it counts.
#[test]
fn records_lost_in_an_outage_are_dated_by_their_queries() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let (handle, writer) = start_in_an_outage(tmp.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    // Taken by the writer during the outage (queries of 2025: `decision` dates them so).
    for i in 1..10 {
        handle.record(decision(i));
    }
    while handle.dropped() < 10 {
        assert!(
            Instant::now() < deadline,
            "the outage's records were not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    limit_file_size(FILE_LIMIT);
    wait_for_gap_record(tmp.path());
    writer.shutdown().unwrap();
    let newest = audit::Timestamp::from_system_time(decision(9).time);
    let oldest = audit::Timestamp::from_system_time(decision(0).time);
    let gaps: Vec<_> = all_records(tmp.path())
        .into_iter()
        .filter_map(|record| match record.entry {
            Entry::Gap {
                dropped,
                first,
                last,
            } => Some((dropped, first, last)),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, [(10, oldest, newest)]);
}

/// Sets or clears the append-only attribute (`chattr +a`): writes go on, `ftruncate` fails.
fn append_only(path: &Path, on: bool) {
    let status = std::process::Command::new("chattr")
        .arg(if on { "+a" } else { "-a" })
        .arg(path)
        .status()
        .expect("chattr (e2fsprogs) runs");
    assert!(status.success(), "chattr on {}", path.display());
}

/// Clears the attribute again, even when the test fails: the temporary directory must go.
struct AppendOnly(std::path::PathBuf);

impl Drop for AppendOnly {
    fn drop(&mut self) {
        append_only(&self.0, false);
    }
}

/// A failed write whose segment cannot be cut back (append-only file: `ftruncate` fails):
/// the whole lines the write left in the file are records of the chain, not losses, and the
/// torn line after them is declared by the next segment.
#[test]
fn a_segment_that_cannot_be_cut_back_keeps_its_whole_lines() {
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    limit_file_size(FILE_LIMIT);
    let (handle, writer) = AuditLog::open(&settings(tmp.path()), InstanceId::random()).unwrap();
    send(&handle, 0, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let segment = loop {
        if let Some(path) = audit_common::segments(tmp.path()).pop()
            && std::fs::metadata(&path).unwrap().len() > 0
        {
            break path;
        }
        assert!(Instant::now() < deadline, "no segment written");
        std::thread::sleep(Duration::from_millis(10));
    };
    append_only(&segment, true);
    let _clear = AppendOnly(segment.clone());
    let burst = 3_000;
    send(&handle, 1, burst);
    wait_for_gap_record(tmp.path());
    send(&handle, burst, burst + 100);
    let stats = writer.shutdown().unwrap();
    let report = audit::verify(tmp.path(), None).unwrap();
    assert_eq!(
        report.recovered.len(),
        1,
        "the torn line is declared: {report}"
    );
    check(tmp.path(), burst + 100, stats, &handle, None);
}
