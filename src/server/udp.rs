//! The UDP receive loop: one per socket, running our [`Handler`] on hickory-server `Request`s
//! without a task hand-off for answers that need no network (cache hits, blocks, refusals).
//!
//! hickory-server's own UDP loop spawns a task per packet and sends each answer back through a
//! channel to the socket task; the bench kit measured half the server's time in the kernel
//! switching between them. Here a query is polled once in the receive loop; only if it has to
//! wait (upstream, recursion) is it spawned. Before any of that, a query answered before under
//! the same state is answered from stored bytes (`fastpath`). TCP has its own module (`tcp`).

use std::{
    future::Future,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, OnceLock, Weak, atomic::Ordering},
    task::{Context, Poll, Waker},
};

use hickory_proto::{op::MessageType, rr::Record};
use hickory_server::{
    net::{NetError, xfer::Protocol},
    server::{Request, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponse,
};
use tokio::io::{Interest, unix::AsyncFd};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::policy::{Transport, decision::DecisionRecord};

use super::{
    Handler,
    fastpath::PlainQuery,
    handler::{Arrival, BatchTime},
    mmsg::{self, RecvBatch, SendBatch},
};

/// Batches still read after shutdown is asked (32 datagrams each).
const SHUTDOWN_DRAIN_BATCHES: usize = 64;

/// Largest datagram we read: anything longer is not a DNS query we would answer anyway.
const MAX_QUERY: usize = 4096;

/// A listening UDP socket, registered with the reactor for readability only.
///
/// Why not tokio's `UdpSocket`: it registers for writability as well, and then every answer
/// the kernel frees after sending (`sock_wfree`) runs the epoll callback, which queues a
/// writable event and can wake a parked worker. `perf` put 3.6 % of a worker's time there.
/// Nothing here waits for writability: fast answers go out with `sendmmsg` and a full buffer
/// drops them, as in every UDP server; a slow-path answer that finds the buffer full waits for
/// room through a registration of its own (`ListenSocket::send_waiting`).
pub struct ListenSocket(AsyncFd<UdpSocket>);

impl ListenSocket {
    /// Registers a bound, non-blocking socket. Must be called inside the runtime.
    pub fn new(socket: UdpSocket) -> std::io::Result<Self> {
        register(socket, Interest::READABLE).map(Self)
    }

    /// Sends `bytes`, waiting for room in the send buffer if it is full. The wait (rare: the
    /// kernel frees a loopback or NIC buffer within microseconds) goes through a duplicate of
    /// the descriptor registered for writability for this send only, so the listening
    /// registration stays read-only.
    /// `source`: the address the query came to, on a wildcard socket (see `mmsg`).
    async fn send_waiting(
        &self,
        bytes: &[u8],
        destination: SocketAddr,
        source: Option<IpAddr>,
    ) -> std::io::Result<()> {
        let fd = self.socket().as_raw_fd();
        match mmsg::send_one(fd, bytes, destination, source) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            sent => return sent,
        }
        let writable = register(self.socket().try_clone()?, Interest::WRITABLE)?;
        loop {
            let mut guard = writable.writable().await?;
            let sent = guard.try_io(|socket| {
                mmsg::send_one(socket.get_ref().as_raw_fd(), bytes, destination, source)
            });
            if let Ok(sent) = sent {
                return sent;
            }
        }
    }

    fn socket(&self) -> &UdpSocket {
        self.0.get_ref()
    }
}

/// Registers `socket` with the current runtime's reactor for `interest`.
#[allow(unsafe_code)]
fn register(socket: UdpSocket, interest: Interest) -> std::io::Result<AsyncFd<UdpSocket>> {
    // SAFETY: the `AsyncFd` owns `socket`, whose descriptor stays open and the same for as
    // long as it lives (std's `UdpSocket` owns its fd and never swaps it).
    let registered = unsafe { AsyncFd::register_with_interest(socket, interest) };
    registered.map_err(|error| error.into_parts().1)
}

/// Receives on `socket` until `shutdown`, answering each query. Datagrams are read and fast
/// answers sent in batches (`mmsg`); the rest go through the request chain one by one.
/// Queries that must wait are spawned on the current runtime and tracked by `in_flight`, so
/// a stopping worker can let them finish.
///
/// `siblings`: every worker's socket on this address (`me` is this loop's slot). When `socket`
/// runs dry, the loop takes a batch from a sibling that has queries waiting before it goes to
/// sleep, and answers them from `socket` (same address and port, so the client cannot tell).
/// SO_REUSEPORT spreads clients over the sockets by a hash of their address, not by load:
/// without this, a worker whose core is busy with something else (the audit writer, another
/// process) falls behind while its sibling idles. The bench kit saw a tenth of the machine
/// idle under full load with the audit log on. A loop only looks when its own socket has
/// woken it, so this evens out load under traffic; it does not replace a stopped loop.
pub async fn serve(
    socket: Arc<ListenSocket>,
    siblings: SiblingSockets,
    me: usize,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
    in_flight: TaskTracker,
) {
    let fd = socket.socket().as_raw_fd();
    // Where the next steal looks first, so that one sibling is not always preferred.
    let mut next_sibling = me;
    // Whether the last batch was taken from a sibling: then the own socket is tried without
    // waiting for readiness (it may have had none to report while this loop was busy), and
    // the siblings again, before going to sleep.
    let mut stolen_last = false;
    let mut received = RecvBatch::new(MAX_QUERY);
    let mut answers = SendBatch::new(MAX_QUERY);
    let mut scratch = vec![0u8; MAX_QUERY];
    // Decision records of the fast answers in the current batch, handed to the audit writer at
    // once after the batch's answers are sent.
    let mut audit_batch = Vec::with_capacity(mmsg::BATCH);
    // At shutdown, what the kernel has already queued is still answered (a bounded number of
    // batches, so a flood cannot hold the stop up), then the loop ends.
    let mut drain_left: Option<usize> = None;
    let looped = Loop {
        socket: &socket,
        handler: &handler,
        in_flight: &in_flight,
    };
    loop {
        // One batch per wake-up, then back to `readable`. `try_io` re-arms readiness when the
        // kernel says WouldBlock.
        let batch = match &mut drain_left {
            None if std::mem::take(&mut stolen_last) && !shutdown.is_cancelled() => {
                received.recv(fd)
            }
            None => {
                tokio::select! {
                    ready = socket.0.readable() => match ready {
                        Ok(mut guard) => match guard.try_io(|_| received.recv(fd)) {
                            Ok(batch) => batch,
                            // Readiness is re-armed; the dry socket is handled below.
                            Err(_would_block) => Err(std::io::ErrorKind::WouldBlock.into()),
                        },
                        Err(error) => {
                            tracing::warn!(%error, "udp socket failed");
                            return;
                        }
                    },
                    () = shutdown.cancelled() => {
                        drain_left = Some(SHUTDOWN_DRAIN_BATCHES);
                        continue;
                    }
                }
            }
            Some(0) => return,
            Some(left) => {
                *left -= 1;
                // Straight to the (non-blocking) socket: the reactor may not have seen the
                // last datagrams yet, and the loop ends at the first WouldBlock anyway.
                match received.recv(fd) {
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                    batch => batch,
                }
            }
        };
        let count = match batch {
            Ok(count) => count,
            // Our socket is dry (never while draining at a stop: that returns above first).
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                match steal(&mut received, &siblings, me, &mut next_sibling) {
                    Some(count) => {
                        stolen_last = true;
                        count
                    }
                    None => continue,
                }
            }
            Err(error) => {
                // ICMP errors from earlier sends surface here on some systems; not fatal. A
                // stream of them must not keep the thread either (see the end of the loop).
                tracing::debug!(%error, "udp receive error");
                tokio::task::coop::consume_budget().await;
                continue;
            }
        };
        let batch_time = BatchTime::now();
        for index in 0..count {
            let (packet, source) = received.datagram(index);
            let Some(source) = source else { continue };
            answer(
                &looped,
                packet,
                received.destination(index),
                Arrival {
                    client: source,
                    batch: batch_time,
                },
                &mut scratch,
                &mut answers,
                &mut audit_batch,
            );
        }
        send_answers(fd, &handler, &mut answers, &mut audit_batch);
        // Readiness does not count against tokio's cooperative budget, so without this a
        // socket that never runs dry would keep the thread: the queries waiting on upstreams,
        // the timers and the other listen addresses' loops on this worker need their turns.
        tokio::task::coop::consume_budget().await;
    }
}

/// Every worker's receive socket on one listen address, a slot per worker, each filled once
/// its worker has registered it (see `serve`). Weak: a socket whose loop has ended is closed
/// and leaves the SO_REUSEPORT group, so the kernel steers its clients to the others, as it
/// did before loops took from each other.
pub type SiblingSockets = Arc<[OnceLock<Weak<ListenSocket>>]>;

/// Siblings looked at per steal: each look is a system call, mostly answered "nothing", and
/// with dozens of workers a look at every one each time a socket runs dry would cost more
/// than it saves. Taken in turn, so every sibling is looked at now and then.
const STEAL_LOOKS: usize = 2;

/// One non-blocking receive batch from a sibling of `me` that has datagrams waiting (at most
/// `STEAL_LOOKS` of them looked at, from `next` on); `None` if none has. Errors count as
/// nothing waiting: they are the owner's to see and report.
fn steal(
    received: &mut RecvBatch,
    siblings: &[OnceLock<Weak<ListenSocket>>],
    me: usize,
    next: &mut usize,
) -> Option<usize> {
    let others = siblings.len().saturating_sub(1);
    for _ in 0..others.min(STEAL_LOOKS) {
        // The slots other than `me`, in turn.
        let mut index = *next % others;
        *next = index + 1;
        if index >= me {
            index += 1;
        }
        let Some(sibling) = siblings[index].get().and_then(Weak::upgrade) else {
            continue;
        };
        if let Ok(count @ 1..) = received.recv(sibling.socket().as_raw_fd()) {
            return Some(count);
        }
    }
    None
}

/// Sends the fast path's answers of one receive batch, then hands its records to the audit
/// log: after the send, so that a record whose answer the kernel refused says so.
fn send_answers(
    fd: RawFd,
    handler: &Handler,
    answers: &mut SendBatch,
    audit_batch: &mut Vec<DecisionRecord>,
) {
    let lost = answers.flush(fd, |record| audit_batch[record].mark_not_sent());
    if lost > 0 {
        tracing::debug!(lost, "udp answers could not be sent");
    }
    handler.flush_audit(audit_batch);
}

/// What every datagram of one receive loop shares.
struct Loop<'a> {
    socket: &'a Arc<ListenSocket>,
    handler: &'a Arc<Handler>,
    in_flight: &'a TaskTracker,
}

/// One datagram: the fast path, or the request chain. `to`: the address it was sent to, on a
/// wildcard socket, which its answer must come from.
fn answer(
    looped: &Loop<'_>,
    packet: &[u8],
    to: Option<IpAddr>,
    arrival: Arrival,
    scratch: &mut [u8],
    answers: &mut SendBatch,
    audit_batch: &mut Vec<DecisionRecord>,
) {
    let Loop {
        socket,
        handler,
        in_flight,
    } = *looped;
    let source = arrival.client;
    // Answering to port 0 or an unspecified address is impossible (and a spoofing sign).
    if source.port() == 0 || source.ip().is_unspecified() {
        return;
    }
    let records_before = audit_batch.len();
    if let Some(query) = PlainQuery::parse(packet)
        && handler.answer_fast(&query, &arrival, scratch, audit_batch, |bytes| {
            answers.push(bytes, source, to)
        })
    {
        if audit_batch.len() > records_before {
            answers.attach_record(records_before);
        }
        return;
    }
    let request = match Request::from_bytes(packet.to_vec(), source, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            handler.counters().malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                %error,
                client = %crate::audit::ShownClient(source),
                "malformed query"
            );
            if let Some(formerr) = super::formerr_for(packet) {
                let sent =
                    mmsg::send_one(socket.socket().as_raw_fd(), &formerr, source, to).is_ok();
                handler.record_formerr(&arrival, Transport::Udp, sent, audit_batch);
            }
            return;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        // Never answer a response: that is how reflection loops start.
        handler.counters().malformed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let responder = Responder {
        socket: socket.clone(),
        destination: source,
        from: to,
        question: super::QuestionBytes::new(request.queries.as_bytes()),
    };
    let handler = handler.clone();
    let mut query = Box::pin(async move {
        handler
            .answer_query(&request, responder, arrival.batch)
            .await;
    });
    // Poll once here: cache hits and blocks finish without ever being scheduled. A query that
    // must wait is handed to the runtime, which polls it again with a real waker.
    let mut context = Context::from_waker(Waker::noop());
    if query.as_mut().poll(&mut context) == Poll::Pending {
        in_flight.spawn(query);
    }
}

/// Sends one answer straight from the task that computed it.
#[derive(Clone)]
struct Responder {
    socket: Arc<ListenSocket>,
    destination: SocketAddr,
    /// The address the query came to, on a wildcard socket (see `mmsg`).
    from: Option<IpAddr>,
    /// The request's question section as received (see `encode_response`).
    question: super::QuestionBytes,
}

#[async_trait::async_trait]
impl ResponseHandler for Responder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // RFC 6891 §7: the size the client can take (which the handler put in the response's
        // OPT, capped by our own limit); 512 without EDNS (RFC 1035 §4.2.1). The encoder sets
        // TC and drops what does not fit.
        let limit = response
            .edns()
            .map_or(512, |edns| edns.max_payload().max(512));
        let (info, bytes) = super::encode_response(response, limit, self.question.as_slice())?;
        self.socket
            .send_waiting(&bytes, self.destination, self.from)
            .await?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use arc_swap::ArcSwap;

    use super::*;
    use crate::{
        cache::AnswerCache,
        server::{Counters, test_support},
        state,
    };

    /// A listening socket on an ephemeral IPv4 loopback port, registered with the current
    /// runtime, and its descriptor (for `send_answers`).
    fn listening() -> (Arc<ListenSocket>, RawFd) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        let fd = socket.as_raw_fd();
        (Arc::new(ListenSocket::new(socket).expect("register")), fd)
    }

    /// Every path's answer that the kernel refuses (here: an IPv6 destination on an IPv4
    /// socket, EAFNOSUPPORT; in the field a full send buffer or an unreachable destination)
    /// is recorded once, as not sent: the request chain (the first ask for a blocked name),
    /// FORMERR, and the fast path (the same question again, replayed after the batch's
    /// `sendmmsg`). In the batch, the fast answer refused is the second, after one that goes
    /// out, and its record the third, after FORMERR's: only that record is marked.
    #[test]
    fn answers_that_do_not_go_out_are_recorded_as_not_sent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (handler, writer, settings) = test_support::audited_handler(
            tmp.path(),
            test_support::NO_UPSTREAM.parse().expect("address"),
        );
        let query = test_support::blocked_query();
        let client: SocketAddr = "[2001:db8::7]:5300".parse().expect("client");
        // A real socket, so its answer goes out.
        let reachable = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client");
        let reachable_client = reachable.local_addr().expect("address");
        test_support::runtime().block_on(async {
            let (socket, fd) = listening();
            let in_flight = TaskTracker::new();
            let looped = Loop {
                socket: &socket,
                handler: &handler,
                in_flight: &in_flight,
            };
            let mut scratch = vec![0u8; MAX_QUERY];
            let mut answers = SendBatch::new(MAX_QUERY);
            let mut audit_batch = Vec::new();
            let unparsable = &test_support::UNPARSABLE[..];
            for (packet, client) in [
                (&query[..], client),
                (unparsable, client),
                (&query[..], reachable_client),
                (&query[..], client),
            ] {
                let arrival = Arrival {
                    client,
                    batch: BatchTime::now(),
                };
                answer(
                    &looped,
                    packet,
                    None,
                    arrival,
                    &mut scratch,
                    &mut answers,
                    &mut audit_batch,
                );
            }
            send_answers(fd, &handler, &mut answers, &mut audit_batch);
        });
        assert_eq!(handler.counters().fast_answers.load(Ordering::Relaxed), 2);
        let v6 = client.to_string();
        let mut expected = vec![
            test_support::not_sent(&v6, ".", "FORMERR"),
            test_support::not_sent(&v6, "www.blocked.test.", "NXDOMAIN"),
            test_support::not_sent(&v6, "www.blocked.test.", "NXDOMAIN"),
            test_support::answered(
                &reachable_client.to_string(),
                "www.blocked.test.",
                "NXDOMAIN",
                "",
            ),
        ];
        expected.sort();
        assert_eq!(test_support::recorded_answers(writer, &settings), expected);
        let mut reply = [0u8; 512];
        reachable.set_nonblocking(true).expect("non-blocking");
        assert!(
            reachable.recv_from(&mut reply).is_ok(),
            "its answer went out"
        );
    }

    /// A query answered by the request chain is timed from its receive batch, as the fast
    /// path's are: its record's `time` is the batch's, and its latency includes the wait
    /// behind the batch's earlier datagrams (here a batch read a second before).
    #[test]
    fn the_request_chain_times_a_query_from_its_arrival() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (handler, writer, settings) = test_support::audited_handler(
            tmp.path(),
            test_support::NO_UPSTREAM.parse().expect("address"),
        );
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client");
        let second = std::time::Duration::from_secs(1);
        let arrived = BatchTime {
            at: std::time::Instant::now()
                .checked_sub(second)
                .expect("uptime"),
            wall: std::time::SystemTime::now() - second,
        };
        test_support::runtime().block_on(async {
            let (socket, _) = listening();
            let in_flight = TaskTracker::new();
            let looped = Loop {
                socket: &socket,
                handler: &handler,
                in_flight: &in_flight,
            };
            let mut audit_batch = Vec::new();
            answer(
                &looped,
                &test_support::blocked_query(),
                None,
                Arrival {
                    client: client.local_addr().expect("address"),
                    batch: arrived,
                },
                &mut vec![0u8; MAX_QUERY],
                &mut SendBatch::new(MAX_QUERY),
                &mut audit_batch,
            );
            assert!(audit_batch.is_empty(), "answered by the request chain");
        });
        let records = test_support::stop_and_read(writer, &settings);
        let (time, latency) = records
            .iter()
            .find_map(|record| match &record.entry {
                crate::audit::Entry::Query(q) => Some((record.time, q.latency_us)),
                _ => None,
            })
            .expect("a query record");
        assert_eq!(
            time,
            crate::audit::Timestamp::from_system_time(arrived.wall)
        );
        assert!(latency >= 1_000_000, "{latency} µs");
    }

    /// Datagrams queued before the loop first wakes: several times what it reads before
    /// tokio's cooperative budget (128 units, one per batch of `mmsg::BATCH`) makes it yield.
    const FLOOD: usize = 16_384;

    /// A DNS response header: the loop reads it, counts it as malformed and sends nothing, so
    /// the test measures the receive loop alone.
    const RESPONSE: [u8; 12] = [0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn handler() -> Arc<Handler> {
        let text = "[forward]\nupstreams = [\"127.0.0.1:9\"]\n";
        let config = crate::config::parse(Path::new("test.toml"), text).expect("config");
        let cache = AnswerCache::new(&config.cache);
        let (state, _) = state::build(config).expect("state");
        Arc::new(Handler::new(
            Arc::new(ArcSwap::from_pointee(state)),
            cache,
            Arc::new(Counters::default()),
            None,
            None,
        ))
    }

    /// A bound, non-blocking socket with room for `FLOOD` small datagrams.
    fn flood_target() -> UdpSocket {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        // Root (as in CI) may exceed net.core.rmem_max; otherwise the plain option is capped.
        let size = 64 << 20;
        if force_recv_buffer(&socket, size).is_err() {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        socket.into()
    }

    #[allow(unsafe_code)]
    fn force_recv_buffer(socket: &socket2::Socket, size: usize) -> std::io::Result<()> {
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid descriptor, and the option value is a c_int of the given length.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Whether a datagram is still queued on `socket` (peeked, so not taken).
    fn still_queued(socket: &UdpSocket) -> bool {
        let mut byte = [0u8; 1];
        socket.peek_from(&mut byte).is_ok()
    }

    /// Two SO_REUSEPORT sockets sharing one loopback port, as `bind_pair` makes for two workers.
    fn reuseport_pair() -> (UdpSocket, UdpSocket) {
        let first = crate::server::udp_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("first socket");
        let bound = first.local_addr().expect("address");
        let second = crate::server::udp_socket(bound).expect("second socket");
        (first, second)
    }

    /// Which of `pair` the kernel steers datagrams from `client` to: 0 or 1 (it hashes the
    /// addresses, so it is the same for every datagram of that client).
    fn steered_to(client: &UdpSocket, pair: [&UdpSocket; 2]) -> usize {
        let address = pair[0].local_addr().expect("address");
        client.send_to(b"probe", address).expect("probe");
        let mut buf = [0u8; 16];
        for _ in 0..10_000 {
            for (index, socket) in pair.iter().enumerate() {
                if socket.recv_from(&mut buf).is_ok() {
                    return index;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the probe reached neither socket");
    }

    /// A worker whose socket runs dry answers the queries waiting on a sibling's socket (that
    /// worker busy elsewhere): here the sibling has no loop at all, so without the steal its
    /// clients would never be answered.
    #[test]
    fn a_loop_whose_socket_runs_dry_answers_its_siblings_queries() {
        let (ours, theirs) = reuseport_pair();
        let address = ours.local_addr().expect("address");
        let mut to_theirs = Vec::new();
        let mut to_ours = None;
        while to_theirs.len() < 4 || to_ours.is_none() {
            let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client");
            match steered_to(&client, [&ours, &theirs]) {
                0 => to_ours = Some(client),
                _ => to_theirs.push(client),
            }
        }
        let to_ours = to_ours.expect("a client steered to ours");
        // A header promising a question that is not there: answered FORMERR at once.
        let query = |id: u8| [0, id, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let clients: Vec<(u8, UdpSocket)> = (1..).zip(to_theirs).collect();
        for (id, client) in &clients {
            client.send_to(&query(*id), address).expect("send");
        }
        test_support::runtime().block_on(async {
            let ours = Arc::new(ListenSocket::new(ours).expect("register"));
            let theirs = Arc::new(ListenSocket::new(theirs).expect("register"));
            let siblings: SiblingSockets = [&ours, &theirs]
                .into_iter()
                .map(|socket| OnceLock::from(Arc::downgrade(socket)))
                .collect();
            let shutdown = CancellationToken::new();
            let serving = tokio::spawn(serve(
                ours,
                siblings,
                0,
                handler(),
                shutdown.clone(),
                TaskTracker::new(),
            ));
            // Wakes the loop: it answers this, finds its socket dry and looks at the sibling's.
            to_ours.send_to(&query(100), address).expect("send");
            let answered = tokio::task::spawn_blocking(move || {
                clients
                    .iter()
                    .map(|(id, client)| (*id, client))
                    .chain([(100, &to_ours)])
                    .map(|(id, client)| {
                        client
                            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                            .expect("timeout");
                        let mut buf = [0u8; 512];
                        // FORMERR with the query's id, from the address the client asked.
                        client.recv_from(&mut buf).is_ok_and(|(len, from)| {
                            len >= 12 && buf[1] == id && buf[3] & 0x0f == 1 && from == address
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("clients");
            shutdown.cancel();
            serving.await.expect("serve");
            assert!(
                answered.iter().all(|&ok| ok),
                "FORMERR for each client steered to the sibling, then ours: {answered:?}"
            );
            drop(theirs);
        });
    }

    /// A socket that never runs dry must not keep its worker thread: queries waiting on
    /// upstreams, timers and the worker's other sockets share that thread. The flood here is
    /// queued up front, so whether another task ran before it was drained is exact, not a
    /// matter of timing.
    #[test]
    fn a_socket_that_never_runs_dry_lets_other_tasks_run() {
        test_support::runtime().block_on(async {
            let target = flood_target();
            let address = target.local_addr().expect("address");
            let observer = target.try_clone().expect("dup");
            let socket = Arc::new(ListenSocket::new(target).expect("register"));
            let handler = handler();
            let shutdown = CancellationToken::new();
            let serving = tokio::spawn(serve(
                socket,
                SiblingSockets::from([]),
                0,
                handler.clone(),
                shutdown.clone(),
                TaskTracker::new(),
            ));
            // Let the loop start and wait for readability on an empty socket.
            tokio::task::yield_now().await;
            let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("sender");
            for _ in 0..FLOOD {
                sender.send_to(&RESPONSE, address).expect("send");
            }
            assert!(still_queued(&observer), "the flood is queued");
            // Runs as soon as the loop yields for the first time after it starts reading.
            let read_before_yield = tokio::spawn(async move {
                let counters = handler.counters();
                while counters.malformed.load(Ordering::Relaxed) == 0 {
                    tokio::task::yield_now().await;
                }
                (
                    counters.malformed.load(Ordering::Relaxed),
                    still_queued(&observer),
                )
            });
            let (read, left) = read_before_yield.await.expect("observer");
            shutdown.cancel();
            serving.await.expect("serve");
            assert!(
                read >= 2 * mmsg::BATCH as u64,
                "the loop read {read} datagrams before yielding: the flood did not reach it"
            );
            assert!(
                left,
                "the loop read all {read} queued datagrams before any other task could run"
            );
        });
    }
}
