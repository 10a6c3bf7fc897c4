//! DNS over TCP (RFC 7766): accepts connections on each listen address, reads length-prefixed
//! messages, answers a connection's queries concurrently (each answer leaves when it is ready,
//! §6.2.1.1), closes connections that stay idle, and at stop lets the queries in flight finish.
//!
//! Ours rather than hickory-server's listener, which answers a message it cannot parse itself
//! (FORMERR, out of our handler's sight, so without an audit record), answers a connection's
//! queries one at a time, and aborts the queries in flight when the server stops (losing their
//! answers and their records).

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hickory_proto::{
    op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode},
    rr::Record,
    serialize::binary::{BinEncodable, BinEncoder},
};
use hickory_server::{
    net::{NetError, runtime::TokioTime, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponse,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{Semaphore, mpsc},
    time::timeout,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Handler,
    handler::{Arrival, BatchTime},
};
use crate::policy::Transport;

/// Queries of one connection answered at once. The next message is read when one of them has
/// answered, so a client that pipelines more waits in its own socket buffer, not our memory.
const PIPELINE_DEPTH: usize = 64;

/// How long the connections get, after the queries in flight at a stop have answered, to put
/// those answers on the wire.
const FLUSH_AT_STOP: Duration = Duration::from_secs(1);

/// The accept loops and their connections; `stop` ends them.
pub struct TcpServer {
    shutdown: CancellationToken,
    /// Accept loops and connection tasks.
    connections: TaskTracker,
    /// Queries being answered, from every connection.
    queries: TaskTracker,
    grace: Duration,
}

impl TcpServer {
    /// Starts an accept loop for each listener on the current runtime.
    pub fn start(
        listeners: Vec<TcpListener>,
        handler: &Arc<Handler>,
        idle_timeout: Duration,
        grace: Duration,
    ) -> Self {
        let server = Self {
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            queries: TaskTracker::new(),
            grace,
        };
        for listener in listeners {
            let connection = Connection {
                handler: handler.clone(),
                idle_timeout,
                shutdown: server.shutdown.clone(),
                queries: server.queries.clone(),
            };
            server
                .connections
                .spawn(accept(listener, connection, server.connections.clone()));
        }
        server
    }

    /// Stops accepting and reading, waits up to the grace for the queries in flight to answer
    /// (and so to write their audit records), then closes the connections.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.queries.close();
        if timeout(self.grace, self.queries.wait()).await.is_err() {
            tracing::warn!(
                in_flight = self.queries.len(),
                "TCP queries still unanswered at the end of the stop grace"
            );
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
    shutdown: CancellationToken,
    queries: TaskTracker,
}

async fn accept(listener: TcpListener, connection: Connection, connections: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = connection.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                connections.spawn(connection.clone().serve(stream, client));
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

impl Connection {
    /// Reads messages until the client closes, stays idle too long, sends something that is
    /// not a DNS message stream, or the server stops; answers go out through one writer.
    async fn serve(self, stream: TcpStream, client: SocketAddr) {
        // Answers are single writes of a whole message; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let (mut reader, writer) = stream.into_split();
        let (answers, outbox) = mpsc::channel(PIPELINE_DEPTH);
        let writing = write_answers(writer, outbox, self.idle_timeout);
        let reading = async move {
            let depth = Arc::new(Semaphore::new(PIPELINE_DEPTH));
            loop {
                let Ok(permit) = depth.clone().acquire_owned().await else {
                    break;
                };
                let message = tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => break,
                    read = timeout(self.idle_timeout, read_message(&mut reader)) => match read {
                        Ok(Ok(Some(message))) => message,
                        // Closed, idle too long, or a read error: stop reading. Queries
                        // already read are still answered.
                        _ => break,
                    },
                };
                let arrival = Arrival {
                    client,
                    batch: BatchTime::now(),
                };
                let handler = self.handler.clone();
                let answers = answers.clone();
                self.queries.spawn(async move {
                    answer(&handler, message, arrival, answers).await;
                    drop(permit);
                });
            }
            // Dropping the last sender here and in the query tasks ends the writer once every
            // query read from this connection has answered.
        };
        tokio::join!(reading, writing);
    }
}

/// One message: `None` when the client closed the connection between messages (or sent a
/// zero length, which no DNS message has).
async fn read_message(reader: &mut OwnedReadHalf) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = usize::from(u16::from_be_bytes(length));
    if length == 0 {
        return Ok(None);
    }
    let mut message = vec![0u8; length];
    reader.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Writes answers in the order they are ready. A client that stops reading for longer than
/// the idle timeout loses the rest; then the connection closes.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut outbox: mpsc::Receiver<Vec<u8>>,
    idle_timeout: Duration,
) {
    while let Some(framed) = outbox.recv().await {
        match timeout(idle_timeout, writer.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "TCP client gone before its answer");
                return;
            }
            Err(_) => {
                tracing::debug!("TCP client not reading its answers; closing");
                return;
            }
        }
    }
    let _ = writer.shutdown().await;
}

/// One message read from a connection: the request chain, or FORMERR (recorded) for a message
/// that does not parse.
async fn answer(
    handler: &Handler,
    message: Vec<u8>,
    arrival: Arrival,
    answers: mpsc::Sender<Vec<u8>>,
) {
    let formerr = super::formerr_for(&message);
    let request = match Request::from_bytes(message, arrival.client, Protocol::Tcp) {
        Ok(request) => request,
        Err(error) => {
            handler.counters().malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, client = %arrival.client, "malformed query");
            if let Some(formerr) = formerr
                && answers.send(frame(&formerr)).await.is_ok()
            {
                let mut record = Vec::with_capacity(1);
                handler.record_formerr(&arrival, Transport::Tcp, &mut record);
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
    handler
        .handle_request::<_, TokioTime>(&request, Responder { answers })
        .await;
}

/// A message with its two-byte length in front (RFC 1035 §4.2.2).
fn frame(message: &[u8]) -> Vec<u8> {
    let length = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&message[..usize::from(length)]);
    framed
}

/// Hands an answer to its connection's writer.
#[derive(Clone)]
struct Responder {
    answers: mpsc::Sender<Vec<u8>>,
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
        let id = response.metadata().id;
        let op_code = response.metadata().op_code;
        let mut bytes = Vec::with_capacity(512);
        // The encoder's limit is the largest TCP message; past it, TC and what fits.
        let info = match response.destructive_emit(&mut BinEncoder::new(&mut bytes)) {
            Ok(info) => info,
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
                ResponseInfo::from(header)
            }
        };
        self.answers
            .send(frame(&bytes))
            .await
            .map_err(|_| NetError::from("TCP connection closed before the answer"))?;
        Ok(info)
    }
}
