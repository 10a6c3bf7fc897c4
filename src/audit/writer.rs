//! The writer: the query path's `AuditHandle` (a non-blocking `try_send` into a bounded queue)
//! and the one thread that owns the segment files (`AuditWriter`).
//!
//! It owns serialisation, anonymisation, chaining, checkpoints and signing, rotation, fsync and
//! retention. It does not read the log back except for the tail of the last segment at open.
//!
//! Why a std thread, not a tokio task: the writer does blocking file I/O and fsync all the time;
//! on a runtime worker that would stall queries, and `spawn_blocking` is meant for short jobs.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    AuditError, json, keys,
    record::{self, Checkpoint, ConfigLoad, Entry, ListLoad, Timestamp},
    segment::{self, GENESIS, Hash, Header, HeaderKind, TornTail},
    settings::{Anonymize, AuditSettings, WhenUnwritable},
};
use crate::{
    clock::{CLOCK_STEP, SteadyWall},
    policy::decision::DecisionRecord,
};

/// Messages drained per wake-up before the batch is written: large enough to amortise the
/// `write` syscall, small enough that checkpoints and fsyncs are not delayed under load.
const MAX_BATCH: usize = 4096;
/// Longest sleep of an idle writer: bounds how late a timed checkpoint, fsync or age rotation
/// can be.
const MAX_IDLE: Duration = Duration::from_millis(500);
/// Pause after a busy batch that emptied the queue (see `pause_after`): at 150k queries/s,
/// about 1,500 records gather per pause, far below the default queue capacity. At 2 ms, `perf`
/// put 7 % of the writer's time in the sleep and the task switches around it.
const BATCH_PAUSE: Duration = Duration::from_millis(10);
/// How often a writer that cannot write (disk full, I/O error) tries again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often retention runs besides at segment closes: a resolver that gets no queries closes
/// no segment, and its old segments must still go when they pass `retention_max_age_days`
/// (the README promises it; it is what anonymised or not, a privacy policy relies on).
const RETENTION_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// How often, at most, a `suppressed` record reports the outsider records over the limit: a
/// flood is summed up once a second, not once per writer wake-up.
const SUPPRESSED_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the writer pauses before its next receive: only after writing query records
/// (`busy`), and only if that wake-up took everything queued. A backlog (a wake-up stopped at
/// `MAX_BATCH`) is drained without pausing, or the pause would cap the writer at `MAX_BATCH`
/// records per `BATCH_PAUSE` (about 400k records/s) whatever its speed.
fn pause_after(busy: bool, drained: bool, stopping: bool) -> bool {
    busy && drained && !stopping
}

/// A random id per process start, stored in every record so records of overlapping or
/// successive runs can be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId(String);

impl InstanceId {
    /// 64 random bits as 16 hex digits.
    pub fn random() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()))
    }

    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One list file as loaded, for `ServiceEvent::Load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFile {
    pub name: String,
    pub path: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub rules: u64,
}

/// Service events the application reports; the writer adds stop, gap, recovery and checkpoint
/// records itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// Sent once at start, before any query record.
    Start { version: String, config: PathBuf },
    /// A configuration/list generation went into service (at start and on each accepted reload).
    Load {
        generation: u64,
        /// The configuration file and the hex SHA-256 of the text it was parsed from.
        config: Option<(PathBuf, String)>,
        lists: Vec<ListFile>,
        /// Settings this config changes that take effect only at a restart (see `reload`).
        waiting_for_restart: Vec<&'static str>,
    },
    /// A reload was refused; the previous generation stays in service.
    ReloadRefused { errors: Vec<String> },
}

impl ServiceEvent {
    fn into_entry(self) -> Entry {
        match self {
            Self::Start { version, config } => Entry::Start {
                version,
                config: absolute(&config),
            },
            Self::Load {
                generation,
                config,
                lists,
                waiting_for_restart,
            } => Entry::Load {
                generation,
                waiting_for_restart: waiting_for_restart.into_iter().map(str::to_owned).collect(),
                config: config.map(|(path, sha256)| ConfigLoad {
                    path: absolute(&path),
                    sha256,
                }),
                lists: lists
                    .into_iter()
                    .map(|l| ListLoad {
                        name: l.name,
                        path: absolute(&l.path),
                        sha256: l.sha256,
                        rules: l.rules,
                    })
                    .collect(),
            },
            Self::ReloadRefused { errors } => Entry::ReloadRefused { errors },
        }
    }
}

/// A path as an auditor can find it later: absolute (against the server's working directory,
/// which is where a relative path was resolved), without touching the file system.
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

// Not boxed: a box would add an allocation per query on the query path, while the channel
// slots are preallocated at the largest variant's size anyway.
#[allow(clippy::large_enum_variant)]
enum Message {
    Query(DecisionRecord),
    /// The decisions of one receive batch of a worker (`AuditHandle::record_batch`).
    Queries(Vec<DecisionRecord>),
    Service(ServiceEvent),
    Shutdown,
}

impl Message {
    /// Queue places taken: the queue bound counts records, whatever they arrive in.
    fn weight(&self) -> usize {
        match self {
            Self::Queries(records) => records.len(),
            _ => 1,
        }
    }
}

/// Overflow accounting shared by all handles and the writer. Atomics only: the query path must
/// not take a lock even when the queue is full.
#[derive(Debug, Default)]
struct Drops {
    /// Dropped since the writer last wrote a gap record (the writer swaps it to 0).
    pending: AtomicU64,
    /// First and last drop time (µs) of the pending run; 0 = none yet.
    first_us: AtomicI64,
    last_us: AtomicI64,
    /// Dropped since start, for metrics (`audit_dropped_total`).
    total: AtomicU64,
}

impl Drops {
    fn note(&self) {
        self.note_many(1);
    }

    fn note_many(&self, count: u64) {
        let now = Timestamp::now().as_micros();
        self.pending.fetch_add(count, Ordering::AcqRel);
        self.total.fetch_add(count, Ordering::Relaxed);
        let _ = self
            .first_us
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::AcqRel);
    }

    /// Notes `count` records lost between `first` and `last` (records of a failed write, whose
    /// times are known).
    fn note_span(&self, count: u64, first: Timestamp, last: Timestamp) {
        if count == 0 {
            return;
        }
        self.pending.fetch_add(count, Ordering::AcqRel);
        self.total.fetch_add(count, Ordering::Relaxed);
        let first = first.as_micros().max(1);
        if self
            .first_us
            .compare_exchange(0, first, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.first_us.fetch_min(first, Ordering::AcqRel);
        }
        self.last_us.fetch_max(last.as_micros(), Ordering::AcqRel);
    }

    /// Notes query records lost with their own times (when the queries arrived), not the time
    /// the writer let them go: those can be seconds apart behind a slow write that failed.
    fn note_records(&self, records: &[DecisionRecord]) {
        let mut times = records
            .iter()
            .map(|record| Timestamp::from_system_time(record.time));
        let Some(first) = times.next() else { return };
        let (first, last) = times.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t)));
        self.note_span(records.len() as u64, first, last);
    }

    /// Returns a run taken for a gap record that could not be written; `total` already has it.
    fn restore(&self, (count, first, last): (u64, Timestamp, Timestamp)) {
        self.note_span(count, first, last);
        self.total.fetch_sub(count, Ordering::Relaxed);
    }

    /// Takes the pending run: (count, first, last). The count is exact; at the boundary between
    /// two runs a drop's time may be attributed to the earlier gap's span.
    fn take(&self) -> Option<(u64, Timestamp, Timestamp)> {
        let count = self.pending.swap(0, Ordering::AcqRel);
        if count == 0 {
            return None;
        }
        let last = self.last_us.swap(0, Ordering::AcqRel);
        let first = self.first_us.swap(0, Ordering::AcqRel);
        // A drop counted between the swaps above has its times in the run taken before: a
        // run can come with a count and no times. It happened by now, not in 1970.
        let last = if last == 0 {
            Timestamp::now().as_micros()
        } else {
            last
        };
        let first = if first == 0 { last } else { first };
        let last = last.max(first);
        Some((
            count,
            Timestamp::from_micros(first),
            Timestamp::from_micros(last),
        ))
    }
}

/// The record budget for clients outside `server.allow` (`outsider_records_per_sec`): a
/// counter per wall-clock second, atomics only. Past the budget, records are counted in
/// `suppressed` (same accounting as drops), which the writer reports in `suppressed` records.
/// A record stamped this many seconds before the limiter's current second means the clock
/// was set back, not a late record of a worker.
const CLOCK_STEP_SECS: u64 = 5;

#[derive(Debug, Default)]
struct OutsiderLimit {
    /// 0: no limit.
    per_sec: u32,
    /// The second (since the epoch) that `used` counts.
    second: AtomicU64,
    used: AtomicU32,
    suppressed: Arc<Drops>,
}

impl OutsiderLimit {
    fn admits(&self, time: SystemTime) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let second = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let current = self.second.load(Ordering::Acquire);
        // Only forward: workers stamp records at different moments (a receive batch shares
        // one time), so a record of the second before can come after the turn, and going
        // back would hand out a fresh budget at every alternation. It counts against the
        // current second instead. A jump back of more than a few seconds is the clock being
        // set back, and starts over from there.
        let turn = second > current || second.saturating_add(CLOCK_STEP_SECS) < current;
        if turn
            && self
                .second
                .compare_exchange(current, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A record counted by another thread between the swap and this store is
            // forgotten: at a second's turn the budget may be exceeded by the few records
            // counted in that moment.
            self.used.store(0, Ordering::Release);
        }
        if self.used.fetch_add(1, Ordering::AcqRel) < self.per_sec {
            return true;
        }
        let stamp = Timestamp::from_system_time(time);
        self.suppressed.note_span(1, stamp, stamp);
        false
    }
}

/// The bounded queue's sending side: std's unbounded (linked-block) channel plus a counter for
/// the bound. `sync_channel` allocates its ring of `capacity` slots up front, and once the ring
/// has cycled all of it is resident (megabytes at the default); this holds memory only for
/// what is actually waiting, a few hundred records under load.
#[derive(Clone)]
struct QueueTx {
    tx: Sender<Message>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    /// Set when the writer takes no more records: after its stop record, or when its thread
    /// has exited. Nothing will make room any more.
    writer_gone: Arc<AtomicBool>,
}

impl QueueTx {
    /// Queues `message` if there is room for all its records; false otherwise (or if the
    /// writer is gone).
    fn try_send(&self, message: Message) -> bool {
        let weight = message.weight();
        if self.queued.fetch_add(weight, Ordering::SeqCst) + weight > self.capacity {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
            return false;
        }
        self.send_counted(message)
    }

    /// Queues `message`, waiting while the queue is full (never on the query path).
    fn send_waiting(&self, message: Message) -> bool {
        while self.queued.load(Ordering::Acquire) >= self.capacity
            && !self.writer_gone.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.send_anyway(message)
    }

    /// Queues `message` past the bound (the shutdown request must always get in).
    fn send_anyway(&self, message: Message) -> bool {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.send_counted(message)
    }

    /// Sends a message already counted in `queued`; false if the writer is gone.
    fn send_counted(&self, message: Message) -> bool {
        let weight = message.weight();
        // SeqCst with the `queued` increment before it, against the writer's store of
        // `writer_gone` and its read of `queued` (`Store::count_leftovers`): either this
        // sender sees the writer gone and counts its records as dropped, or the writer waits
        // for this send and counts them. Nothing is left in the channel uncounted.
        let sent = !self.writer_gone.load(Ordering::SeqCst) && self.tx.send(message).is_ok();
        if !sent {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
        }
        sent
    }
}

/// The query path's side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct AuditHandle {
    tx: QueueTx,
    drops: Arc<Drops>,
    /// False while the writer cannot write the log (set by the writer).
    writable: Arc<AtomicBool>,
    /// `when_unwritable = "refuse"`.
    refuse_when_unwritable: bool,
    outsiders: Arc<OutsiderLimit>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AuditHandle {
    /// Queues a decision. If the queue is full (or the writer has stopped) the record is counted
    /// as dropped and later reported by a gap record; this never waits.
    pub fn record(&self, record: DecisionRecord) {
        if !self.tx.try_send(Message::Query(record)) {
            self.drops.note();
        }
    }

    /// Counts `count` queries that end without a record (see `FORMAT.md`, gap records): they
    /// are reported by the next gap record like records the queue could not take.
    pub fn count_lost(&self, count: u64) {
        self.drops.note_many(count);
    }

    /// Queues the decisions gathered in `batch` (and empties it, keeping its capacity) as one
    /// message: the UDP loop hands over one receive batch's records at a time, so the shared
    /// queue counter and the channel's tail are touched once per batch, not once per query
    /// (with two workers and the writer, each touch moves a cache line between cores). All or
    /// none: if the queue has no room for the whole batch, every record in it is counted as
    /// dropped.
    pub fn record_batch(&self, batch: &mut Vec<DecisionRecord>) {
        match batch.len() {
            0 => {}
            1 => {
                if let Some(record) = batch.pop() {
                    self.record(record);
                }
            }
            // A queue smaller than a receive batch (tests, tiny deployments) takes them singly,
            // so a batch never fails for its size alone.
            count if count > self.tx.capacity => {
                for record in batch.drain(..) {
                    self.record(record);
                }
            }
            count => {
                // Sized to the records, not to the worker's buffer: queued batches are what a
                // backlog holds while the writer waits on the disk, and most receive batches
                // are far from full.
                let mut records = Vec::with_capacity(count);
                records.append(batch);
                if !self.tx.try_send(Message::Queries(records)) {
                    self.drops.note_many(count as u64);
                }
            }
        }
    }

    /// Queues a service event, waiting for room if the queue is full. Service events (start,
    /// a generation going live, a refused reload) are rare and off the query path, and a load
    /// record is what ties every later answer to its list content, so it must not be lost to a
    /// burst of queries. Counts a drop only if the writer has stopped.
    pub fn service(&self, event: ServiceEvent) {
        if !self.tx.send_waiting(Message::Service(event)) {
            self.drops.note();
        }
    }

    /// Queues a decision, waiting while the queue is full. Never use it on the query path; it
    /// is for bulk producers that must not lose records (imports, benchmarks, tests). Returns
    /// false (and counts a drop) only if the writer has stopped.
    pub fn record_wait(&self, record: DecisionRecord) -> bool {
        let sent = self.tx.send_waiting(Message::Query(record));
        if !sent {
            self.drops.note();
        }
        sent
    }

    /// Whether queries are to be refused now: the log cannot be written, and the settings say
    /// not to answer what cannot be recorded.
    pub fn refusing(&self) -> bool {
        self.refuse_when_unwritable && !self.writable.load(Ordering::Relaxed)
    }

    /// Records dropped since start (queue full or writer stopped).
    pub fn dropped(&self) -> u64 {
        self.drops.total.load(Ordering::Relaxed)
    }

    /// Whether the record of a query from a client outside `server.allow`, arriving at `time`,
    /// fits this second's budget (`outsider_records_per_sec`). If it does not, the caller
    /// leaves it out: it is counted here, and a `suppressed` record in the chain reports it.
    pub fn admits_outsider(&self, time: SystemTime) -> bool {
        self.outsiders.admits(time)
    }

    /// Outsider records left out since start (over `outsider_records_per_sec`).
    pub fn suppressed(&self) -> u64 {
        self.outsiders.suppressed.total.load(Ordering::Relaxed)
    }
}

/// What the writer did, returned by `shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Query records written by this instance.
    pub records: u64,
    /// Records dropped by this instance (all of them reported in gap records).
    pub dropped: u64,
    /// `seq` of the last record written (the final checkpoint).
    pub last_seq: u64,
}

/// Owns the writer thread; `shutdown` flushes, writes the stop record and a final checkpoint,
/// fsyncs and joins.
pub struct AuditWriter {
    tx: QueueTx,
    thread: Option<JoinHandle<Result<WriterStats, AuditError>>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter").finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Drains what is queued, then stops cleanly. Blocks until the writer thread is done.
    pub fn shutdown(mut self) -> Result<WriterStats, AuditError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<WriterStats, AuditError> {
        let Some(thread) = self.thread.take() else {
            return Ok(WriterStats::default());
        };
        // A blocking send: shutdown is not on the query path, and the message must queue behind
        // everything already accepted. It fails only if the thread has already exited.
        let _ = self.tx.send_anyway(Message::Shutdown);
        thread.join().map_err(|_| AuditError::WriterPanicked)?
    }
}

impl Drop for AuditWriter {
    /// Dropping without `shutdown` still stops cleanly (best effort: errors are logged).
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!(%error, "audit writer stopped with an error");
        }
    }
}

/// The lock file in the log's directory: held (`flock`, exclusive) by the one process that
/// writes the log, for as long as its writer runs. A second writer would continue the same
/// chain from the same head (two records with one `seq`) and take the live segment for a
/// crashed one. Readers (`audit search`, `verify`, ...) do not lock: they read whole lines.
pub const LOCK_FILE: &str = ".lock";

/// Takes the log directory's lock, or names who holds it. The lock is the kernel's, so it goes
/// with the process (kill -9 included); the pid written into the file is only for the message.
fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    std::fs::create_dir_all(dir).map_err(AuditError::io(dir))?;
    let path = dir.join(LOCK_FILE);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(file) => file,
        // A log on a file system mounted read-only (or made immutable) for now: the lock is
        // taken through a read-only descriptor (`flock` needs no write access), and the writer
        // starts in an outage, counting records until the disk takes writes again, as after a
        // full disk. It had refused to start, taking the resolver down with its log.
        Err(error) if matches!(error.raw_os_error(), Some(libc::EROFS | libc::EPERM)) => {
            File::open(&path).map_err(|_| AuditError::io(&path)(error))?
        }
        Err(error) => return Err(AuditError::io(&path)(error)),
    };
    match crate::files::try_lock(file, &path) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(held)) => Err(AuditError::InUse {
            dir: dir.to_owned(),
            holder: held.holder,
        }),
        Err(error) => Err(AuditError::io(&path)(error)),
    }
}

/// After the stop record: marks the writer gone, then counts as dropped whatever is still
/// queued or on its way (a sender that counted itself into `queued` before it saw the mark),
/// so that every record handed over is either in the log or in the stop figures. Returns how
/// many records it counted.
fn count_leftovers(
    rx: &Receiver<Message>,
    queued: &AtomicUsize,
    drops: &Drops,
    writer_gone: &AtomicBool,
) -> u64 {
    writer_gone.store(true, Ordering::SeqCst);
    let mut counted = 0;
    loop {
        match rx.try_recv() {
            Ok(message) => {
                let weight = message.weight();
                queued.fetch_sub(weight, Ordering::SeqCst);
                if !matches!(message, Message::Shutdown) {
                    drops.note_many(weight as u64);
                    counted += weight as u64;
                }
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if queued.load(Ordering::SeqCst) == 0 {
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
    counted
}

/// Why `Store::recover` could not take up the chain where it ends.
enum RecoverError {
    /// The files could not be read as a log: the writer does not start (someone must look).
    Unreadable(AuditError),
    /// They were read, but could not be changed (a leftover segment removed, the segment the
    /// chain goes on from synced): for now, as a failed write.
    Unwritable(AuditError),
}

/// Makes the directory's entries (a segment created or removed) durable.
/// SHA-256 (hex) of a segment's bytes from `offset` to its end: the torn line a `recovered`
/// record speaks for. `None` if the file cannot be read (the record then states the length
/// only, as before the digest was added).
fn torn_digest(path: &Path, offset: u64) -> Option<String> {
    use sha2::Digest as _;
    use std::io::{Read as _, Seek as _};
    let mut file = File::open(path).ok()?;
    file.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut torn = Vec::new();
    file.read_to_end(&mut torn).ok()?;
    Some(hex::encode(sha2::Sha256::digest(&torn)))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(AuditError::io(dir))
}

/// Entry point: `AuditLog::open`.
#[derive(Debug)]
pub struct AuditLog;

impl AuditLog {
    /// Opens (or creates) the log under `settings.dir`, continues its chain, and starts the
    /// writer thread. The caller should send `ServiceEvent::Start` first thing.
    pub fn open(
        settings: &AuditSettings,
        instance: InstanceId,
    ) -> Result<(AuditHandle, AuditWriter), AuditError> {
        let lock = lock_dir(&settings.dir)?;
        let writable = Arc::new(AtomicBool::new(true));
        let outsiders = Arc::new(OutsiderLimit {
            per_sec: settings.outsider_records_per_sec,
            ..OutsiderLimit::default()
        });
        let run = WriterRun::start(settings, instance)?;
        // The process's first log sets how diagnostics show clients (one log per process).
        let _ = DIAGNOSTIC_ANONYMIZER.set(run.keys.anonymizer.clone());
        let mut store = Store::open(
            settings,
            run,
            Arc::clone(&writable),
            Arc::clone(&outsiders.suppressed),
            true,
            false,
        )?;
        let (tx, rx) = channel();
        let tx = QueueTx {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            capacity: settings.queue_capacity.max(1),
            writer_gone: Arc::new(AtomicBool::new(false)),
        };
        let drops = Arc::new(Drops::default());
        let thread_drops = Arc::clone(&drops);
        let queued = Arc::clone(&tx.queued);
        let writer_gone = Arc::clone(&tx.writer_gone);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                // SCHED_BATCH: the writer's wake-ups (every BATCH_PAUSE under load) wait for
                // the next scheduling point instead of preempting a query worker mid-batch;
                // its share of the CPU is unchanged, so it keeps up as before.
                if !crate::sched::enter(crate::sched::Class::Batch) {
                    tracing::debug!("cannot put the audit writer in SCHED_BATCH");
                }
                let result = store.run(&rx, &queued, &thread_drops, &writer_gone);
                writer_gone.store(true, Ordering::Release);
                // Held until the stop record and closing checkpoint are written.
                drop(lock);
                if let Err(error) = &result {
                    tracing::error!(%error, "audit writer failed; further records are counted as dropped");
                }
                result
            })
            .map_err(AuditError::Spawn)?;
        Ok((
            AuditHandle {
                tx: tx.clone(),
                drops,
                writable,
                refuse_when_unwritable: settings.when_unwritable == WhenUnwritable::Refuse,
                outsiders,
            },
            AuditWriter {
                tx,
                thread: Some(thread),
            },
        ))
    }
}

/// What a log written with `settings` stores for a client at `ip` when its clients are
/// hashed (`anonymize = "hash"`), so that `audit search --client ADDRESS` finds them; `None`
/// when they are not hashed.
pub fn hashed_client(settings: &AuditSettings, ip: IpAddr) -> Result<Option<String>, AuditError> {
    match Anonymizer::from_settings(settings)? {
        anonymizer @ Anonymizer::Hash(_) => {
            let mut out = Vec::new();
            anonymizer.write_client(SocketAddr::new(ip, 0), &mut out);
            Ok(Some(String::from_utf8_lossy(&out).into_owned()))
        }
        Anonymizer::None | Anonymizer::Truncate => Ok(None),
    }
}

/// The secrets the writer works with, read once when the log opens at start. A retry after an
/// outage reuses them: a key file gone since (an unmounted secret) would otherwise keep the log
/// unwritable for good, and one replaced since (a rotated secret) would switch the hashing of
/// clients, or the signing key, in the middle of a run with nothing in the chain to say so.
#[derive(Clone)]
struct Keys {
    signer: Option<(SigningKey, String)>,
    anonymizer: Anonymizer,
}

impl Keys {
    fn load(settings: &AuditSettings) -> Result<Self, AuditError> {
        let signer = match &settings.signing_key {
            Some(path) => {
                let key = keys::load_signing_key(path)
                    .map_err(AuditError::for_setting("audit.signing_key"))?;
                if let Some(warning) = keys::exposure(path) {
                    tracing::warn!("audit.signing_key: {warning}");
                }
                let public = hex::encode(key.verifying_key().as_bytes());
                Some((key, public))
            }
            None => None,
        };
        let anonymizer = Anonymizer::from_settings(settings)
            .map_err(AuditError::for_setting("audit.anonymize_key"))?;
        if let (Anonymizer::Hash(_), Some(path)) = (&anonymizer, &settings.anonymize_key)
            && let Some(warning) = keys::anonymize_key_exposure(path)
        {
            tracing::warn!("audit.anonymize_key: {warning}");
        }
        Ok(Self { signer, anonymizer })
    }
}

/// What a writer keeps for its whole run, from start through every retry after an outage.
struct WriterRun {
    keys: Keys,
    instance: InstanceId,
    /// Retention ages segments against the clock of this run, not one restarted at a retry.
    retention_clock: RetentionClock,
    /// When retention is due: at start at once, then carried through the retries of an
    /// outage, which run it when due before their first write (that write may fail again, and
    /// the outage last for days; a disk filled by expired segments would never recover).
    next_retention: Instant,
}

impl WriterRun {
    fn start(settings: &AuditSettings, instance: InstanceId) -> Result<Self, AuditError> {
        Ok(Self {
            keys: Keys::load(settings)?,
            instance,
            retention_clock: RetentionClock::start(),
            next_retention: Instant::now(),
        })
    }
}

/// Checks the anonymize key as the writer will read it (for `dnsward check`).
pub fn check_anonymize_key(settings: &AuditSettings) -> Result<(), AuditError> {
    Anonymizer::from_settings(settings).map(drop)
}

/// The audit log's anonymiser, for the diagnostic log: an operator who anonymises the audit
/// log must not find the addresses it leaves out written to stderr (the journal) instead.
static DIAGNOSTIC_ANONYMIZER: std::sync::OnceLock<Anonymizer> = std::sync::OnceLock::new();

/// A client address as the diagnostic log shows it: as the audit log stores it (a truncated
/// network, or the keyed hash) once a log that anonymises is open, else whole.
pub struct ShownClient(pub SocketAddr);

impl std::fmt::Display for ShownClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match DIAGNOSTIC_ANONYMIZER.get() {
            Some(anonymizer @ (Anonymizer::Truncate | Anonymizer::Hash(_))) => {
                let mut text = Vec::with_capacity(64);
                anonymizer.write_client(self.0, &mut text);
                f.write_str(std::str::from_utf8(&text).unwrap_or_default())
            }
            Some(Anonymizer::None) | None => write!(f, "{}", self.0),
        }
    }
}

/// How client addresses are reduced before they enter the chain.
#[derive(Clone)]
enum Anonymizer {
    None,
    Truncate,
    Hash(Vec<u8>),
}

impl Anonymizer {
    fn from_settings(settings: &AuditSettings) -> Result<Self, AuditError> {
        Ok(match settings.anonymize {
            Anonymize::None => Self::None,
            Anonymize::Truncate => Self::Truncate,
            Anonymize::Hash => {
                let path = settings
                    .anonymize_key
                    .as_deref()
                    .ok_or(AuditError::MissingAnonymizeKey)?;
                let key = crate::files::read_regular(path).map_err(AuditError::io(path))?;
                if key.len() < 16 {
                    return Err(AuditError::ShortAnonymizeKey {
                        path: path.to_owned(),
                        len: key.len(),
                    });
                }
                Self::Hash(key)
            }
        })
    }

    /// Appends the stored client text for `addr` to `out`.
    fn write_client(&self, addr: SocketAddr, out: &mut Vec<u8>) {
        // An IPv4-mapped IPv6 address is an IPv4 client: truncating it to /48 would keep all
        // 32 bits of the IPv4 address.
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        // Writing into a `String` cannot fail.
        match self {
            Self::None => json::socket_addr_text(out, addr),
            Self::Truncate => match ip {
                IpAddr::V4(v4) => {
                    let _ = write!(out, "{}/24", Ipv4Trunc(v4));
                }
                // A 6to4 address (2002::/16) holds its site's IPv4 address in bits 16-47, all
                // of it inside the /48: cut it as that IPv4 address would be cut, to /24.
                IpAddr::V6(v6) if v6.segments()[0] == 0x2002 => {
                    let mut segments = v6.segments();
                    segments[2] &= 0xff00;
                    segments[3..].fill(0);
                    let _ = write!(out, "{}/40", std::net::Ipv6Addr::from(segments));
                }
                IpAddr::V6(v6) => {
                    let mut segments = v6.segments();
                    segments[3..].fill(0);
                    let _ = write!(out, "{}/48", std::net::Ipv6Addr::from(segments));
                }
            },
            // The port is left out: it changes per query, and a per-query hash would make
            // per-client counts impossible.
            Self::Hash(key) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                    // HMAC accepts keys of any length; this arm is unreachable.
                    return;
                };
                match ip {
                    IpAddr::V4(v4) => mac.update(&v4.octets()),
                    IpAddr::V6(v6) => mac.update(&v6.octets()),
                }
                out.extend_from_slice(hex::encode(&mac.finalize().into_bytes()[..16]).as_bytes());
            }
        }
    }
}

struct Ipv4Trunc(std::net::Ipv4Addr);

impl std::fmt::Display for Ipv4Trunc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, _] = self.0.octets();
        write!(f, "{a}.{b}.{c}.0")
    }
}

struct OpenSegment {
    path: PathBuf,
    file: File,
    bytes: u64,
    opened: Instant,
    min_time: Option<Timestamp>,
    max_time: Option<Timestamp>,
    records: u64,
    /// Bytes before this offset have been synced and dropped from the page cache.
    uncached: u64,
    /// Whether the file's directory entry is on disk (synced with the file's first sync, so that
    /// its records never count as synced while the file's name is not).
    named_on_disk: bool,
}

impl OpenSegment {
    /// Drops the synced pages of this segment from the page cache. Under load the log grows by
    /// tens of megabytes a second, and a page cache left to keep it all takes fresh memory for
    /// every page: the bench kit measured the copy into those new pages at up to half of the
    /// writer's time, against a small fraction when the same few pages are recycled. Written
    /// logs are read rarely (by auditors), so their pages are not worth caching. Only clean
    /// pages are dropped, so this must follow a sync; the page holding the end of an open
    /// segment is kept (it is still being filled) and dropped next time.
    fn drop_synced_pages(&mut self, closing: bool) {
        const PAGE: u64 = 4096;
        let end = if closing {
            self.bytes.next_multiple_of(PAGE)
        } else {
            self.bytes - self.bytes % PAGE
        };
        if let Some(len) = std::num::NonZeroU64::new(end.saturating_sub(self.uncached)) {
            // Advice only: if the kernel declines, the pages stay cached, nothing else changes.
            let _ = rustix::fs::fadvise(
                &self.file,
                self.uncached,
                Some(len),
                rustix::fs::Advice::DontNeed,
            );
            self.uncached = end;
        }
    }
}

/// The writer thread's state; it alone touches the files.
struct Store {
    dir: PathBuf,
    settings: AuditSettings,
    instance: InstanceId,
    signer: Option<(SigningKey, String)>,
    anonymizer: Anonymizer,
    segment: Option<OpenSegment>,
    /// A torn tail found at open, declared in the next segment's header.
    pending_torn: Option<TornTail>,
    next_seq: u64,
    head: Hash,
    /// Whether the log found at open ends in a signed checkpoint (over `head`).
    head_signed: bool,
    /// Encoded lines not yet written to the current segment.
    buf: Vec<u8>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// The time of the last signed checkpoint this store wrote.
    last_signed: Option<Timestamp>,
    /// A record of this batch is timed far before `last_signed` (`SIGN_AFTER_BEHIND_US`), or
    /// after the clock itself: sign before the batch is written (`sign_if_soon`).
    sign_soon: bool,
    unsynced: bool,
    last_sync: Instant,
    query_records: u64,
    /// Whether the last batch held query records (the writer is under load).
    batch_written: bool,
    /// Reused for each record's client text.
    client_text: Vec<u8>,
    /// The records encoded since the last successful write, in order: if the write fails,
    /// the ones that did not reach the file are counted from this.
    unwritten: Vec<Unwritten>,
    /// Set while the log cannot be written.
    outage: Option<Outage>,
    /// Shared with the handles: false during an outage.
    writable: Arc<AtomicBool>,
    /// Outsider records over the budget, counted by the handles (`OutsiderLimit`).
    suppressed: Arc<Drops>,
    last_suppressed: Instant,
    /// Whether the last interval had suppressions (to warn once per run of them).
    suppressing: bool,
    /// Service events that arrived during an outage, with their time, written after the gap
    /// record once the log can be written again: the start and load records tie every later
    /// answer to its lists, and a restart onto a full disk would otherwise lose them.
    held: Vec<(Timestamp, ServiceEvent)>,
    /// What age retention takes for now (handed to the store that reopens after an outage).
    retention_clock: RetentionClock,
    /// When retention runs next if no segment close runs it first (see `RETENTION_INTERVAL`).
    next_retention: Instant,
}

/// The wall clock as age retention reads it (see `crate::clock`), from the writer's start.
#[derive(Debug, Clone, Copy)]
struct RetentionClock {
    steady: SteadyWall,
    /// Whether a forward step has been reported (once per run).
    step_reported: bool,
}

impl RetentionClock {
    fn start() -> Self {
        Self {
            steady: SteadyWall::start(),
            step_reported: false,
        }
    }

    fn now(&mut self) -> SystemTime {
        let (read, ahead) = self.steady.now();
        if ahead > CLOCK_STEP && !std::mem::replace(&mut self.step_reported, true) {
            tracing::warn!(
                ahead_secs = ahead.as_secs(),
                "the system clock stepped forward since the audit writer started; age retention \
                 counts from the writer's start on the boot clock until the next start"
            );
        }
        read
    }
}

/// Service events kept during an outage, at most: they are a handful (start, load, a reload
/// or two); beyond this they are counted as dropped like queries.
const MAX_HELD: usize = 64;

/// Who a record comes from, which decides what its loss counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Query,
    /// A service event the application handed over (start, load, refused reload).
    Service,
    /// The writer's own bookkeeping (checkpoint, stop, recovery, gap): not a record anyone
    /// handed over, so not counted as dropped; the writer writes what it still needs again.
    Writer,
}

/// A record encoded into the batch but not yet written.
#[derive(Debug)]
enum Unwritten {
    Record {
        time: Timestamp,
        origin: Origin,
    },
    /// A gap or suppressed record: if it is lost, the count it carries must be reported again.
    Count {
        counted: Counted,
        run: Run,
    },
    /// A service event held through an outage: if its write fails too (a retry that opened
    /// the log but could not write it), it is held again, not lost.
    Held(Box<(Timestamp, ServiceEvent)>),
}

/// A count of records without a record of their own, and the time span they arrived in.
type Run = (u64, Timestamp, Timestamp);

/// Why records have no record of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Lost: the queue was full or the log could not be written (a gap record).
    Lost,
    /// Left out by policy: outsiders over `outsider_records_per_sec` (a suppressed record).
    Suppressed,
}

impl Counted {
    fn entry(self, (records, first, last): Run) -> Entry {
        match self {
            Self::Lost => Entry::Gap {
                dropped: records,
                first,
                last,
            },
            Self::Suppressed => Entry::Suppressed {
                records,
                first,
                last,
            },
        }
    }

    /// Returns a run taken for a record that was not written to the counter it came from.
    fn put_back(self, run: Run, drops: &Drops, suppressed: &Drops) {
        match self {
            Self::Lost => drops.restore(run),
            Self::Suppressed => suppressed.restore(run),
        }
    }
}

/// `verify --pubkey` accepts the unsigned records at the end of a log (live, or cut by a
/// crash) only within 30 s of the last signature, either way; these keep the writer well
/// inside that. A record timed this far (µs) after the last signature (the first records after
/// a quiet spell, the clock set forward) gets a signed checkpoint before it, at the time it is
/// written: that covers it whether or not its own write reaches the disk.
const SIGN_BEFORE_AHEAD_US: i64 = 15_000_000;
/// A record timed this far before the last signature (a query answered late, a service record
/// held through an outage, the clock set back) gets one after it, ending its batch.
const SIGN_AFTER_BEHIND_US: i64 = 15_000_000;

/// The log could not be written. `fail` has counted what the failed write lost; until a retry
/// reopens the log, arriving records are counted as dropped.
#[derive(Debug)]
struct Outage {
    retry_at: Instant,
}

impl Store {
    /// Opens the log and continues its chain; `at_start`: for the writer's start, not a retry
    /// during an outage.
    fn open(
        settings: &AuditSettings,
        run: WriterRun,
        writable: Arc<AtomicBool>,
        suppressed: Arc<Drops>,
        at_start: bool,
        prove: bool,
    ) -> Result<Self, AuditError> {
        let WriterRun {
            keys,
            instance,
            retention_clock,
            next_retention,
        } = run;
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(AuditError::io(&dir))?;
        let mut store = Self {
            dir,
            settings: settings.clone(),
            instance,
            signer: keys.signer,
            anonymizer: keys.anonymizer,
            segment: None,
            pending_torn: None,
            next_seq: 1,
            head: GENESIS,
            head_signed: false,
            buf: Vec::with_capacity(1 << 20),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_signed: None,
            sign_soon: false,
            unsynced: false,
            last_sync: Instant::now(),
            query_records: 0,
            batch_written: false,
            client_text: Vec::with_capacity(64),
            unwritten: Vec::with_capacity(MAX_BATCH),
            outage: None,
            writable,
            suppressed,
            last_suppressed: Instant::now(),
            suppressing: false,
            held: Vec::new(),
            retention_clock,
            next_retention,
        };
        let recovered = match store.recover() {
            Ok(recovered) => recovered,
            // At start, a log that cannot be changed for now (a failing or read-only disk that
            // will not let a leftover segment go) is an outage like a failed write, retried
            // every second, not a refusal to start.
            Err(RecoverError::Unwritable(error)) if at_start => {
                store.fail(&error, &Drops::default());
                return Ok(store);
            }
            Err(RecoverError::Unwritable(error) | RecoverError::Unreadable(error)) => {
                return Err(error);
            }
        };
        // Before the first write, which may fail: `recover` has removed any leftover of a
        // failed write, so the newest segment is the one the chain continues from, and
        // retention keeps it.
        if Instant::now() >= store.next_retention {
            store.apply_retention();
        }
        // A signing writer starts by signing the head it continues from, unless the log ends
        // in a signed checkpoint already (a clean stop): a crash leaves its last records
        // unsigned, and without this they would share one unsigned tail with this run's first
        // records, which may come any time later (`verify --pubkey` allows a tail of 30 s).
        let sign_head = store.signer.is_some() && !store.head_signed;
        // `prove`: a retry must show the disk takes a write before the log counts as writable
        // again (`when_unwritable = "refuse"` answers queries again then). When nothing was
        // lost and nothing is held (an outage that began with a write of the writer's own, a
        // quiet log's segment close), nothing else would be written: a checkpoint over the head
        // it continues from. Otherwise the gap record or the held records are that write, and
        // a retry that fails on them leaves no segment behind.
        if sign_head || prove || recovered.is_some() {
            let mut write_first = || {
                if sign_head || prove {
                    store.checkpoint(false)?;
                }
                if let Some(entry) = &recovered {
                    store.append_entry(Timestamp::now(), entry)?;
                }
                store.flush(true)
            };
            match write_first() {
                Ok(()) => {}
                // At start (a restart after a crash, onto a full disk): an outage like any
                // failed write, retried every second, not a refusal to start;
                // `when_unwritable` says what queries get meanwhile. The record is the
                // writer's own, so nothing is counted as lost; a retry finds the torn tail
                // again.
                Err(error) if at_start => {
                    // (No retention after this: the failed segment is left empty, and as the
                    // newest it would be kept in place of the one the chain continues from.)
                    store.fail(&error, &Drops::default());
                    return Ok(store);
                }
                Err(error) => {
                    // A retry: the outage goes on. Cut back what the write left of the new
                    // segment, as `fail` does, or the next retry would take those bytes for a
                    // crash's torn tail.
                    if let Some(segment) = &store.segment {
                        let _ = segment.file.set_len(segment.bytes);
                    }
                    return Err(error);
                }
            }
        }
        Ok(store)
    }

    /// Finds where the chain ends. A torn last line (crash mid-write) stays in its file and is
    /// declared in the next header; a last segment without any complete record holds nothing
    /// of the chain and is removed (its name would collide with the next segment's).
    fn recover(&mut self) -> Result<Option<Entry>, RecoverError> {
        let mut segments = segment::list_segments(&self.dir).map_err(RecoverError::Unreadable)?;
        let mut recovered = None;
        while let Some(last) = segments.pop() {
            let tail = segment::read_tail(&last.path, (last.first_seq.saturating_sub(1), GENESIS))
                .map_err(RecoverError::Unreadable)?;
            if let Some(offset) = tail.torn_at {
                tracing::warn!(segment = %last.path.display(), offset, "audit segment ends in a torn line (crash); continuing the chain before it");
                recovered.get_or_insert_with(|| Entry::Recovered {
                    segment: last.name(),
                    offset,
                    torn_bytes: tail.file_len - offset,
                    torn_sha256: torn_digest(&last.path, offset),
                });
            }
            let has_records = tail.header.is_some() && tail.last_seq >= last.first_seq;
            if has_records {
                // The chain goes on from this file's last record, so it must be on disk before
                // anything after it is: a crashed writer's last writes may not have been synced,
                // and a power cut would then leave a hole in the middle of the chain.
                File::open(&last.path)
                    .and_then(|file| file.sync_all())
                    .map_err(|error| RecoverError::Unwritable(AuditError::io(&last.path)(error)))?;
                self.next_seq = tail.last_seq + 1;
                self.head = tail.last_hash;
                self.head_signed = tail.ends_signed;
                self.pending_torn = tail.torn_at.map(|offset| TornTail {
                    segment: last.name(),
                    offset,
                });
                return Ok(recovered);
            }
            std::fs::remove_file(&last.path)
                .map_err(AuditError::io(&last.path))
                .and_then(|()| sync_dir(&self.dir))
                .map_err(RecoverError::Unwritable)?;
            // What was torn in a file that held nothing of the chain is gone with it; the
            // segment that replaces it takes its name, so a record naming it would point into
            // the new file's own lines.
            recovered = None;
            if let Some((header, prev)) = tail
                .header
                .as_ref()
                .and_then(|h| h.prev_hash().map(|p| (h, p)))
            {
                self.next_seq = header.first_seq;
                self.head = prev;
                // A torn line it declared (a restart or retry that failed right after writing
                // the header) must be declared by the segment that replaces it, and its
                // `recovered` record, lost with the removed file, written again.
                self.pending_torn.clone_from(&header.torn_tail);
                recovered = header.torn_tail.as_ref().map(|torn| {
                    let path = self.dir.join(&torn.segment);
                    Entry::Recovered {
                        segment: torn.segment.clone(),
                        offset: torn.offset,
                        torn_bytes: std::fs::metadata(&path)
                            .map_or(0, |meta| meta.len().saturating_sub(torn.offset)),
                        torn_sha256: torn_digest(&path, torn.offset),
                    }
                });
                return Ok(recovered);
            }
        }
        Ok(recovered)
    }

    fn run(
        &mut self,
        rx: &Receiver<Message>,
        queued: &AtomicUsize,
        drops: &Drops,
        writer_gone: &AtomicBool,
    ) -> Result<WriterStats, AuditError> {
        let mut stopping = false;
        while !stopping {
            // Whether this wake-up took everything that was queued (not stopped by MAX_BATCH).
            let mut drained = true;
            match rx.recv_timeout(self.next_wake()) {
                Ok(message) => {
                    let mut records = message.weight();
                    queued.fetch_sub(records, Ordering::AcqRel);
                    stopping = self.take(message, drops);
                    while !stopping {
                        if records >= MAX_BATCH {
                            drained = false;
                            break;
                        }
                        match rx.try_recv() {
                            Ok(message) => {
                                records += message.weight();
                                queued.fetch_sub(message.weight(), Ordering::AcqRel);
                                stopping = self.take(message, drops);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every sender is gone: nobody can send a shutdown any more.
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
            let busy = self.batch_written;
            self.batch_written = false;
            self.retry_if_due(drops, false);
            if self.outage.is_none() {
                let sync = self.settings.fsync_interval_ms == 0;
                let written = self
                    .write_gap(drops)
                    .and_then(|()| self.write_held())
                    .and_then(|()| self.write_suppressed(drops, false))
                    .and_then(|()| self.sign_if_soon())
                    .and_then(|()| self.flush(sync))
                    .and_then(|()| self.tick());
                match written {
                    // Writable again only once something was written (after an outage: the
                    // gap record), not when a reopen merely worked.
                    Ok(()) => self.writable.store(true, Ordering::Relaxed),
                    Err(error) => self.fail(&error, drops),
                }
            }
            if pause_after(busy, drained, stopping) {
                // Under load, let records pile up for a moment instead of going back to a
                // blocking receive: a sender only makes a (futex) wake-up system call when the
                // writer is blocked, and the bench kit saw that wake-up per query cost the
                // server a third of its throughput.
                std::thread::sleep(BATCH_PAUSE);
            }
        }
        self.take_queued(rx, queued, drops);
        // A second attempt if the first fails: the stop record is what says the stop was clean.
        for _ in 0..2 {
            self.retry_if_due(drops, true);
            if self.outage.is_some() {
                break;
            }
            let stopped = self
                .write_gap(drops)
                .and_then(|()| self.write_held())
                .and_then(|()| self.write_suppressed(drops, true))
                .and_then(|()| {
                    let stop = Entry::Stop {
                        records: self.query_records,
                        dropped: drops.total.load(Ordering::Relaxed),
                    };
                    self.append_entry(Timestamp::now(), &stop)?;
                    self.close_segment()
                });
            match stopped {
                Ok(()) => break,
                Err(error) => self.fail(&error, drops),
            }
        }
        if self.outage.is_some() {
            // Service events held for after the outage: it did not end.
            drops.note_many(std::mem::take(&mut self.held).len() as u64);
            tracing::error!(
                lost = drops.pending.load(Ordering::Relaxed),
                "audit log could not be written before exit: the records lost since the last \
                 write are counted here only; the log's chain is intact up to its last record"
            );
        }
        let late = count_leftovers(rx, queued, drops, writer_gone);
        if late > 0 {
            tracing::warn!(
                late,
                "audit records arrived after the stop record; they are counted in the stop \
                 figures (audit_dropped_total) only"
            );
        }
        Ok(WriterStats {
            records: self.query_records,
            dropped: drops.total.load(Ordering::Relaxed),
            last_seq: self.next_seq - 1,
        })
    }

    /// Writes what was queued behind the shutdown request (a TCP answer that finished during
    /// the stop, a reload's record) before the stop record. At most a queue's worth, so that a
    /// sender that keeps going cannot hold the stop up.
    fn take_queued(&mut self, rx: &Receiver<Message>, queued: &AtomicUsize, drops: &Drops) {
        let mut records = 0;
        while records < self.settings.queue_capacity.max(1) {
            let Ok(message) = rx.try_recv() else { break };
            records += message.weight();
            queued.fetch_sub(message.weight(), Ordering::AcqRel);
            if !matches!(message, Message::Shutdown) {
                self.take(message, drops);
            }
        }
    }

    /// Handles one message; returns whether it asks to stop. While the log cannot be written,
    /// records are only counted.
    fn take(&mut self, message: Message, drops: &Drops) -> bool {
        if self.outage.is_some() {
            return match message {
                Message::Shutdown => true,
                Message::Service(event) if self.held.len() < MAX_HELD => {
                    self.held.push((Timestamp::now(), event));
                    false
                }
                Message::Query(record) => {
                    drops.note_records(std::slice::from_ref(&record));
                    false
                }
                Message::Queries(records) => {
                    drops.note_records(&records);
                    false
                }
                Message::Service(_) => {
                    drops.note();
                    false
                }
            };
        }
        match self.handle(message, drops) {
            Ok(stop) => stop,
            Err(error) => {
                self.fail(&error, drops);
                false
            }
        }
    }

    /// Returns whether the message asks to stop. On an error, the records of the message that
    /// were not encoded are counted as dropped; an encoded one (a segment close failed after
    /// it) is counted by `fail`, from `unwritten`.
    fn handle(&mut self, message: Message, drops: &Drops) -> Result<bool, AuditError> {
        let message = match message {
            Message::Shutdown => return Ok(true),
            Message::Service(event) => {
                let seq = self.next_seq;
                let appended = self.append_entry(Timestamp::now(), &event.into_entry());
                if appended.is_err() && self.next_seq == seq {
                    drops.note();
                }
                return appended.map(|()| false);
            }
            message => message,
        };
        let records = match &message {
            Message::Query(record) => std::slice::from_ref(record),
            Message::Queries(records) => records.as_slice(),
            Message::Service(_) | Message::Shutdown => &[],
        };
        for (index, record) in records.iter().enumerate() {
            let seq = self.next_seq;
            self.append_query(record).inspect_err(|_| {
                let encoded = usize::from(self.next_seq > seq);
                drops.note_records(&records[index + encoded..]);
            })?;
        }
        Ok(false)
    }

    /// The log cannot be written: drop the batch and the open segment, cut back to the end of
    /// its last complete write (so it ends on a whole line), count the records of the batch
    /// that are not in the file as dropped, and count records until a retry succeeds.
    fn fail(&mut self, error: &AuditError, drops: &Drops) {
        if self.outage.is_none() {
            tracing::error!(
                %error,
                "audit log cannot be written; records are counted until it can, then a gap \
                 record says how many were lost"
            );
        }
        if let Some(segment) = self.segment.take()
            && let Err(error) = segment
                .file
                .set_len(segment.bytes)
                // What is kept is where a retry continues the chain: on disk first, if the
                // disk still takes it.
                .and_then(|()| segment.file.sync_data())
        {
            // Part of the failed write may be in the file as whole lines, before a torn one
            // (which reopening declares): those records are not lost. If even the file cannot
            // be read, all of them are counted: a count too high, never one too low.
            tracing::debug!(%error, "cannot cut the audit segment back to its last write");
            let first_unwritten = self.next_seq - self.unwritten.len() as u64;
            let in_file = segment::read_tail(&segment.path, (first_unwritten - 1, GENESIS))
                .map_or(0, |tail| {
                    (tail.last_seq + 1).saturating_sub(first_unwritten)
                });
            let in_file = usize::try_from(in_file).map_or(0, |n| n.min(self.unwritten.len()));
            self.unwritten.drain(..in_file);
        }
        let lost_seqs = self.unwritten.len() as u64;
        let mut held_again = Vec::new();
        for record in self.unwritten.drain(..) {
            match record {
                Unwritten::Record { time, origin } => {
                    self.query_records -= u64::from(origin == Origin::Query);
                    if origin != Origin::Writer {
                        drops.note_span(1, time, time);
                    }
                }
                // Its count was taken for it: put back, not counted twice.
                Unwritten::Count { counted, run } => counted.put_back(run, drops, &self.suppressed),
                Unwritten::Held(held) => held_again.push(*held),
            }
        }
        // Before any held since: the order they arrived in.
        self.held.splice(0..0, held_again);
        // The seq after the file's last record, for the stats if the outage outlasts the
        // writer (`head` is stale until a retry replaces the whole store).
        self.next_seq = self.next_seq.saturating_sub(lost_seqs);
        self.buf.clear();
        self.unsynced = false;
        self.outage = Some(Outage {
            retry_at: Instant::now() + RETRY_INTERVAL,
        });
        self.writable.store(false, Ordering::Relaxed);
    }

    /// During an outage, tries to continue the log when the retry is due (or `now`): reopens
    /// it as at a start (the chain continues after the last whole record in the file); the
    /// next gap record reports what `fail` and the outage counted.
    fn retry_if_due(&mut self, drops: &Drops, now: bool) {
        let due = self
            .outage
            .as_ref()
            .is_some_and(|outage| now || Instant::now() >= outage.retry_at);
        if !due {
            return;
        }
        // The open runs retention when it is due; if the open then fails, the next retry must
        // not run it again before its interval.
        let next_retention = self.next_retention;
        if Instant::now() >= next_retention {
            self.next_retention = Instant::now() + RETENTION_INTERVAL;
        }
        let mut fresh = match Self::open(
            &self.settings,
            WriterRun {
                keys: Keys {
                    signer: self.signer.clone(),
                    anonymizer: self.anonymizer.clone(),
                },
                instance: self.instance.clone(),
                retention_clock: self.retention_clock,
                next_retention,
            },
            Arc::clone(&self.writable),
            Arc::clone(&self.suppressed),
            false,
            // (Suppressed counts do not count here: their record waits for its interval.)
            drops.pending.load(Ordering::Acquire) == 0 && self.held.is_empty(),
        ) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::debug!(%error, "audit log still cannot be written");
                self.outage = Some(Outage {
                    retry_at: Instant::now() + RETRY_INTERVAL,
                });
                return;
            }
        };
        tracing::warn!(
            lost = drops.pending.load(Ordering::Relaxed),
            "audit log can be written again; a gap record names what was lost"
        );
        fresh.query_records = self.query_records;
        fresh.held = std::mem::take(&mut self.held);
        *self = fresh;
    }

    fn append_query(&mut self, record: &DecisionRecord) -> Result<(), AuditError> {
        self.batch_written = true;
        let mut client = std::mem::take(&mut self.client_text);
        client.clear();
        self.anonymizer.write_client(record.client, &mut client);
        let time = Timestamp::from_system_time(record.time);
        let result = self.append_with(time, Origin::Query, Some((time, time)), |buf| {
            // The anonymiser writes ASCII only.
            let client = std::str::from_utf8(&client).unwrap_or_default();
            record::write_query_members(buf, record, client);
            Ok(())
        });
        self.client_text = client;
        result
    }

    fn write_gap(&mut self, drops: &Drops) -> Result<(), AuditError> {
        if let Some((dropped, first, last)) = drops.take() {
            tracing::warn!(
                dropped,
                "audit records were lost; a gap record names the loss"
            );
            self.append_count(Counted::Lost, (dropped, first, last), drops)?;
        }
        Ok(())
    }

    /// Writes the service events held during an outage (after its gap record), with the time
    /// they arrived.
    fn write_held(&mut self) -> Result<(), AuditError> {
        let mut held = std::mem::take(&mut self.held).into_iter();
        while let Some((time, event)) = held.next() {
            if let Err(error) = self.sign_before(time) {
                self.held.push((time, event));
                self.held.extend(held);
                return Err(error);
            }
            let seq = self.next_seq;
            let index = self.unwritten.len();
            let appended = self.append_entry(time, &event.clone().into_entry());
            if self.next_seq == seq {
                // Not encoded: held again for after the next gap record.
                self.held.push((time, event));
            } else if let Some(slot) = self.unwritten.get_mut(index) {
                // Encoded: if this write fails, `fail` holds it again from here.
                *slot = Unwritten::Held(Box::new((time, event)));
            }
            if let Err(error) = appended {
                self.held.extend(held);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Reports the outsider records left out over `outsider_records_per_sec`, at most once per
    /// `SUPPRESSED_INTERVAL` (`now`: whatever is pending, before the stop record).
    fn write_suppressed(&mut self, drops: &Drops, now: bool) -> Result<(), AuditError> {
        if !now && self.last_suppressed.elapsed() < SUPPRESSED_INTERVAL {
            return Ok(());
        }
        let Some((records, first, last)) = self.suppressed.take() else {
            self.suppressing = false;
            return Ok(());
        };
        self.last_suppressed = Instant::now();
        if !std::mem::replace(&mut self.suppressing, true) {
            // Once per run of seconds with suppressions, not once a second through a flood.
            tracing::warn!(
                records,
                "queries from outside server.allow exceed [audit] outsider_records_per_sec; \
                 suppressed records count those not recorded one by one"
            );
        }
        self.append_count(Counted::Suppressed, (records, first, last), drops)
    }

    /// Appends a record that carries a count of records without one of their own (a gap or a
    /// suppressed record). Not encoded: the count goes back, for the next such record to
    /// report. Encoded but not yet written: its `unwritten` slot says what it carries, so
    /// that `fail` puts the count back, not the record alone, if the write fails.
    fn append_count(
        &mut self,
        counted: Counted,
        run: Run,
        drops: &Drops,
    ) -> Result<(), AuditError> {
        let time = Timestamp::now();
        if let Err(error) = self.sign_before(time) {
            counted.put_back(run, drops, &self.suppressed);
            return Err(error);
        }
        let seq = self.next_seq;
        let index = self.unwritten.len();
        let written = self.append_entry(time, &counted.entry(run));
        if self.next_seq == seq {
            counted.put_back(run, drops, &self.suppressed);
        } else if let Some(slot) = self.unwritten.get_mut(index) {
            *slot = Unwritten::Count { counted, run };
        }
        written
    }

    fn next_wake(&self) -> Duration {
        if let Some(outage) = &self.outage {
            // Checkpoints and fsyncs wait for the log to be writable again.
            return outage
                .retry_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
        }
        let mut wake = MAX_IDLE;
        if self.signer.is_some() && self.since_checkpoint > 0 {
            let due = self.settings.checkpoint_interval();
            wake = wake.min(due.saturating_sub(self.last_checkpoint.elapsed()));
        }
        if self.unsynced {
            let due = self.settings.fsync_interval();
            wake = wake.min(due.saturating_sub(self.last_sync.elapsed()));
        }
        wake.max(Duration::from_millis(1))
    }

    /// Timed work: signed checkpoints while records flow, fsync, age rotation.
    fn tick(&mut self) -> Result<(), AuditError> {
        if self.signer.is_some()
            && self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval()
        {
            self.checkpoint(false)?;
            self.flush(false)?;
        }
        if self.unsynced && self.last_sync.elapsed() >= self.settings.fsync_interval() {
            self.sync()?;
        }
        let aged = self.segment.as_ref().is_some_and(|s| {
            s.records > 0 && s.opened.elapsed() >= self.settings.segment_max_age()
        });
        if aged {
            self.close_segment()?;
        }
        if Instant::now() >= self.next_retention {
            self.apply_retention();
        }
        Ok(())
    }

    fn append_entry(&mut self, time: Timestamp, entry: &Entry) -> Result<(), AuditError> {
        let origin = match entry {
            Entry::Query(_) => Origin::Query,
            Entry::Start { .. } | Entry::Load { .. } | Entry::ReloadRefused { .. } => {
                Origin::Service
            }
            Entry::Stop { .. }
            | Entry::Gap { .. }
            | Entry::Suppressed { .. }
            | Entry::Recovered { .. }
            | Entry::Checkpoint(_) => Origin::Writer,
        };
        // What a range search must find this record for: a count of losses, the time they
        // span, though it is written when the log can be written again.
        let covers = match entry {
            Entry::Checkpoint(_) => None,
            Entry::Gap { first, last, .. } | Entry::Suppressed { first, last, .. } => {
                Some(((*first).min(time), (*last).max(time)))
            }
            _ => Some((time, time)),
        };
        self.append(time, entry, origin, covers)
    }

    fn append<E: serde::Serialize + ?Sized>(
        &mut self,
        time: Timestamp,
        entry: &E,
        origin: Origin,
        covers: Option<(Timestamp, Timestamp)>,
    ) -> Result<(), AuditError> {
        self.append_with(time, origin, covers, |buf| {
            let start = buf.len();
            serde_json::to_writer(&mut *buf, entry).map_err(AuditError::Encode)?;
            segment::unwrap_object(buf, start)
        })
    }

    /// Encodes one record into the batch; closes the segment when it is full. `covers`: the
    /// times the record speaks for, which the segment's time range must include (its own time;
    /// a gap's, the losses it counts); `None` for a checkpoint, which does not count toward the
    /// range and never triggers a close (a closing checkpoint may push a segment slightly past
    /// its size limit).
    fn append_with(
        &mut self,
        time: Timestamp,
        origin: Origin,
        covers: Option<(Timestamp, Timestamp)>,
        members: impl FnOnce(&mut Vec<u8>) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let signs = covers.is_some() && self.signer.is_some();
        if signs {
            self.sign_before(time)?;
        }
        if self.segment.is_none() {
            self.open_segment()?;
        }
        self.head = segment::encode_line(
            &mut self.buf,
            self.next_seq,
            &self.head,
            time,
            self.instance.as_str(),
            members,
        )?;
        self.next_seq += 1;
        if signs && !self.sign_soon {
            self.sign_soon = self.last_signed.is_some_and(|signed| {
                time.as_micros() < signed.as_micros().saturating_sub(SIGN_AFTER_BEHIND_US)
            });
        }
        // Counted when encoded: a failure after this (closing a full segment) leaves it in
        // `unwritten`, which is where a lost record is subtracted again.
        self.query_records += u64::from(origin == Origin::Query);
        self.unwritten.push(Unwritten::Record { time, origin });
        self.since_checkpoint += 1;
        let Some(segment) = self.segment.as_mut() else {
            // `open_segment` above set it.
            return Ok(());
        };
        segment.records += 1;
        let Some((earliest, latest)) = covers else {
            return Ok(());
        };
        segment.min_time = Some(segment.min_time.map_or(earliest, |t| t.min(earliest)));
        segment.max_time = Some(segment.max_time.map_or(latest, |t| t.max(latest)));
        let full = segment.bytes + self.buf.len() as u64 >= self.settings.segment_max_bytes;
        if full {
            self.close_segment()?;
        }
        Ok(())
    }

    fn open_segment(&mut self) -> Result<(), AuditError> {
        debug_assert!(
            self.buf.is_empty(),
            "lines of the previous segment are written"
        );
        let path = self.dir.join(segment::segment_name(self.next_seq));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(AuditError::io(&path))?;
        let mut header = Header::new(
            HeaderKind::Segment,
            self.next_seq,
            &self.head,
            self.instance.as_str(),
        );
        header.torn_tail = self.pending_torn.take();
        header.encode(&mut self.buf)?;
        self.segment = Some(OpenSegment {
            path,
            file,
            bytes: 0,
            opened: Instant::now(),
            min_time: None,
            max_time: None,
            records: 0,
            uncached: 0,
            named_on_disk: false,
        });
        Ok(())
    }

    /// Writes a checkpoint over the current head; signed if a key is configured.
    fn checkpoint(&mut self, close: bool) -> Result<(), AuditError> {
        let time = Timestamp::now();
        let head_seq = self.next_seq - 1;
        let (key, sig) = match &self.signer {
            Some((key, public)) => (
                Some(public.clone()),
                Some(hex::encode(
                    keys::sign(key, head_seq, &self.head, time).to_bytes(),
                )),
            ),
            None => (None, None),
        };
        let (min_time, max_time, records) = self
            .segment
            .as_ref()
            .map_or((None, None, 0), |s| (s.min_time, s.max_time, s.records));
        let entry = Entry::Checkpoint(Checkpoint {
            head_seq,
            head: hex::encode(self.head),
            key,
            sig,
            close,
            min_time,
            max_time,
            records,
        });
        self.append_entry(time, &entry)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        if self.signer.is_some() {
            self.last_signed = Some(time);
            self.sign_soon = false;
        }
        Ok(())
    }

    /// Before a record timed `time` is encoded: a signed checkpoint if the record is timed
    /// more than `SIGN_BEFORE_AHEAD_US` after the last signature (or this store has signed
    /// nothing yet). Callers that note the record's `unwritten` slot call it first, so that
    /// the slot is the record's, not the checkpoint's; a second call is a no-op.
    fn sign_before(&mut self, time: Timestamp) -> Result<(), AuditError> {
        if self.signer.is_none() {
            return Ok(());
        }
        let time = time.as_micros();
        let ahead = self
            .last_signed
            .is_none_or(|signed| time > signed.as_micros().saturating_add(SIGN_BEFORE_AHEAD_US));
        if !ahead {
            return Ok(());
        }
        if time
            <= Timestamp::now()
                .as_micros()
                .saturating_add(SIGN_BEFORE_AHEAD_US)
        {
            return self.checkpoint(false);
        }
        // Timed after the clock itself (set back since the query arrived): a checkpoint now
        // would not be near it either. Sign after it, ending its batch, once per batch.
        self.sign_soon = true;
        Ok(())
    }

    /// Ends the batch with a signed checkpoint when one of its records is timed far before the
    /// last signature (`SIGN_AFTER_BEHIND_US`): such a record must not be left among the
    /// unsigned records a log ends in.
    fn sign_if_soon(&mut self) -> Result<(), AuditError> {
        if self.sign_soon && self.since_checkpoint > 0 {
            self.checkpoint(false)?;
        }
        self.sign_soon = false;
        Ok(())
    }

    /// Ends the current segment: a closing checkpoint, write, fsync, then retention.
    fn close_segment(&mut self) -> Result<(), AuditError> {
        if self.segment.is_none() {
            return Ok(());
        }
        self.checkpoint(true)?;
        self.flush(true)?;
        if let Some(mut segment) = self.segment.take() {
            segment.drop_synced_pages(true);
        }
        self.apply_retention();
        Ok(())
    }

    /// Writes buffered lines to the segment; fsyncs when `sync` is set.
    fn flush(&mut self, sync: bool) -> Result<(), AuditError> {
        if let Some(segment) = self.segment.as_mut()
            && !self.buf.is_empty()
        {
            segment
                .file
                .write_all(&self.buf)
                .map_err(AuditError::io(&segment.path))?;
            segment.bytes += self.buf.len() as u64;
            self.buf.clear();
            self.unwritten.clear();
            self.unsynced = true;
        }
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        if let Some(segment) = &mut self.segment
            && self.unsynced
        {
            segment
                .file
                .sync_data()
                .map_err(AuditError::io(&segment.path))?;
            if !segment.named_on_disk {
                // `sync_data` covers the file, not its directory entry, on every file system.
                sync_dir(&self.dir)?;
                segment.named_on_disk = true;
            }
            segment.drop_synced_pages(false);
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Removes the oldest closed segments beyond the age and size limits. Only a prefix of the
    /// chain is ever removed (never a hole), and never the segment being written; the first
    /// remaining segment's header then carries the chain start.
    fn apply_retention(&mut self) {
        self.next_retention = Instant::now() + RETENTION_INTERVAL;
        let now = self.retention_clock.now();
        // Old segments left behind are a disk-space problem, not a reason to stop logging.
        if let Err(error) = self.remove_expired_segments(now) {
            tracing::warn!(%error, "audit retention could not remove old segments");
        }
    }

    fn remove_expired_segments(&self, now: SystemTime) -> Result<(), AuditError> {
        let segments = segment::list_segments(&self.dir)?;
        let current = self.segment.as_ref().map(|s| s.path.as_path());
        let mut sizes = Vec::with_capacity(segments.len());
        let mut total = 0u64;
        for seg in &segments {
            let meta = std::fs::metadata(&seg.path).map_err(AuditError::io(&seg.path))?;
            total += meta.len();
            sizes.push((meta.len(), meta.modified().ok()));
        }
        let max_age = self.settings.retention_max_age();
        let max_total = self.settings.retention_max_total_bytes;
        // The newest segment is kept even when closed: it carries the chain head that the next
        // run continues from.
        let removable = segments.len().saturating_sub(1);
        let mut removed = false;
        for (seg, (len, modified)) in segments.iter().zip(sizes).take(removable) {
            if Some(seg.path.as_path()) == current {
                break;
            }
            let too_old = match (max_age, modified) {
                (Some(max_age), Some(modified)) => {
                    now.duration_since(modified).unwrap_or_default() > max_age
                }
                _ => false,
            };
            let too_big = max_total > 0 && total > max_total;
            if !too_old && !too_big {
                break;
            }
            tracing::info!(segment = %seg.path.display(), too_old, too_big, "audit retention removes a segment");
            std::fs::remove_file(&seg.path).map_err(AuditError::io(&seg.path))?;
            removed = true;
            total -= len;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Anonymizer {
        fn client(&self, addr: SocketAddr) -> String {
            let mut out = Vec::new();
            self.write_client(addr, &mut out);
            String::from_utf8(out).unwrap()
        }
    }

    /// The store as the writer opens it at start.
    fn open_at_start(settings: &AuditSettings) -> Store {
        Store::open(
            settings,
            WriterRun::start(settings, InstanceId::random()).unwrap(),
            Arc::default(),
            Arc::default(),
            true,
            false,
        )
        .unwrap()
    }

    /// Dates every segment in `dir` back by `age` (its last write).
    fn age_segments(dir: &Path, age: Duration) {
        for seg in segment::list_segments(dir).unwrap() {
            File::options()
                .write(true)
                .open(&seg.path)
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
        }
    }

    /// A log in `dir` written by three runs of the writer, a service record each: three
    /// segments; and its settings.
    fn three_segments(dir: &Path) -> AuditSettings {
        let settings = AuditSettings {
            dir: dir.to_owned(),
            fsync_interval_ms: 0,
            ..AuditSettings::default()
        };
        for _ in 0..3 {
            let (handle, writer) = AuditLog::open(&settings, InstanceId::random()).unwrap();
            handle.service(ServiceEvent::ReloadRefused {
                errors: vec!["x".into()],
            });
            writer.shutdown().unwrap();
        }
        settings
    }

    /// Closed segments 100 days old, a 90-day limit, and a wall clock 200 days ahead of where
    /// the monotonic clock puts it: they are kept; read without the step, they go.
    #[test]
    fn age_retention_keeps_segments_when_the_clock_stepped_forward() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = three_segments(tmp.path());
        let day = Duration::from_secs(86_400);
        let segments = || segment::list_segments(tmp.path()).unwrap().len();
        assert_eq!(segments(), 3);
        let mut store = open_at_start(&settings);
        age_segments(tmp.path(), 100 * day);
        store.retention_clock.steady.wall_at_start = SystemTime::now() - 200 * day;
        store.apply_retention();
        assert_eq!(segments(), 3, "nothing removed after a forward step");
        // An outage, and the store that reopens the log after it (which applies retention
        // as it opens): still this run's clock.
        let drops = Drops::default();
        store.fail(
            &AuditError::io(tmp.path())(std::io::Error::other("disk")),
            &drops,
        );
        store.retry_if_due(&drops, true);
        assert!(store.outage.is_none(), "reopened");
        assert!(
            segments() >= 3,
            "nothing removed by the reopen after an outage"
        );
        store.retention_clock = RetentionClock::start();
        store.apply_retention();
        assert_eq!(segments(), 1, "the newest segment is always kept");
    }

    /// An idle writer (no query, so no segment closes) still removes segments that have
    /// passed the age limit, at its next tick after `RETENTION_INTERVAL`.
    #[test]
    fn age_retention_runs_while_the_log_is_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = three_segments(tmp.path());
        let segments = || segment::list_segments(tmp.path()).unwrap().len();
        let mut store = open_at_start(&settings);
        assert_eq!(segments(), 3, "young segments are kept at open");
        let day = Duration::from_secs(86_400);
        age_segments(tmp.path(), 100 * day);
        store.tick().unwrap();
        assert_eq!(segments(), 3, "not before the interval");
        store.next_retention = Instant::now();
        store.tick().unwrap();
        assert_eq!(segments(), 1, "the old ones removed, the newest kept");
    }

    /// The keys are read once: a retry after an outage reopens the log with them though both
    /// files are gone (an unmounted secret), and hashes clients as before.
    #[test]
    fn an_outage_retry_keeps_the_keys_read_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let keys_dir = tempfile::tempdir().unwrap();
        let (secret, _public) = keys::keygen(&keys_dir.path().join("audit")).unwrap();
        let hash_key = keys_dir.path().join("anon.key");
        std::fs::write(&hash_key, [7u8; 32]).unwrap();
        let settings = AuditSettings {
            dir: tmp.path().to_owned(),
            fsync_interval_ms: 0,
            signing_key: Some(secret.clone()),
            anonymize: Anonymize::Hash,
            anonymize_key: Some(hash_key.clone()),
            ..AuditSettings::default()
        };
        let mut store = open_at_start(&settings);
        let client: SocketAddr = "192.0.2.7:53".parse().unwrap();
        let hashed = store.anonymizer.client(client);
        let drops = Drops::default();
        store.fail(
            &AuditError::io(tmp.path())(std::io::Error::other("disk")),
            &drops,
        );
        std::fs::remove_file(&secret).unwrap();
        std::fs::remove_file(&hash_key).unwrap();
        store.retry_if_due(&drops, true);
        assert!(store.outage.is_none(), "reopened without the key files");
        assert!(store.signer.is_some());
        assert_eq!(store.anonymizer.client(client), hashed);
    }

    #[test]
    fn a_backlog_is_drained_without_pausing() {
        // A wake-up that emptied the queue after writing queries pauses.
        assert!(pause_after(true, true, false));
        // One stopped by MAX_BATCH (more is queued) goes straight on, or a pause per
        // MAX_BATCH records would cap the writer's throughput.
        assert!(!pause_after(true, false, false));
        // Idle or stopping: no pause.
        assert!(!pause_after(false, true, false));
        assert!(!pause_after(true, true, true));
    }

    #[test]
    fn a_run_without_times_is_dated_now() {
        let drops = Drops::default();
        // As left by a drop counted between `take`'s swaps of the count and of the times.
        drops.pending.store(3, Ordering::Relaxed);
        let before = Timestamp::now();
        let (count, first, last) = drops.take().unwrap();
        assert_eq!(count, 3);
        assert!(first >= before && last >= first, "{first:?} {last:?}");
        assert!(drops.take().is_none());
    }

    #[test]
    fn truncation_and_hashing_of_clients() {
        let v4: SocketAddr = "192.0.2.77:5353".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:1:2::5]:53".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:198.51.100.9]:53".parse().unwrap();
        assert_eq!(Anonymizer::None.client(v4), "192.0.2.77:5353");
        assert_eq!(Anonymizer::Truncate.client(v4), "192.0.2.0/24");
        assert_eq!(Anonymizer::Truncate.client(v6), "2001:db8:1::/48");
        assert_eq!(Anonymizer::Truncate.client(mapped), "198.51.100.0/24");
        // 6to4: the /48 is the whole embedded IPv4 address (192.0.2.77), so /40 (its /24).
        let six_to_four: SocketAddr = "[2002:c000:24d:1::5]:53".parse().unwrap();
        assert_eq!(
            Anonymizer::Truncate.client(six_to_four),
            "2002:c000:200::/40"
        );
        let hash = Anonymizer::Hash(b"0123456789abcdef".to_vec());
        let other: SocketAddr = "192.0.2.77:1".parse().unwrap();
        assert_eq!(
            hash.client(v4),
            hash.client(other),
            "the port is not hashed"
        );
        assert_eq!(hash.client(v4).len(), 32);
        assert_ne!(hash.client(v4), hash.client(v6));
    }

    #[test]
    fn the_outsider_budget_is_per_second_and_counts_the_rest() {
        let limit = OutsiderLimit {
            per_sec: 2,
            ..OutsiderLimit::default()
        };
        let at = |micros: u64| SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
        assert!(limit.admits(at(5_000_000)));
        assert!(limit.admits(at(5_100_000)));
        assert!(!limit.admits(at(5_200_000)));
        assert!(!limit.admits(at(5_900_000)));
        // A new second, a new budget.
        assert!(limit.admits(at(6_000_000)));
        // Records of the second before, arriving after the turn (another worker's batch),
        // count against the current second: no fresh budget per alternation.
        assert!(limit.admits(at(5_999_000)));
        assert!(!limit.admits(at(6_100_000)));
        assert!(!limit.admits(at(5_999_500)));
        assert!(!limit.admits(at(6_200_000)));
        let (count, first, last) = limit.suppressed.take().unwrap();
        assert_eq!(count, 5);
        assert_eq!(first, Timestamp::from_micros(5_200_000));
        assert_eq!(last, Timestamp::from_micros(6_200_000));
        // The clock set back: a new budget from there.
        assert!(limit.admits(at(500_000)));
        let unlimited = OutsiderLimit::default();
        assert!((0..1000).all(|_| unlimited.admits(at(1))));
        assert!(unlimited.suppressed.take().is_none());
    }

    #[test]
    fn drops_are_counted_with_their_span() {
        let drops = Drops::default();
        assert_eq!(drops.take(), None);
        drops.note();
        drops.note();
        let (count, first, last) = drops.take().unwrap();
        assert_eq!(count, 2);
        assert!(first <= last);
        assert_eq!(drops.take(), None);
        assert_eq!(drops.total.load(Ordering::Relaxed), 2);
    }
}
