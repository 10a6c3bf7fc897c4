//! Forwarding to upstream resolvers: one query out, one validated answer back.
//!
//! Each attempt uses a fresh UDP socket (a kernel-chosen source port) and a random query id, and
//! accepts only a reply from the server it asked that echoes both the id and the question: the
//! usual defences against off-path spoofing (RFC 5452). A truncated UDP reply is retried over TCP.
//! The fastest upstream is asked first (or, with `strategy = "in_order"`, the first in the
//! configured order); one that stops answering is passed over, with only background probes
//! going to it until it answers again, so a dead server does not cost clients a timeout each
//! time its hold-down ends. Caching is not done here (see `cache`).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::scrub::chain_records;
use crate::config::ForwardConfig;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{server}: no answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("{server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}: malformed reply: {reason}")]
    Malformed { server: SocketAddr, reason: String },
    /// The answer's CNAME chain comes back to a name it passed.
    #[error("{server}: CNAME loop at {at}")]
    CnameLoop { server: SocketAddr, at: Name },
    /// The upstream would not answer the question (REFUSED, FORMERR, NOTIMP, ...). Relayed,
    /// a client would take it for this resolver refusing it (or finding its query malformed)
    /// and turn to its next resolver; it is our upstream's failure, so SERVFAIL, as Unbound.
    #[error("{server}: answered {rcode}", rcode = crate::policy::decision::RcodeText(*rcode))]
    Rejected {
        server: SocketAddr,
        rcode: ResponseCode,
    },
    #[error("no upstream configured")]
    NoUpstream,
}

impl UpstreamError {
    /// RFC 8914 code for a SERVFAIL caused by this error: 22 "No Reachable Authority" when the
    /// upstream stayed silent or would not answer, 23 "Network Error" when the network said no.
    pub fn ede_code(&self) -> u16 {
        match self {
            Self::Timeout { .. } | Self::NoUpstream | Self::Rejected { .. } => 22,
            Self::Io { .. } | Self::Malformed { .. } => 23,
            // 0 "Other": the zone's data is at fault, not the network or the server.
            Self::CnameLoop { .. } => 0,
        }
    }

    /// The server did not answer at all (no reply in time, or the network refused): it may be
    /// down. Anything else came from a server that is there.
    pub fn is_silence(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Io { .. })
    }

    /// The server that failed, if one was asked.
    pub fn server(&self) -> Option<SocketAddr> {
        match self {
            Self::Timeout { server, .. }
            | Self::Io { server, .. }
            | Self::Malformed { server, .. }
            | Self::CnameLoop { server, .. }
            | Self::Rejected { server, .. } => Some(*server),
            Self::NoUpstream => None,
        }
    }
}

/// What the question to forward is, and the client's DNSSEC flags we pass on.
#[derive(Debug, Clone)]
pub struct UpstreamQuery<'a> {
    pub name: &'a Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

/// How upstreams are chosen (`forward.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The one answering fastest (smoothed round-trip time, as Unbound and PowerDNS Recursor
    /// choose), the others kept measured by occasional background queries.
    #[default]
    Fastest,
    /// In the configured order: a primary and its fallbacks.
    InOrder,
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    /// Smoothed round-trip time of its answers in µs (RFC 6298's gain of 1/8); 0 = none yet.
    srtt_us: AtomicU32,
    /// When it last answered (ms since `Upstreams::epoch`); 0 = never.
    answered_ms: AtomicU64,
    /// Attempts without an answer (no reply, a network error) since it last answered.
    failures: AtomicU32,
    /// Ms since `Upstreams::epoch` until which clients' queries pass it over; 0 = up. Once past,
    /// it is probed in the background before clients are sent to it again.
    down_until_ms: AtomicU64,
    /// A background probe of it is in flight.
    probing: AtomicBool,
}

/// The configured upstream servers with their health.
#[derive(Debug)]
pub struct Upstreams {
    servers: Vec<Arc<Upstream>>,
    timeout: Duration,
    attempts: u32,
    strategy: Strategy,
    epoch: Instant,
}

/// How long a failed upstream is first passed over; each further failure doubles it, up to
/// `MAX_HOLD_DOWN`. While it is passed over only background probes go to it, so clients do not
/// wait on a dead server, and a recovered one is back within a probe.
const HOLD_DOWN: Duration = Duration::from_secs(5);
const MAX_HOLD_DOWN: Duration = Duration::from_secs(60);
/// How old a server's round-trip time may grow (while it is not chosen) before a background
/// copy of a query measures it again: a server that became faster is noticed.
const REMEASURE_AFTER: Duration = Duration::from_secs(60);
/// The most upstreams one list may hold (config refuses more): a query's tried servers are a
/// bit set.
pub const MAX_UPSTREAMS: usize = 32;

/// The servers of each `[[forward.zone]]`, most specific zone first: forward mode (in the
/// serving state) and recursion (in the recursor) route a zone's names the same way.
#[derive(Debug, Default)]
pub struct ForwardZones(Vec<(Name, Upstreams)>);

impl ForwardZones {
    /// The zones' names were checked when the config loaded; one that does not parse is left
    /// out rather than failing a built state.
    pub fn new(zones: &[super::ForwardZone], forward: &ForwardConfig) -> Self {
        let mut built: Vec<(Name, Upstreams)> = zones
            .iter()
            .filter_map(|zone| {
                let mut name = Name::from_ascii(&zone.name).ok()?;
                name.set_fqdn(true);
                let config = ForwardConfig {
                    upstreams: zone.upstreams.clone(),
                    ..forward.clone()
                };
                Some((name, Upstreams::new(&config)))
            })
            .collect();
        built.sort_by_key(|(name, _)| std::cmp::Reverse(name.num_labels()));
        Self(built)
    }

    /// The servers of the most specific zone holding `name`, if one does.
    pub fn upstreams_for(&self, name: &Name) -> Option<&Upstreams> {
        self.0
            .iter()
            .find(|(zone, _)| zone.zone_of(name))
            .map(|(_, upstreams)| upstreams)
    }
}

/// The UDP payload size we advertise upstream: the DNS Flag Day 2020 value.
const UPSTREAM_PAYLOAD: u16 = 1232;

impl Upstreams {
    pub fn new(config: &ForwardConfig) -> Self {
        Self {
            servers: config
                .upstreams
                .iter()
                .take(MAX_UPSTREAMS)
                .map(|&addr| {
                    Arc::new(Upstream {
                        addr,
                        srtt_us: AtomicU32::new(0),
                        answered_ms: AtomicU64::new(0),
                        failures: AtomicU32::new(0),
                        down_until_ms: AtomicU64::new(0),
                        probing: AtomicBool::new(false),
                    })
                })
                .collect(),
            timeout: config.timeout,
            attempts: config.attempts,
            strategy: config.strategy,
            epoch: Instant::now(),
        }
    }

    /// Asks upstreams, best first (see `pick`), until one answers, at most `attempts` times.
    /// A reply other than NOERROR, NXDOMAIN or YXDOMAIN moves on to the next server. When none
    /// answered, a SERVFAIL is returned as is; a refusal (REFUSED, FORMERR, NOTIMP, ...) is an
    /// error.
    pub async fn resolve(
        &self,
        query: &UpstreamQuery<'_>,
    ) -> Result<(Message, SocketAddr), UpstreamError> {
        if self.servers.is_empty() {
            return Err(UpstreamError::NoUpstream);
        }
        self.probe_due(query);
        let everyone = u64::MAX >> (64 - self.servers.len());
        let mut tried = 0u64;
        let mut last_error = None;
        let mut last_reply = None;
        for _ in 0..self.attempts {
            if tried == everyone {
                // More attempts than servers: round again.
                tried = 0;
            }
            let index = self.pick(tried);
            tried |= 1 << index;
            let server = &self.servers[index];
            let started = Instant::now();
            match exchange(server.addr, query, self.timeout).await {
                Ok(reply) => {
                    answered(server, started.elapsed(), self.epoch);
                    match reply.metadata.response_code {
                        // YXDOMAIN: a DNAME substitution that overflowed (RFC 6672), an answer.
                        ResponseCode::NoError | ResponseCode::NXDomain | ResponseCode::YXDomain => {
                            return scrub(reply, query, server.addr)
                                .map(|reply| (reply, server.addr));
                        }
                        ResponseCode::ServFail => last_reply = Some((reply, server.addr)),
                        rcode => {
                            last_error = Some(UpstreamError::Rejected {
                                server: server.addr,
                                rcode,
                            });
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "upstream attempt failed");
                    if error.is_silence() {
                        failed(server, &error, self.epoch);
                    }
                    last_error = Some(error);
                }
            }
        }
        match (last_reply, last_error) {
            (Some(reply), _) => Ok(reply),
            (None, Some(error)) => Err(error),
            (None, None) => Err(UpstreamError::NoUpstream),
        }
    }

    /// The server to ask next among those not `tried` (a bit per index): one that is up, the
    /// fastest (or the first, in order); when none is, the one whose hold-down ends first, as
    /// the likeliest to be back.
    fn pick(&self, tried: u64) -> usize {
        let now = now_ms(self.epoch);
        let untried = |index: &usize| tried & (1 << index) == 0;
        let up = self
            .servers
            .iter()
            .enumerate()
            .filter(|(index, server)| untried(index) && server.is_up());
        let best = match self.strategy {
            // Not yet measured (0) sorts first: each server is tried once by a client.
            Strategy::Fastest => up
                .min_by_key(|(index, server)| (server.srtt_us.load(Ordering::Relaxed), *index))
                .map(|(index, _)| index),
            Strategy::InOrder => up.map(|(index, _)| index).next(),
        };
        best.or_else(|| {
            self.servers
                .iter()
                .enumerate()
                .filter(|(index, _)| untried(index))
                .min_by_key(|(index, server)| {
                    (
                        server.down_until_ms.load(Ordering::Relaxed).max(now),
                        *index,
                    )
                })
                .map(|(index, _)| index)
        })
        .unwrap_or(0)
    }

    /// Sends this question, in the background, to each server that is due a probe: one passed
    /// over whose hold-down has ended (it comes back when it answers), and, when choosing the
    /// fastest, one whose round-trip time has not been measured for a while. One probe per
    /// server at a time; clients never wait on one.
    fn probe_due(&self, query: &UpstreamQuery<'_>) {
        let now = now_ms(self.epoch);
        let stale = REMEASURE_AFTER.as_millis() as u64;
        for server in &self.servers {
            let held_until = server.down_until_ms.load(Ordering::Relaxed);
            let due = if server.is_up() {
                let answered = server.answered_ms.load(Ordering::Relaxed);
                self.strategy == Strategy::Fastest
                    && answered != 0
                    && now.saturating_sub(answered) > stale
                    && self.servers.len() > 1
            } else {
                held_until <= now
            };
            if !due
                || server
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let server = Arc::clone(server);
            let (name, qtype, qclass) = (query.name.clone(), query.qtype, query.qclass);
            let (limit, epoch) = (self.timeout, self.epoch);
            tokio::spawn(async move {
                let probe = UpstreamQuery {
                    name: &name,
                    qtype,
                    qclass,
                    dnssec_ok: false,
                    checking_disabled: false,
                };
                let started = Instant::now();
                match exchange(server.addr, &probe, limit).await {
                    Ok(_) => answered(&server, started.elapsed(), epoch),
                    Err(error) if error.is_silence() => failed(&server, &error, epoch),
                    // It answered, if not usefully: it is there.
                    Err(_) => answered(&server, started.elapsed(), epoch),
                }
                server.probing.store(false, Ordering::Release);
            });
        }
    }
}

impl Upstream {
    /// Answering, as far as we know: no attempt has gone unanswered since its last answer.
    fn is_up(&self) -> bool {
        self.failures.load(Ordering::Relaxed) == 0
    }
}

fn now_ms(epoch: Instant) -> u64 {
    // At least 1: 0 means "never" in `answered_ms`.
    u64::try_from(epoch.elapsed().as_millis()).map_or(u64::MAX, |ms| ms.max(1))
}

/// `server` answered after `rtt`: it is up, and its round-trip time is folded in.
fn answered(server: &Upstream, rtt: Duration, epoch: Instant) {
    let rtt_us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1);
    let srtt = server.srtt_us.load(Ordering::Relaxed);
    let smoothed = if srtt == 0 {
        rtt_us
    } else {
        ((u64::from(srtt) * 7 + u64::from(rtt_us)) / 8) as u32
    };
    server.srtt_us.store(smoothed.max(1), Ordering::Relaxed);
    server.answered_ms.store(now_ms(epoch), Ordering::Relaxed);
    server.down_until_ms.store(0, Ordering::Relaxed);
    let failures = server.failures.swap(0, Ordering::AcqRel);
    if failures > 0 {
        tracing::info!(upstream = %server.addr, failed_attempts = failures, "upstream answers again");
    }
}

/// `server` did not answer: passed over for a hold-down that doubles with each failure.
fn failed(server: &Upstream, error: &UpstreamError, epoch: Instant) {
    let failures = server
        .failures
        .fetch_add(1, Ordering::AcqRel)
        .saturating_add(1);
    let hold = HOLD_DOWN
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(MAX_HOLD_DOWN);
    server
        .down_until_ms
        .store(now_ms(epoch) + hold.as_millis() as u64, Ordering::Relaxed);
    if failures == 1 {
        tracing::warn!(
            upstream = %server.addr,
            %error,
            "upstream not answering: the others are asked while it is probed in the background"
        );
    }
}

/// Keeps only the answer records on the question's chain (see `scrub`).
fn scrub(
    mut reply: Message,
    query: &UpstreamQuery<'_>,
    server: SocketAddr,
) -> Result<Message, UpstreamError> {
    // RFC 2181 §8: a TTL with the top bit set is to be taken as zero.
    for record in reply
        .answers
        .iter_mut()
        .chain(&mut reply.authorities)
        .chain(&mut reply.additionals)
    {
        if record.ttl > i32::MAX as u32 {
            record.ttl = 0;
        }
    }
    let answers = std::mem::take(&mut reply.answers);
    let (kept, dropped) = chain_records(query.name, query.qtype, answers)
        .map_err(|at| UpstreamError::CnameLoop { server, at })?;
    if dropped > 0 {
        tracing::debug!(%server, name = %query.name, dropped, "answer records off the question's chain left out");
    }
    reply.answers = kept;
    Ok(reply)
}

/// One query to one server: UDP, then TCP if the UDP reply was truncated; without EDNS once
/// more if the server answered FORMERR and no OPT (one that predates RFC 6891, §7).
async fn exchange(
    server: SocketAddr,
    query: &UpstreamQuery<'_>,
    limit: Duration,
) -> Result<Message, UpstreamError> {
    let (reply, id) = exchange_as(server, query, limit, true).await?;
    let (reply, id) =
        if reply.metadata.response_code == ResponseCode::FormErr && reply.edns.is_none() {
            exchange_as(server, query, limit, false).await?
        } else {
            (reply, id)
        };
    if refusal_without_question(&reply, id) {
        return Err(UpstreamError::Malformed {
            server,
            reason: refusal_reason(&reply),
        });
    }
    Ok(reply)
}

/// One exchange, with or without EDNS. A refusal that does not echo the question comes back as
/// a reply here (with the id it must carry), for `exchange` to judge.
async fn exchange_as(
    server: SocketAddr,
    query: &UpstreamQuery<'_>,
    limit: Duration,
    edns: bool,
) -> Result<(Message, u16), UpstreamError> {
    let id: u16 = rand::random();
    let request = build_query(id, query, edns).map_err(|error| UpstreamError::Malformed {
        server,
        reason: error.to_string(),
    })?;
    let reply = timeout(limit, exchange_udp(server, id, query, &request))
        .await
        .map_err(|_| UpstreamError::Timeout {
            server,
            timeout: limit,
        })??;
    if !reply.metadata.truncation {
        return Ok((reply, id));
    }
    timeout(limit, exchange_tcp(server, id, query, &request))
        .await
        .map_err(|_| UpstreamError::Timeout {
            server,
            timeout: limit,
        })?
        .map(|reply| (reply, id))
}

fn build_query(
    id: u16,
    query: &UpstreamQuery<'_>,
    with_edns: bool,
) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.checking_disabled = query.checking_disabled;
    let mut question = Query::query(query.name.clone(), query.qtype);
    question.set_query_class(query.qclass);
    message.add_query(question);
    if with_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        edns.set_dnssec_ok(query.dnssec_ok);
        message.set_edns(edns);
    }
    message.to_vec()
}

async fn exchange_udp(
    server: SocketAddr,
    id: u16,
    query: &UpstreamQuery<'_>,
    request: &[u8],
) -> Result<Message, UpstreamError> {
    let io = |source| UpstreamError::Io { server, source };
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    // `connect` makes the kernel drop datagrams from any other source for us.
    socket.connect(server).await.map_err(io)?;
    socket.send(request).await.map_err(io)?;
    let mut buffer = vec![0u8; usize::from(u16::MAX)];
    loop {
        let length = socket.recv(&mut buffer).await.map_err(io)?;
        // A reply that does not parse or does not echo our id and question is ignored, not
        // fatal: it may be a spoofing attempt or a late answer to someone else.
        match Message::from_vec(&buffer[..length]) {
            Ok(reply) if matches_query(&reply, id, query) => return Ok(reply),
            // Some servers refuse (REFUSED, NOTIMP, FORMERR, SERVFAIL) without echoing the question.
            // From the server we asked, with our id: its answer, not a reason to wait out the
            // timeout and then report silence. At worst a forged one fails this attempt over
            // to the next upstream; it cannot put data in an answer.
            Ok(reply) if refusal_without_question(&reply, id) => return Ok(reply),
            Ok(_) | Err(_) => continue,
        }
    }
}

async fn exchange_tcp(
    server: SocketAddr,
    id: u16,
    query: &UpstreamQuery<'_>,
    request: &[u8],
) -> Result<Message, UpstreamError> {
    let io = |source| UpstreamError::Io { server, source };
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    // Queries are far below 64 KiB; the length prefix is RFC 1035 §4.2.2 framing.
    framed.extend_from_slice(&(request.len() as u16).to_be_bytes());
    framed.extend_from_slice(request);
    stream.write_all(&framed).await.map_err(io)?;
    let length = stream.read_u16().await.map_err(io)?;
    let mut buffer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut buffer).await.map_err(io)?;
    let reply = Message::from_vec(&buffer).map_err(|error| UpstreamError::Malformed {
        server,
        reason: error.to_string(),
    })?;
    if !matches_query(&reply, id, query) && !refusal_without_question(&reply, id) {
        return Err(UpstreamError::Malformed {
            server,
            reason: "reply does not match the query".to_owned(),
        });
    }
    Ok(reply)
}

fn refusal_reason(reply: &Message) -> String {
    format!(
        "answered {} without the question",
        crate::policy::decision::RcodeText(reply.metadata.response_code)
    )
}

/// A reply with our id and no question that refuses the query.
fn refusal_without_question(reply: &Message, id: u16) -> bool {
    reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.is_empty()
        && reply.answers.is_empty()
        && matches!(
            reply.metadata.response_code,
            ResponseCode::Refused
                | ResponseCode::NotImp
                | ResponseCode::FormErr
                | ResponseCode::ServFail
        )
}

fn matches_query(reply: &Message, id: u16, query: &UpstreamQuery<'_>) -> bool {
    reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.len() == 1
        // Case-insensitive: some servers (and 0x20 randomisation) change the case they echo.
        && reply.queries[0].name().eq_ignore_root(query.name)
        && reply.queries[0].query_type() == query.qtype
}
