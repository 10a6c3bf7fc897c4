//! Reads `dnsward.toml` into a validated, typed [`Config`]; every error names file, line and key.
//!
//! Loading lists is not done here (see `state.rs`): the config only says where they are.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use sha2::Digest as _;

use super::model::{
    BlockAction, BlockingSection, CacheSection, ConfigFile, ListKind, ListMode, LogSection,
    ReloadSection,
};
use crate::{audit::AuditSettings, lists::OnInvalid};

/// Upper bound of `server.threads`: far beyond any core count dnsward is run on, low enough to
/// catch a typo before it opens thousands of sockets.
const MAX_THREADS: usize = 1024;

/// A configuration problem, always tied to the file and, where there is one, the line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type (toml names the key).
    #[error("{path}:{line}:{column}: {message}", path = path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parses but makes no sense, such as a sinkhole without an address.
    #[error("{}: {key}: {reason}", location(path, *line))]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
}

/// The validated configuration, with paths resolved against the config file's directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, as given on the command line.
    pub path: PathBuf,
    /// SHA-256 of the exact text parsed: the audit log's load record names the configuration
    /// (actions, modes, ACL) that was in force, as it names each list.
    pub sha256: [u8; 32],
    pub server: ServerConfig,
    pub forward: ForwardConfig,
    /// `[recursion]` with `root_hints`/`trust_anchor` resolved against the config directory.
    pub recursion: crate::resolve::RecursionSettings,
    /// `[[forward.zone]]` tables.
    pub forward_zones: Vec<crate::resolve::ForwardZone>,
    pub cache: CacheSection,
    pub blocking: BlockingSection,
    pub log: LogSection,
    pub reload: ReloadSection,
    /// `[audit]` with `dir` resolved against `server.data_dir` and key files against the config
    /// file's directory.
    pub audit: AuditSettings,
    pub lists: Vec<ListConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Resolved `server.data_dir`.
    pub data_dir: PathBuf,
    pub allow: Vec<IpNet>,
    pub udp_payload_max: u16,
    pub tcp_idle_timeout: Duration,
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_client: usize,
    /// `server.threads` with 0 resolved to the number of cores.
    pub threads: usize,
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: u32,
    pub strategy: crate::resolve::upstream::Strategy,
}

/// One list as the policy needs it.
#[derive(Debug, Clone)]
pub struct ListConfig {
    pub name: String,
    /// Resolved path of the list file.
    pub path: PathBuf,
    /// The path as written in the config, for messages an admin recognises.
    pub display_path: String,
    pub kind: ListKind,
    pub action: BlockAction,
    pub sinkhole_v4: Option<Ipv4Addr>,
    pub sinkhole_v6: Option<Ipv6Addr>,
    pub mode: ListMode,
    pub ede: u16,
    pub on_invalid: OnInvalid,
    /// Line of the `[[list]]` table in the config file.
    pub config_line: usize,
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = crate::files::read_regular_text(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` names the file in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|error| {
        let (line, column) = error
            .span()
            .map_or((0, 0), |span| line_and_column(text, span.start));
        let mut message = error.message().to_owned();
        if let Some(hint) = value_hint(&message) {
            message.push_str(hint);
        }
        // toml says what is wrong, not of which key: a wrong address says only "invalid
        // socket address syntax".
        if let Some(key) = key_at(text, line) {
            message = format!("{key}: {message}");
        }
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    })?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    let invalid = |span: Range<usize>, key: String, reason: String| ConfigError::Invalid {
        path: path.to_owned(),
        line: if span.is_empty() {
            // No span: find where the key is written, e.g. `forward.attempts`.
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
            key_line(text, section, leaf)
        } else {
            line_and_column(text, span.start).0
        },
        key,
        reason,
    };

    if file.server.listen.is_empty() {
        return Err(invalid(
            0..0,
            "server.listen".into(),
            "needs at least one address".into(),
        ));
    }
    if file.server.udp_payload_max < 512 {
        return Err(invalid(
            0..0,
            "server.udp_payload_max".into(),
            "must be at least 512 (RFC 1035)".into(),
        ));
    }
    if file.server.tcp_max_connections == 0 {
        return Err(invalid(
            0..0,
            "server.tcp_max_connections".into(),
            "must be at least 1".into(),
        ));
    }
    if file.server.tcp_max_connections_per_client == 0 {
        return Err(invalid(
            0..0,
            "server.tcp_max_connections_per_client".into(),
            "must be at least 1".into(),
        ));
    }
    if file.server.threads > MAX_THREADS {
        return Err(invalid(
            0..0,
            "server.threads".into(),
            format!("must be at most {MAX_THREADS} (0: one per core)"),
        ));
    }
    if file.forward.timeout_ms == 0 {
        return Err(invalid(
            0..0,
            "forward.timeout_ms".into(),
            "must be at least 1".into(),
        ));
    }
    if file.forward.attempts == 0 {
        return Err(invalid(
            0..0,
            "forward.attempts".into(),
            "must be at least 1".into(),
        ));
    }
    let mut zone_names: Vec<hickory_proto::rr::Name> = Vec::with_capacity(file.forward.zones.len());
    for (index, zone) in file.forward.zones.iter().enumerate() {
        let zone_invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: nth_table_line(text, "forward.zone", index),
            key: format!("forward.zone[{index}].{field}"),
            reason,
        };
        let name = hickory_proto::rr::Name::from_ascii(&zone.name)
            .ok()
            .filter(|name| !zone.name.is_empty() && !name.is_root())
            .ok_or_else(|| zone_invalid("name", format!("{:?} is not a domain name", zone.name)))?;
        if zone.upstreams.is_empty() {
            return Err(zone_invalid(
                "upstreams",
                "needs at least one upstream".into(),
            ));
        }
        if zone_names.iter().any(|seen| seen.eq_ignore_root(&name)) {
            return Err(zone_invalid(
                "name",
                format!(
                    "{:?} is forwarded twice (names compare without case)",
                    zone.name
                ),
            ));
        }
        zone_names.push(name);
    }
    for (key, value) in [
        ("recursion.timeout_ms", file.recursion.timeout_ms),
        (
            "recursion.server_timeout_ms",
            file.recursion.server_timeout_ms,
        ),
    ] {
        if value == 0 {
            return Err(invalid(0..0, key.into(), "must be at least 1".into()));
        }
    }

    // RFC 9156 and the depth of real names: root, TLD, zone, and a CNAME or two beyond.
    const MIN_DEPTH: u8 = 4;
    if file.recursion.max_depth < MIN_DEPTH {
        return Err(invalid(
            0..0,
            "recursion.max_depth".into(),
            format!(
                "must be at least {MIN_DEPTH}: a name three delegations below the root needs \
                 three referrals (the default is 24)"
            ),
        ));
    }
    if file.cache.min_ttl_secs > file.cache.max_ttl_secs {
        return Err(invalid(
            0..0,
            "cache.min_ttl_secs".into(),
            format!(
                "{} is above cache.max_ttl_secs ({})",
                file.cache.min_ttl_secs, file.cache.max_ttl_secs
            ),
        ));
    }
    if file.cache.servfail_ttl_secs > MAX_SERVFAIL_TTL {
        return Err(invalid(
            0..0,
            "cache.servfail_ttl_secs".into(),
            format!("must be at most {MAX_SERVFAIL_TTL} (RFC 2308 §7.1: five minutes)"),
        ));
    }
    for (key, value) in [
        ("cache.max_ttl_secs", file.cache.max_ttl_secs),
        (
            "cache.negative_max_ttl_secs",
            file.cache.negative_max_ttl_secs,
        ),
    ] {
        // A ceiling of 0 had turned the ceiling off (answers kept the upstream's TTL) while
        // caching nothing: the opposite of what it says.
        if value == 0 {
            return Err(invalid(
                0..0,
                key.into(),
                "must be at least 1; cache.max_entries = 0 turns the cache off".into(),
            ));
        }
    }
    for (key, value) in [
        ("cache.max_ttl_secs", file.cache.max_ttl_secs),
        (
            "cache.negative_max_ttl_secs",
            file.cache.negative_max_ttl_secs,
        ),
        ("blocking.ttl_secs", file.blocking.ttl_secs),
    ] {
        if value > MAX_TTL {
            return Err(invalid(
                0..0,
                key.into(),
                format!("must be at most {MAX_TTL} (RFC 2181 §8: a TTL is 31 bits)"),
            ));
        }
    }
    for (index, spanned) in file.server.listen.iter().enumerate() {
        let addr = spanned.get_ref();
        if file.server.listen[..index]
            .iter()
            .any(|earlier| earlier.get_ref() == addr)
        {
            return Err(invalid(
                spanned.span(),
                "server.listen".into(),
                format!("{addr} is listed twice"),
            ));
        }
        // A wildcard address takes its port on every address of its family: another address
        // of that family on the same port cannot be bound beside it (`check` had passed such
        // a configuration, and `serve` then failed with "address in use").
        let overlaps = |other: &SocketAddr| {
            other.port() == addr.port()
                && other.port() != 0
                && other.is_ipv4() == addr.is_ipv4()
                && (other.ip().is_unspecified() || addr.ip().is_unspecified())
        };
        if let Some(earlier) = file.server.listen[..index]
            .iter()
            .map(|earlier| earlier.get_ref())
            .find(|earlier| overlaps(earlier))
        {
            return Err(invalid(
                spanned.span(),
                "server.listen".into(),
                format!(
                    "{addr} and {earlier} cannot both be bound: a wildcard address takes the \
                     port on every address of its family"
                ),
            ));
        }
        if addr.port() == 0 && !addr.ip().is_loopback() {
            // Port 0 (any free port) is for tests on loopback; a resolver clients are told
            // to use needs a port they can know.
            return Err(invalid(
                spanned.span(),
                "server.listen".into(),
                format!("{addr}: port 0 is only for loopback (tests)"),
            ));
        }
    }
    if let Some(extra) = file
        .forward
        .upstreams
        .get(crate::resolve::upstream::MAX_UPSTREAMS)
    {
        return Err(invalid(
            extra.span(),
            "forward.upstreams".into(),
            format!(
                "at most {} upstreams",
                crate::resolve::upstream::MAX_UPSTREAMS
            ),
        ));
    }
    for spanned in &file.forward.upstreams {
        let addr = spanned.get_ref();
        if addr.port() == 0 {
            return Err(invalid(
                spanned.span(),
                "forward.upstreams".into(),
                format!("{addr}: port 0 is no server's port"),
            ));
        }
        if let Some(listen) = own_listen_address(&file.server.listen, *addr) {
            return Err(invalid(
                spanned.span(),
                "forward.upstreams".into(),
                format!(
                    "{addr} is this server itself (server.listen {listen}): each query would be \
                     forwarded back to it, without end"
                ),
            ));
        }
    }
    for (index, zone) in file.forward.zones.iter().enumerate() {
        if zone.upstreams.len() > crate::resolve::upstream::MAX_UPSTREAMS {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: nth_table_line(text, "forward.zone", index),
                key: format!("forward.zone[{index}].upstreams"),
                reason: format!(
                    "at most {} upstreams",
                    crate::resolve::upstream::MAX_UPSTREAMS
                ),
            });
        }
        for addr in &zone.upstreams {
            if let Some(listen) = own_listen_address(&file.server.listen, *addr) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    line: nth_table_line(text, "forward.zone", index),
                    key: format!("forward.zone[{index}].upstreams"),
                    reason: format!(
                        "{addr} is this server itself (server.listen {listen}): each query \
                         would be forwarded back to it, without end"
                    ),
                });
            }
        }
    }

    if let Some((key, reason)) = file.audit.invalid_value() {
        return Err(invalid(0..0, format!("audit.{key}"), reason));
    }

    if let Some(problem) = crate::logging::filter_problem(&file.log.level) {
        return Err(invalid(0..0, "log.level".into(), problem));
    }
    if file.lists.len() > usize::from(u16::MAX) {
        return Err(invalid(
            0..0,
            "list".into(),
            format!("at most {} lists", u16::MAX),
        ));
    }

    let mut lists: Vec<ListConfig> = Vec::with_capacity(file.lists.len());
    for (index, spanned) in file.lists.iter().enumerate() {
        let span = spanned.span();
        let list = spanned.get_ref();
        let key = |field: &str| format!("list[{index}].{field}");
        if list.name.trim().is_empty() {
            return Err(invalid(span, key("name"), "must not be empty".into()));
        }
        if let Some(problem) = list_name_problem(&list.name) {
            return Err(invalid(span, key("name"), problem));
        }
        if list.path.trim().is_empty() {
            return Err(invalid(span, key("path"), "must not be empty".into()));
        }
        if lists.iter().any(|other| other.name == list.name) {
            return Err(invalid(
                span,
                key("name"),
                format!("duplicate list name {:?}", list.name),
            ));
        }
        if !matches!(list.ede, 15..=17) {
            return Err(invalid(
                span,
                key("ede"),
                format!(
                    "{} is not a blocking EDE code; use 15 (Blocked), 16 (Censored) or 17 (Filtered)",
                    list.ede
                ),
            ));
        }
        let mut sinkhole_v4 = None;
        let mut sinkhole_v6 = None;
        for address in &list.sinkhole {
            let duplicate = match address {
                IpAddr::V4(v4) => sinkhole_v4.replace(*v4).is_some(),
                IpAddr::V6(v6) => sinkhole_v6.replace(*v6).is_some(),
            };
            if duplicate {
                return Err(invalid(
                    span,
                    key("sinkhole"),
                    "at most one IPv4 and one IPv6 address".into(),
                ));
            }
        }
        match (list.action, list.sinkhole.is_empty()) {
            (BlockAction::Sinkhole, true) => {
                return Err(invalid(
                    span,
                    key("sinkhole"),
                    "action = \"sinkhole\" needs at least one address".into(),
                ));
            }
            (action, false) if action != BlockAction::Sinkhole => {
                return Err(invalid(
                    span,
                    key("sinkhole"),
                    "only meaningful with action = \"sinkhole\"".into(),
                ));
            }
            _ => {}
        }
        if list.kind == ListKind::Allow {
            // These settings say how a block is answered; an allow list's match answers
            // normally. `mode = "log-only"` read as a dry run while the list in fact allowed.
            let unused = if list.mode == ListMode::LogOnly {
                Some((
                    "mode",
                    "an allow list has no log-only mode (its matches would still be allowed); \
                     to see what an edit would change, use `dnsward lists diff`",
                ))
            } else if list.action != BlockAction::default() {
                Some((
                    "action",
                    "applies to block lists; an allow list answers normally",
                ))
            } else if list.ede != super::model::DEFAULT_EDE {
                Some((
                    "ede",
                    "applies to block lists; an allow list answers normally",
                ))
            } else {
                None
            };
            if let Some((field, why)) = unused {
                return Err(invalid(span, key(field), why.into()));
            }
        }
        lists.push(ListConfig {
            name: list.name.clone(),
            path: base_dir.join(&list.path),
            display_path: list.path.clone(),
            kind: list.kind,
            action: list.action,
            sinkhole_v4,
            sinkhole_v6,
            mode: list.mode,
            ede: list.ede,
            on_invalid: list.on_invalid,
            config_line: line_and_column(text, span.start).0,
        });
    }

    let data_dir = base_dir.join(&file.server.data_dir);
    Ok(Config {
        path: path.to_owned(),
        sha256: sha2::Sha256::digest(text.as_bytes()).into(),
        server: ServerConfig {
            listen: file
                .server
                .listen
                .iter()
                .map(|spanned| *spanned.get_ref())
                .collect(),
            allow: file.server.allow.clone(),
            data_dir: data_dir.clone(),
            udp_payload_max: file.server.udp_payload_max,
            tcp_idle_timeout: Duration::from_secs(file.server.tcp_idle_timeout_secs.max(1)),
            tcp_max_connections: file.server.tcp_max_connections,
            tcp_max_connections_per_client: file.server.tcp_max_connections_per_client,
            threads: match file.server.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                threads => threads,
            },
        },
        forward: ForwardConfig {
            upstreams: file
                .forward
                .upstreams
                .iter()
                .map(|spanned| *spanned.get_ref())
                .collect(),
            timeout: Duration::from_millis(file.forward.timeout_ms),
            attempts: file.forward.attempts,
            strategy: file.forward.strategy,
        },
        recursion: crate::resolve::RecursionSettings {
            root_hints: file.recursion.root_hints.as_ref().map(|p| base_dir.join(p)),
            trust_anchor: file
                .recursion
                .trust_anchor
                .as_ref()
                .map(|p| base_dir.join(p)),
            ..file.recursion.clone()
        },
        forward_zones: file.forward.zones.clone(),
        cache: file.cache,
        blocking: file.blocking,
        log: file.log,
        reload: file.reload,
        audit: resolve_audit_paths(file.audit, base_dir, &data_dir),
        lists,
    })
}

fn resolve_audit_paths(
    mut audit: AuditSettings,
    base_dir: &Path,
    data_dir: &Path,
) -> AuditSettings {
    if audit.dir.is_relative() {
        audit.dir = data_dir.join(&audit.dir);
    }
    for key in [&mut audit.signing_key, &mut audit.anonymize_key]
        .into_iter()
        .flatten()
    {
        if key.is_relative() {
            *key = base_dir.join(&*key);
        }
    }
    audit
}

/// `path:line`, or just `path` when the line is unknown (0).
fn location(path: &Path, line: usize) -> String {
    if line == 0 {
        path.display().to_string()
    } else {
        format!("{}:{line}", path.display())
    }
}

/// The line where `key` is set inside `[section]`, for errors about values toml gives no span
/// for (whole-section checks). When the key is not written (its default conflicts with a value
/// that is, such as `audit.retention_max_total_bytes` with a larger `segment_max_bytes`), the
/// line of the section's header; 0 if neither is written.
fn key_line(text: &str, section: &str, key: &str) -> usize {
    let mut current = String::new();
    let mut header = 0;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
        {
            current = name.trim_matches(|c| c == '[' || c == ' ').to_owned();
            if current == section && header == 0 {
                header = index + 1;
            }
        } else if current == section
            && trimmed
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return index + 1;
        }
    }
    header
}

/// What a value should look like, for the parse errors of the types that say only "invalid".
fn value_hint(message: &str) -> Option<&'static str> {
    match message {
        "invalid socket address syntax" => {
            Some(" (expected address:port, such as 127.0.0.1:53 or [::1]:53)")
        }
        "invalid IP address syntax" => Some(
            " (expected an address or a network with a prefix length in range, such as \
             10.0.0.0/8 or 2001:db8::/32)",
        ),
        _ => None,
    }
}

/// The dotted key (`server.listen`) written on 1-based `line` or, inside a value that spans
/// lines, the one before it in the same table; `None` when the line is a table header or the
/// key cannot be told.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut key = None;
    for candidate in lines.get(..line)?.iter().rev() {
        let trimmed = candidate.trim();
        if trimmed.starts_with('[') && !trimmed.starts_with("[\"") && key.is_none() {
            // A header line, or a table reached before any key: nothing to name.
            let is_header = trimmed
                .trim_start_matches('[')
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic());
            if is_header {
                return None;
            }
        }
        if key.is_none()
            && let Some((name, _)) = trimmed.split_once('=')
        {
            let name = name.trim();
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                key = Some(name.to_owned());
            }
            continue;
        }
        if let Some(key) = &key
            && let Some(header) = trimmed
                .strip_prefix('[')
                .and_then(|rest| rest.split(']').next())
        {
            let table = header.trim_matches(|c| c == '[' || c == ' ');
            return Some(format!("{table}.{key}"));
        }
    }
    key
}

/// RFC 2181 §8: TTLs are unsigned 31-bit numbers.
const MAX_TTL: u32 = i32::MAX as u32;
/// RFC 2308 §7.1: a server failure must not be cached longer than five minutes.
const MAX_SERVFAIL_TTL: u32 = 300;

/// The 1-based line of the `index`-th `[[table]]` header (0 if there is none).
fn nth_table_line(text: &str, table: &str, index: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            line.trim()
                .strip_prefix("[[")
                .and_then(|rest| rest.split("]]").next())
                .is_some_and(|name| name.trim() == table)
        })
        .nth(index)
        .map_or(0, |(number, _)| number + 1)
}

/// 1-based line and column of a byte offset, as editors show them.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The listen address through which `upstream` reaches this very server, if one does: the
/// same address and port, or the port of a wildcard listener and an address of this host
/// that is sure to be ours (loopback, or the unspecified address, which reaches the host).
fn own_listen_address(
    listen: &[toml::Spanned<SocketAddr>],
    upstream: SocketAddr,
) -> Option<SocketAddr> {
    listen
        .iter()
        .map(|spanned| *spanned.get_ref())
        .find(|listen| {
            listen.port() == upstream.port()
                && (listen.ip() == upstream.ip()
                    || (listen.ip().is_unspecified()
                        && listen.is_ipv4() == upstream.is_ipv4()
                        && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())))
        })
}

/// The longest list name: it is quoted in every block answer's EDE text (`list=<name> rule=…`),
/// which shares a UDP answer's 512 bytes with the question and the SOA.
const MAX_LIST_NAME: usize = 64;

/// Why a list name cannot be used, if it cannot. A name is quoted unescaped in EDE text
/// (`list=<name> rule=<rule>`), log lines and audit records, and typed after `audit search
/// --list`: a space or `=` in it would make that text ambiguous, so names keep to the
/// characters of a hostname label plus `_` and `.`.
fn list_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_LIST_NAME {
        return Some(format!(
            "{:?} is longer than {MAX_LIST_NAME} characters",
            name
        ));
    }
    let bad = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))?;
    Some(format!(
        "{name:?} contains {bad:?}; a list name is letters, digits, '-', '_' and '.' \
         (it is quoted unescaped in EDE text and audit records)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("conf/dnsward.toml"), text)
    }

    #[test]
    fn defaults_are_loopback_only() {
        let config = parse_str("").unwrap();
        assert_eq!(
            config.server.listen,
            vec!["127.0.0.1:5353".parse().unwrap()]
        );
        assert!(
            config
                .server
                .allow
                .iter()
                .all(|net| net.addr().is_loopback())
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let error = parse_str("[server]\nlisten = [\"127.0.0.1:53\"]\nlisen = 1\n").unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("conf/dnsward.toml:3:"), "{message}");
        assert!(message.contains("lisen"), "{message}");
    }

    #[test]
    fn a_bare_address_is_a_network_of_itself() {
        let config =
            parse_str("[server]\nallow = [\"192.0.2.7\", \"2001:db8::7\", \"10.0.0.0/8\"]\n")
                .unwrap();
        let allow: Vec<String> = config
            .server
            .allow
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allow, ["192.0.2.7/32", "2001:db8::7/128", "10.0.0.0/8"]);
    }

    #[test]
    fn bad_cidr_names_its_line() {
        let error = parse_str("[server]\n\nallow = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(
            error.to_string().starts_with("conf/dnsward.toml:3:"),
            "{error}"
        );
    }

    #[test]
    fn allow_lists_refuse_block_settings() {
        for (setting, field) in [
            ("mode = \"log-only\"", "list[0].mode"),
            ("action = \"null\"", "list[0].action"),
            ("ede = 16", "list[0].ede"),
        ] {
            let text =
                format!("[[list]]\nname = \"a\"\npath = \"a.txt\"\ntype = \"allow\"\n{setting}\n");
            let error = parse_str(&text).unwrap_err().to_string();
            assert!(error.contains(field), "{setting}: {error}");
        }
        // The defaults written out are harmless, and a block list takes them all.
        parse_str(
            "[[list]]\nname = \"a\"\npath = \"a.txt\"\ntype = \"allow\"\nmode = \"enforce\"\n",
        )
        .unwrap();
        parse_str("[[list]]\nname = \"b\"\npath = \"b.txt\"\nmode = \"log-only\"\naction = \"null\"\nede = 16\n")
            .unwrap();
    }

    #[test]
    fn sinkhole_needs_an_address() {
        let text = "[[list]]\nname = \"x\"\npath = \"x.txt\"\naction = \"sinkhole\"\n";
        let error = parse_str(text).unwrap_err().to_string();
        assert!(error.contains("list[0].sinkhole"), "{error}");
        assert!(error.starts_with("conf/dnsward.toml:"), "{error}");
    }

    #[test]
    fn list_paths_are_relative_to_the_config() {
        let text =
            "[[list]]\nname = \"x\"\npath = \"lists/x.txt\"\nmode = \"log-only\"\nede = 16\n";
        let config = parse_str(text).unwrap();
        assert_eq!(config.lists[0].path, Path::new("conf/lists/x.txt"));
        assert_eq!(config.lists[0].mode, ListMode::LogOnly);
        assert_eq!(config.lists[0].ede, 16);
    }

    #[test]
    fn list_names_that_would_make_ede_text_ambiguous_are_rejected() {
        for (name, says) in [
            ("a b", "contains ' '"),
            ("a=b", "contains '='"),
            // TOML reads `\t` as a tab.
            ("tab\\there", "contains '\\t'"),
            ("é", "contains 'é'"),
        ] {
            let text = format!("[[list]]\nname = \"{name}\"\npath = \"a\"\n");
            let error = parse_str(&text).unwrap_err().to_string();
            assert!(error.contains("list[0].name"), "{error}");
            assert!(error.contains(says), "{name}: {error}");
        }
        let long = "x".repeat(MAX_LIST_NAME + 1);
        let text = format!("[[list]]\nname = \"{long}\"\npath = \"a\"\n");
        let error = parse_str(&text).unwrap_err().to_string();
        assert!(error.contains("longer than 64"), "{error}");
        let text = "[[list]]\nname = \"corp.example_v-2\"\npath = \"a\"\n";
        assert_eq!(parse_str(text).unwrap().lists[0].name, "corp.example_v-2");
    }

    #[test]
    fn forward_zones_are_checked_in_any_mode() {
        let zone = |name: &str, upstreams: &str| {
            format!("[[forward.zone]]\nname = \"{name}\"\nupstreams = [{upstreams}]\n")
        };
        let good = zone("corp.example", "\"10.0.0.53:53\"");
        let cases = [
            (
                zone("bad..name", "\"10.0.0.53:53\""),
                "forward.zone[0].name",
                1,
            ),
            (zone("corp.example", ""), "forward.zone[0].upstreams", 1),
            (
                format!("{good}{}", zone("CORP.example.", "\"10.0.0.54:53\"")),
                "forward.zone[1].name: \"CORP.example.\" is forwarded twice",
                4,
            ),
        ];
        for (text, says, line) in cases {
            let error = parse_str(&text).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("conf/dnsward.toml:{line}: {says}")),
                "{error}"
            );
        }
        assert_eq!(parse_str(&good).unwrap().forward_zones.len(), 1);
    }

    #[test]
    fn values_that_cannot_work_are_refused_with_their_key() {
        let cases = [
            (
                "[recursion]\nmax_depth = 0\n",
                "recursion.max_depth: must be at least 4",
            ),
            (
                "[cache]\nmin_ttl_secs = 100\nmax_ttl_secs = 10\n",
                "cache.min_ttl_secs: 100 is above cache.max_ttl_secs (10)",
            ),
            (
                "[server]\nlisten = [\"127.0.0.1:5353\"]\n[forward]\nupstreams = [\"127.0.0.1:5353\"]\n",
                "forward.upstreams: 127.0.0.1:5353 is this server itself",
            ),
            (
                "[server]\nlisten = [\"0.0.0.0:5353\"]\n[forward]\nupstreams = [\"127.0.0.2:5353\"]\n",
                "forward.upstreams: 127.0.0.2:5353 is this server itself",
            ),
            (
                "[server]\nlisten = [\"0.0.0.0:5353\", \"127.0.0.1:5353\"]\n",
                "server.listen: 127.0.0.1:5353 and 0.0.0.0:5353 cannot both be bound",
            ),
            (
                "[cache]\nmax_ttl_secs = 0\n",
                "cache.max_ttl_secs: must be at least 1",
            ),
            (
                "[cache]\nnegative_max_ttl_secs = 0\n",
                "cache.negative_max_ttl_secs: must be at least 1",
            ),
            (
                "[cache]\nservfail_ttl_secs = 1000\n",
                "cache.servfail_ttl_secs: must be at most 300",
            ),
            (
                "[blocking]\nttl_secs = 4294967295\n",
                "blocking.ttl_secs: must be at most 2147483647",
            ),
            (
                "[server]\nlisten = [\"127.0.0.1:53\", \"127.0.0.1:53\"]\n",
                "server.listen: 127.0.0.1:53 is listed twice",
            ),
            (
                "[server]\nlisten = [\"192.0.2.1:0\"]\n",
                "server.listen: 192.0.2.1:0: port 0",
            ),
            (
                "[forward]\nupstreams = [\"192.0.2.1:0\"]\n",
                "forward.upstreams: 192.0.2.1:0: port 0",
            ),
        ];
        for (text, says) in cases {
            let error = parse_str(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text}: {error}");
            assert!(error.starts_with("conf/dnsward.toml:"), "{error}");
        }
        // The edges themselves are fine.
        let text = "[recursion]\nmax_depth = 4\n[cache]\nmin_ttl_secs = 10\nmax_ttl_secs = 10\nservfail_ttl_secs = 300\n[blocking]\nttl_secs = 2147483647\n";
        assert!(parse_str(text).is_ok());
    }

    #[test]
    fn parse_errors_name_their_key_and_what_a_value_should_be() {
        let cases = [
            (
                "[server]\nlisten = [\"127.0.0.1\"]\n",
                "conf/dnsward.toml:2:11: server.listen: invalid socket address syntax (expected address:port",
            ),
            (
                "[server]\nallow = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n",
                "conf/dnsward.toml:4:3: server.allow: \"10.0.0.0/33\" is not an address or a network",
            ),
            (
                "[cache]\nbogus_key = 1\n",
                "conf/dnsward.toml:2:1: cache.bogus_key: unknown field `bogus_key`",
            ),
            (
                "[[list]]\nname = \"x\"\npath = \"x\"\nmode = 5\n",
                "conf/dnsward.toml:4:8: list.mode: wanted string or table",
            ),
        ];
        for (text, says) in cases {
            let error = parse_str(text).unwrap_err().to_string();
            assert!(error.starts_with(says), "{error}");
        }
    }

    #[test]
    fn an_empty_list_path_is_rejected_where_it_is_written() {
        let text = "[[list]]\nname = \"x\"\npath = \"\"\n";
        let error = parse_str(text).unwrap_err().to_string();
        // The line of its `[[list]]` table, as for the list's other keys.
        assert!(
            error.starts_with("conf/dnsward.toml:1: list[0].path: must not be empty"),
            "{error}"
        );
    }

    #[test]
    fn duplicate_list_names_are_rejected() {
        let text = "[[list]]\nname = \"x\"\npath = \"a\"\n[[list]]\nname = \"x\"\npath = \"b\"\n";
        let error = parse_str(text).unwrap_err().to_string();
        assert!(error.contains("duplicate list name"), "{error}");
        assert!(error.starts_with("conf/dnsward.toml:4:"), "{error}");
    }

    #[test]
    fn whole_value_errors_find_their_key_line() {
        let error = parse_str("[server]\n[forward]\n# comment\nattempts = 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "conf/dnsward.toml:4: forward.attempts: must be at least 1"
        );
    }

    #[test]
    fn zero_recursion_timeouts_are_rejected_with_their_line() {
        let error = parse_str("[recursion]\nenabled = true\nserver_timeout_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "conf/dnsward.toml:3: recursion.server_timeout_ms: must be at least 1"
        );
    }

    #[test]
    fn senseless_audit_values_are_rejected_with_their_line() {
        let cases = [
            (
                "segment_max_bytes = 0",
                "audit.segment_max_bytes: must be at least 4096",
            ),
            (
                "segment_max_age_secs = 0",
                "audit.segment_max_age_secs: must be at least 1",
            ),
            (
                "retention_max_total_bytes = 1000",
                "audit.retention_max_total_bytes: must be at least 3 × segment_max_bytes",
            ),
            (
                "retention_max_age_days = 213503982334602",
                "audit.retention_max_age_days: must be at most 36500",
            ),
            (
                "checkpoint_interval_secs = 0",
                "audit.checkpoint_interval_secs: must be from 1 to 20",
            ),
            (
                "checkpoint_interval_secs = 60",
                "audit.checkpoint_interval_secs: must be from 1 to 20",
            ),
            (
                "queue_capacity = 0",
                "audit.queue_capacity: must be at least 1",
            ),
            (
                "anonymize = \"hash\"",
                "audit.anonymize: \"hash\" needs anonymize_key",
            ),
            (
                "anonymize_key = \"anon.key\"",
                "audit.anonymize_key: is used only with anonymize = \"hash\", and anonymize is \"none\"",
            ),
        ];
        for (line, expected) in cases {
            let error = parse_str(&format!(
                "[audit]\nenabled = true\n{line}\nsigning_key = \"a.key\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                error.starts_with(&format!("conf/dnsward.toml:3: {expected}")),
                "{line}: {error}"
            );
        }
        // The limits themselves, and 0 for "no limit" where it means that, are accepted.
        parse_str(
            "[audit]\nsegment_max_bytes = 4096\nretention_max_total_bytes = 12288\n\
             retention_max_age_days = 0\ncheckpoint_interval_secs = 20\nqueue_capacity = 1\n",
        )
        .unwrap();
        parse_str("[audit]\nretention_max_total_bytes = 0\nretention_max_age_days = 36500\n")
            .unwrap();
        // Two segments' worth keeps only the one being written: each closed segment ends past
        // segment_max_bytes, so with the newest counted no closed one fits.
        let error =
            parse_str("[audit]\nsegment_max_bytes = 4096\nretention_max_total_bytes = 12287\n")
                .unwrap_err()
                .to_string();
        assert!(
            error.contains(
                "audit.retention_max_total_bytes: must be at least 3 × segment_max_bytes (12288)"
            ),
            "{error}"
        );
        // A default at fault (retention under a raised segment size): the section's line.
        let error = parse_str("# site\n[audit]\nsegment_max_bytes = 20000000000\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("conf/dnsward.toml:2: audit.retention_max_total_bytes: "),
            "{error}"
        );
        // Without a signing key no checkpoint is timed; a disabled log is not checked.
        parse_str("[audit]\ncheckpoint_interval_secs = 3600\n").unwrap();
        parse_str("[audit]\nenabled = false\nsegment_max_bytes = 0\n").unwrap();
    }

    #[test]
    fn bad_log_level_is_rejected() {
        let error = parse_str("[log]\nlevel = \"loud=[\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("log.level"), "{error}");
        // Words tracing would take for module names, silencing everything else.
        for level in ["warning", "inf", "", "info,warning"] {
            let error = parse_str(&format!("[log]\nlevel = {level:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("log.level"), "{level}: {error}");
        }
        for level in [
            "warn",
            "INFO",
            "off",
            "info,dnsward::decision=debug",
            "hickory_net=warn",
        ] {
            assert!(
                parse_str(&format!("[log]\nlevel = {level:?}\n")).is_ok(),
                "{level}"
            );
        }
    }

    #[test]
    fn ede_outside_blocking_codes_is_rejected() {
        let text = "[[list]]\nname = \"x\"\npath = \"a\"\nede = 3\n";
        assert!(
            parse_str(text)
                .unwrap_err()
                .to_string()
                .contains("list[0].ede")
        );
    }
}
