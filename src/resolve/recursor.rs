//! Recursive resolution from root hints with DNSSEC validation, for the handler's step 4.
//!
//! The iteration itself (referrals, glue and glueless NS, CNAMEs across zones, QNAME
//! minimisation, UDP with TCP fallback on truncation, per-request query budget, NS and answer
//! caches) is hickory-resolver's `Recursor`; its DNSSEC validator marks every record with a
//! `Proof` (Secure, Insecure, Bogus, Indeterminate) but neither sets AD nor says *why* a record is
//! bogus. This module owns what it lacks: the settings, turning proofs into the AD bit and
//! SERVFAIL, an RFC 8914 code for the reason (9 when the parent's DS names no key of the zone,
//! else from the RRSIGs in the response, see [`bogus_reason`]), negative answers back into
//! messages, forwarding chosen zones (`[[forward.zone]]`) instead of recursing, and one deadline
//! for the whole resolution.
//!
//! Which authoritative server to ask next when one is lame (REFUSED) or dead (silent), and
//! remembering dead ones, is `servers`: a connection provider under hickory's name server pools.
//! Fetching a new signed zone's DS and DNSKEY RRsets early, in parallel, is `prefetch`.
//!
//! It does not apply policy or cache final answers (the handler and `cache` do).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hickory_proto::{
    dnssec::{
        Proof, TrustAnchors,
        rdata::{DNSKEY, DNSSECRData, DS, RRSIG},
    },
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
    serialize::{binary::BinDecodable, txt::Parser},
};
use hickory_resolver::{
    net::{DnsError, NetError, NoRecords},
    recursor::{DnssecConfig, DnssecPolicy, RecursorError, RecursorOptions},
};
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    nsec, prefetch,
    scrub::chain_records,
    servers::{self, GuardedProvider},
    upstream::{ForwardZones, UpstreamError, UpstreamQuery},
};
use crate::config::ForwardConfig;

/// The IANA root hints (named.root), used when `recursion.root_hints` is not set.
const IANA_ROOT_HINTS: &str = include_str!("../../config/root.hints");

/// `[recursion]`: resolve from the root instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecursionSettings {
    /// Resolve iteratively from the root hints. Default false: forward to `forward.upstreams`.
    /// Zones listed as `[[forward.zone]]` are forwarded either way.
    pub enabled: bool,
    /// A root hints file (zone-file syntax; only its A/AAAA addresses are used, port 53).
    /// Default: the IANA `named.root` built into the binary (`config/root.hints`).
    pub root_hints: Option<PathBuf>,
    /// Trust anchors: a file of DNSKEY records (the form hickory's validator reads). Default:
    /// the IANA root KSKs 20326 and 38696 built into hickory-proto (see `config/root.anchor`).
    pub trust_anchor: Option<PathBuf>,
    /// Validate DNSSEC: AD on secure answers, SERVFAIL + RFC 8914 code on bogus ones. Default
    /// true; false still resolves but never sets AD or fails for DNSSEC reasons.
    pub dnssec_validation: bool,
    /// Deadline for one client question, all referrals and validation included, in milliseconds.
    /// Default 10 000: long enough for a dead server's timeout plus retries elsewhere, short
    /// enough that a client retrying is not left waiting for ever.
    pub timeout_ms: u64,
    /// How long one authoritative server gets to answer one query (or accept a TCP connection)
    /// before the zone's next server is asked, in milliseconds. Default 1 000: above
    /// intercontinental round trips with TCP setup, well below hickory's 5 s for the whole pool,
    /// so a dead server costs one second, not the question (see `servers`).
    pub server_timeout_ms: u64,
    /// Maximum referral depth (and CNAME/NS sub-resolution depth), hickory's
    /// `recursion_limit`/`ns_recursion_limit`. Default 24. Bounds delegation loops. (The total
    /// work per question is further capped by hickory at 200 outgoing queries.)
    pub max_depth: u8,
    /// Name server addresses we refuse to query, as networks. Default: hickory's recommended list
    /// (loopback, RFC 1918, link-local ...), so a hostile delegation cannot aim us at internal
    /// hosts. Tests on a loopback hierarchy set `[]`.
    #[serde(deserialize_with = "crate::config::model::optional_networks")]
    pub deny_servers: Option<Vec<IpNet>>,
    /// Exceptions to `deny_servers`. Default empty.
    #[serde(deserialize_with = "crate::config::model::networks")]
    pub allow_servers: Vec<IpNet>,
    /// Entries in hickory's response cache (records, validated). Default 100 000.
    pub cache_entries: u64,
    /// RFC 9156 QNAME minimisation mode: `strict` (default; stop at NXDOMAIN, RFC 8020) or
    /// `relaxed` (continue past an NXDOMAIN at an intermediate label, for broken servers).
    pub qname_minimization: QnameMinimization,
    /// Randomise the case of outgoing query names (DNS 0x20) and reject replies that do not
    /// echo it, which makes off-path spoofing harder. Default false, as in Unbound: with
    /// hickory 0.26.3 the random case leaks into names in answer data (`ns.gOOd.ward.`) through
    /// the servers' name compression, which clients see.
    pub case_randomization: bool,
}

impl Default for RecursionSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            root_hints: None,
            trust_anchor: None,
            dnssec_validation: true,
            timeout_ms: 10_000,
            server_timeout_ms: 1_000,
            max_depth: 24,
            deny_servers: None,
            allow_servers: Vec::new(),
            cache_entries: 100_000,
            qname_minimization: QnameMinimization::Strict,
            case_randomization: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QnameMinimization {
    #[default]
    Strict,
    Relaxed,
}

/// One `[[forward.zone]]` table: names at or below `name` go to `upstreams`, even in recursive
/// mode (internal zones the public root does not know).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardZone {
    /// The zone apex, e.g. `corp.example`.
    pub name: String,
    /// Servers for that zone as `host:port`, tried in order like `forward.upstreams`.
    pub upstreams: Vec<SocketAddr>,
}

/// Why a recursive resolution failed before producing an answer.
#[derive(Debug, thiserror::Error)]
pub enum RecursionError {
    #[error("{path}: {reason}", path = path.display())]
    RootHints { path: PathBuf, reason: String },
    #[error("{path}: trust anchor: {reason}", path = path.display())]
    TrustAnchor { path: PathBuf, reason: String },
    #[error("recursor setup: {0}")]
    Setup(#[source] RecursorError),
    #[error("{qname}: no answer within {timeout:?}")]
    Timeout { qname: Name, timeout: Duration },
    #[error("{qname}: {source}")]
    Resolution {
        qname: Name,
        /// Boxed: hickory's error is large and this travels on every failed query.
        #[source]
        source: Box<RecursorError>,
    },
    /// A `[[forward.zone]]` upstream failed (the upstream error names the server).
    #[error("forward zone: {0}")]
    Forward(#[source] UpstreamError),
    /// The lookup's task on the recursor's runtime ended without a result (it panicked, or the
    /// runtime is shutting down).
    #[error("{qname}: recursion task ended: {reason}")]
    Task { qname: Name, reason: String },
}

impl RecursionError {
    /// RFC 8914 code for the SERVFAIL this error causes: 22 "No Reachable Authority" when the
    /// authorities stayed silent or refused, 23 "Network Error" otherwise, 0 "Other" for limits.
    pub fn ede_code(&self) -> u16 {
        match self {
            Self::Timeout { .. } => 22,
            Self::Forward(source) => source.ede_code(),
            Self::Resolution { source, .. } => match source.as_ref() {
                RecursorError::RecursionLimitExceeded { .. }
                | RecursorError::QueryBudgetExceeded
                | RecursorError::MaxRecordLimitExceeded { .. } => 0,
                other if is_server_failure(other) => 22,
                _ => 23,
            },
            Self::RootHints { .. }
            | Self::TrustAnchor { .. }
            | Self::Setup(_)
            | Self::Task { .. } => 0,
        }
    }

    /// The forward-zone server that failed, when it was one (else the recursion failed).
    pub fn server(&self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Forward(error) => error.server(),
            _ => None,
        }
    }
}

/// A resolved answer, ready for the handler (policy, then the wire).
#[derive(Debug)]
pub struct RecursiveAnswer {
    /// Response code, AD bit (validated: every answer, or for a negative answer every authority
    /// record, is Secure) and the three sections.
    pub message: Message,
    /// For a DNSSEC failure (SERVFAIL): RFC 8914 code and text, e.g. (7, "... expired").
    pub ede: Option<(u16, String)>,
    /// The server that answered when the name was in a `[[forward.zone]]`.
    pub forwarded_to: Option<SocketAddr>,
}

/// How many times one question is given to hickory's recursor after server failures.
const RESOLVE_ATTEMPTS: u32 = 4;

/// The recursive resolver: hickory's recursor plus forward zones.
pub struct Recursor {
    inner: Arc<hickory_resolver::recursor::Recursor<GuardedProvider>>,
    forward_zones: ForwardZones,
    validating: bool,
    timeout: Duration,
    /// The runtime the recursor was built on, where every lookup runs (see `resolve`); `None`
    /// when built outside one (`dnsward check`).
    runtime: Option<tokio::runtime::Handle>,
}

impl fmt::Debug for Recursor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Recursor")
            .field("forward_zones", &self.forward_zones)
            .field("validating", &self.validating)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Reads the A/AAAA addresses of a root hints file.
pub fn root_hint_addrs(text: &str, path: &Path) -> Result<Vec<IpAddr>, RecursionError> {
    let invalid = |reason: String| RecursionError::RootHints {
        path: path.to_owned(),
        reason,
    };
    let (_, records) = Parser::new(text, Some(path.to_owned()), Some(Name::root()))
        .parse()
        .map_err(|error| invalid(error.to_string()))?;
    let addrs: Vec<IpAddr> = records
        .values()
        .flat_map(|set| set.records_without_rrsigs())
        .filter_map(|record| record.data.ip_addr())
        .collect();
    if addrs.is_empty() {
        return Err(invalid("no A or AAAA record".to_owned()));
    }
    Ok(addrs)
}

impl Recursor {
    /// Builds the recursor. `forward` supplies the timeout and attempts used for forward zones.
    pub fn new(
        settings: &RecursionSettings,
        zones: &[ForwardZone],
        forward: &ForwardConfig,
    ) -> Result<Self, RecursionError> {
        let hints_path = settings
            .root_hints
            .clone()
            .unwrap_or_else(|| PathBuf::from("<built-in IANA root hints>"));
        let roots = match &settings.root_hints {
            Some(path) => {
                let text = crate::files::read_regular_text(path).map_err(|error| {
                    RecursionError::RootHints {
                        path: path.clone(),
                        reason: error.to_string(),
                    }
                })?;
                root_hint_addrs(&text, path)?
            }
            None => root_hint_addrs(IANA_ROOT_HINTS, &hints_path)?,
        };
        let dnssec_policy = if settings.dnssec_validation {
            let anchors = match &settings.trust_anchor {
                Some(path) => {
                    TrustAnchors::from_file(path).map_err(|error| RecursionError::TrustAnchor {
                        path: path.clone(),
                        reason: error.to_string(),
                    })?
                }
                None => TrustAnchors::default(),
            };
            let mut config = DnssecConfig::default();
            config.trust_anchor = Some(Arc::new(anchors));
            DnssecPolicy::ValidateWithStaticKey(config)
        } else {
            // Still DNSSEC-aware (DO=1 upstream) so clients asking with DO get the records.
            DnssecPolicy::ValidationDisabled
        };
        let mut options = RecursorOptions {
            response_cache_size: settings.cache_entries,
            recursion_limit: settings.max_depth,
            ns_recursion_limit: settings.max_depth,
            allow_server: settings.allow_servers.clone(),
            qname_minimization: match settings.qname_minimization {
                QnameMinimization::Strict => hickory_resolver::recursor::QNameMinimization::Strict,
                QnameMinimization::Relaxed => {
                    hickory_resolver::recursor::QNameMinimization::Relaxed
                }
            },
            case_randomization: settings.case_randomization,
            ..RecursorOptions::default()
        };
        if let Some(deny) = &settings.deny_servers {
            options.deny_server = deny.clone();
        }
        // Refused here, not at every query: hickory would log the root as primed and then fail
        // each question with "no glue found", which does not point at the deny list.
        let refused = |ip: &IpAddr| {
            options.deny_server.iter().any(|net| net.contains(ip))
                && !options.allow_server.iter().any(|net| net.contains(ip))
        };
        if !roots.is_empty() && roots.iter().all(refused) {
            return Err(RecursionError::RootHints {
                path: hints_path,
                reason: "every root server address is refused by recursion.deny_servers (by \
                         default loopback, private and other non-public ranges): for a lab \
                         hierarchy set deny_servers = [] or name the servers in allow_servers"
                    .to_owned(),
            });
        }
        let (delegations, prefetch_queue) = prefetch::queue();
        let server_timeout = Duration::from_millis(settings.server_timeout_ms.max(1));
        let inner = Arc::new(
            hickory_resolver::recursor::Recursor::new(
                &roots,
                dnssec_policy,
                None,
                options,
                GuardedProvider::new(
                    server_timeout,
                    settings.dnssec_validation.then_some(delegations),
                ),
            )
            .map_err(RecursionError::Setup)?,
        );
        if settings.dnssec_validation {
            prefetch::spawn(
                &inner,
                prefetch_queue,
                Duration::from_millis(settings.timeout_ms),
            );
        }

        let forward_zones = ForwardZones::new(zones, forward);

        Ok(Self {
            inner,
            forward_zones,
            validating: settings.dnssec_validation,
            timeout: Duration::from_millis(settings.timeout_ms.max(1)),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// Runs hickory's recursor under the one deadline, again after a server failure.
    ///
    /// Lame and dead servers are passed over inside one attempt (see `servers`); a further
    /// attempt is for a zone whose every server failed once, e.g. a single server that lost one
    /// packet, which one timeout does not hold down.
    async fn resolve_with_retries(
        &self,
        question: &Query,
        deadline: tokio::time::Instant,
    ) -> Result<Result<Message, RecursorError>, RecursionError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::time::timeout_at(
                deadline,
                self.inner.resolve(question.clone(), Instant::now(), true),
            )
            .await
            .map_err(|_| RecursionError::Timeout {
                qname: question.name().clone(),
                timeout: self.timeout,
            })?;
            match result {
                Err(error) if attempt < RESOLVE_ATTEMPTS && is_server_failure(&error) => {
                    tracing::debug!(%error, attempt, name = %question.name(), "recursion attempt failed, retrying");
                }
                other => return Ok(other),
            }
        }
    }

    /// One question to hickory's recursor, classified; negative answers become sections.
    async fn lookup(
        &self,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
        deadline: tokio::time::Instant,
    ) -> Result<Lookup, RecursionError> {
        let mut question = Query::query(name.clone(), qtype);
        question.set_query_class(qclass);
        match self.resolve_with_retries(&question, deadline).await? {
            Ok(message) => Ok(Lookup::answered(message)),
            Err(error) => match wildcard_answer(error).map_err(negative) {
                Ok(message) => Ok(Lookup::answered(message)),
                Err(Ok(sections)) => Ok(Lookup {
                    sections,
                    bogus_denial: false,
                    insecure_denial: false,
                }),
                Err(Err(NegativeError::Insecure(sections))) => Ok(Lookup {
                    sections,
                    bogus_denial: false,
                    insecure_denial: true,
                }),
                Err(Err(NegativeError::Bogus {
                    response_code,
                    authorities,
                })) => Ok(Lookup {
                    sections: (response_code, Vec::new(), authorities, Vec::new()),
                    bogus_denial: true,
                    insecure_denial: false,
                }),
                Err(Err(NegativeError::Other(source))) => Err(RecursionError::Resolution {
                    qname: name.clone(),
                    source: Box::new(source),
                }),
            },
        }
    }

    /// The CNAME chain starting at `name` (CNAME records with their RRSIGs, each lookup
    /// validated on its own) and the name it ends at. Empty when `name` is not an alias; a
    /// failed lookup ends the chain where it is.
    async fn cname_chain(
        &self,
        name: &Name,
        qclass: DNSClass,
        deadline: tokio::time::Instant,
    ) -> (Vec<Record>, Name) {
        let mut chain: Vec<Record> = Vec::new();
        let mut current = name.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let Ok(lookup) = self
                .lookup(&current, RecordType::CNAME, qclass, deadline)
                .await
            else {
                break;
            };
            let target = lookup
                .sections
                .1
                .iter()
                .find_map(|record| match &record.data {
                    RData::CNAME(target) if record.name.eq_ignore_root(&current) => {
                        Some(target.0.clone())
                    }
                    _ => None,
                });
            let Some(target) = target else { break };
            let looped = chain
                .iter()
                .any(|record| record.name.eq_ignore_root(&target));
            chain.extend(
                lookup
                    .sections
                    .1
                    .into_iter()
                    .filter(|record| record.name.eq_ignore_root(&current)),
            );
            if looped {
                break;
            }
            current = target;
        }
        (chain, current)
    }

    /// RFC 8914 code 9 "DNSKEY Missing" for a bogus answer: the zone that signed it (the RRSIGs'
    /// signer) has a secure DS RRset in its parent, but no key in the zone's DNSKEY RRset (or no
    /// DNSKEY RRset at all) is the one a DS names. hickory's validator does not say why it failed,
    /// so the DS and DNSKEY RRsets are looked up again (both are in its caches by now).
    /// `None` when the chain of trust is intact or could not be checked.
    async fn missing_dnskey(
        &self,
        judged: &[&Record],
        qclass: DNSClass,
        deadline: tokio::time::Instant,
    ) -> Option<(u16, String)> {
        let bogus = first_bogus(judged.iter().copied())?;
        let zone = rrsigs_of(judged.iter().copied(), bogus)
            .first()?
            .input()
            .signer_name
            .clone();
        let ds_lookup = self
            .lookup(&zone, RecordType::DS, qclass, deadline)
            .await
            .ok()?;
        // Only a DS we can trust makes a missing key an error rather than an insecure zone.
        let ds: Vec<&DS> = ds_lookup
            .sections
            .1
            .iter()
            .filter(|record| record.proof == Proof::Secure && record.name.eq_ignore_root(&zone))
            .filter_map(|record| match &record.data {
                RData::DNSSEC(DNSSECRData::DS(ds)) => Some(ds),
                _ => None,
            })
            .collect();
        if ds.is_empty() {
            return None;
        }
        let key_lookup = self
            .lookup(&zone, RecordType::DNSKEY, qclass, deadline)
            .await
            .ok()?;
        let keys: Vec<&DNSKEY> = key_lookup
            .sections
            .1
            .iter()
            .filter(|record| record.name.eq_ignore_root(&zone))
            .filter_map(|record| match &record.data {
                RData::DNSSEC(DNSSECRData::DNSKEY(key)) => Some(key),
                _ => None,
            })
            .collect();
        let matched = ds.iter().any(|ds| {
            keys.iter()
                .any(|key| ds.covers(&zone, key).unwrap_or(false))
        });
        if matched {
            return None;
        }
        let tags: Vec<String> = ds.iter().map(|ds| ds.key_tag().to_string()).collect();
        Some((
            9,
            format!(
                "{zone} DNSKEY: {} keys, none matches the parent's DS (key tag {})",
                keys.len(),
                tags.join(", ")
            ),
        ))
    }

    /// Resolves one client question. DNSSEC failures are answers (SERVFAIL with an EDE), not
    /// errors; errors are for "no answer at all" (timeouts, unreachable or refusing servers).
    /// RFC 8109 priming: asks for the root's NS and DNSKEY RRsets once, right after start, so
    /// the first client question does not wait for them (and a broken root hints file or trust
    /// anchor shows in the log at once, not at the first query). Failures are logged only: the
    /// next question simply tries again.
    pub async fn prime(&self) {
        let root = Name::root();
        let mut primed = true;
        for qtype in [RecordType::NS, RecordType::DNSKEY] {
            let query = UpstreamQuery {
                name: &root,
                qtype,
                qclass: DNSClass::IN,
                dnssec_ok: true,
                checking_disabled: false,
            };
            match self.resolve_here(&query).await {
                Ok(answer) if answer.ede.is_none() => {}
                Ok(answer) => {
                    primed = false;
                    tracing::warn!(%qtype, ede = ?answer.ede, "priming the root: not validated");
                }
                Err(error) => {
                    primed = false;
                    tracing::warn!(%qtype, %error, "priming the root failed");
                }
            }
        }
        if primed {
            tracing::info!("root primed (NS and DNSKEY, RFC 8109)");
        }
    }

    /// Resolves `query` on the runtime the recursor was built on (the server's shared one).
    ///
    /// Why not on the caller's: hickory spawns a connection's background task, and a lookup
    /// that several queries share creates its timers, on the runtime that first polls them.
    /// Each UDP worker thread has a runtime of its own that ends at stop; a connection or
    /// shared lookup begun there would then fail, or panic in tokio's timer, for the queries of
    /// other threads still waiting on it.
    pub async fn resolve(
        self: &Arc<Self>,
        query: &UpstreamQuery<'_>,
    ) -> Result<RecursiveAnswer, RecursionError> {
        let runtime = match (&self.runtime, tokio::runtime::Handle::try_current()) {
            (Some(runtime), Ok(current)) if runtime.id() != current.id() => runtime,
            _ => return self.resolve_here(query).await,
        };
        let recursor = Arc::clone(self);
        let name = query.name.clone();
        let (qtype, qclass) = (query.qtype, query.qclass);
        let (dnssec_ok, checking_disabled) = (query.dnssec_ok, query.checking_disabled);
        // Aborted if the query is dropped, as an inline lookup would be.
        let task = tokio_util::task::AbortOnDropHandle::new(runtime.spawn(async move {
            let query = UpstreamQuery {
                name: &name,
                qtype,
                qclass,
                dnssec_ok,
                checking_disabled,
            };
            recursor.resolve_here(&query).await
        }));
        task.await.unwrap_or_else(|error| {
            Err(RecursionError::Task {
                qname: query.name.clone(),
                reason: error.to_string(),
            })
        })
    }

    async fn resolve_here(
        &self,
        query: &UpstreamQuery<'_>,
    ) -> Result<RecursiveAnswer, RecursionError> {
        if let Some(upstreams) = self.forward_zones.upstreams_for(query.name) {
            // Forwarded zones are internal: the root's chain of trust does not cover them, so the
            // upstream's AD (if any) is passed on as it comes.
            return match upstreams.resolve(query).await {
                Ok((message, server)) => Ok(RecursiveAnswer {
                    message,
                    ede: None,
                    forwarded_to: Some(server),
                }),
                Err(source) => Err(RecursionError::Forward(source)),
            };
        }
        if query.qtype == RecordType::ANY {
            return self.resolve_any(query).await;
        }
        self.resolve_validated(query).await
    }

    /// RFC 8482 §4.1: ANY is answered with a subset, here the name's A and AAAA RRsets (and the
    /// CNAME chain to them), each looked up and validated like any question. hickory's validator
    /// cannot judge an ANY answer (it took one from a signed zone for a failed denial: SERVFAIL
    /// with EDE 6), and a validated subset serves the diagnostics ANY is still asked for.
    async fn resolve_any(
        &self,
        query: &UpstreamQuery<'_>,
    ) -> Result<RecursiveAnswer, RecursionError> {
        let ask = |qtype| UpstreamQuery { qtype, ..*query };
        let v4 = self.resolve_validated(&ask(RecordType::A)).await?;
        if v4.ede.is_some() || v4.message.metadata.response_code != ResponseCode::NoError {
            return Ok(v4);
        }
        let v6 = self.resolve_validated(&ask(RecordType::AAAA)).await?;
        if v6.ede.is_some() {
            return Ok(v6);
        }
        let mut message = v4.message;
        let mut name = query.name.clone();
        name.set_fqdn(true);
        let answers = std::mem::take(&mut message.answers)
            .into_iter()
            .chain(v6.message.answers)
            .collect();
        // Each chain comes whole from its lookup: a loop was refused there already.
        message.answers = chain_order(&name, RecordType::ANY, answers).unwrap_or_default();
        message.metadata.authentic_data &= v6.message.metadata.authentic_data;
        // With records, no proof of absence goes with them; with none (NODATA both ways), the
        // A lookup's proof stays.
        if !message.answers.is_empty() {
            message.authorities.clear();
        }
        Ok(RecursiveAnswer {
            message,
            ede: None,
            forwarded_to: None,
        })
    }

    /// One question resolved from the root and validated.
    async fn resolve_validated(
        &self,
        query: &UpstreamQuery<'_>,
    ) -> Result<RecursiveAnswer, RecursionError> {
        let mut name = query.name.clone();
        name.set_fqdn(true);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut lookup = self
            .lookup(&name, query.qtype, query.qclass, deadline)
            .await?;
        // hickory 0.26.3 validates the denial at the end of a CNAME chain (CNAME to a name
        // without that type, or to a name that does not exist) against the *question* name: the
        // NSEC covers the target, not the question, so it calls the answer bogus, or drops the
        // chain. Follow the chain here and ask for the target itself (cached, so cheap).
        if query.qtype != RecordType::CNAME && !lookup.has_type(query.qtype) {
            let (chain, target) = self.cname_chain(&name, query.qclass, deadline).await;
            if !chain.is_empty() {
                let mut tail = self
                    .lookup(&target, query.qtype, query.qclass, deadline)
                    .await?;
                tail.sections.1.splice(0..0, chain);
                lookup = tail;
            }
        }
        let Lookup {
            sections: (response_code, mut answers, authorities, additionals),
            bogus_denial,
            insecure_denial,
        } = lookup;
        vouch_for_synthesized_cnames(&mut answers);
        let answers = match chain_order(&name, query.qtype, answers) {
            Ok(answers) => answers,
            Err(looped_at) => {
                return Ok(servfail((0, format!("CNAME loop at {looped_at}"))));
            }
        };

        // What validation is judged on: the answer RRsets, and for a negative answer (or a
        // chain ending in one) the SOA and NSEC/NSEC3 proof in the authority section.
        let has_qtype = answers
            .iter()
            .any(|record| record.record_type() == query.qtype);
        let judged: Vec<&Record> = answers
            .iter()
            .chain(authorities.iter().filter(|_| !has_qtype))
            .collect();
        let enforce = self.validating && !query.checking_disabled;
        let any_bogus = judged
            .iter()
            .any(|record| !is_dnssec_meta(record) && record.proof == Proof::Bogus);
        if enforce && (bogus_denial || any_bogus) {
            let what = if any_bogus {
                "answer failed DNSSEC validation"
            } else {
                "denial of existence failed validation"
            };
            // A broken chain of trust explains every bad signature below it, so it is named
            // first; otherwise the signatures themselves say why.
            let ede = match self.missing_dnskey(&judged, query.qclass, deadline).await {
                Some(ede) => ede,
                None => bogus_reason(judged.iter().copied(), unix_now())
                    .unwrap_or_else(|| (6, format!("{name}: {what}"))),
            };
            return Ok(servfail(ede));
        }
        // RFC 5155 §9.2: a denial resting on an opt-out NSEC3 (hickory calls it secure) does
        // not rule out an unsigned delegation, so it is not authenticated. Any opt-out NSEC3 in
        // a negative answer's proof withholds AD: at worst an AD too few.
        let opt_out = !has_qtype
            && authorities.iter().any(|record| {
                matches!(&record.data, RData::DNSSEC(DNSSECRData::NSEC3(nsec3)) if nsec3.opt_out())
            });
        // RFC 4035 §3.2.3: AD only when every RRset we answer with (and, for a negative answer,
        // the proof of non-existence) validated. An empty section proves nothing.
        let authentic_data = enforce
            && !bogus_denial
            && !insecure_denial
            && !opt_out
            && judged.iter().any(|record| !is_dnssec_meta(record))
            && judged
                .iter()
                .filter(|record| !is_dnssec_meta(record))
                .all(|record| record.proof == Proof::Secure);

        let keep = |record: &Record| query.dnssec_ok || !is_dnssec_record(record, query.qtype);
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.metadata.response_code = response_code;
        message.metadata.authentic_data = authentic_data;
        message.metadata.recursion_available = true;
        message.answers = answers.into_iter().filter(keep).collect();
        message.authorities = authorities.into_iter().filter(keep).collect();
        message.additionals = additionals.into_iter().filter(keep).collect();
        Ok(RecursiveAnswer {
            message,
            ede: None,
            forwarded_to: None,
        })
    }
}

/// RFC 6672 §5.3.1, RFC 4035 §5.3.3: a CNAME synthesized from a DNAME carries no signature of
/// its own; it is as good as the DNAME it follows from. hickory 0.26.3 judges it unsigned
/// (bogus in a signed zone), so a CNAME that is exactly the substitution of a secure DNAME in
/// the same answer is counted secure.
fn vouch_for_synthesized_cnames(answers: &mut [Record]) {
    let synthesized: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, record)| record.proof != Proof::Secure)
        .filter_map(|(index, record)| match &record.data {
            RData::CNAME(target) => Some((index, &record.name, &target.0)),
            _ => None,
        })
        .filter(|(_, owner, target)| {
            answers.iter().any(|dname| {
                dname_target(dname).is_some_and(|substitute| {
                    dname.proof == Proof::Secure
                        && dname.name.num_labels() < owner.num_labels()
                        && dname.name.zone_of(owner)
                        && substituted(owner, &dname.name, &substitute)
                            .is_some_and(|expected| expected.eq_ignore_root(target))
                })
            })
        })
        .map(|(index, _, _)| index)
        .collect();
    for index in synthesized {
        answers[index].proof = Proof::Secure;
    }
}

/// The target of a DNAME record: hickory 0.26 keeps DNAME as unknown data, whose target is
/// never compressed (RFC 6672 §2.5).
fn dname_target(record: &Record) -> Option<Name> {
    match &record.data {
        RData::Unknown { code, rdata } if *code == RecordType::DNAME => {
            <Name as BinDecodable>::from_bytes(&rdata.anything).ok()
        }
        _ => None,
    }
}

/// `owner` with its `dname_owner` suffix replaced by `substitute` (RFC 6672 §2.2).
fn substituted(owner: &Name, dname_owner: &Name, substitute: &Name) -> Option<Name> {
    let prefix_len = usize::from(owner.num_labels() - dname_owner.num_labels());
    let prefix = Name::from_labels(owner.iter().take(prefix_len)).ok()?;
    prefix.append_domain(substitute).ok()
}

/// The answer section in chain order from the question (RFC 1034 §4.3.2: glibc's parser, for
/// one, follows a chain only in that order), each record once (RFC 2181 §5), and only the
/// chain's records, as a forwarded answer is kept (`scrub`). hickory 0.26.3 returns a chain's
/// records in cache order, and following a chain here (`cname_chain`) can repeat one. `Err`
/// names the name at which the chain loops back (RFC 1034 §3.6.2: an error, as Unbound
/// answers it).
fn chain_order(qname: &Name, qtype: RecordType, answers: Vec<Record>) -> Result<Vec<Record>, Name> {
    let mut unique: Vec<Record> = Vec::with_capacity(answers.len());
    for record in answers {
        let repeated = unique.iter().any(|kept| {
            kept.record_type() == record.record_type()
                && kept.dns_class == record.dns_class
                && kept.name.eq_ignore_root(&record.name)
                && kept.data == record.data
        });
        if !repeated {
            unique.push(record);
        }
    }
    chain_records(qname, qtype, unique).map(|(kept, _)| kept)
}

/// Whether the authorities failed us (silent, REFUSED, SERVFAIL) rather than the data being wrong.
/// hickory 0.26.3 often flattens the inner error to text on its way out of the recursor
/// ("net error: net error: request timed out"), so the text is checked as well as the type.
fn is_server_failure(error: &RecursorError) -> bool {
    match error {
        RecursorError::Timeout
        | RecursorError::Net(NetError::Timeout | NetError::Dns(DnsError::ResponseCode(_))) => true,
        other => {
            let text = other.to_string();
            text.contains("timed out")
                || text.contains(servers::REJECTION)
                || text.contains("Query Refused")
                || text.contains("Server Failure")
                || text.contains("error response")
        }
    }
}

fn servfail(ede: (u16, String)) -> RecursiveAnswer {
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    message.metadata.response_code = ResponseCode::ServFail;
    RecursiveAnswer {
        message,
        ede: Some(ede),
        forwarded_to: None,
    }
}

/// Response code, answers, authorities, additionals.
type Sections = (ResponseCode, Vec<Record>, Vec<Record>, Vec<Record>);

/// One lookup's sections, and whether its denial of existence failed validation.
struct Lookup {
    sections: Sections,
    bogus_denial: bool,
    /// The denial of existence is signed but not checkable: NSEC3 iterations over the soft
    /// limit (RFC 9276 §3.2). Answered as is, without AD, as Unbound does.
    insecure_denial: bool,
}

impl Lookup {
    fn answered(message: Message) -> Self {
        Self {
            sections: (
                message.metadata.response_code,
                message.answers,
                message.authorities,
                message.additionals,
            ),
            bogus_denial: false,
            insecure_denial: false,
        }
    }

    fn has_type(&self, qtype: RecordType) -> bool {
        self.sections
            .1
            .iter()
            .any(|record| record.record_type() == qtype)
    }
}

/// Longest CNAME chain we follow ourselves (hickory allows 64 in total per request).
const MAX_CNAME_CHAIN: usize = 8;

enum NegativeError {
    /// A negative answer whose NSEC/NSEC3 proof did not validate.
    Bogus {
        response_code: ResponseCode,
        authorities: Vec<Record>,
    },
    Insecure(Sections),
    Other(RecursorError),
}

/// A wildcard answer hickory's validator rejected for a proof it misjudges (see `nsec`), as
/// the answer it is; any other error as it was.
fn wildcard_answer(error: RecursorError) -> Result<Message, RecursorError> {
    match error {
        RecursorError::Net(NetError::Dns(DnsError::Nsec {
            response,
            proof: Proof::Bogus,
            ..
        })) if nsec::proves_wildcard_answer(&response) => Ok(response.into_message()),
        other => Err(other),
    }
}

/// hickory returns NXDOMAIN and NODATA as errors; turn them back into sections (RFC 2308: the
/// SOA and the NSEC/NSEC3 proof go in the authority section).
fn negative(error: RecursorError) -> Result<Sections, NegativeError> {
    let from_parts =
        |response_code: ResponseCode, soa: Option<Record>, authorities: Option<Arc<[Record]>>| {
            let mut section: Vec<Record> = authorities.map(|a| a.to_vec()).unwrap_or_default();
            if let Some(soa) = soa
                && !section.iter().any(|record| record == &soa)
            {
                section.push(soa);
            }
            (response_code, Vec::new(), section, Vec::new())
        };
    match error {
        RecursorError::Negative(data) => {
            let response_code = if data.is_nx_domain() {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            };
            let soa = data.soa.map(|soa| soa.into_record_of_rdata());
            Ok(from_parts(response_code, soa, data.authorities))
        }
        RecursorError::Net(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code,
            soa,
            authorities,
            ..
        }))) if matches!(
            response_code,
            ResponseCode::NXDomain | ResponseCode::NoError
        ) =>
        {
            let soa = soa.map(|soa| soa.into_record_of_rdata());
            Ok(from_parts(response_code, soa, authorities))
        }
        RecursorError::Net(NetError::Dns(DnsError::Nsec {
            response,
            proof: Proof::Insecure,
            ..
        })) => {
            let response = response.into_message();
            Err(NegativeError::Insecure((
                response.metadata.response_code,
                Vec::new(),
                response.authorities,
                Vec::new(),
            )))
        }
        RecursorError::Net(NetError::Dns(DnsError::Nsec {
            response, proof, ..
        })) if proof != Proof::Secure => {
            let response = response.into_message();
            Err(NegativeError::Bogus {
                response_code: response.metadata.response_code,
                authorities: response.authorities,
            })
        }
        RecursorError::Net(NetError::Dns(DnsError::DnssecBogus)) => Err(NegativeError::Bogus {
            response_code: ResponseCode::ServFail,
            authorities: Vec::new(),
        }),
        other => Err(NegativeError::Other(other)),
    }
}

/// RRSIGs and NSEC/NSEC3 are judged through the records they cover, not on their own.
fn is_dnssec_meta(record: &Record) -> bool {
    matches!(
        record.record_type(),
        RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3
    )
}

/// Records a client without DO does not get (RFC 4035 §3.2.1), unless it asked for that type.
fn is_dnssec_record(record: &Record, qtype: RecordType) -> bool {
    let rtype = record.record_type();
    rtype != qtype
        && matches!(
            rtype,
            RecordType::RRSIG
                | RecordType::NSEC
                | RecordType::NSEC3
                | RecordType::DNSKEY
                | RecordType::DS
        )
}

fn unix_now() -> u32 {
    // Only used for RRSIG validity, which is 32-bit serial arithmetic (RFC 4034 §3.1.5).
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as u32)
}

/// The first record of `records` marked bogus: an answer RRset's, else (a negative answer whose
/// SOA validated but whose proof did not) the NSEC/NSEC3's.
fn first_bogus<'a>(records: impl Iterator<Item = &'a Record> + Clone) -> Option<&'a Record> {
    records
        .clone()
        .find(|record| !is_dnssec_meta(record) && record.proof == Proof::Bogus)
        .or_else(|| {
            records.clone().find(|record| {
                record.proof == Proof::Bogus && record.record_type() != RecordType::RRSIG
            })
        })
}

/// The RRSIGs in `records` that cover `record`'s RRset.
fn rrsigs_of<'a>(records: impl Iterator<Item = &'a Record>, record: &Record) -> Vec<&'a RRSIG> {
    let rtype = record.record_type();
    records
        .filter(|other| other.name.eq_ignore_root(&record.name))
        .filter_map(|other| match &other.data {
            RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) if rrsig.input().type_covered == rtype => {
                Some(rrsig)
            }
            _ => None,
        })
        .collect()
}

/// Why the first bogus RRset in `records` is bogus, as an RFC 8914 code and text, judged from
/// the RRSIGs that cover it: none (10 RRSIGs Missing), all past their expiration (7 Signature
/// Expired), all before their inception (8 Signature Not Yet Valid), otherwise 6 DNSSEC Bogus.
/// `None` when no record is marked bogus. hickory's validator knows the precise reason but
/// only logs it; this recomputes the common cases from the response.
pub fn bogus_reason<'a>(
    records: impl Iterator<Item = &'a Record> + Clone,
    now: u32,
) -> Option<(u16, String)> {
    let bogus = first_bogus(records.clone())?;
    let rrsigs = rrsigs_of(records, bogus);
    let what = format!("{} {}", bogus.name, bogus.record_type());
    if rrsigs.is_empty() {
        return Some((10, format!("{what}: no RRSIG")));
    }
    // Serial-number comparison (RFC 1982), as validity times wrap in 2106.
    let before = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
    if rrsigs
        .iter()
        .all(|rrsig| before(rrsig.input().sig_expiration.get(), now))
    {
        return Some((7, format!("{what}: signature expired")));
    }
    if rrsigs
        .iter()
        .all(|rrsig| before(now, rrsig.input().sig_inception.get()))
    {
        return Some((8, format!("{what}: signature not yet valid")));
    }
    Some((6, format!("{what}: signature does not verify")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_hints_that_deny_servers_refuses_whole_fail_at_setup_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let hints = dir.path().join("lab.hints");
        std::fs::write(
            &hints,
            ". 3600 NS a.root.lab.\na.root.lab. 3600 A 127.0.53.1\n",
        )
        .unwrap();
        let forward = ForwardConfig {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(1),
            attempts: 1,
            strategy: crate::resolve::upstream::Strategy::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let build = |deny_servers: Option<Vec<IpNet>>| {
            let settings = RecursionSettings {
                enabled: true,
                root_hints: Some(hints.clone()),
                dnssec_validation: false,
                deny_servers,
                ..RecursionSettings::default()
            };
            runtime.block_on(async { Recursor::new(&settings, &[], &forward).map(drop) })
        };
        let error = build(None).unwrap_err().to_string();
        assert!(
            error.contains("lab.hints") && error.contains("deny_servers"),
            "{error}"
        );
        // As the tests' hierarchy runs it: nothing denied.
        assert!(build(Some(Vec::new())).is_ok());
    }

    #[test]
    fn built_in_root_hints_have_all_thirteen_servers() {
        let addrs = root_hint_addrs(IANA_ROOT_HINTS, Path::new("root.hints")).unwrap();
        assert_eq!(addrs.iter().filter(|addr| addr.is_ipv4()).count(), 13);
        assert_eq!(addrs.iter().filter(|addr| addr.is_ipv6()).count(), 13);
        assert!(addrs.contains(&IpAddr::from([198, 41, 0, 4])));
    }

    #[test]
    fn shipped_anchor_file_matches_hickory_built_in_keys() {
        let text = include_str!("../../config/root.anchor");
        let anchors: TrustAnchors = text.parse().unwrap();
        let built_in = TrustAnchors::default();
        assert_eq!(anchors.len(), 2);
        for index in 0..2 {
            assert!(anchors.contains(built_in.get(index).unwrap()));
        }
    }

    #[test]
    fn settings_reject_unknown_keys_and_default_to_validation() {
        let settings: RecursionSettings = toml::from_str("enabled = true").unwrap();
        assert!(settings.enabled && settings.dnssec_validation);
        assert!(toml::from_str::<RecursionSettings>("enable = true").is_err());
    }

    #[test]
    fn error_codes_follow_rfc_8914() {
        let timeout = RecursionError::Timeout {
            qname: Name::root(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.ede_code(), 22);
        let budget = RecursionError::Resolution {
            qname: Name::root(),
            source: Box::new(RecursorError::QueryBudgetExceeded),
        };
        assert_eq!(budget.ede_code(), 0);
    }
}
