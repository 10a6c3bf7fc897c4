//! The `dnsward audit …` subcommands: argument definitions (clap) and `run`, which prints to a
//! given writer. The binary's `src/cli.rs` nests `AuditCommand` under `audit` and passes the
//! configured `[audit] dir`; this module does not read the config file.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};

use super::{
    AuditError, AuditSettings, keys,
    query::{self, ClientFilter, DomainFilter, ExportFormat, Filter, OutputFormat, TimeRange},
    record::Decision,
    verify,
};

/// `dnsward audit <command>`.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Find query records: all filters must match; oldest first.
    #[command(after_help = "Examples:\n  \
        dnsward audit search --since 2h --decision blocked\n  \
        dnsward audit search --domain binance.com --client 192.168.1.0/24 --json\n  \
        dnsward audit search --follow --decision blocked\n  \
        dnsward audit search --from 2025-01-31T00:00:00Z --to 2025-02-01T00:00:00Z --csv --limit 100")]
    Search {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        range: RangeArgs,
        /// A client address or CIDR network (`192.0.2.7`, `192.0.2.0/24`), or a hashed client.
        #[arg(long)]
        client: Option<String>,
        /// A domain and everything under it; prefix with `=` for that name only. Also finds
        /// queries decided by a CNAME into it.
        #[arg(long)]
        domain: Option<String>,
        /// A query type (`A`, `AAAA`, `HTTPS`, …).
        #[arg(long)]
        qtype: Option<String>,
        /// allowed, blocked, logged, refused or error.
        #[arg(long)]
        decision: Option<String>,
        /// The name of the list whose rule decided.
        #[arg(long)]
        list: Option<String>,
        /// Stop after this many records (at least 1).
        #[arg(long, allow_negative_numbers = true, value_parser = at_least_one)]
        limit: Option<usize>,
        /// After the matches so far, print each new match as it is logged, until stopped
        /// (Ctrl-C).
        #[arg(long, short, conflicts_with_all = ["limit", "to"])]
        follow: bool,
        /// Print the stored JSON lines (chain members included).
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV with a header row.
        #[arg(long)]
        csv: bool,
    },
    /// Counts over a time range: by decision, top blocked domains, top clients, per list, per hour.
    #[command(after_help = "Examples:\n  \
        dnsward audit summary --since 24h\n  \
        dnsward audit summary --from 2025-01-31T00:00:00Z --to 2025-02-01T00:00:00Z --json")]
    Summary {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        range: RangeArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write every record with its chain members; the output verifies on its own.
    #[command(after_help = "Examples:\n  \
        dnsward audit export --format jsonl --output audit-2025-01.jsonl\n  \
        dnsward audit export --from 2025-01-01T00:00:00Z --to 2025-02-01T00:00:00Z --format csv -o jan.csv\n  \
        dnsward audit verify --pubkey audit.pub audit-2025-01.jsonl\n\n\
        Exit status: 0 exported, 1 the log could not be exported whole, 2 a wrong command \
        line, 3 the period holds no records (no file written).")]
    Export {
        #[command(flatten)]
        dir: DirArg,
        /// Only this period (every record from the first to the last one inside it, so the
        /// export is one unbroken piece of the chain).
        #[command(flatten)]
        range: RangeArgs,
        /// jsonl (stored lines) or csv (flattened columns plus the stored line).
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Write here instead of standard output (`-`: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check every chain link and checkpoint signature; exit 1 at the first bad spot.
    #[command(after_help = "Examples:\n  \
        dnsward audit verify --pubkey /secure/audit.pub\n  \
        dnsward audit verify --pubkey audit.pub export.jsonl")]
    Verify {
        #[command(flatten)]
        dir: DirArg,
        /// The public key written by `keygen`; without it signatures are not trusted. Give it
        /// once per key when the log's key was changed: each checkpoint must be signed by one.
        #[arg(long)]
        pubkey: Vec<PathBuf>,
        /// A log directory, a segment, or an export file (default: the audit directory; `-`:
        /// an export on standard input).
        #[arg(conflicts_with = "dir")]
        path: Option<PathBuf>,
    },
    /// Write a new Ed25519 key pair: PREFIX.key (private, mode 0600) and PREFIX.pub; or, with
    /// --anonymize, a secret for hashing client addresses.
    #[command(after_help = "Examples:\n  \
        dnsward audit keygen --out /etc/dnsward/audit   # audit.key + audit.pub\n  \
        then set [audit] signing_key = \"/etc/dnsward/audit.key\" and give audit.pub to the auditor\n  \
        dnsward audit keygen --anonymize --out /etc/dnsward/anon.key\n  \
        then set [audit] anonymize = \"hash\" and anonymize_key = \"/etc/dnsward/anon.key\"")]
    Keygen {
        /// File prefix, or an existing directory (then `audit.key`/`audit.pub` inside it); with
        /// --anonymize, the key file itself.
        #[arg(long)]
        out: PathBuf,
        /// Write a key for `anonymize = "hash"` instead: one secret file, mode 0600.
        #[arg(long)]
        anonymize: bool,
    },
}

/// Says on standard error where records are missing between segments: search and summary
/// read what is there, and their results would otherwise pass for the whole log.
fn warn_of_holes(dir: &Path, range: &TimeRange) -> Result<(), AuditError> {
    for hole in query::holes(dir, range)? {
        eprintln!("dnsward audit: warning: {hole}");
    }
    Ok(())
}

/// `--dir`: overrides the configured audit directory.
#[derive(Debug, Clone, Args)]
pub struct DirArg {
    /// The audit directory (default: `[audit] dir` of the configuration).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Time range flags.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// Only the last period: a whole number and s, m, h, d or w (`90s`, `15m`, `2h`, `7d`).
    /// Not with --from: give one start.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "from")]
    pub since: Option<String>,
    /// From this time (RFC 3339, inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    #[arg(long)]
    pub to: Option<String>,
}

impl RangeArgs {
    fn parse(&self) -> Result<TimeRange, AuditError> {
        TimeRange::parse(
            self.since.as_deref(),
            self.from.as_deref(),
            self.to.as_deref(),
        )
    }
}

/// `--limit`: a count of records to show; 0 would show none, which is never what was meant.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(error) => Err(format!("{error} (expected a whole number, at least 1)")),
    }
}

/// Parses an optional argument; an error names the argument.
fn optional<T>(
    flag: &'static str,
    text: Option<String>,
    parse: impl FnOnce(&str) -> Result<T, AuditError>,
) -> Result<Option<T>, AuditError> {
    text.as_deref()
        .map(parse)
        .transpose()
        .map_err(AuditError::for_flag(flag))
}

/// Exports into `path` by way of a new file beside it, renamed over `path` only once the export
/// is complete and synced: an export that fails (a range with no records, a damaged log, a
/// full disk) leaves whatever was at `path` as it was, and a reader never sees half an export.
/// The new file is made with the permissions of the one it replaces; a symbolic link is
/// followed (the file it names is replaced). Anything but a regular file (a pipe,
/// `/dev/stdout`), and this process's own standard output even when that is a file, is written
/// into directly. The log's own directory is refused: a file there could be taken for, or
/// replace, a segment. Returns whether a file was made whole (renamed into place).
fn export_to_file(
    dir: &Path,
    format: ExportFormat,
    range: &TimeRange,
    path: &Path,
) -> Result<(query::ExportStats, bool), AuditError> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let output_error = |path: &Path, reason: String| {
        AuditError::for_flag("--output")(AuditError::io(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            reason,
        )))
    };
    let existing = std::fs::metadata(path).ok();
    if existing.is_none() && std::fs::symlink_metadata(path).is_ok() {
        return Err(output_error(
            path,
            "a symbolic link to nothing: give the file itself".into(),
        ));
    }
    let is_stdout = existing.as_ref().is_some_and(|meta| {
        rustix::fs::fstat(std::io::stdout())
            .is_ok_and(|out| out.st_dev == meta.dev() && out.st_ino == meta.ino())
    });
    if let Some(meta) = &existing
        && (!meta.is_file() || is_stdout)
    {
        if meta.is_dir() {
            return Err(output_error(path, "a directory, not a file".into()));
        }
        let file = std::fs::OpenOptions::new()
            .append(is_stdout)
            .write(true)
            .open(path)
            .map_err(AuditError::io(path))?;
        let mut writer = std::io::BufWriter::new(file);
        let stats = query::export_range(dir, format, range, &mut writer)?;
        writer.flush().map_err(AuditError::io(path))?;
        return Ok((stats, false));
    }
    let target = match &existing {
        Some(_) => path.canonicalize().map_err(AuditError::io(path))?,
        None => path.to_owned(),
    };
    let target_dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = target
        .file_name()
        .ok_or_else(|| output_error(path, "not a file name".into()))?;
    // A directory that is not there is a wrong `--output`, not a failed export.
    given_path("--output", target_dir)?;
    let canonical_target = target_dir
        .canonicalize()
        .map_err(AuditError::io(target_dir))?;
    if let Ok(canonical_log) = dir.canonicalize()
        && canonical_target.starts_with(&canonical_log)
    {
        return Err(output_error(
            path,
            format!(
                "inside the audit log directory {}: write the export elsewhere",
                dir.display()
            ),
        ));
    }
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(file_name);
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = target_dir.join(partial_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if let Some(meta) = &existing {
        // An export holds client addresses: a file kept private is private from the start.
        options.mode(meta.permissions().mode() & 0o7777);
    }
    let file = options.open(&partial).map_err(AuditError::io(&partial))?;
    let mut writer = std::io::BufWriter::new(file);
    let written = query::export_range(dir, format, range, &mut writer).and_then(|stats| {
        let file = writer
            .into_inner()
            .map_err(|error| AuditError::io(&partial)(error.into_error()))?;
        if let Some(meta) = &existing {
            // Exactly its mode, whatever the umask took away at creation.
            file.set_permissions(meta.permissions())
                .map_err(AuditError::io(&partial))?;
        }
        file.sync_all().map_err(AuditError::io(&partial))?;
        std::fs::rename(&partial, &target).map_err(AuditError::io(&target))?;
        Ok(stats)
    });
    if written.is_err() {
        // Only the file this export made; `path` was never touched.
        let _ = std::fs::remove_file(&partial);
    }
    written.map(|stats| (stats, true))
}

fn pick<'a>(dir: &'a DirArg, configured: &'a Path) -> Result<&'a Path, AuditError> {
    match dir.dir.as_deref() {
        Some(given) => given_path("--dir", given).map(|()| given),
        None => Ok(configured),
    }
}

/// A path named on the command line that is not there (or a symbolic link to nothing) is a
/// wrong argument (exit 2), not a log that failed: `verify typo.jsonl` must not read as
/// tampering. The configured `[audit] dir`
/// gone missing is not a typo, and stays a failure of the log.
fn given_path(flag: &'static str, path: &Path) -> Result<(), AuditError> {
    match std::fs::metadata(path) {
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Err(AuditError::for_flag(flag)(AuditError::io(path)(error)))
        }
        _ => Ok(()),
    }
}

/// Runs one command, printing to `out`. `Ok(false)` means the command ran and the answer is
/// negative (verify found damage): the binary exits 1.
pub fn run(
    command: AuditCommand,
    settings: &AuditSettings,
    out: &mut dyn Write,
) -> Result<bool, AuditError> {
    run_to(command, settings, out, &|| false)
}

/// [`run`], where `out_closed` says whether the reader of `out` has gone (a pipe's other end
/// closed): `search --follow` then ends when it is next idle, instead of waiting for a match
/// to write.
pub fn run_to(
    command: AuditCommand,
    settings: &AuditSettings,
    out: &mut dyn Write,
    out_closed: &dyn Fn() -> bool,
) -> Result<bool, AuditError> {
    let audit_dir = settings.dir.as_path();
    match command {
        AuditCommand::Search {
            dir,
            range,
            client,
            domain,
            qtype,
            decision,
            list,
            limit,
            follow,
            json,
            csv,
        } => {
            let filter = Filter {
                range: range.parse()?,
                client: optional("--client", client, |text| {
                    ClientFilter::parse_for(text, settings)
                })?,
                domain: optional("--domain", domain, DomainFilter::parse)?,
                qtype: optional("--qtype", qtype, query::parse_qtype)?,
                decision: optional("--decision", decision, |d| {
                    Decision::parse(d).ok_or_else(|| AuditError::InvalidDecision {
                        value: d.to_owned(),
                    })
                })?,
                list,
                limit,
            };
            let format = match (json, csv) {
                (true, _) => OutputFormat::Jsonl,
                (_, true) => OutputFormat::Csv,
                _ => OutputFormat::Table,
            };
            let dir = pick(&dir, audit_dir)?;
            if follow {
                super::follow::follow(dir, &filter, format, out, out_closed, &mut |text| {
                    eprintln!("dnsward audit: note: {text}");
                })?;
            } else {
                warn_of_holes(dir, &filter.range)?;
                let mut hits = query::search(dir, &filter)?;
                let shown = query::write_hits(&mut hits, format, out)?;
                if hits.unreadable() > 0 {
                    eprintln!(
                        "dnsward audit: warning: {} record line(s) that may match could not be \
                         read (damaged?) and are not shown; `dnsward audit verify` names them",
                        hits.unreadable()
                    );
                }
                if shown == 0
                    && matches!(filter.client, Some(ClientFilter::Net(_)))
                    && query::clients_look_hashed(dir)
                {
                    eprintln!(
                        "dnsward audit: note: this log stores hashed clients (anonymize = \"hash\"): \
                         --client ADDRESS finds them only with the configuration, and its \
                         anonymize_key, that wrote them (--config), or give a stored hash"
                    );
                }
            }
            Ok(true)
        }
        AuditCommand::Summary { dir, range, json } => {
            let dir = pick(&dir, audit_dir)?;
            let range = range.parse()?;
            warn_of_holes(dir, &range)?;
            let summary = query::summary(dir, &range)?;
            if summary.unreadable > 0 {
                eprintln!(
                    "dnsward audit: warning: {} record line(s) could not be read (damaged?) and \
                     are not counted; `dnsward audit verify` names them",
                    summary.unreadable
                );
            }
            if json {
                serde_json::to_writer_pretty(&mut *out, &summary).map_err(AuditError::Encode)?;
                writeln!(out).map_err(AuditError::Output)?;
            } else {
                write!(out, "{summary}").map_err(AuditError::Output)?;
            }
            Ok(true)
        }
        AuditCommand::Export {
            dir,
            range,
            format,
            output,
        } => {
            let dir = pick(&dir, audit_dir)?;
            let range = range.parse()?;
            // `-o -`: standard output, as for most tools that take an output file.
            let output = output.filter(|path| path.as_os_str() != "-");
            match output {
                Some(path) => {
                    let (stats, replaced) = export_to_file(dir, format, &range, &path)?;
                    // Only about a file made whole: a pipe or standard output given as the
                    // file (`-o /dev/stdout | ssh ...`) would get the line after the export's
                    // end line, and fail `verify` as inserted.
                    if replaced {
                        let written = writeln!(
                            out,
                            "exported {} records from {} segments to {}",
                            stats.records,
                            stats.segments,
                            path.display()
                        );
                        match written {
                            // The file is whole and in place whoever stopped reading this
                            // line (`export -o x.jsonl | true`): the export succeeded.
                            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                            written => written.map_err(AuditError::Output)?,
                        }
                    }
                }
                None => {
                    let mut writer = std::io::BufWriter::new(&mut *out);
                    query::export_range(dir, format, &range, &mut writer)?;
                    writer.flush().map_err(AuditError::Output)?;
                }
            }
            Ok(true)
        }
        AuditCommand::Verify { dir, pubkey, path } => {
            let target = match path {
                // `-` is standard input, as `export -o -` is standard output.
                Some(path) if path.as_os_str() == "-" => PathBuf::from("/dev/stdin"),
                Some(path) => {
                    given_path("PATH", &path)?;
                    path
                }
                None => pick(&dir, audit_dir)?.to_owned(),
            };
            let pubkeys: Vec<&std::path::Path> = pubkey.iter().map(PathBuf::as_path).collect();
            let report = verify::verify_signed_by(&target, &pubkeys)?;
            match write!(out, "{report}") {
                // The verdict stands whoever stopped reading (`verify | head -1`): the exit
                // status is the answer.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                written => written.map_err(AuditError::Output)?,
            }
            Ok(report.ok())
        }
        AuditCommand::Keygen {
            out: path,
            anonymize: true,
        } => {
            let path = keys::anonymize_keygen(&path)?;
            writeln!(
                out,
                "anonymize key: {} (keep it secret, mode 0600; set [audit] anonymize = \"hash\" and anonymize_key)",
                path.display()
            )
            .map_err(AuditError::Output)?;
            Ok(true)
        }
        AuditCommand::Keygen {
            out: prefix,
            anonymize: false,
        } => {
            let (secret, public) = keys::keygen(&prefix)?;
            writeln!(
                out,
                "private key: {} (keep it on the resolver, mode 0600; set [audit] signing_key)\npublic key:  {} (give it to the auditor)",
                secret.display(),
                public.display()
            )
            .map_err(AuditError::Output)?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(subcommand)]
        command: AuditCommand,
    }

    #[test]
    fn flags_parse() {
        let probe = Probe::try_parse_from([
            "audit",
            "search",
            "--since",
            "2h",
            "--domain",
            "binance.com",
            "--json",
            "--limit",
            "5",
        ])
        .unwrap();
        assert!(matches!(
            probe.command,
            AuditCommand::Search {
                json: true,
                limit: Some(5),
                ..
            }
        ));
        let probe =
            Probe::try_parse_from(["audit", "export", "--format", "csv", "--output", "x.csv"])
                .unwrap();
        assert!(matches!(
            probe.command,
            AuditCommand::Export {
                format: ExportFormat::Csv,
                ..
            }
        ));
        assert!(Probe::try_parse_from(["audit", "verify", "--pubkey", "k.pub", "dir"]).is_ok());
        // Once per key after a key change.
        assert!(
            Probe::try_parse_from([
                "audit", "verify", "--pubkey", "a.pub", "--pubkey", "b.pub", "dir"
            ])
            .is_ok()
        );
        // One place to verify: a --dir beside a path would be ignored.
        assert!(Probe::try_parse_from(["audit", "verify", "--dir", "a", "b"]).is_err());
        assert!(Probe::try_parse_from(["audit", "search", "--limit", "0"]).is_err());
        assert!(
            Probe::try_parse_from([
                "audit",
                "search",
                "--since",
                "1h",
                "--from",
                "2026-01-01T00:00:00Z"
            ])
            .is_err()
        );
        assert!(Probe::try_parse_from(["audit", "search", "--json", "--csv"]).is_err());
        // Following has no end: no limit, no end time.
        assert!(Probe::try_parse_from(["audit", "search", "-f", "--since", "1h"]).is_ok());
        assert!(Probe::try_parse_from(["audit", "search", "--follow", "--limit", "5"]).is_err());
        assert!(
            Probe::try_parse_from([
                "audit",
                "search",
                "--follow",
                "--to",
                "2026-01-01T00:00:00Z"
            ])
            .is_err()
        );
    }
}
