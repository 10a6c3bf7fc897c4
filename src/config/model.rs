//! The configuration file's shape: serde structs with their defaults, and nothing else.
//!
//! Validation that needs more than one field, or the file system, lives in `load.rs`. Every struct
//! is `deny_unknown_fields` so a misspelt key is an error naming the key, never silently ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::lists::OnInvalid;

/// Networks as `address/prefix`, or a bare address for itself alone (`/32`, `/128`): what
/// operators write for one host (ipnet's own parser refused it, with a message that said an
/// address would do).
pub fn networks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    // Element by element, so that an error names the element's own line and column.
    Ok(Vec::<Network>::deserialize(deserializer)?
        .into_iter()
        .map(|network| network.0)
        .collect())
}

/// One element of [`networks`].
struct Network(IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parsed inside the visitor, so that an error carries the element's own position.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Network;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address or a network")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Network, E> {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map(Network)
                    .map_err(|_| {
                        E::custom(format!(
                            "{text:?} is not an address or a network (192.0.2.1, \
                             192.0.2.0/24, 2001:db8::/32; a prefix length at most 32 or 128)"
                        ))
                    })
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// [`networks`], for a setting that may be left out.
pub fn optional_networks<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<IpNet>>, D::Error> {
    networks(deserializer).map(Some)
}

/// The whole `dnsward.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub server: ServerSection,
    pub forward: ForwardSection,
    /// `[recursion]`: iterative resolution from the root with DNSSEC validation.
    pub recursion: crate::resolve::RecursionSettings,
    pub cache: CacheSection,
    pub blocking: BlockingSection,
    pub log: LogSection,
    pub reload: ReloadSection,
    /// `[audit]`: the hash-chained, signed decision trail (see `audit::AuditSettings`).
    pub audit: crate::audit::AuditSettings,
    /// `[[list]]` tables, in the order they are written. Order matters only between lists of the
    /// same type and mode: the first matching list is the one a decision names.
    #[serde(rename = "list")]
    pub lists: Vec<Spanned<ListSection>>,
}

/// `[server]`: where we listen and whom we answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Addresses served on both UDP and TCP. Default `["127.0.0.1:5353"]`: loopback only, and an
    /// unprivileged port, so a first run needs no root and exposes nothing.
    pub listen: Vec<Spanned<SocketAddr>>,
    /// Client networks that get answers; everyone else gets REFUSED. Default loopback only
    /// (`127.0.0.0/8`, `::1/128`): a resolver must never be open by accident (amplification).
    #[serde(deserialize_with = "networks")]
    pub allow: Vec<IpNet>,
    /// Largest UDP response we send, in bytes, whatever the client advertises. Default 1232, the
    /// DNS Flag Day 2020 value that avoids IP fragmentation on almost every path.
    pub udp_payload_max: u16,
    /// Where dnsward keeps its own files (the audit log unless `audit.dir` says otherwise, and
    /// the served-state snapshot). Default `data`, relative to the config file's directory.
    pub data_dir: String,
    /// Idle timeout of a TCP client connection, in seconds. Default 10 (RFC 7766 suggests tens of
    /// seconds; shorter keeps idle sockets from piling up).
    pub tcp_idle_timeout_secs: u64,
    /// TCP client connections served at once, over all listen addresses. Default 256 (BIND's
    /// `tcp-clients` is 150, PowerDNS Recursor's `max-tcp-clients` 128); further connections
    /// wait in the listen backlog until one closes.
    pub tcp_max_connections: usize,
    /// TCP connections one client address may hold at once. Default 32 (PowerDNS Recursor's
    /// `max-tcp-per-client` is off by default, Unbound limits per netblock): one client cannot
    /// take every slot; past it, a new connection is closed at once.
    pub tcp_max_connections_per_client: usize,
    /// Threads that answer queries: one UDP receive loop each (an SO_REUSEPORT socket per
    /// listen address), and as many runtime workers for TCP, reloads and recursion. Default 0:
    /// one per core. Fewer leaves cores to other work on a shared machine.
    pub threads: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec![Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 5353)))],
            allow: vec![
                IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
                IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
            ],
            udp_payload_max: 1232,
            data_dir: "data".to_owned(),
            tcp_idle_timeout_secs: 10,
            tcp_max_connections: 256,
            tcp_max_connections_per_client: 32,
            threads: 0,
        }
    }
}

/// `[forward]`: the upstream resolvers we forward to.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardSection {
    /// Upstream servers as `host:port` (at most 32), chosen by `strategy`, passing over ones
    /// that stopped answering. Default empty: `serve` refuses to start without at least one.
    pub upstreams: Vec<Spanned<SocketAddr>>,
    /// How long to wait for one upstream's UDP answer, in milliseconds. Default 1500.
    pub timeout_ms: u64,
    /// How many upstreams to try (best first) before answering SERVFAIL. Default 3; with fewer
    /// upstreams than that each is tried once more. Bounds the worst-case wait to
    /// `attempts * timeout_ms`, so a client never hangs.
    pub attempts: u32,
    /// Which upstream is asked first: `fastest` (default: by smoothed round-trip time) or
    /// `in_order` (the list's order: a primary and its fallbacks). Either way one that stops
    /// answering is passed over until a background probe finds it back.
    pub strategy: crate::resolve::upstream::Strategy,
    /// `[[forward.zone]]` tables: zones forwarded to their own servers even when
    /// `recursion.enabled` (internal names the public root does not know). Default none.
    #[serde(rename = "zone")]
    pub zones: Vec<crate::resolve::ForwardZone>,
}

impl Default for ForwardSection {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout_ms: 1500,
            attempts: 3,
            strategy: crate::resolve::upstream::Strategy::default(),
            zones: Vec::new(),
        }
    }
}

/// `[cache]`: the positive and negative answer cache (RFC 2308).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Maximum number of cached answers. Default 100 000; 0 disables the cache. The UDP fast
    /// path's table of stored responses has this many slots, rounded up to a power of two.
    pub max_entries: usize,
    /// Floor for cached TTLs, in seconds. Default 0 (honour the zone's TTLs).
    pub min_ttl_secs: u32,
    /// Ceiling for cached positive TTLs, in seconds. Default 86 400 (one day).
    pub max_ttl_secs: u32,
    /// Ceiling for negative (NXDOMAIN/NODATA) TTLs, in seconds. Default 3 600: RFC 2308 §5
    /// suggests one to three hours at most.
    pub negative_max_ttl_secs: u32,
    /// How long a SERVFAIL is remembered, in seconds (RFC 2308 §7.1 allows at most 5 minutes).
    /// Default 5: long enough to absorb a burst of retries, short enough to recover quickly.
    pub servfail_ttl_secs: u32,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            min_ttl_secs: 0,
            max_ttl_secs: 86_400,
            negative_max_ttl_secs: 3_600,
            servfail_ttl_secs: 5,
        }
    }
}

/// `[blocking]`: settings shared by every block list's synthesized answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockingSection {
    /// TTL of synthesized answers (null and sinkhole addresses) and of the SOA in blocked
    /// NXDOMAIN/NODATA answers, which stubs use as the negative-caching TTL (RFC 2308 §5).
    /// Default 300: short enough that an unblock takes effect within minutes.
    pub ttl_secs: u32,
}

impl Default for BlockingSection {
    fn default() -> Self {
        Self { ttl_secs: 300 }
    }
}

/// `[reload]`: hot reload of the config and lists (SIGHUP always works).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadSection {
    /// Watch the config file and every list file and reload when one changes. Default true.
    pub watch: bool,
    /// Quiet time after the last file event before reloading, in milliseconds. Default 250:
    /// editors and `cp` write a file in several steps, and one reload should see all of them.
    pub debounce_ms: u64,
}

impl Default for ReloadSection {
    fn default() -> Self {
        Self {
            watch: true,
            debounce_ms: 250,
        }
    }
}

/// `[log]`: diagnostics (not the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A `tracing` filter such as `info` or `dnsward=debug`. `RUST_LOG`, when set, wins.
    /// Default `info`.
    pub level: String,
    /// `text` (default) or `json`: one JSON object per event, for log shippers.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One `[[list]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSection {
    /// Unique name; decisions, EDE texts and the audit log cite it.
    pub name: String,
    /// The list file, relative to the config file's directory.
    pub path: String,
    /// `block` or `allow`. Allow lists beat block lists.
    #[serde(rename = "type", default)]
    pub kind: ListKind,
    /// What a blocked query gets. Default `nxdomain`.
    #[serde(default)]
    pub action: BlockAction,
    /// Addresses answered for A/AAAA with `action = "sinkhole"`: one IPv4 and/or one IPv6.
    #[serde(default)]
    pub sinkhole: Vec<IpAddr>,
    /// `enforce` (default) or `log-only`: answer normally but record the match.
    #[serde(default)]
    pub mode: ListMode,
    /// RFC 8914 Extended DNS Error code on blocked answers: 15 Blocked (default), 16 Censored
    /// (blocked by an external requirement, e.g. a regulator) or 17 Filtered (at the client's
    /// request).
    #[serde(default = "default_ede")]
    pub ede: u16,
    /// `fail` (default): one bad line rejects the whole list. `skip`: bad lines are skipped,
    /// counted and reported as warnings, for third-party feeds the operator cannot fix.
    #[serde(default)]
    pub on_invalid: OnInvalid,
}

/// EDE 15 (Blocked), the code a list's blocks carry unless it names another.
pub const DEFAULT_EDE: u16 = 15;

fn default_ede() -> u16 {
    DEFAULT_EDE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    #[default]
    Block,
    Allow,
}

impl ListKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    #[default]
    Nxdomain,
    Nodata,
    Null,
    Sinkhole,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListMode {
    #[default]
    Enforce,
    LogOnly,
}

impl ListMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::LogOnly => "log-only",
        }
    }
}
