//! UDP worker threads: one per core, each running its own single-threaded Tokio runtime with one
//! SO_REUSEPORT socket per listen address, so a datagram is received, answered and sent on one
//! thread, and forwarded queries that must wait continue on that thread too (recursive lookups
//! run on the shared runtime: see `Recursor::resolve`).
//!
//! Why not the shared multi-thread runtime: its scheduler moves the receive loops between its
//! workers (loops woken by one reactor poll queue on that thread until another steals them),
//! and each move costs a futex wake-up and a task switch. `bench/threads.sh`, three alternating
//! pairs: 5.59–5.83 µs of server CPU per answer on the shared runtime against 5.09–5.46 µs
//! here, and 1.28–1.33M against 1.39–1.49M answers in 10 s. TCP, reloads and the rest stay on
//! the shared runtime.

use std::{
    io,
    net::UdpSocket,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Handler,
    udp::{self, ListenSocket, SiblingSockets},
};

/// The longest a stopping worker waits for queries in flight, whatever the configured
/// timeouts: a stop must not hang on a misconfiguration.
const MAX_IN_FLIGHT_GRACE: Duration = Duration::from_secs(30);

/// How long a stopping worker lets queries still in flight (upstream, recursion) finish, so an
/// ordinary stop loses neither their answers nor their audit records: as long as the slowest
/// such query may take (every forwarding attempt timing out, each with its TCP retry, or the
/// recursion deadline), at most `MAX_IN_FLIGHT_GRACE`. Queries still waiting then are dropped
/// and counted in a warning.
pub fn in_flight_grace(
    forward_timeout: Duration,
    attempts: u32,
    recursion: Option<Duration>,
) -> Duration {
    let forwarding = forward_timeout
        .saturating_mul(attempts.max(1))
        .saturating_mul(2);
    forwarding
        .max(recursion.unwrap_or_default())
        .min(MAX_IN_FLIGHT_GRACE)
}

/// The running worker threads; `stop` ends them, and so does dropping this (without waiting).
pub struct UdpWorkers {
    finished: Vec<oneshot::Receiver<()>>,
    shutdown: CancellationToken,
    /// Cancels `shutdown` if this is dropped without `stop` (a failed start, or the server
    /// ending on an error): the threads must not outlive the server.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl UdpWorkers {
    /// Starts one thread per entry of `sockets` (that worker's socket for every listen address)
    /// and returns once each has registered its sockets with its runtime.
    pub async fn start(
        sockets: Vec<Vec<UdpSocket>>,
        handler: &Arc<Handler>,
        grace: Duration,
    ) -> io::Result<Self> {
        let shutdown = CancellationToken::new();
        // Until the end of this function, any early return stops the threads already started.
        let stop_on_drop = shutdown.clone().drop_guard();
        let mut finished = Vec::with_capacity(sockets.len());
        let siblings = sibling_tables(&sockets);
        for (me, sockets) in sockets.into_iter().enumerate() {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (finished_tx, finished_rx) = oneshot::channel();
            let handler = handler.clone();
            let thread_shutdown = shutdown.clone();
            let siblings = siblings.clone();
            std::thread::Builder::new()
                .name("udp-worker".into())
                .spawn(move || {
                    run(
                        Sockets {
                            own: sockets,
                            siblings,
                            me,
                        },
                        handler,
                        thread_shutdown,
                        grace,
                        ready_tx,
                    );
                    let _ = finished_tx.send(());
                })?;
            match ready_rx.await {
                Ok(Ok(())) => finished.push(finished_rx),
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(io::Error::other("a UDP worker thread ended while starting"));
                }
            }
        }
        Ok(Self {
            finished,
            shutdown,
            _stop_on_drop: stop_on_drop,
        })
    }

    /// Stops receiving, answers what is queued and in flight (bounded), and waits for every
    /// worker thread to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for finished in self.finished {
            // An error means the thread ended without saying so (a panic): nothing to wait for.
            let _ = finished.await;
        }
    }
}

/// For each listen address, a slot per worker for its socket there (see `udp::serve`).
fn sibling_tables(sockets: &[Vec<UdpSocket>]) -> Vec<SiblingSockets> {
    let addresses = sockets.first().map_or(0, Vec::len);
    (0..addresses)
        .map(|_| (0..sockets.len()).map(|_| OnceLock::new()).collect())
        .collect()
}

/// One worker thread's life: its runtime, its receive loops, then the in-flight grace.
/// A worker's sockets, one per listen address, and every worker's (see `udp::serve`).
struct Sockets {
    own: Vec<UdpSocket>,
    siblings: Vec<SiblingSockets>,
    me: usize,
}

fn run(
    Sockets {
        own: sockets,
        siblings,
        me,
    }: Sockets,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
    grace: Duration,
    ready: oneshot::Sender<io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    runtime.block_on(async move {
        // Registration needs this thread's runtime: the socket's readiness comes from its
        // reactor.
        let mut listening = Vec::with_capacity(sockets.len());
        for (socket, table) in sockets.into_iter().zip(&siblings) {
            match ListenSocket::new(socket) {
                Ok(socket) => {
                    let socket = Arc::new(socket);
                    let _ = table[me].set(Arc::downgrade(&socket));
                    listening.push(socket);
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        let in_flight = TaskTracker::new();
        let loops: Vec<_> = listening
            .into_iter()
            .zip(siblings)
            .map(|(socket, siblings)| {
                tokio::spawn(udp::serve(
                    socket,
                    siblings,
                    me,
                    handler.clone(),
                    shutdown.clone(),
                    in_flight.clone(),
                ))
            })
            .collect();
        for receive_loop in loops {
            let _ = receive_loop.await;
        }
        in_flight.close();
        if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
            tracing::warn!(
                unanswered = in_flight.len(),
                "udp queries still waiting for an upstream at stop were dropped"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{audit::Entry, server::test_support};

    /// A query still waiting on its upstream when the stop's grace runs out is dropped with
    /// its worker's runtime: the audit log counts it in a gap record (before the stop record),
    /// so no query leaves no trace.
    #[test]
    fn a_query_abandoned_at_stop_is_counted_in_the_audit_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (handler, writer, settings, silent) =
            test_support::handler_with_silent_upstream(tmp.path());
        test_support::runtime().block_on(async {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket.set_nonblocking(true).expect("non-blocking");
            let address = socket.local_addr().expect("address");
            let workers = UdpWorkers::start(vec![vec![socket]], &handler, Duration::ZERO)
                .await
                .expect("start");
            let client = UdpSocket::bind("127.0.0.1:0").expect("client");
            client
                .send_to(&test_support::query("www.example.test."), address)
                .expect("send");
            // In flight once the upstream has it.
            silent
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 512];
            silent
                .recv_from(&mut buf)
                .expect("the query reaches the upstream");
            workers.stop().await;
        });
        let records = test_support::stop_and_read(writer, &settings);
        assert_eq!(test_support::gaps(&records), [1], "{records:?}");
        assert!(
            !records
                .iter()
                .any(|record| matches!(record.entry, Entry::Query(_))),
            "the query was never answered"
        );
    }

    #[test]
    fn the_grace_covers_the_slowest_query_within_a_cap() {
        let ms = Duration::from_millis;
        // The shipped forwarding defaults: three attempts of 1.5 s, each with a TCP retry.
        assert_eq!(in_flight_grace(ms(1500), 3, None), ms(9000));
        // Recursion's own deadline when it is longer.
        assert_eq!(in_flight_grace(ms(1500), 3, Some(ms(12_000))), ms(12_000));
        assert_eq!(in_flight_grace(ms(500), 0, None), ms(1000));
        assert_eq!(
            in_flight_grace(ms(60_000), 3, Some(ms(u64::MAX))),
            MAX_IN_FLIGHT_GRACE
        );
    }
}
