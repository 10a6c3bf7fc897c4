//! Forwarding to upstream resolvers: one query out, one validated answer back.
//!
//! Each attempt uses a fresh UDP socket (a kernel-chosen source port) and a random query id, and
//! accepts only a reply from the server it asked that echoes both the id and the question: the
//! usual defences against off-path spoofing (RFC 5452). A truncated UDP reply is retried over TCP.
//! Upstreams that just failed are skipped for a while so one dead server does not cost every
//! query a timeout. Caching is not done here (see `cache`).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
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

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    /// Milliseconds since `Upstreams::epoch` until which this server is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
}

/// The configured upstream servers with their health.
#[derive(Debug)]
pub struct Upstreams {
    servers: Vec<Upstream>,
    timeout: Duration,
    attempts: u32,
    epoch: Instant,
}

/// How long a failed upstream is skipped. Short: we would rather retry a recovered server soon
/// than pin all traffic on one.
const HOLD_DOWN: Duration = Duration::from_secs(5);

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
                .map(|&addr| Upstream {
                    addr,
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            timeout: config.timeout,
            attempts: config.attempts,
            epoch: Instant::now(),
        }
    }

    /// Asks upstreams in order (healthy ones first) until one answers, at most `attempts` times.
    /// A reply other than NOERROR or NXDOMAIN moves on to the next server. When none answered,
    /// a SERVFAIL is returned as is; a refusal (REFUSED, FORMERR, NOTIMP, ...) is an error.
    pub async fn resolve(
        &self,
        query: &UpstreamQuery<'_>,
    ) -> Result<(Message, SocketAddr), UpstreamError> {
        if self.servers.is_empty() {
            return Err(UpstreamError::NoUpstream);
        }
        let now_ms = self.now_ms();
        // Start with the first healthy server in config order; fall back to the first.
        let start = self
            .servers
            .iter()
            .position(|server| server.down_until_ms.load(Ordering::Relaxed) <= now_ms)
            .unwrap_or(0);
        let mut last_error = None;
        let mut last_reply = None;
        for attempt in 0..self.attempts as usize {
            let server = &self.servers[(start + attempt) % self.servers.len()];
            match exchange(server.addr, query, self.timeout).await {
                Ok(reply) => match reply.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => {
                        server.down_until_ms.store(0, Ordering::Relaxed);
                        return scrub(reply, query, server.addr).map(|reply| (reply, server.addr));
                    }
                    ResponseCode::ServFail => last_reply = Some((reply, server.addr)),
                    rcode => {
                        last_error = Some(UpstreamError::Rejected {
                            server: server.addr,
                            rcode,
                        });
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, "upstream attempt failed");
                    let until = self.now_ms() + HOLD_DOWN.as_millis() as u64;
                    server.down_until_ms.store(until, Ordering::Relaxed);
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

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Keeps only the answer records on the question's chain (see `scrub`).
fn scrub(
    mut reply: Message,
    query: &UpstreamQuery<'_>,
    server: SocketAddr,
) -> Result<Message, UpstreamError> {
    let answers = std::mem::take(&mut reply.answers);
    let (kept, dropped) = chain_records(query.name, query.qtype, answers)
        .map_err(|at| UpstreamError::CnameLoop { server, at })?;
    if dropped > 0 {
        tracing::debug!(%server, name = %query.name, dropped, "answer records off the question's chain left out");
    }
    reply.answers = kept;
    Ok(reply)
}

/// One query to one server: UDP, then TCP if the UDP reply was truncated.
async fn exchange(
    server: SocketAddr,
    query: &UpstreamQuery<'_>,
    limit: Duration,
) -> Result<Message, UpstreamError> {
    let id: u16 = rand::random();
    let request = build_query(id, query).map_err(|error| UpstreamError::Malformed {
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
        return Ok(reply);
    }
    timeout(limit, exchange_tcp(server, id, query, &request))
        .await
        .map_err(|_| UpstreamError::Timeout {
            server,
            timeout: limit,
        })?
}

fn build_query(id: u16, query: &UpstreamQuery<'_>) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.checking_disabled = query.checking_disabled;
    let mut question = Query::query(query.name.clone(), query.qtype);
    question.set_query_class(query.qclass);
    message.add_query(question);
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    edns.set_dnssec_ok(query.dnssec_ok);
    message.set_edns(edns);
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
            Ok(reply) if refusal_without_question(&reply, id) => {
                return Err(UpstreamError::Malformed {
                    server,
                    reason: refusal_reason(&reply),
                });
            }
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
    if !matches_query(&reply, id, query) {
        let reason = if refusal_without_question(&reply, id) {
            refusal_reason(&reply)
        } else {
            "reply does not match the query".to_owned()
        };
        return Err(UpstreamError::Malformed { server, reason });
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
