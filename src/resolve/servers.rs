//! Talking to one authoritative server under hickory's recursor: how long to wait for it, which
//! answers mean "ask the zone's next server", and remembering servers that stopped answering.
//!
//! hickory-resolver 0.26.3's name server pool (`NameServerPool::try_send`) moves on to the next
//! server only after an I/O error or a timeout; any error response code (REFUSED from a lame
//! server, SERVFAIL) ends the whole request. Its per-server timeout is also its end-to-end
//! deadline (`ResolverOpts::timeout`, 5 s, which `RecursorOptions` does not expose), so a dead
//! first server uses it all. The pool's servers, though, are connections made by a
//! [`ConnectionProvider`] that the recursor takes as a parameter, and that is the one seam this
//! module uses: [`GuardedProvider`] wraps each connection so that
//!
//! - a server gets [`RecursionSettings::server_timeout_ms`](super::RecursionSettings) to
//!   answer (and to accept a TCP connection), well inside the pool's 5 s, so the pool's own "try
//!   another" path runs and hickory charges the server an SRTT penalty, which ranks it last for
//!   later questions;
//! - REFUSED, SERVFAIL, NOTAUTH, NOTIMP and FORMERR answers become an I/O error ([`Rejected`]),
//!   which the pool treats like a connection failure: it asks the next server (RFC 1034 §5.3.3
//!   step 4d). When every server fails, the recursor still fails the question;
//! - after [`HOLD_AFTER`] consecutive timeouts or connection failures an address is held down:
//!   queries to it fail at once for [`HOLD_BASE`], doubling per further failure up to
//!   [`HOLD_MAX`] (Unbound's "infra cache" does the same). A held server is asked again when the
//!   hold ends, and one answer clears its record. A single timeout does not hold a server down,
//!   so one lost packet cannot make a single-server zone fail for seconds; the SRTT penalty
//!   already moves it to the back of its pool.
//!
//! It also reports referrals to signed zones (a DS RRset next to the NS RRset) to `prefetch`.
//!
//! Lameness (REFUSED) is per zone, not per address, so it is not held down here: the server may
//! serve other zones, and the SRTT penalty already puts it last. Everything else (iteration,
//! caching, DNSSEC validation) stays hickory's.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{
    StreamExt,
    stream::{self, BoxStream},
};
use hickory_proto::{
    op::{DnsRequest, DnsResponse, Message, ResponseCode},
    rr::{Name, RecordType},
};
use hickory_resolver::{
    ConnectionProvider, PoolContext,
    config::ConnectionConfig,
    net::{NetError, runtime::TokioRuntimeProvider, xfer::DnsHandle},
};
use tokio::sync::mpsc;

/// Consecutive timeouts (or refused connections) before an address is held down.
pub const HOLD_AFTER: u32 = 2;
/// First hold-down; doubles with every further failure.
pub const HOLD_BASE: Duration = Duration::from_secs(5);
/// Longest hold-down (Unbound keeps an unresponsive host for its 900 s infra TTL; a shorter cap
/// notices a recovered server sooner).
pub const HOLD_MAX: Duration = Duration::from_secs(300);
/// Addresses remembered before forgetting the ones that are not held down.
const MAX_REMEMBERED: usize = 4096;

/// How a [`Rejected`] reads, so a failure flattened to text (as hickory does on its way out of
/// the recursor) can still be told apart from a network error.
pub const REJECTION: &str = "trying the zone's next server";

/// A server's answer that means "ask another server of the zone" (carried as an I/O error so
/// hickory's pool moves on).
#[derive(Debug, thiserror::Error)]
#[error("{server} answered {code}: {}", REJECTION)]
pub struct Rejected {
    pub server: IpAddr,
    pub code: ResponseCode,
}

/// What we remember about one server address.
#[derive(Debug, Clone, Copy, Default)]
struct Standing {
    /// Timeouts and refused connections since its last answer.
    failures: u32,
    /// Queries fail at once until then.
    held_until: Option<Instant>,
}

/// The servers that stopped answering, shared by every connection of one recursor.
#[derive(Debug, Default)]
pub struct ServerHealth {
    servers: Mutex<HashMap<IpAddr, Standing>>,
}

impl ServerHealth {
    /// How much longer `server` is held down, if it is.
    pub fn held(&self, server: IpAddr, now: Instant) -> Option<Duration> {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let until = servers.get(&server)?.held_until?;
        until
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
    }

    /// A timeout or refused connection; returns the hold-down it starts, if any.
    pub fn failed(&self, server: IpAddr, now: Instant) -> Option<Duration> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        if servers.len() >= MAX_REMEMBERED && !servers.contains_key(&server) {
            servers.retain(|_, standing| standing.held_until.is_some_and(|until| until > now));
        }
        let standing = servers.entry(server).or_default();
        standing.failures = standing.failures.saturating_add(1);
        let extra = standing.failures.checked_sub(HOLD_AFTER)?;
        let hold = HOLD_BASE
            .checked_mul(1 << extra.min(16))
            .map_or(HOLD_MAX, |hold| hold.min(HOLD_MAX));
        standing.held_until = Some(now + hold);
        Some(hold)
    }

    /// An answer (of any response code): the server is alive.
    pub fn answered(&self, server: IpAddr) {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.remove(&server);
    }
}

/// hickory's Tokio connections, each wrapped in a [`GuardedConnection`].
#[derive(Clone)]
pub struct GuardedProvider {
    runtime: TokioRuntimeProvider,
    health: Arc<ServerHealth>,
    timeout: Duration,
    delegations: Option<mpsc::Sender<Name>>,
}

impl fmt::Debug for GuardedProvider {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("GuardedProvider")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GuardedProvider {
    /// `timeout`: how long one server gets to answer one query (or accept a connection).
    /// `delegations`: where to report signed delegations seen in referrals, if anywhere.
    pub fn new(timeout: Duration, delegations: Option<mpsc::Sender<Name>>) -> Self {
        Self {
            runtime: TokioRuntimeProvider::default(),
            health: Arc::new(ServerHealth::default()),
            timeout,
            delegations,
        }
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<GuardedConnection, NetError>> + Send>>;

impl ConnectionProvider for GuardedProvider {
    type Conn = GuardedConnection;
    type FutureConn = ConnectFuture;
    type RuntimeProvider = TokioRuntimeProvider;

    fn new_connection(
        &self,
        ip: IpAddr,
        config: &ConnectionConfig,
        cx: &PoolContext,
    ) -> Result<Self::FutureConn, NetError> {
        if let Some(left) = self.health.held(ip, Instant::now()) {
            tracing::debug!(server = %ip, ?left, "server held down, not connecting");
            return Err(NetError::Timeout);
        }
        let connecting = self.runtime.new_connection(ip, config, cx)?;
        let health = self.health.clone();
        let timeout = self.timeout;
        let delegations = self.delegations.clone();
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(inner)) => Ok(GuardedConnection {
                    inner,
                    server: ip,
                    health,
                    timeout,
                    delegations,
                }),
                Ok(Err(error)) => {
                    note_failure(&health, ip, &error);
                    Err(error)
                }
                Err(_) => {
                    note_failure(&health, ip, &NetError::Timeout);
                    Err(NetError::Timeout)
                }
            }
        }))
    }

    fn runtime_provider(&self) -> &Self::RuntimeProvider {
        &self.runtime
    }
}

fn note_failure(health: &ServerHealth, server: IpAddr, error: &NetError) {
    match health.failed(server, Instant::now()) {
        Some(hold) => tracing::info!(%server, %error, ?hold, "server not answering, held down"),
        None => tracing::debug!(%server, %error, "server not answering, trying the next"),
    }
}

/// One connection to one server (UDP or TCP), with its own timeout and error mapping.
#[derive(Clone)]
pub struct GuardedConnection {
    inner: <TokioRuntimeProvider as ConnectionProvider>::Conn,
    server: IpAddr,
    health: Arc<ServerHealth>,
    timeout: Duration,
    delegations: Option<mpsc::Sender<Name>>,
}

impl GuardedConnection {
    async fn exchange(self, request: DnsRequest) -> Result<DnsResponse, NetError> {
        if let Some(left) = self.health.held(self.server, Instant::now()) {
            tracing::debug!(server = %self.server, ?left, "server held down, not asking");
            return Err(NetError::Timeout);
        }
        let mut responses = self.inner.send(request);
        let result = match tokio::time::timeout(self.timeout, responses.next()).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(NetError::from("connection closed without a response")),
            Err(_) => Err(NetError::Timeout),
        };
        match result {
            Ok(response) => {
                self.health.answered(self.server);
                match response.response_code {
                    code @ (ResponseCode::Refused
                    | ResponseCode::ServFail
                    | ResponseCode::NotAuth
                    | ResponseCode::NotImp
                    | ResponseCode::FormErr) => {
                        tracing::debug!(server = %self.server, %code, "server rejected the query");
                        Err(NetError::Io(Arc::new(io::Error::other(Rejected {
                            server: self.server,
                            code,
                        }))))
                    }
                    _ => {
                        if let Some(delegations) = &self.delegations
                            && let Some(zone) = signed_delegation(&response)
                        {
                            // Full queue: the validator fetches the RRsets itself, as before.
                            let _ = delegations.try_send(zone);
                        }
                        Ok(response)
                    }
                }
            }
            Err(error) => {
                if matches!(error, NetError::Timeout | NetError::Io(_)) {
                    note_failure(&self.health, self.server, &error);
                }
                Err(error)
            }
        }
    }
}

/// The child zone a referral delegates to, when the referral also carries the child's DS RRset.
fn signed_delegation(response: &Message) -> Option<Name> {
    if !response.answers.is_empty() || response.metadata.response_code != ResponseCode::NoError {
        return None;
    }
    let ds = response
        .authorities
        .iter()
        .find(|record| record.record_type() == RecordType::DS)?;
    response
        .authorities
        .iter()
        .any(|record| record.record_type() == RecordType::NS && record.name == ds.name)
        .then(|| ds.name.clone())
}

impl DnsHandle for GuardedConnection {
    type Response = BoxStream<'static, Result<DnsResponse, NetError>>;
    type Runtime = TokioRuntimeProvider;

    fn is_using_edns(&self) -> bool {
        self.inner.is_using_edns()
    }

    fn send(&self, request: DnsRequest) -> Self::Response {
        stream::once(self.clone().exchange(request)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 53));

    #[test]
    fn one_timeout_does_not_hold_a_server_down() {
        let health = ServerHealth::default();
        let now = Instant::now();
        assert_eq!(health.failed(SERVER, now), None);
        assert_eq!(health.held(SERVER, now), None);
    }

    #[test]
    fn repeated_timeouts_hold_down_for_longer_each_time_up_to_the_cap() {
        let health = ServerHealth::default();
        let now = Instant::now();
        health.failed(SERVER, now);
        assert_eq!(health.failed(SERVER, now), Some(HOLD_BASE));
        assert_eq!(health.held(SERVER, now), Some(HOLD_BASE));
        assert_eq!(health.held(SERVER, now + HOLD_BASE), None);
        assert_eq!(health.failed(SERVER, now), Some(HOLD_BASE * 2));
        for _ in 0..40 {
            health.failed(SERVER, now);
        }
        assert_eq!(health.held(SERVER, now), Some(HOLD_MAX));
    }

    #[test]
    fn an_answer_clears_the_record() {
        let health = ServerHealth::default();
        let now = Instant::now();
        health.failed(SERVER, now);
        health.failed(SERVER, now);
        health.answered(SERVER);
        assert_eq!(health.held(SERVER, now), None);
        assert_eq!(health.failed(SERVER, now), None);
    }

    fn referral(with_ds: bool) -> Message {
        use hickory_proto::{
            dnssec::{
                Algorithm, DigestType,
                rdata::{DNSSECRData, DS},
            },
            op::{MessageType, OpCode},
            rr::{RData, Record, rdata::NS},
        };
        let child: Name = "child.ward.".parse().unwrap();
        let mut message = Message::new(1, MessageType::Response, OpCode::Query);
        message.authorities.push(Record::from_rdata(
            child.clone(),
            3600,
            RData::NS(NS("ns.child.ward.".parse().unwrap())),
        ));
        if with_ds {
            let ds = DS::new(
                1,
                Algorithm::ECDSAP256SHA256,
                DigestType::SHA256,
                vec![0; 32],
            );
            message.authorities.push(Record::from_rdata(
                child,
                3600,
                RData::DNSSEC(DNSSECRData::DS(ds)),
            ));
        }
        message
    }

    #[test]
    fn only_a_referral_with_a_ds_is_a_signed_delegation() {
        assert_eq!(
            signed_delegation(&referral(true)),
            Some("child.ward.".parse().unwrap())
        );
        assert_eq!(signed_delegation(&referral(false)), None);
    }

    #[test]
    fn rejection_names_server_and_code() {
        let text = Rejected {
            server: SERVER,
            code: ResponseCode::Refused,
        }
        .to_string();
        assert!(
            text.contains("192.0.2.53") && text.contains("Refused"),
            "{text}"
        );
    }
}
