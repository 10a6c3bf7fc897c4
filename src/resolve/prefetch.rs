//! Fetching a newly delegated signed zone's DS and DNSKEY RRsets while the iteration goes on, so
//! that validating the answer finds them cached instead of asking for them one after the other.
//!
//! hickory's recursor walks down to the answer first (referral, the QNAME-minimised NS question,
//! the question itself) and only then validates it, asking for the zone's DNSKEY RRset and then
//! its DS RRset in turn: five round trips, one after another, for every new zone. A referral
//! that carries a DS RRset (RFC 4035 §3.1.4) already says the child is signed, so
//! `servers::GuardedConnection` reports such delegations here, and both RRsets are asked for at
//! once, in parallel with the rest of the walk (Unbound's validator does the same). hickory's
//! name server pools share identical questions in flight and cache the answers, so validation
//! then waits for or reuses these lookups rather than sending its own.
//!
//! It only warms caches: a failed or slow prefetch changes no answer.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::Query,
    rr::{Name, RecordType},
};
use hickory_resolver::recursor::Recursor;
use tokio::sync::mpsc;

use super::servers::GuardedProvider;

/// Delegations waiting to be prefetched; further ones are dropped (it is only an optimisation).
pub const QUEUE: usize = 256;
/// A zone prefetched this recently is not prefetched again (its RRsets are cached far longer).
const RECENT: Duration = Duration::from_secs(60);
/// Zones remembered as recently prefetched, before the old ones are forgotten.
const MAX_RECENT: usize = 10_000;

/// A queue for `servers` to report signed delegations into, and its receiving end.
pub fn queue() -> (mpsc::Sender<Name>, mpsc::Receiver<Name>) {
    mpsc::channel(QUEUE)
}

/// Runs the prefetcher on the current Tokio runtime until `recursor` is dropped. Each lookup is
/// bounded by `timeout`. Without a runtime (nothing to run on) it does nothing.
pub fn spawn(
    recursor: &Arc<Recursor<GuardedProvider>>,
    mut delegations: mpsc::Receiver<Name>,
    timeout: Duration,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Weak: the queue's sender lives inside the recursor, so a strong reference here would keep
    // both alive for ever.
    let recursor: Weak<Recursor<GuardedProvider>> = Arc::downgrade(recursor);
    runtime.spawn(async move {
        let mut recent: HashMap<Name, Instant> = HashMap::new();
        while let Some(zone) = delegations.recv().await {
            let now = Instant::now();
            if recent
                .get(&zone)
                .is_some_and(|at| now.duration_since(*at) < RECENT)
            {
                continue;
            }
            if recent.len() >= MAX_RECENT {
                recent.retain(|_, at| now.duration_since(*at) < RECENT);
            }
            recent.insert(zone.clone(), now);
            let Some(recursor) = recursor.upgrade() else {
                return;
            };
            for rtype in [RecordType::DS, RecordType::DNSKEY] {
                let recursor = recursor.clone();
                let zone = zone.clone();
                tokio::spawn(async move {
                    let query = Query::query(zone.clone(), rtype);
                    let lookup = recursor.resolve(query, std::time::Instant::now(), true);
                    if let Ok(Err(error)) = tokio::time::timeout(timeout, lookup).await {
                        tracing::debug!(%zone, %rtype, %error, "prefetch failed");
                    }
                });
            }
        }
    });
}
