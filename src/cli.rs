//! The command line: argument parsing (clap) and the `serve` and `check` commands.
//!
//! This is the binary's edge, so errors here are `anyhow` with context; the library below keeps
//! typed errors.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};

use dnsward::{
    audit::{
        AuditHandle, AuditLog, AuditWriter, InstanceId, ServiceEvent,
        cli::AuditCommand,
        query::{Filter, TimeRange},
        record::Entry,
    },
    config::{self, Config, ListKind},
    logging,
    policy::decision::action_name,
    preview::Comparison,
    reload::{Reloader, load_event},
    server,
    snapshot::Snapshot,
    state::{self, BuildWarnings, State},
};

#[derive(Debug, Parser)]
#[command(
    name = "dnsward",
    version,
    about = "A DNS filtering resolver: block or quietly watch listed domains, and record every decision",
    after_help = "Examples:\n  \
        dnsward serve                                 # config/dnsward.toml, 127.0.0.1:5353\n  \
        dnsward serve --config /etc/dnsward/dnsward.toml\n  \
        dnsward check --config /etc/dnsward/dnsward.toml   # validate config and every list\n  \
        dig @127.0.0.1 -p 5353 binance.com            # a blocked name: NXDOMAIN + EDE 15"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large audit variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the resolver until SIGINT or SIGTERM.
    #[command(after_help = "Example:\n  dnsward serve --config config/dnsward.toml")]
    Serve {
        /// The configuration file; list paths in it are relative to its directory.
        #[arg(long, short, default_value = "config/dnsward.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and every list; print each problem as `path:line: message`.
    ///
    /// Exits 0 and prints rule counts per list when all is well, 1 on any error.
    #[command(after_help = "Example:\n  dnsward check --config config/dnsward.toml")]
    Check {
        #[arg(long, short, default_value = "config/dnsward.toml")]
        config: PathBuf,
    },
    /// Review the audit log: search, summarise, export, verify; make a signing key.
    Audit {
        #[arg(long, short, default_value = "config/dnsward.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work with lists: preview what an edit changes before it goes live.
    Lists {
        #[command(subcommand)]
        command: ListsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ListsCommand {
    /// Compare the list files on disk with the generation now serving: rules added and removed
    /// per list, and which names seen in the audit log would now get another outcome.
    ///
    /// Exits 0 when nothing would change, 1 when something would, 2 on error.
    #[command(after_help = "Examples:\n  \
        dnsward lists diff                      # against config/dnsward.toml, last 24 h\n  \
        dnsward lists diff --since 7d --json")]
    Diff {
        #[arg(long, short, default_value = "config/dnsward.toml")]
        config: PathBuf,
        /// How far back to read the audit log for names to re-decide (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// One JSON document instead of the text report.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Check { config } => check(&config),
        Command::Audit { config, command } => audit(&config, command),
        Command::Lists {
            command:
                ListsCommand::Diff {
                    config,
                    since,
                    json,
                },
        } => match lists_diff(&config, &since, json) {
            Ok(true) => ExitCode::from(1),
            Ok(false) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("dnsward: {}", error_text(&error));
                ExitCode::from(2)
            }
        },
    }
}

/// `check`: the same loader `serve` uses, without serving.
fn check(path: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(1);
        }
    };
    // What `serve` needs besides the lists (upstreams, key and recursion files): a broken one
    // must fail `check` too.
    let problems = state::start_problems(&config);
    if config.audit.enabled
        && let Some(key) = &config.audit.signing_key
        && let Some(warning) = dnsward::audit::keys::exposure(key)
    {
        eprintln!("warning: audit.signing_key: {warning}");
    }
    if config.audit.enabled
        && let Some(warning) = config
            .audit
            .anonymize_key
            .as_deref()
            .and_then(dnsward::audit::keys::anonymize_key_exposure)
    {
        eprintln!("warning: audit.anonymize_key: {warning}");
    }
    let lists = config.lists.clone();
    let built = state::build(config);
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{problem}");
        }
        if let Err(error) = &built {
            for problem in &error.errors {
                eprintln!("{problem}");
            }
        }
        return ExitCode::from(1);
    }
    match built {
        Ok((state, warnings)) => {
            print_warnings(&warnings);
            for (list, compiled) in lists.iter().zip(state.policy.lists()) {
                println!(
                    "ok  {name:<16} {path:<28} {rules:>8} rules  {kind} {mode} {action}{skipped}",
                    name = list.name,
                    path = list.display_path,
                    rules = compiled.matcher.len(),
                    kind = list.kind.as_str(),
                    mode = list.mode.as_str(),
                    action = if list.kind == ListKind::Block {
                        action_name(list.action)
                    } else {
                        ""
                    },
                    skipped = if compiled.skipped_lines > 0 {
                        format!("  ({} invalid lines skipped)", compiled.skipped_lines)
                    } else {
                        String::new()
                    },
                );
            }
            println!("{}: configuration OK", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            for problem in &error.errors {
                eprintln!("{problem}");
            }
            eprintln!("{} problem(s) found", error.errors.len());
            ExitCode::from(1)
        }
    }
}

/// `audit ...`: exit 0 on success, 1 when verify finds damage or a command fails.
fn audit(path: &std::path::Path, command: AuditCommand) -> ExitCode {
    // Keygen needs no config; the others read `[audit] dir` from it unless given `--dir`.
    let settings = match config::load(path) {
        Ok(config) => {
            warn_unknown_list(&command, path, &config.lists);
            config.audit
        }
        Err(error) => {
            if command_has_dir(&command) {
                if matches!(
                    &command,
                    AuditCommand::Search {
                        client: Some(_),
                        ..
                    }
                ) {
                    // The one thing `--dir` does not replace: how the log's clients were
                    // anonymised. Without it a hashed log's records silently do not match.
                    eprintln!(
                        "dnsward audit: note: the configuration could not be read, so --client \
                         is matched against stored clients as they are (a client stored hashed, \
                         with anonymize = \"hash\", is found only by its stored hash): {error}"
                    );
                }
                dnsward::audit::AuditSettings {
                    dir: PathBuf::from("."),
                    ..dnsward::audit::AuditSettings::default()
                }
            } else {
                eprintln!("{error}");
                return ExitCode::from(2);
            }
        }
    };
    // Search and summary output is for reading: a reader that took what it wanted (`| head`)
    // ends it normally, as for other tools that write to a pipe. An export cut short is not
    // whole (exit 1, quietly); verify's answer is its exit status, whoever stops reading.
    let reading = matches!(
        command,
        AuditCommand::Search { .. } | AuditCommand::Summary { .. }
    );
    let mut stdout = std::io::stdout().lock();
    match dnsward::audit::cli::run_to(command, &settings, &mut stdout, &stdout_reader_gone) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(dnsward::audit::AuditError::Output(error))
            if error.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            if reading {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        // A bad argument (a flag's value, a key file given with --pubkey that cannot be read,
        // an empty range) is a wrong command line, exit 2 as for clap's own refusals: exit 1
        // is verify's "the log failed", and a typo must not read as tampering.
        Err(
            error @ (dnsward::audit::AuditError::Argument { .. }
            | dnsward::audit::AuditError::EmptyRange { .. }),
        ) => {
            eprintln!("dnsward audit: {error}");
            ExitCode::from(2)
        }
        // Nothing failed: the period is quiet. Its own status, so that a job exporting every
        // night can tell a quiet night (3) from a damaged log (1) without reading messages.
        Err(error @ dnsward::audit::AuditError::NothingInRange { .. }) => {
            eprintln!("dnsward audit: {error}; nothing exported");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("dnsward audit: {error}");
            ExitCode::from(1)
        }
    }
}

/// Whether standard output is a pipe or socket whose reader has gone (poll reports an error or
/// a hang-up on it).
fn stdout_reader_gone() -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&now)).is_ok()
        && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
}

/// `audit search --list NAME` for a name that no list of the configuration has: the search
/// still runs (an earlier configuration may have had it), but an empty result from a typo
/// (`Exchanges` for `exchanges`) should not pass for "no such records".
fn warn_unknown_list(command: &AuditCommand, path: &std::path::Path, lists: &[config::ListConfig]) {
    let AuditCommand::Search {
        list: Some(name), ..
    } = command
    else {
        return;
    };
    if lists.iter().any(|list| list.name == *name) {
        return;
    }
    let names: Vec<&str> = lists.iter().map(|list| list.name.as_str()).collect();
    let hint = lists
        .iter()
        .find(|list| list.name.eq_ignore_ascii_case(name))
        .map(|list| format!("; did you mean `{}`? (names are case-sensitive)", list.name))
        .unwrap_or_default();
    eprintln!(
        "dnsward audit: warning: --list {name}: {} has no list of that name (its lists: {}){hint}; \
         searching anyway, for records of an earlier configuration",
        path.display(),
        names.join(", ")
    );
}

/// An error and its causes on one line, `context: cause: cause`. The library's errors already
/// name their cause in their own text (`audit.key: No such file or directory`), so a cause
/// whose text the line already ends with is not repeated.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text == cause || text.ends_with(&format!(": {cause}")) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// Whether an audit command names its directory itself (`--dir`, or a path to verify), so an
/// auditor can work on a copied log without the resolver's config.
fn command_has_dir(command: &AuditCommand) -> bool {
    match command {
        AuditCommand::Search { dir, .. }
        | AuditCommand::Summary { dir, .. }
        | AuditCommand::Export { dir, .. } => dir.dir.is_some(),
        AuditCommand::Verify { dir, path, .. } => dir.dir.is_some() || path.is_some(),
        AuditCommand::Keygen { .. } => true,
    }
}

/// `lists diff`; returns whether anything would change.
fn lists_diff(path: &std::path::Path, since: &str, json: bool) -> anyhow::Result<bool> {
    let config = config::load(path)?;
    let window = dnsward::audit::query::parse_window(since)
        .with_context(|| format!("--since {since:?}: expected a duration like 30m, 24h or 7d"))?;
    let audit_dir = config.audit.dir.clone();
    let comparison = Comparison::load(config)?;
    // What the reload would log, before it goes live.
    print_warnings(&comparison.warnings);
    let seen = seen_names(&audit_dir, window)?;
    let preview = comparison.preview(seen);
    if json {
        println!("{}", serde_json::to_string_pretty(&preview)?);
    } else {
        print!("{preview}");
    }
    Ok(preview.has_changes())
}

/// Names and clients of the query records in the audit log over `window`. Without an audit log
/// (never enabled) the preview covers rules only.
fn seen_names(
    audit_dir: &std::path::Path,
    window: Duration,
) -> anyhow::Result<Vec<dnsward::preview::Seen>> {
    if !audit_dir.exists() {
        eprintln!(
            "note: no audit log in {}; only rule changes are shown",
            audit_dir.display()
        );
        return Ok(Vec::new());
    }
    let filter = Filter {
        range: TimeRange::since(window),
        ..Filter::default()
    };
    let hits = match dnsward::audit::query::search(audit_dir, &filter) {
        Ok(hits) => hits,
        // The directory without a segment yet: a resolver that has only just started.
        Err(dnsward::audit::AuditError::NoLog { .. }) => {
            eprintln!(
                "note: no audit records in {} yet; only rule changes are shown",
                audit_dir.display()
            );
            return Ok(Vec::new());
        }
        Err(error) => return Err(error.into()),
    };
    let mut seen = Vec::new();
    for hit in hits {
        let hit = hit?;
        if let Entry::Query(query) = hit.record.entry {
            // Anonymised clients (`192.0.2.0/24`, hashes) still count as one client each.
            let client = query
                .client
                .parse::<std::net::SocketAddr>()
                .map(|addr| addr.ip())
                .or_else(|_| query.client.parse::<std::net::IpAddr>())
                .unwrap_or_else(|_| std::net::IpAddr::from([0, 0, 0, 0]));
            let chain = dnsward::preview::recorded_chain(&query);
            seen.push(dnsward::preview::Seen {
                name: query.qname,
                client,
                chain,
            });
        }
    }
    Ok(seen)
}

fn serve(path: &std::path::Path) -> ExitCode {
    // Age-based removals (list copies) count from here: a clock step after start is not taken.
    let _ = dnsward::clock::process();
    let config = match config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.log);
    ignore_harmless_signals();
    let snapshot = Snapshot::new(&config.server.data_dir);
    let (state, warnings) =
        match state::build_generation(config, 1, Some(&snapshot), &state::ServingRules::new()) {
            Ok(built) => built,
            Err(error) => {
                for problem in &error.errors {
                    eprintln!("{problem}");
                }
                eprintln!(
                    "{}: refusing to start: {} list problem(s)",
                    path.display(),
                    error.errors.len()
                );
                return ExitCode::from(2);
            }
        };
    warnings.log();
    warn_if_open(&state.config.server.listen, &state.config.server.allow);
    // What `check` reports besides the lists (upstreams, audit keys, root hints and trust
    // anchor): a configuration problem, exit 2 like the others, said once.
    let problems = state::start_problems(&state.config);
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{problem}");
        }
        return ExitCode::from(2);
    }
    match run_server(state, &snapshot) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = error_text(&error);
            tracing::error!("{text}");
            eprintln!("dnsward: {text}");
            ExitCode::from(1)
        }
    }
}

/// Says so at start when the resolver answers anyone on a non-loopback address: an open
/// resolver is an amplifier for attacks on others, and `server.allow` of `0.0.0.0/0` or
/// `::/0` is more often a shortcut than a decision (it had been accepted without a word).
/// An empty `server.allow` answers no one, which is said too.
fn warn_if_open(listen: &[std::net::SocketAddr], allow: &[ipnet::IpNet]) {
    let reachable = listen.iter().any(|addr| !addr.ip().is_loopback());
    let everyone = allow.iter().any(|net| net.prefix_len() == 0);
    if reachable && everyone {
        tracing::warn!(
            "server.allow answers every address and server.listen is not loopback only: this is \
             an open resolver, usable to amplify attacks on others; list your client networks"
        );
    }
    if allow.is_empty() {
        tracing::warn!("server.allow is empty: every query is refused");
    }
}

/// A write past the file size limit (`ulimit -f`, systemd's `LimitFSIZE=`) must fail like a
/// write to a full disk, which the audit writer survives (it counts what it cannot write and
/// records a gap); at its default, SIGXFSZ would kill the resolver instead.
/// SIGUSR1 and SIGUSR2 are ignored too: operators send them to DNS daemons by habit (dnsmasq
/// dumps its statistics on one), and their default killed the resolver without a clean stop,
/// its audit log left to crash recovery.
#[allow(unsafe_code)]
fn ignore_harmless_signals() {
    for signal in [libc::SIGXFSZ, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

fn run_server(state: State, snapshot: &Snapshot) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(state.config.server.threads)
        // Named for `top -H` and the like (tokio's default is cut to "tokio-runtime-w"). Its
        // blocking pool, used only at stop, shares the name.
        .thread_name("runtime-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        log_effective_config(&state.config, &state);
        let reload_settings = state.config.reload.clone();
        let config_path = state.config.path.clone();
        // Signal handlers first: a SIGTERM right after start-up must still flush the audit log.
        let shutdown = shutdown_signal()?;
        let audit = open_audit(&state)?;
        // Held until the server stops (after the audit log's lock, whose message a second
        // instance of one configuration gets first).
        let _served = snapshot.lock()?;
        let state = Arc::new(ArcSwap::from_pointee(state));
        let running = server::start(
            state.clone(),
            audit.as_ref().map(|(handle, _)| handle.clone()),
        )
        .await?;
        // Only once the sockets are bound: a start that fails there (the port is taken) must
        // not leave a manifest saying this configuration serves, for `lists diff` to compare
        // against. Before the reloader, whose reloads write it from then on.
        if let Err(error) = snapshot.write_manifest(&state.load()) {
            tracing::warn!(%error, "cannot record the serving generation for `lists diff`");
        }
        let reloader = Arc::new(Reloader::new(
            config_path,
            state.clone(),
            audit.as_ref().map(|(handle, _)| handle.clone()),
        ));
        reloader.spawn_sighup_reloads();
        if reload_settings.watch {
            reloader.spawn_file_watch(Duration::from_millis(reload_settings.debounce_ms));
        }
        for addr in &running.local_addrs {
            tracing::info!("listening on {addr} (udp+tcp)");
        }
        let counters = running.counters.clone();
        running.run_until(shutdown).await?;
        counters.log_summary("stopped");
        if let Some((handle, writer)) = audit {
            // Flushes, writes the stop record and a final signed checkpoint, and fsyncs.
            let stats = tokio::task::spawn_blocking(move || writer.shutdown())
                .await
                .context("audit writer task failed")?
                .context("cannot close the audit log cleanly")?;
            // Read after the stop: a record handed over during it and counted as dropped
            // is in these figures only.
            tracing::info!(
                audit_records = stats.records,
                audit_dropped = stats.dropped,
                audit_last_seq = stats.last_seq,
                audit_dropped_total = handle.dropped(),
                audit_outsiders_suppressed_total = handle.suppressed(),
                "audit log closed"
            );
        }
        Ok(())
    })
}

/// Opens the audit log (unless disabled) and records the start and the first generation.
fn open_audit(state: &State) -> anyhow::Result<Option<(AuditHandle, AuditWriter)>> {
    let settings = &state.config.audit;
    if !settings.enabled {
        tracing::warn!("audit log disabled ([audit] enabled = false): decisions are not recorded");
        return Ok(None);
    }
    // Every error from `open` names the file or directory it is about.
    let (handle, writer) =
        AuditLog::open(settings, InstanceId::random()).context("cannot open the audit log")?;
    handle.service(ServiceEvent::Start {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config: state.config.path.clone(),
    });
    handle.service(load_event(state, Vec::new()));
    tracing::info!(dir = %settings.dir.display(), signed = settings.signing_key.is_some(), "audit log open");
    Ok(Some((handle, writer)))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed before this returns.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    })
}

/// Logs what is actually in force, so an operator reading the log knows the resolver's shape.
fn log_effective_config(config: &Config, state: &State) {
    tracing::info!(
        config = %config.path.display(),
        listen = ?config.server.listen,
        threads = config.server.threads,
        allow = ?config.server.allow,
        upstreams = ?config.forward.upstreams,
        timeout_ms = config.forward.timeout.as_millis() as u64,
        attempts = config.forward.attempts,
        recursion = config.recursion.enabled,
        dnssec_validation = config.recursion.dnssec_validation,
        forward_zones = config.forward_zones.len(),
        cache_entries = config.cache.max_entries,
        "effective configuration"
    );
    for (list, compiled) in config.lists.iter().zip(state.policy.lists()) {
        tracing::info!(
            list = %list.name,
            path = %list.display_path,
            rules = compiled.matcher.len(),
            kind = list.kind.as_str(),
            mode = list.mode.as_str(),
            action = action_name(list.action),
            ede = list.ede,
            sha256 = %hex::encode(compiled.sha256),
            "list loaded"
        );
    }
}

/// `check` and `lists diff` are where an admin reads every warning (skipped lines, rules that
/// cover a whole top-level domain): all of them, on standard error.
fn print_warnings(warnings: &BuildWarnings) {
    for warning in &warnings.whole_tld {
        eprintln!("warning: {warning}");
    }
    for warning in &warnings.skipped {
        eprintln!("warning: {warning} (skipped)");
    }
}
