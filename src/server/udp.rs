//! The UDP receive loop: one per socket, running our [`Handler`] on hickory-server `Request`s
//! without a task hand-off for answers that need no network (cache hits, blocks, refusals).
//!
//! hickory-server's own UDP loop spawns a task per packet and sends each answer back through a
//! channel to the socket task; the bench kit measured half the server's time in the kernel
//! switching between them. Here a query is polled once in the receive loop; only if it has to
//! wait (upstream, recursion) is it spawned. Before any of that, a query answered before under
//! the same state is answered from stored bytes (`fastpath`). TCP stays on hickory-server's
//! listener.

use std::{
    future::Future,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, Waker},
};

use hickory_proto::{
    op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
    rr::Record,
    serialize::binary::{BinEncodable, BinEncoder},
};
use hickory_server::{
    net::{NetError, runtime::TokioTime, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponse,
};
use tokio::{io::Interest, net::UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::policy::decision::DecisionRecord;

use super::{
    Handler,
    fastpath::PlainQuery,
    mmsg::{self, RecvBatch, SendBatch},
};

/// Batches still read after shutdown is asked (32 datagrams each).
const SHUTDOWN_DRAIN_BATCHES: usize = 64;

/// Largest datagram we read: anything longer is not a DNS query we would answer anyway.
const MAX_QUERY: usize = 4096;

/// Receives on `socket` until `shutdown`, answering each query. Datagrams are read and fast
/// answers sent in batches (`mmsg`); the rest go through the request chain one by one.
pub async fn serve(socket: Arc<UdpSocket>, handler: Arc<Handler>, shutdown: CancellationToken) {
    let fd = socket.as_raw_fd();
    let mut received = RecvBatch::new(MAX_QUERY);
    let mut answers = SendBatch::new(MAX_QUERY);
    let mut scratch = vec![0u8; MAX_QUERY];
    // Decision records of the fast answers in the current batch, handed to the audit writer at
    // once after the batch's answers are sent.
    let mut audit_batch = Vec::with_capacity(mmsg::BATCH);
    // At shutdown, what the kernel has already queued is still answered (a bounded number of
    // batches, so a flood cannot hold the stop up), then the loop ends.
    let mut drain_left: Option<usize> = None;
    loop {
        match &mut drain_left {
            None => {
                tokio::select! {
                    ready = socket.readable() => {
                        if let Err(error) = ready {
                            tracing::warn!(%error, "udp socket failed");
                            return;
                        }
                    }
                    () = shutdown.cancelled() => drain_left = Some(SHUTDOWN_DRAIN_BATCHES),
                }
            }
            Some(0) => return,
            Some(left) => *left -= 1,
        }
        // One batch per wake-up, then back to `readable`, whose cooperative budget makes a
        // busy socket yield to spawned queries now and then. `try_io` re-arms readiness when
        // the kernel says WouldBlock.
        let batch = if drain_left.is_some() {
            // Straight to the (non-blocking) socket: the reactor may not have seen the last
            // datagrams yet, and the loop ends at the first WouldBlock anyway.
            match received.recv(fd) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                batch => batch,
            }
        } else {
            socket.try_io(Interest::READABLE, || received.recv(fd))
        };
        let count = match batch {
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => {
                // ICMP errors from earlier sends surface here on some systems; not fatal.
                tracing::debug!(%error, "udp receive error");
                continue;
            }
        };
        for index in 0..count {
            let (packet, source) = received.datagram(index);
            let Some(source) = source else { continue };
            answer(
                &socket,
                &handler,
                packet,
                source,
                &mut scratch,
                &mut answers,
                &mut audit_batch,
            );
        }
        let lost = answers.flush(fd);
        if lost > 0 {
            tracing::debug!(lost, "udp answers could not be sent");
        }
        handler.flush_audit(&mut audit_batch);
    }
}

/// One datagram: the fast path, or the request chain.
fn answer(
    socket: &Arc<UdpSocket>,
    handler: &Arc<Handler>,
    packet: &[u8],
    source: SocketAddr,
    scratch: &mut [u8],
    answers: &mut SendBatch,
    audit_batch: &mut Vec<DecisionRecord>,
) {
    // Answering to port 0 or an unspecified address is impossible (and a spoofing sign).
    if source.port() == 0 || source.ip().is_unspecified() {
        return;
    }
    if let Some(query) = PlainQuery::parse(packet)
        && handler.answer_fast(&query, source, scratch, audit_batch, |bytes| {
            answers.push(bytes, source)
        })
    {
        return;
    }
    let request = match Request::from_bytes(packet.to_vec(), source, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            handler.counters().malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, %source, "malformed query");
            answer_formerr(socket, packet, source);
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
    };
    let handler = handler.clone();
    let mut query = Box::pin(async move {
        handler
            .handle_request::<_, TokioTime>(&request, responder)
            .await;
    });
    // Poll once here: cache hits and blocks finish without ever being scheduled. A query that
    // must wait is handed to the runtime, which polls it again with a real waker.
    let mut context = Context::from_waker(Waker::noop());
    if query.as_mut().poll(&mut context) == Poll::Pending {
        tokio::spawn(query);
    }
}

/// FORMERR for a packet with a readable header (RFC 1035 §4.1.1); shorter packets are dropped.
fn answer_formerr(socket: &UdpSocket, packet: &[u8], destination: SocketAddr) {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        // No header, or a response: never answer those.
        return;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let op_code = OpCode::from_u8((packet[2] >> 3) & 0x0f);
    let mut metadata = Metadata::new(id, MessageType::Response, op_code);
    metadata.response_code = ResponseCode::FormErr;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(12);
    if header.emit(&mut BinEncoder::new(&mut bytes)).is_ok() {
        let _ = socket.try_send_to(&bytes, destination);
    }
}

/// Sends one answer straight from the task that computed it.
#[derive(Clone)]
struct Responder {
    socket: Arc<UdpSocket>,
    destination: SocketAddr,
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
        let id = response.metadata().id;
        let op_code = response.metadata().op_code;
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let info = match response.destructive_emit(&mut encoder) {
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
        match self.socket.try_send_to(&bytes, self.destination) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                self.socket.send_to(&bytes, self.destination).await?;
            }
            Err(error) => return Err(error.into()),
        }
        Ok(info)
    }
}
