//! UDP worker threads: one per core, each running its own single-threaded Tokio runtime with one
//! SO_REUSEPORT socket per listen address, so a datagram is received, answered and sent on one
//! thread, and queries that must wait (upstream, recursion) continue on that thread too.
//!
//! Why not the shared multi-thread runtime: its scheduler moves the receive loops between its
//! workers (loops woken by one reactor poll queue on that thread until another steals them),
//! and each move costs a futex wake-up and a task switch. `bench/threads.sh`, three alternating
//! pairs: 5.59–5.83 µs of server CPU per answer on the shared runtime against 5.09–5.46 µs
//! here, and 1.28–1.33M against 1.39–1.49M answers in 10 s. TCP, reloads and the rest stay on
//! the shared runtime.

use std::{io, net::UdpSocket, sync::Arc, time::Duration};

use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Handler,
    udp::{self, ListenSocket},
};

/// How long a stopping worker lets queries still in flight (upstream, recursion) finish: the
/// answers and their audit records are not lost to an ordinary stop.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(3);

/// The running worker threads; `stop` ends them.
pub struct UdpWorkers {
    finished: Vec<oneshot::Receiver<()>>,
    shutdown: CancellationToken,
}

impl UdpWorkers {
    /// Starts one thread per entry of `sockets` (that worker's socket for every listen address)
    /// and returns once each has registered its sockets with its runtime.
    pub async fn start(sockets: Vec<Vec<UdpSocket>>, handler: &Arc<Handler>) -> io::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut finished = Vec::with_capacity(sockets.len());
        for sockets in sockets {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (finished_tx, finished_rx) = oneshot::channel();
            let handler = handler.clone();
            let thread_shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name("udp-worker".into())
                .spawn(move || {
                    run(sockets, handler, thread_shutdown, ready_tx);
                    let _ = finished_tx.send(());
                })?;
            match ready_rx.await {
                Ok(Ok(())) => finished.push(finished_rx),
                Ok(Err(error)) => {
                    shutdown.cancel();
                    return Err(error);
                }
                Err(_) => {
                    shutdown.cancel();
                    return Err(io::Error::other("a UDP worker thread ended while starting"));
                }
            }
        }
        Ok(Self { finished, shutdown })
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

/// One worker thread's life: its runtime, its receive loops, then the in-flight grace.
fn run(
    sockets: Vec<UdpSocket>,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
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
        for socket in sockets {
            match ListenSocket::new(socket) {
                Ok(socket) => listening.push(Arc::new(socket)),
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
            .map(|socket| {
                tokio::spawn(udp::serve(
                    socket,
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
        if tokio::time::timeout(IN_FLIGHT_GRACE, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                unanswered = in_flight.len(),
                "udp queries still waiting for an upstream at stop"
            );
        }
    });
}
