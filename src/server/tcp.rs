//! DNS over TCP (RFC 7766): accepts connections on each listen address, reads length-prefixed
//! messages, answers a connection's queries concurrently (each answer leaves when it is ready,
//! §6.2.1.1), closes connections that stay idle, and at stop lets the queries in flight finish.
//!
//! Ours rather than hickory-server's listener, which answers a message it cannot parse itself
//! (FORMERR, out of our handler's sight, so without an audit record), answers a connection's
//! queries one at a time, and aborts the queries in flight when the server stops (losing their
//! answers and their records).

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Waker},
    time::Duration,
};

use hickory_proto::{op::MessageType, rr::Record};
use hickory_server::{
    net::{NetError, xfer::Protocol},
    server::{Request, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponse,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Handler,
    handler::{Arrival, BatchTime},
};
use crate::policy::Transport;

/// Queries of one connection in hand at once, from the read of the message to the write of
/// its answer. The next message is read when one of them has been written, so a client that
/// pipelines more (or does not read its answers) waits in its own socket buffer, not our memory.
const PIPELINE_DEPTH: usize = 64;

/// How long a closing connection reads (and discards) what the client still sends, so that
/// closing with unread input does not reset the connection and destroy answers not yet
/// delivered (RFC 7766 §6.2.3 wants the server to close gracefully).
const LINGER: Duration = Duration::from_secs(1);

/// The idle timeout while the server is short of connection slots.
const IDLE_UNDER_LOAD: Duration = Duration::from_secs(1);

/// How long the connections get, after the queries in flight at a stop have answered, to put
/// those answers on the wire and close.
const FLUSH_AT_STOP: Duration = Duration::from_secs(2);

/// Most answers gathered into one write when several are ready.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// The accept loops and their connections; `stop` ends them.
pub struct TcpServer {
    shutdown: CancellationToken,
    /// Accept loops and connection tasks.
    connections: TaskTracker,
    /// Queries being answered, from every connection.
    queries: TaskTracker,
    /// Cancelled when a stop's grace runs out: the queries still waiting are dropped then,
    /// which counts their audit records as lost (see `handler::RecordOwed`) while the audit
    /// writer still runs, instead of when the runtime ends after it.
    abandon: CancellationToken,
    grace: Duration,
}

impl TcpServer {
    /// Starts an accept loop for each listener on the current runtime; at most
    /// `max_connections` connections are served at once, over all of them, and at most
    /// `max_per_client` of them from one client address.
    pub fn start(
        listeners: Vec<TcpListener>,
        handler: &Arc<Handler>,
        idle_timeout: Duration,
        max_connections: usize,
        max_per_client: usize,
        grace: Duration,
    ) -> Self {
        let server = Self {
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            queries: TaskTracker::new(),
            abandon: CancellationToken::new(),
            grace,
        };
        let slots = Arc::new(Semaphore::new(max_connections));
        let per_client = Arc::new(PerClient {
            limit: max_per_client,
            open: Mutex::new(HashMap::new()),
        });
        for listener in listeners {
            let connection = Connection {
                handler: handler.clone(),
                idle_timeout,
                slots: slots.clone(),
                max_connections,
                per_client: per_client.clone(),
                shutdown: server.shutdown.clone(),
                queries: server.queries.clone(),
                abandon: server.abandon.clone(),
            };
            server
                .connections
                .spawn(accept(listener, connection, server.connections.clone()));
        }
        server
    }

    /// Stops accepting and reading, waits up to the grace for the queries in flight to answer
    /// (and so to write their audit records), then lets the connections deliver and close.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.queries.close();
        if timeout(self.grace, self.queries.wait()).await.is_err() {
            tracing::warn!(
                unanswered = self.queries.len(),
                "TCP queries still waiting for an upstream at stop were dropped"
            );
            self.abandon.cancel();
            self.queries.wait().await;
        }
        self.connections.close();
        let _ = timeout(FLUSH_AT_STOP, self.connections.wait()).await;
    }
}

/// What every connection of a listener shares.
#[derive(Clone)]
struct Connection {
    handler: Arc<Handler>,
    idle_timeout: Duration,
    /// The server's connection slots: one is taken before each accept.
    slots: Arc<Semaphore>,
    max_connections: usize,
    per_client: Arc<PerClient>,
    shutdown: CancellationToken,
    queries: TaskTracker,
    abandon: CancellationToken,
}

async fn accept(listener: TcpListener, connection: Connection, connections: TaskTracker) {
    loop {
        // A free slot first: past the limit, connections wait in the kernel's backlog.
        let slot = tokio::select! {
            () = connection.shutdown.cancelled() => return,
            slot = connection.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = connection.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                // One client may not take every slot: past its share, the connection is
                // closed at once (and the slot goes back).
                let Some(share) = ClientShare::take(&connection.per_client, client.ip()) else {
                    connection
                        .handler
                        .counters()
                        .tcp_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        client = %crate::audit::ShownClient(client),
                        "TCP connections per client at the limit; closed"
                    );
                    continue;
                };
                let connection = connection.clone();
                connections.spawn(async move {
                    connection.serve(stream, client).await;
                    drop(share);
                    drop(slot);
                });
            }
            Err(error) => {
                // Out of file descriptors (or a peer that reset before we accepted): the
                // listener is fine; pause so a full table is not a busy loop.
                tracing::warn!(%error, "cannot accept a TCP connection");
                tokio::select! {
                    () = connection.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Open connections per client address, against `tcp_max_connections_per_client`. A lock,
/// but taken only when a connection opens or closes, never per query.
struct PerClient {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of a client, counted until dropped.
struct ClientShare {
    per_client: Arc<PerClient>,
    client: IpAddr,
}

impl ClientShare {
    fn take(per_client: &Arc<PerClient>, client: IpAddr) -> Option<Self> {
        let mut open = per_client
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= per_client.limit {
            return None;
        }
        *count += 1;
        Some(Self {
            per_client: per_client.clone(),
            client,
        })
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut open = self
            .per_client
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// An answer on its way to the writer, with the pipeline slot its query holds until it is
/// written.
type Outgoing = (Vec<u8>, Arc<OwnedSemaphorePermit>);

impl Connection {
    /// The configured idle timeout, or at most `IDLE_UNDER_LOAD` while fewer than a quarter of
    /// the connection slots are free: idle connections then make room for new clients
    /// (RFC 7766 §6.2.3 lets a busy server shorten it, as Unbound does).
    fn idle_timeout(&self) -> Duration {
        if self.slots.available_permits() * 4 < self.max_connections {
            self.idle_timeout.min(IDLE_UNDER_LOAD)
        } else {
            self.idle_timeout
        }
    }

    /// Reads messages until the client closes, stays idle too long, sends something that is
    /// not a DNS message stream, stops reading its answers, or the server stops; answers go
    /// out through one writer. Then closes gracefully.
    async fn serve(self, stream: TcpStream, client: SocketAddr) {
        // Answers are whole messages; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        // Room for every slot: sending an answer never waits.
        let (answers, outbox) = mpsc::channel::<Outgoing>(PIPELINE_DEPTH);
        let activity = Activity::new();
        let writing = write_answers(writer, outbox, self.idle_timeout, activity.clone());
        let reading = async move {
            let mut reader = BufReader::new(reader);
            let depth = Arc::new(Semaphore::new(PIPELINE_DEPTH));
            loop {
                let slot = tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    slot = depth.clone().acquire_owned() => match slot {
                        Ok(slot) => Arc::new(slot),
                        Err(_) => break,
                    },
                };
                // Slots other than the one this read holds: queries in hand or answers not
                // yet written.
                let in_hand = || depth.available_permits() < PIPELINE_DEPTH - 1;
                let read = read_message(&mut reader);
                tokio::pin!(read);
                let mut deadline = Instant::now() + self.idle_timeout();
                let message = loop {
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => break None,
                        // The writer gave up on this client (it stopped reading): answering
                        // more of its queries would be work for nothing.
                        () = answers.closed() => break None,
                        // Closed, or a read error: stop reading. Queries already read are
                        // still answered.
                        read = &mut read => break read.ok().flatten(),
                        () = tokio::time::sleep_until(deadline) => {
                            // Idle is no complete message, nothing in hand and nothing written
                            // for the whole timeout: while we owe answers, the client waits
                            // for us.
                            let now = Instant::now();
                            let quiet_until = activity.last_write() + self.idle_timeout();
                            if in_hand() {
                                deadline = now + self.idle_timeout();
                            } else if quiet_until > now {
                                deadline = quiet_until;
                            } else {
                                break None;
                            }
                        }
                    }
                };
                let Some(message) = message else {
                    break;
                };
                let arrival = Arrival {
                    client,
                    batch: BatchTime::now(),
                };
                let handler = self.handler.clone();
                let responder = Responder {
                    answers: answers.clone(),
                    slot,
                    question: super::QuestionBytes::NONE,
                };
                let mut query = Box::pin(async move {
                    answer(&handler, message, arrival, responder).await;
                });
                // Poll once here, as the UDP loop does: blocks and cache hits finish without
                // a task of their own; a query that must wait becomes one (polled again with
                // a real waker, which every resource it waits on then registers).
                let mut context = Context::from_waker(Waker::noop());
                if query.as_mut().poll(&mut context).is_pending() {
                    let abandon = self.abandon.clone();
                    self.queries.spawn(async move {
                        tokio::select! {
                            () = abandon.cancelled() => {}
                            () = query => {}
                        }
                    });
                }
            }
            // Dropping the last sender here and in the query tasks ends the writer once every
            // query read from this connection has answered.
            drop(answers);
            reader.into_inner()
        };
        let (reader, writer) = tokio::join!(reading, writing);
        // The write side is shut (FIN sent). Read what the client still sends until it closes
        // too: closing with unread input would send RST and destroy answers in flight.
        if let Ok(stream) = reader.reunite(writer) {
            let _ = timeout(LINGER, discard_until_closed(stream)).await;
        }
    }
}

/// One message: `None` when the client closed the connection between messages (or sent a
/// zero length, which no DNS message has).
async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u16::from_be_bytes(length);
    if length == 0 {
        return Ok(None);
    }
    // Grown as bytes arrive: a length prefix alone does not reserve 64 KiB.
    let mut message = Vec::with_capacity(usize::from(length).min(512));
    (&mut *reader)
        .take(u64::from(length))
        .read_to_end(&mut message)
        .await?;
    if message.len() != usize::from(length) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(message))
}

/// When a connection last wrote, for its idle timeout: milliseconds since it opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last_write_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_write_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn wrote(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_write_ms.store(ms, Ordering::Relaxed);
    }

    fn last_write(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed))
    }
}

/// Writes answers in the order they are ready, several to a write when they queue up, and
/// returns the write half shut down. A client that stops reading for longer than the idle
/// timeout loses the rest.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut outbox: mpsc::Receiver<Outgoing>,
    idle_timeout: Duration,
    activity: Activity,
) -> OwnedWriteHalf {
    let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES);
    // Slots are freed once their answers are written.
    let mut slots = Vec::with_capacity(PIPELINE_DEPTH);
    while let Some((framed, slot)) = outbox.recv().await {
        batch.clear();
        batch.extend_from_slice(&framed);
        slots.push(slot);
        while batch.len() < WRITE_BATCH_BYTES {
            let Ok((framed, slot)) = outbox.try_recv() else {
                break;
            };
            batch.extend_from_slice(&framed);
            slots.push(slot);
        }
        match timeout(idle_timeout, writer.write_all(&batch)).await {
            Ok(Ok(())) => {
                activity.wrote();
                slots.clear();
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "TCP client gone before its answer");
                break;
            }
            Err(_) => {
                tracing::debug!("TCP client not reading its answers; closing");
                break;
            }
        }
    }
    // Closing the outbox tells the reader to stop, and the query tasks that their answers
    // have nowhere to go.
    outbox.close();
    let _ = writer.shutdown().await;
    writer
}

async fn discard_until_closed(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
}

/// One message read from a connection: the request chain, or FORMERR (recorded) for a message
/// that does not parse.
async fn answer(handler: &Handler, message: Vec<u8>, arrival: Arrival, mut responder: Responder) {
    // The header is all a FORMERR needs; kept on the stack, since the message moves into the
    // parser and almost every message parses.
    let header: Option<[u8; 12]> = message.get(..12).and_then(|h| h.try_into().ok());
    let request = match Request::from_bytes(message, arrival.client, Protocol::Tcp) {
        Ok(request) => request,
        Err(error) => {
            handler.counters().malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, client = %crate::audit::ShownClient(arrival.client), "malformed query");
            if let Some(formerr) = header.and_then(|header| super::formerr_for(&header)) {
                let sent = responder.send(formerr).await.is_ok();
                let mut record = Vec::with_capacity(1);
                handler.record_formerr(&arrival, Transport::Tcp, sent, &mut record);
                handler.flush_audit(&mut record);
            }
            return;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        // Never answer a response: that is how reflection loops start.
        handler.counters().malformed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    responder.question = super::QuestionBytes::new(request.queries.as_bytes());
    handler
        .answer_query(&request, responder, arrival.batch)
        .await;
}

/// Hands an answer to its connection's writer, with the query's pipeline slot.
#[derive(Clone)]
struct Responder {
    answers: mpsc::Sender<Outgoing>,
    slot: Arc<OwnedSemaphorePermit>,
    /// The request's question section as received (see `encode_response`); set once parsed.
    question: super::QuestionBytes,
}

impl Responder {
    /// Queues `message` with its two-byte length in front (RFC 1035 §4.2.2). An `Err` means
    /// the connection's writer has gone: the answer is not sent.
    /// Frames `message` with its length in place (no second buffer per answer) and queues it.
    async fn send(&self, mut message: Vec<u8>) -> Result<(), NetError> {
        message.truncate(usize::from(u16::MAX));
        let length = u16::try_from(message.len()).unwrap_or(u16::MAX);
        message.splice(0..0, length.to_be_bytes());
        self.answers
            .send((message, self.slot.clone()))
            .await
            .map_err(|_| NetError::from("TCP connection closed before the answer"))
    }
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
        // The limit is the largest TCP message; past it, TC and what fits.
        let (info, bytes) = super::encode_response(response, u16::MAX, self.question.as_slice())?;
        self.send(bytes).await?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::test_support;

    /// A TCP query still waiting on its upstream when the stop's grace runs out is dropped by
    /// `stop` itself, so its record is counted as lost (a gap record) while the audit writer
    /// still runs, not when the runtime ends after the writer has stopped.
    #[test]
    fn a_query_abandoned_at_stop_is_counted_in_the_audit_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // No TCP listener beside it either: nothing comes back.
        let (handler, writer, settings, silent) =
            test_support::handler_with_silent_upstream(tmp.path());
        test_support::runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let server = TcpServer::start(
                vec![listener],
                &handler,
                Duration::from_secs(10),
                8,
                8,
                Duration::ZERO,
            );
            let mut client = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            let query = test_support::query("www.example.test.");
            let length = u16::try_from(query.len()).expect("length").to_be_bytes();
            client.write_all(&length).await.expect("send");
            client.write_all(&query).await.expect("send");
            // In flight once the upstream has it.
            let silent = tokio::net::UdpSocket::from_std({
                silent.set_nonblocking(true).expect("non-blocking");
                silent
            })
            .expect("register");
            let mut buf = [0u8; 512];
            timeout(Duration::from_secs(10), silent.recv_from(&mut buf))
                .await
                .expect("the query reaches the upstream")
                .expect("receive");
            server.stop().await;
        });
        let records = test_support::stop_and_read(writer, &settings);
        assert_eq!(test_support::gaps(&records), [1], "{records:?}");
    }

    /// A connection whose writer is gone (the client reset it while its queries were being
    /// answered): each query read from it is still recorded once, as not sent, whether it
    /// went through the request chain or was answered FORMERR.
    #[test]
    fn answers_to_a_closed_connection_are_recorded_as_not_sent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (handler, writer, settings) = test_support::audited_handler(
            tmp.path(),
            test_support::NO_UPSTREAM.parse().expect("address"),
        );
        test_support::runtime().block_on(async {
            let (answers, outbox) = mpsc::channel::<Outgoing>(PIPELINE_DEPTH);
            drop(outbox);
            let pipeline = Arc::new(Semaphore::new(PIPELINE_DEPTH));
            for message in [
                test_support::blocked_query(),
                test_support::UNPARSABLE.to_vec(),
            ] {
                let slot = Arc::new(pipeline.clone().acquire_owned().await.expect("slot"));
                let responder = Responder {
                    answers: answers.clone(),
                    slot,
                    question: crate::server::QuestionBytes::NONE,
                };
                let arrival = Arrival {
                    client: "127.0.0.1:5300".parse().expect("client"),
                    batch: BatchTime::now(),
                };
                answer(&handler, message, arrival, responder).await;
            }
        });
        assert_eq!(
            test_support::recorded_answers(writer, &settings),
            [
                test_support::not_sent("127.0.0.1:5300", ".", "FORMERR"),
                test_support::not_sent("127.0.0.1:5300", "www.blocked.test.", "NXDOMAIN"),
            ]
        );
    }
}
