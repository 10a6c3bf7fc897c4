//! Serving DNS: binds every `listen` address on UDP and TCP and runs hickory-server with our
//! [`handler::Handler`] until shutdown.

pub mod acl;
pub mod handler;
pub mod sinkhole;

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

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
    #[error("server stopped: {0}")]
    Stopped(String),
}

/// A bound, running server.
pub struct Running {
    server: Server<Handler>,
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
pub async fn start(state: Arc<ArcSwap<State>>) -> Result<Running, ServeError> {
    let config = state.load().config.clone();
    let counters = Arc::new(Counters::default());
    let handler = Handler::new(state, AnswerCache::new(&config.cache), counters.clone());
    // ACL is enforced in the handler, not by hickory's `with_access`, so that refusals get a
    // decision record like every other query.
    let mut server = Server::new(handler);
    let mut local_addrs = Vec::with_capacity(config.server.listen.len());
    for &addr in &config.server.listen {
        let (udp, tcp) = bind_pair(addr).await?;
        let bound = udp.local_addr().map_err(|source| ServeError::Bind {
            addr,
            transport: "udp",
            source,
        })?;
        server.register_socket(udp);
        // The response buffer is how many responses may queue per TCP connection (pipelining).
        server.register_listener(tcp, config.server.tcp_idle_timeout, 64);
        local_addrs.push(bound);
    }
    Ok(Running {
        server,
        local_addrs,
        counters,
    })
}

/// Binds UDP and TCP on the same address. With port 0 the kernel picks the UDP port and TCP
/// takes the same one, so clients (and tests) need one port; if that TCP port is taken we try
/// again with a fresh UDP port.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), ServeError> {
    let udp_error = |source| ServeError::Bind {
        addr,
        transport: "udp",
        source,
    };
    let mut attempts_left = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let udp = UdpSocket::bind(addr).await.map_err(udp_error)?;
        let bound = udp.local_addr().map_err(udp_error)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
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

impl Running {
    /// Serves until `shutdown` completes, then stops accepting and lets in-flight queries end.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        tokio::select! {
            result = self.server.block_until_done() => {
                return result.map_err(|error| ServeError::Stopped(error.to_string()));
            }
            () = shutdown => {}
        }
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|error| ServeError::Stopped(error.to_string()))
    }
}
