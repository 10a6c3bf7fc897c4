//! Serving DNS: binds every `listen` address on UDP and TCP and runs our [`handler::Handler`]
//! behind the UDP worker threads (`udp`, `workers`) and the TCP listeners (`tcp`) until
//! shutdown.

pub mod acl;
pub mod fastpath;
pub mod handler;
mod mmsg;
pub mod sinkhole;
mod tcp;
mod udp;
mod workers;

#[cfg(test)]
mod test_support;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use hickory_proto::{
    ProtoError,
    op::{
        EmitAndCount, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
        emit_message_parts,
    },
    rr::{
        Record,
        rdata::opt::{EdnsCode, EdnsOption},
    },
    serialize::binary::{BinEncodable, BinEncoder},
};
use hickory_server::{server::ResponseInfo, zone_handler::MessageResponse};
use tokio::net::TcpListener;

pub use handler::{Counters, Handler};

use crate::{cache::AnswerCache, state::State};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({transport}): {source}")]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the UDP worker threads: {0}")]
    UdpWorkers(#[source] std::io::Error),
    #[error("recursion: {0}")]
    Recursion(#[from] crate::resolve::RecursionError),
}

/// A bound, running server.
pub struct Running {
    /// Our TCP listeners (see `tcp`).
    tcp: tcp::TcpServer,
    /// Our UDP receive loops (see `udp`), one thread per core (see `workers`).
    udp_workers: workers::UdpWorkers,
    /// The addresses actually bound (port 0 in the config becomes a real port here), each
    /// serving both UDP and TCP.
    pub local_addrs: Vec<SocketAddr>,
    pub counters: Arc<Counters>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

/// Binds every listen address and starts serving from `state`.
pub async fn start(
    state: Arc<ArcSwap<State>>,
    audit: Option<crate::audit::AuditHandle>,
) -> Result<Running, ServeError> {
    let config = state.load().config.clone();
    let counters = Arc::new(Counters::default());
    // Built once, outside the reloadable state, so a list reload keeps the recursor's caches.
    let recursor = if config.recursion.enabled {
        Some(Arc::new(crate::resolve::Recursor::new(
            &config.recursion,
            &config.forward_zones,
            &config.forward,
        )?))
    } else {
        None
    };
    if let Some(recursor) = &recursor {
        let recursor = recursor.clone();
        tokio::spawn(async move { recursor.prime().await });
    }
    let handler = Handler::new(
        state,
        AnswerCache::new(&config.cache),
        counters.clone(),
        recursor,
        audit,
    );
    // ACL is enforced in the handler, not by hickory's `with_access`, so that refusals get a
    // decision record like every other query.
    let handler = Arc::new(handler);
    let mut tcp_listeners = Vec::with_capacity(config.server.listen.len());
    let mut local_addrs = Vec::with_capacity(config.server.listen.len());
    // One UDP socket per worker thread and listen address, so receiving is spread across cores.
    let worker_count = config.server.threads;
    let mut worker_sockets: Vec<Vec<UdpSocket>> = (0..worker_count).map(|_| Vec::new()).collect();
    for &addr in &config.server.listen {
        let (udp_sockets, tcp) = bind_pair(addr, worker_count).await?;
        let bound = tcp.local_addr().map_err(|source| ServeError::Bind {
            addr,
            transport: "tcp",
            source,
        })?;
        for (sockets, udp) in worker_sockets.iter_mut().zip(udp_sockets) {
            sockets.push(udp);
        }
        tcp_listeners.push(tcp);
        local_addrs.push(bound);
    }
    let grace = workers::in_flight_grace(
        config.forward.timeout,
        config.forward.attempts,
        config
            .recursion
            .enabled
            .then(|| Duration::from_millis(config.recursion.timeout_ms)),
    );
    let udp_workers = workers::UdpWorkers::start(worker_sockets, &handler, grace)
        .await
        .map_err(ServeError::UdpWorkers)?;
    let tcp = tcp::TcpServer::start(
        tcp_listeners,
        &handler,
        config.server.tcp_idle_timeout,
        config.server.tcp_max_connections,
        config.server.tcp_max_connections_per_client,
        grace,
    );
    Ok(Running {
        tcp,
        udp_workers,
        local_addrs,
        counters,
    })
}

/// Receive buffer asked for on each UDP socket. The kernel default (about 208 KiB) drops
/// queries in a burst before a worker gets to them; 4 MiB absorbs tens of thousands.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Binds `count` UDP sockets sharing one port (SO_REUSEPORT, so the kernel spreads queries
/// across them and each gets its own receive loop) and a TCP listener on the same port. With
/// port 0 the kernel picks the port for the first UDP socket and the rest follow it; if TCP
/// cannot have that port we start over with a fresh one.
async fn bind_pair(
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<UdpSocket>, TcpListener), ServeError> {
    let udp_error = |source| ServeError::Bind {
        addr,
        transport: "udp",
        source,
    };
    let mut attempts_left = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let first = udp_socket(addr).map_err(udp_error)?;
        let bound = first.local_addr().map_err(udp_error)?;
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(udp_socket(bound).map_err(udp_error)?);
        }
        match tcp_listener(bound) {
            Ok(tcp) => return Ok((sockets, tcp)),
            Err(source) => {
                attempts_left -= 1;
                if attempts_left == 0 {
                    return Err(ServeError::Bind {
                        addr: bound,
                        transport: "tcp",
                        source,
                    });
                }
            }
        }
    }
}

/// A TCP listener on `addr`. An IPv6 address serves IPv6 only, as its UDP sockets do: a
/// dual-stack `[::]` listener took the IPv4 port too, and `listen = ["0.0.0.0:53", "[::]:53"]`
/// failed to start ("address already in use").
fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // As std and tokio do: a restart can bind while old connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // An explicit IPv6 address serves IPv6 only; list an IPv4 address to serve both.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // Best effort: without privileges the kernel caps this at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
    socket.set_nonblocking(true)?;
    if addr.ip().is_unspecified() {
        // Answers must leave from the address each query came to (see `mmsg`).
        mmsg::report_destinations(std::os::fd::AsRawFd::as_raw_fd(&socket), addr.is_ipv6())?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl Running {
    /// Serves until `shutdown` completes, then stops accepting and lets in-flight queries end.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        shutdown.await;
        // Both at once: TCP stops accepting while UDP lets its queries in flight finish.
        tokio::join!(self.udp_workers.stop(), self.tcp.stop());
        Ok(())
    }
}

/// FORMERR for a message with a readable header (RFC 1035 §4.1.1), as the whole answer: the
/// message could not be parsed, so nothing of it is echoed. `None` for anything shorter than
/// a header, and for a response, which is never answered.
fn formerr_for(message: &[u8]) -> Option<Vec<u8>> {
    if message.len() < 12 || message[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([message[0], message[1]]);
    let op_code = OpCode::from_u8((message[2] >> 3) & 0x0f);
    let mut metadata = Metadata::new(id, MessageType::Response, op_code);
    metadata.response_code = ResponseCode::FormErr;
    // RFC 1035 §4.1.1: RD is copied into the response.
    metadata.recursion_desired = message[2] & 0x01 != 0;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(12);
    header.emit(&mut BinEncoder::new(&mut bytes)).ok()?;
    Some(bytes)
}

/// A request's question section as received, kept beside its responder for
/// `encode_response`. Inline: a query has one question of at most 255 + 4 bytes, and the
/// query path allocates nothing for it. A longer section (several questions, refused before
/// any answer is encoded) is kept as none: the response is then encoded as before.
#[derive(Clone, Copy)]
pub(crate) struct QuestionBytes {
    bytes: [u8; QUESTION_MAX],
    len: u16,
}

const QUESTION_MAX: usize = 255 + 4;

impl QuestionBytes {
    pub(crate) const NONE: Self = Self {
        bytes: [0; QUESTION_MAX],
        len: 0,
    };

    pub(crate) fn new(question: &[u8]) -> Self {
        let mut kept = Self::NONE;
        if let Some(room) = kept.bytes.get_mut(..question.len()) {
            room.copy_from_slice(question);
            kept.len = question.len() as u16;
        }
        kept
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Encodes a response in at most `limit` bytes. `question` is the request's question section
/// as received, which the response repeats. A response that cannot be encoded at all becomes a
/// bare SERVFAIL, as in hickory-server's own handlers.
///
/// It is written whole first and only cut when it does not fit (see [`truncate_response`]):
/// hickory checks the size limit on each name as written in full, before compressing it, so
/// under the real limit an answer to a long name that compresses well came back truncated
/// (a 250-byte name's NXDOMAIN, 331 bytes, asked without EDNS), and it drops the OPT record
/// before anything else (an EDE's text could cost a client its EDNS and a retry over TCP).
fn encode_response<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    limit: u16,
    question: &[u8],
) -> Result<(ResponseInfo, Vec<u8>), ProtoError> {
    let id = response.metadata().id;
    let op_code = response.metadata().op_code;
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    let emitted = seed_question_pointers(&mut encoder, question, u16::MAX)
        .and_then(|()| response.destructive_emit(&mut encoder));
    let end = encoder.offset();
    let emitted = emitted.and_then(|info| {
        bytes.truncate(end);
        // The seeded pointers hold only if the response repeats this very question.
        debug_assert!(
            question.is_empty() || bytes.get(12..12 + question.len()) == Some(question),
            "response written with another question than the one seeded"
        );
        if bytes.len() <= usize::from(limit) {
            Ok(info)
        } else {
            truncate_response(&mut bytes, limit, question)
        }
    });
    match emitted {
        Ok(info) => Ok((info, bytes)),
        Err(error) => {
            tracing::warn!(%error, "cannot encode a response; answering SERVFAIL");
            bytes.clear();
            let mut metadata = Metadata::new(id, MessageType::Response, op_code);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            header.emit(&mut BinEncoder::new(&mut bytes))?;
            Ok((ResponseInfo::from(header), bytes))
        }
    }
}

/// Rewrites the whole response in `bytes` to fit in `limit`: the OPT record is kept (RFC 6891
/// §7: a response to an EDNS query carries one), with an EDE's code but without its text
/// (RFC 8914 §3: the text may be left out), then as many records as fit, in section order.
/// TC is set when an answer or authority record is left out (RFC 2181 §9); additional records
/// are optional. Sizes are measured on the encoded message, never per name as written (see
/// [`encode_response`]). Runs only for responses over the limit.
fn truncate_response(
    bytes: &mut Vec<u8>,
    limit: u16,
    question: &[u8],
) -> Result<ResponseInfo, ProtoError> {
    let whole = Message::from_vec(bytes)?;
    let opt = whole.edns.as_ref().map(|edns| {
        let mut edns = edns.clone();
        if let Some(EdnsOption::Unknown(15, data)) = edns.option(EdnsCode::Unknown(15)).cloned() {
            edns.options_mut().remove(EdnsCode::Unknown(15));
            let code = data.get(..2).unwrap_or_default().to_vec();
            edns.options_mut().insert(EdnsOption::Unknown(15, code));
        }
        edns.set_rcode_high(whole.metadata.response_code.high());
        let mut opt = Vec::new();
        Record::from(&edns)
            .emit(&mut BinEncoder::new(&mut opt))
            .map(|()| opt)
    });
    let opt = opt.transpose()?.unwrap_or_default();
    let room = usize::from(limit).saturating_sub(opt.len());
    // The question section as received; written anew only for a response that was not given
    // one (it then has none, or is ours).
    let question = if question.is_empty() {
        let mut written = Vec::new();
        let mut encoder = BinEncoder::new(&mut written);
        for query in &whole.queries {
            query.emit(&mut encoder)?;
        }
        written
    } else {
        question.to_vec()
    };
    let sections = [&whole.answers, &whole.authorities, &whole.additionals];
    let total: usize = sections.iter().map(|section| section.len()).sum();
    let required = whole.answers.len() + whole.authorities.len();
    // The first `kept` records in section order, written as a message without OPT.
    let encode = |kept: usize, truncated: bool, out: &mut Vec<u8>| {
        out.clear();
        let mut encoder = BinEncoder::new(out);
        let mut metadata = whole.metadata;
        metadata.truncation = truncated;
        let take = |section: usize| {
            let before: usize = sections[..section].iter().map(|s| s.len()).sum();
            kept.saturating_sub(before).min(sections[section].len())
        };
        let mut answers = whole.answers.iter().take(take(0));
        let mut authorities = whole.authorities.iter().take(take(1));
        let mut additionals = whole.additionals.iter().take(take(2));
        // The question as received, where the seeded pointers expect it (written as a name,
        // it would find its own seeded pointer and point at itself).
        seed_question_pointers(&mut encoder, &question, u16::MAX)?;
        let header = emit_message_parts(
            &metadata,
            &mut RawQuestion {
                bytes: &question,
                count: whole.queries.len(),
            },
            &mut answers,
            &mut authorities,
            &mut additionals,
            None,
            None,
            &mut encoder,
        )?;
        let end = encoder.offset();
        out.truncate(end);
        Ok::<_, ProtoError>(header)
    };
    // The size grows with every record added: the most that fit is found by bisection.
    let (mut fits, mut over) = (0, total);
    while fits < over {
        let middle = (fits + over).div_ceil(2);
        encode(middle, false, bytes)?;
        if bytes.len() <= room {
            fits = middle;
        } else {
            over = middle - 1;
        }
    }
    let mut header = encode(fits, fits < required, bytes)?;
    if bytes.len() > room {
        // Not even the question fits: the caller answers a bare SERVFAIL.
        return Err(ProtoError::MaxBufferSizeExceeded(usize::from(limit)));
    }
    if !opt.is_empty() {
        bytes.extend_from_slice(&opt);
        header.counts.additionals += 1;
        bytes[10..12].copy_from_slice(&header.counts.additionals.to_be_bytes());
    }
    Ok(ResponseInfo::from(header))
}

/// A question section written as the bytes it was received in, with its count of questions.
struct RawQuestion<'q> {
    bytes: &'q [u8],
    count: usize,
}

impl EmitAndCount for RawQuestion<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, ProtoError> {
        encoder.emit_vec(self.bytes)?;
        Ok(self.count)
    }
}

/// Lets names in the response point into the question: writes the header's room and the
/// question where the response will write them again, notes where each suffix of the question
/// name starts, and rewinds. hickory-server writes the question from its received bytes and
/// notes it as one piece with its type and class, which no name matches, so each answer's
/// owner went out in full: a 254-byte name took 270 bytes instead of 16, and an answer the
/// upstream fitted in 512 bytes came back truncated.
fn seed_question_pointers(
    encoder: &mut BinEncoder<'_>,
    question: &[u8],
    limit: u16,
) -> Result<(), ProtoError> {
    const HEADER_LEN: usize = 12;
    if question.is_empty() || HEADER_LEN + question.len() > usize::from(limit) {
        return Ok(());
    }
    encoder.emit_vec(&[0; HEADER_LEN])?;
    encoder.emit_vec(question)?;
    let mut starts = [0usize; 128];
    let mut count = 0;
    let mut at = 0;
    // Plain labels up to the root; a query's question has no pointers, and anything odd just
    // ends the seeding (the response is then as before).
    while let Some(&len) = question.get(at) {
        if len == 0 || len & 0xC0 != 0 || count == starts.len() {
            break;
        }
        starts[count] = HEADER_LEN + at;
        count += 1;
        at += 1 + usize::from(len);
    }
    if question.get(at) == Some(&0) {
        for &start in &starts[..count] {
            encoder.store_label_pointer(start, HEADER_LEN + at);
        }
    }
    encoder.set_offset(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
        serialize::binary::BinDecoder,
    };
    use hickory_server::zone_handler::{MessageResponseBuilder, Queries};

    use super::*;

    #[test]
    fn question_bytes_keep_one_question_inline_and_nothing_longer() {
        assert_eq!(
            QuestionBytes::new(b"\x03www\x00\x00\x01\x00\x01")
                .as_slice()
                .len(),
            9
        );
        let longest = [1u8; QUESTION_MAX];
        assert_eq!(QuestionBytes::new(&longest).as_slice(), &longest[..]);
        assert!(
            QuestionBytes::new(&[1u8; QUESTION_MAX + 1])
                .as_slice()
                .is_empty()
        );
    }

    #[test]
    fn a_response_that_cannot_be_encoded_goes_out_as_a_bare_servfail() {
        let query = Query::query(
            Name::from_ascii("www.example.test.").unwrap(),
            RecordType::A,
        );
        let mut question = Vec::new();
        query.emit(&mut BinEncoder::new(&mut question)).unwrap();
        let queries = Queries::read(&mut BinDecoder::new(&question), 1).unwrap();
        let metadata = Metadata::new(0x1234, MessageType::Response, OpCode::Query);
        let none = std::iter::empty::<&Record>;
        let response = MessageResponseBuilder::new(&queries, None).build(
            metadata,
            none(),
            none(),
            none(),
            none(),
        );
        // Room for the header alone: the question must go out whole (the encoder truncates
        // records, never the question), so encoding fails.
        let (info, bytes) = encode_response(response, 12, &question).unwrap();
        assert_eq!(info.response_code, ResponseCode::ServFail);
        let sent = Message::from_vec(&bytes).unwrap();
        assert_eq!(sent.metadata.id, 0x1234);
        assert_eq!(sent.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(sent.metadata.message_type, MessageType::Response);
        assert!(sent.queries.is_empty() && sent.answers.is_empty());
    }
}
