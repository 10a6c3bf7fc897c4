//! Hot reload: SIGHUP and file watching build a whole new [`State`] off the query path and swap
//! it in with one atomic store; a broken edit is refused whole and the last good state serves on.
//!
//! Reloads are serialised (one at a time) but never block queries: readers only ever `load` the
//! `ArcSwap`. Queries in flight keep the snapshot they started with.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use notify::Watcher as _;

use crate::{
    audit::{AuditHandle, ListFile, ServiceEvent},
    config::{self, Config},
    sched,
    snapshot::Snapshot,
    state::{self, State},
};

/// What one reload attempt did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new state serves from now on. `restart_needed` names settings that changed but only
    /// take effect after a restart (the rest of the edit applied).
    Applied {
        generation: u64,
        restart_needed: Vec<&'static str>,
    },
    /// Refused: every problem, each as `path:line: reason`. The previous state still serves.
    Refused { errors: Vec<String> },
}

/// Counters an operator (and later the metrics endpoint) reads.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    pub applied: AtomicU64,
    pub failures: AtomicU64,
}

/// Rebuilds and swaps the serving state.
#[derive(Debug)]
pub struct Reloader {
    config_path: PathBuf,
    state: Arc<ArcSwap<State>>,
    pub counters: ReloadCounters,
    /// Serialises reloads so two triggers cannot race to store; queries never take it.
    in_progress: tokio::sync::Mutex<()>,
    /// Accepted and refused reloads are audit records.
    audit: Option<AuditHandle>,
    /// The config the process started with: what its restart-only settings (listeners,
    /// threads, the audit writer, ...) still run on. Each reload compares against this, not
    /// against the last reload's config, which already holds an edit that did not take effect:
    /// otherwise the warning came once and later reloads, whose `load` records cite a config
    /// that is not what runs, said nothing (and reverting the edit warned).
    running: Arc<Config>,
}

impl Reloader {
    pub fn new(
        config_path: PathBuf,
        state: Arc<ArcSwap<State>>,
        audit: Option<AuditHandle>,
    ) -> Self {
        let running = state.load().config.clone();
        Self {
            config_path,
            running,
            state,
            counters: ReloadCounters::default(),
            in_progress: tokio::sync::Mutex::new(()),
            audit,
        }
    }

    /// Reads the config and every list again and swaps the result in if all of it is valid.
    pub async fn reload(&self, trigger: &str) -> ReloadOutcome {
        let _one_at_a_time = self.in_progress.lock().await;
        let current = self.state.load_full();
        let generation = current.generation + 1;
        let path = self.config_path.clone();
        // Parsing a large list takes CPU time: do it on a low-priority thread so the workers
        // serving queries win every contest for a core (bench/reload.sh: p99 under a reload
        // per second).
        let serving = state::serving_rules(&current);
        // The data directory the process started with: changing it takes a restart, like the
        // audit log that lives in it.
        let data_dir = self.running.server.data_dir.clone();
        let built = in_background(move || {
            let config = config::load(&path).map_err(|error| vec![error.to_string()])?;
            let problems = state::start_problems(&config);
            if !problems.is_empty() {
                return Err(problems);
            }
            let snapshot = Snapshot::new(&data_dir);
            state::build_generation(config, generation, Some(&snapshot), &serving)
                .map_err(|error| error.errors.iter().map(ToString::to_string).collect())
        })
        .await
        .unwrap_or_else(|| Err(vec!["reload thread failed".to_owned()]));

        match built {
            Ok((next, warnings)) => {
                warnings.log();
                let restart_needed = restart_needed(&self.running, &next.config);
                for setting in &restart_needed {
                    tracing::warn!(
                        setting,
                        "changed setting needs a restart to take effect; the rest of the edit applied"
                    );
                }
                for list in next.policy.lists() {
                    tracing::info!(
                        generation,
                        list = %list.name,
                        path = %list.display_path,
                        rules = list.matcher.len(),
                        sha256 = %hex::encode(list.sha256),
                        "list loaded"
                    );
                }
                let snapshot = Snapshot::new(&self.running.server.data_dir);
                if let Err(error) = snapshot.write_manifest(&next) {
                    tracing::warn!(%error, "cannot record the serving generation for `lists diff`");
                }
                if let Some(audit) = &self.audit {
                    audit.service(load_event(&next, restart_needed.clone()));
                }
                let previous = self.state.swap(Arc::new(next));
                // The old state (possibly a million rules) is freed off the query path once the
                // last in-flight query lets go of it.
                drop(in_background(move || drop(previous)));
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(generation, trigger, "reload applied");
                ReloadOutcome::Applied {
                    generation,
                    restart_needed,
                }
            }
            Err(errors) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                for error in &errors {
                    tracing::error!("{error}");
                }
                tracing::error!(
                    trigger,
                    problems = errors.len(),
                    failures_total = self.counters.failures.load(Ordering::Relaxed),
                    serving_generation = current.generation,
                    "reload refused; still serving the last good state"
                );
                if let Some(audit) = &self.audit {
                    audit.service(ServiceEvent::ReloadRefused {
                        errors: errors.clone(),
                    });
                }
                ReloadOutcome::Refused { errors }
            }
        }
    }

    /// Reloads on every SIGHUP from now on. The handler is installed before this returns, so a
    /// SIGHUP sent right after start-up reloads instead of killing the process.
    pub fn spawn_sighup_reloads(self: &Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::warn!(%error, "cannot install a SIGHUP handler; reload by file watch only");
                return;
            }
        };
        let reloader = self.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                reloader.reload("SIGHUP").await;
            }
        });
    }

    /// Watches the config file and every list file and reloads when one of them changes. The
    /// watches are in place before this returns.
    pub fn spawn_file_watch(self: &Arc<Self>, debounce: Duration) {
        let (events, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = events.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, "cannot watch files; reload by SIGHUP only");
                return;
            }
        };
        let mut watched = BTreeSet::new();
        let files = self.watched_files();
        rewatch(&mut watcher, &mut watched, &files);
        let mut fingerprint = fingerprint_of(&files);
        let reloader = self.clone();
        tokio::spawn(async move {
            while changed.recv().await.is_some() {
                // Wait for a quiet spell: an editor's save or a `cp` is several events.
                loop {
                    tokio::select! {
                        more = changed.recv() => if more.is_none() { return },
                        () = tokio::time::sleep(debounce) => break,
                    }
                }
                let files = reloader.watched_files();
                rewatch(&mut watcher, &mut watched, &files);
                let now = fingerprint_of(&files);
                // Events also fire for unrelated files in the same directories; reload only when
                // a file we load actually changed (content, size, or the inode behind a symlink).
                if now == fingerprint {
                    continue;
                }
                fingerprint = now;
                reloader.reload("file change").await;
            }
        });
    }

    /// The config file and the list files of the config as it is on disk now (so a list added in
    /// an edit is watched too), falling back to the serving config when the file does not parse.
    fn watched_files(&self) -> Vec<PathBuf> {
        let serving;
        let config = match config::load(&self.config_path) {
            Ok(config) => config,
            Err(_) => {
                serving = self.state.load_full();
                serving.config.as_ref().clone()
            }
        };
        let mut files = vec![self.config_path.clone()];
        files.extend(config.lists.iter().map(|list| list.path.clone()));
        files
    }
}

/// How long a reload may build in the SCHED_IDLE class before it is moved to SCHED_BATCH. An
/// idle machine builds a 1M-rule list in about 0.5 s, one answering 20k QPS in under 1 s; a
/// saturated one would otherwise give the builder almost nothing (SCHED_IDLE's weight is 3
/// against a normal thread's 1024). With 1 s, one bench/reload.sh run (a reload every second
/// at 20k QPS) had p99 during reloads at 4.0x of steady, against 0.8–2.7x in the runs before
/// and 1.7x with 5 s; a reload that has waited 5 s is one a busy machine would not finish.
const IDLE_BUILD_LIMIT: Duration = Duration::from_secs(5);

/// Runs `work` on its own thread, in SCHED_IDLE for `IDLE_BUILD_LIMIT`, then in SCHED_BATCH;
/// resolves to its result (`None` if the thread could not start or panicked).
///
/// Why SCHED_IDLE first: it runs only on CPU time no query worker wants, and a waking worker
/// preempts it at once. With a nice value (even 19) the reload delayed workers by a scheduler
/// slice: p99 at 20k QPS rose 7x during a reload per second (bench/reload.sh). Why not only
/// SCHED_IDLE: on a machine kept busy by queries or anything else, a reload would wait for idle
/// time without bound; in SCHED_BATCH it gets a normal share without preempting the workers.
fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Option<T>> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (tid_sender, tid) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("dnsward-reload".to_owned())
        .spawn(move || {
            // The id first, while the thread still has a normal share: in SCHED_IDLE on a busy
            // machine it might not get this far before the limit.
            let _ = tid_sender.send(sched::ThreadTid::current());
            if !sched::enter(sched::Class::Idle) {
                tracing::debug!("cannot lower the reload thread's priority");
            }
            let _ = sender.send(work());
        });
    async move {
        spawned.ok()?;
        let mut receiver = std::pin::pin!(receiver);
        match tokio::time::timeout(IDLE_BUILD_LIMIT, receiver.as_mut()).await {
            Ok(result) => return result.ok(),
            Err(_still_building) => {
                // The thread sends its id before anything else, so it is here by now.
                if let Ok(tid) = tid.try_recv()
                    && sched::move_thread(tid, sched::Class::Batch)
                {
                    tracing::info!(
                        after = ?IDLE_BUILD_LIMIT,
                        "reload still building on a busy machine: given a normal CPU share"
                    );
                }
            }
        }
        receiver.await.ok()
    }
}

/// The audit record of a generation going into service: each list's file, hash and rule count.
pub fn load_event(state: &State, waiting_for_restart: Vec<&'static str>) -> ServiceEvent {
    ServiceEvent::Load {
        generation: state.generation,
        waiting_for_restart,
        config: Some((state.config.path.clone(), hex::encode(state.config.sha256))),
        lists: state
            .policy
            .lists()
            .iter()
            .map(|list| ListFile {
                name: list.name.to_string(),
                path: list.path.clone(),
                sha256: hex::encode(list.sha256),
                rules: list.matcher.len() as u64,
            })
            .collect(),
    }
}

/// Settings a running server cannot change: they are bound into sockets, the cache or the log
/// subscriber at start.
fn restart_needed(running: &Config, next: &Config) -> Vec<&'static str> {
    let mut settings = Vec::new();
    if running.server.listen != next.server.listen {
        settings.push("server.listen");
    }
    if running.server.data_dir != next.server.data_dir {
        settings.push("server.data_dir");
    }
    if running.server.threads != next.server.threads {
        settings.push("server.threads");
    }
    if running.server.tcp_idle_timeout != next.server.tcp_idle_timeout {
        settings.push("server.tcp_idle_timeout_secs");
    }
    if running.server.tcp_max_connections != next.server.tcp_max_connections {
        settings.push("server.tcp_max_connections");
    }
    if running.server.tcp_max_connections_per_client != next.server.tcp_max_connections_per_client {
        settings.push("server.tcp_max_connections_per_client");
    }
    if running.cache != next.cache {
        settings.push("cache");
    }
    if running.log != next.log {
        settings.push("log");
    }
    if running.reload != next.reload {
        settings.push("reload");
    }
    // The writer is opened with these at start.
    if running.audit != next.audit {
        settings.push("audit");
    }
    // The recursor (and its cache) is built once at start.
    if running.recursion != next.recursion || running.forward_zones != next.forward_zones {
        settings.push("recursion");
    }
    settings
}

type Fingerprint = Vec<Option<(u64, SystemTime, u64)>>;

/// Size, modification time and inode of each file, following symlinks: a symlink swap (as
/// Kubernetes does for ConfigMaps) shows up as a new inode even when size and time match.
fn fingerprint_of(files: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    files
        .iter()
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.len(), metadata.modified().ok()?, metadata.ino()))
        })
        .collect()
}

/// Watches the directory of each file and of its symlink target (non-recursively): editors that
/// save by rename, and symlink swaps, replace the directory entry rather than write the file.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) {
    // Each directory once, by its canonical path: inotify keeps one watch per directory, so
    // `cfg` and `/srv/dnsward/cfg` were two entries for one watch, and unwatching the second
    // (its file gone for a moment, so no longer reached through the file's own canonical path)
    // removed the watch the first still needed: config edits went unseen until a restart.
    let canonical = |dir: PathBuf| std::fs::canonicalize(&dir).unwrap_or(dir);
    let mut wanted = BTreeSet::new();
    for file in files {
        if let Some(parent) = directory_of(file) {
            wanted.insert(canonical(parent));
        }
        if let Some(parent) = std::fs::canonicalize(file)
            .ok()
            .and_then(|target| directory_of(&target))
        {
            wanted.insert(canonical(parent));
        }
    }
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for new in wanted.difference(watched) {
        if let Err(error) = watcher.watch(new, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(%error, dir = %new.display(), "cannot watch directory");
        }
    }
    *watched = wanted;
}

fn directory_of(file: &Path) -> Option<PathBuf> {
    let parent = file.parent()?;
    Some(if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent.to_owned()
    })
}
