//! The request path: one query in, one answer out, one decision record, as a short chain of
//! steps (ACL → policy on the question → cache/upstream → policy on the answer's CNAME chain →
//! response → decision record).
//!
//! Each step sits where it does for a reason given at the step. Every step uses the one `State`
//! snapshot loaded when the query arrived, so a reload never splits a query across two policies.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType, rdata::opt::EdnsOption},
    serialize::binary::BinEncoder,
};
use hickory_server::{
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

use super::{
    fastpath::{self, Outcome, PlainQuery, WireCache},
    sinkhole,
};
use crate::{audit::AuditHandle, logging::Throttle};
use crate::{
    cache::{AnswerCache, CacheKey},
    policy::{
        Client, DecisionKind, DecisionRecord, LookupBuffer, Policy, RuleRef, Transport, Trigger,
        Verdict,
        decision::{AnswerSource, AnswerText, QName, RuleMatch, TypeText},
        write_lookup_key,
    },
    resolve::{Recursor, UpstreamQuery, inflight::InFlight},
    state::State,
};

/// When a receive batch came in, read from the clocks once per batch: the fast path read them
/// three times per answer (1 % of a worker's samples), now once (the latency's end). Every
/// datagram of a batch arrived by the one `recvmmsg` that returned it, so its arrival time is
/// the batch's, and its latency includes waiting for the datagrams before it.
#[derive(Debug, Clone, Copy)]
pub struct BatchTime {
    pub at: Instant,
    pub wall: SystemTime,
}

impl BatchTime {
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// One datagram on the fast path: who sent it, in which batch.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub client: SocketAddr,
    pub batch: BatchTime,
}

/// Counters kept on the query path: plain atomics, no lock.
#[derive(Debug, Default)]
pub struct Counters {
    pub queries: AtomicU64,
    pub refused: AtomicU64,
    pub blocked: AtomicU64,
    pub logged: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Queries answered from stored response bytes (`fastpath`); also counted as cache hits
    /// or blocks.
    pub fast_answers: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Cache misses answered by another query's resolution of the same question (in flight).
    pub merged: AtomicU64,
    /// Messages we could not serve: not parsable (answered FORMERR), no question, several
    /// questions, bad opcode, bad EDNS version, or a response sent to us.
    pub malformed: AtomicU64,
    /// TCP connections closed at once because their client held its share already.
    pub tcp_refused: AtomicU64,
}

impl Counters {
    /// Logs every counter as one event (at shutdown, and for operators reading the log).
    pub fn log_summary(&self, message: &str) {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        tracing::info!(
            queries = get(&self.queries),
            refused = get(&self.refused),
            blocked = get(&self.blocked),
            logged = get(&self.logged),
            cache_hits = get(&self.cache_hits),
            fast_answers = get(&self.fast_answers),
            upstream_errors = get(&self.upstream_errors),
            merged = get(&self.merged),
            malformed = get(&self.malformed),
            tcp_refused = get(&self.tcp_refused),
            "{message}"
        );
    }
}

/// The resolver's request handler, registered with hickory-server for every listener.
#[derive(Debug)]
pub struct Handler {
    state: Arc<ArcSwap<State>>,
    cache: AnswerCache,
    counters: Arc<Counters>,
    /// Present when `recursion.enabled`: step 4 resolves from the root instead of forwarding.
    recursor: Option<Arc<Recursor>>,
    /// Where every decision record goes; `None` with `[audit] enabled = false`.
    audit: Option<AuditHandle>,
    /// Responses sent over UDP, for the fast path (`fastpath`); `None` with the cache off.
    wire: Option<WireCache>,
    /// Cache misses being resolved: the same question asked again meanwhile waits for that
    /// resolution instead of sending its own.
    inflight: InFlight<CacheKey, Resolution>,
}

/// What step 4 got for a cache miss: the upstream's (or the recursion's) message, where it came
/// from and a DNSSEC EDE for an answer to be withheld; or where it failed, its EDE code and why.
type Resolution =
    Result<(Message, AnswerSource, Option<(u16, String)>), (AnswerSource, u16, String)>;

/// The answer a step settled on, before it is put on the wire.
#[derive(Debug, Default)]
struct Reply {
    response_code: ResponseCode,
    authentic_data: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    ede: Option<(u16, String)>,
    /// The answer section's summary for the decision record when it is already known (a cached
    /// answer carries the one made when it was stored); `None`: made from `answers`.
    summary: Option<Arc<str>>,
    /// Seconds this answer stays valid, for answers from the cache or a resolution that was
    /// cached; the fast path may replay it for that long.
    fresh_for: Option<u32>,
}

impl Reply {
    fn error(response_code: ResponseCode, ede: Option<(u16, String)>) -> Self {
        Self {
            response_code,
            ede,
            ..Self::default()
        }
    }
}

impl Handler {
    pub fn new(
        state: Arc<ArcSwap<State>>,
        cache: AnswerCache,
        counters: Arc<Counters>,
        recursor: Option<Arc<Recursor>>,
        audit: Option<AuditHandle>,
    ) -> Self {
        let wire = (cache.capacity() > 0).then(|| WireCache::new(cache.capacity()));
        Self {
            state,
            cache,
            counters,
            recursor,
            audit,
            wire,
            inflight: InFlight::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Step 4 for a cache miss: recursion, or the upstreams of the name's zone.
    async fn resolve(&self, state: &State, upstream_query: &UpstreamQuery<'_>) -> Resolution {
        let qname = upstream_query.name;
        // Recursive mode: same shape as the forwarder's result, plus a DNSSEC EDE for
        // bogus answers (SERVFAIL, RFC 8914 6/7/8/10), which is not cached: a cached replay
        // would lose the EDE.
        match &self.recursor {
            Some(recursor) => recursor
                .resolve(upstream_query)
                .await
                .map(|answer| {
                    let source = answer
                        .forwarded_to
                        .map_or(AnswerSource::Recursion, AnswerSource::Upstream);
                    (answer.message, source, answer.ede)
                })
                .map_err(|error| {
                    let source = error
                        .server()
                        .map_or(AnswerSource::Recursion, AnswerSource::Upstream);
                    (source, error.ede_code(), error.to_string())
                }),
            None => state
                .upstreams_for(qname)
                .resolve(upstream_query)
                .await
                .map(|(message, upstream)| (message, AnswerSource::Upstream(upstream), None))
                .map_err(|error| {
                    let source = error
                        .server()
                        .map_or(AnswerSource::Local, AnswerSource::Upstream);
                    (source, error.ede_code(), error.to_string())
                }),
        }
    }

    /// The fast path: answers `query` from the wire cache when a response to the same question
    /// and flags was stored under the serving generation, records the decision, and returns
    /// true. `send` queues the bytes for the receive batch's `sendmmsg` and says whether it
    /// could (a full batch or an answer too long leaves the query to the full chain); an answer
    /// the kernel then refuses is marked on its record (`udp::send_answers`). Anything else
    /// returns false, and
    /// the full request chain answers (the table may have marked a slot used or dropped an
    /// expired entry: bookkeeping, not an answer).
    pub(super) fn answer_fast(
        &self,
        query: &PlainQuery<'_>,
        arrival: &Arrival,
        out: &mut [u8],
        audit_batch: &mut Vec<DecisionRecord>,
        send: impl FnOnce(&[u8]) -> bool,
    ) -> bool {
        let Some(wire) = &self.wire else {
            return false;
        };
        if self.audit.as_ref().is_some_and(AuditHandle::refusing) {
            return false;
        }
        let client = arrival.client;
        let started = arrival.batch.at;
        let state = self.state.load();
        // The ACL is per client, so it is never part of what is stored.
        if !state.acl.allows(client.ip()) {
            return false;
        }
        let Some((length, found)) = wire.answer(
            query,
            state.generation,
            state.config.server.udp_payload_max,
            started,
            out,
        ) else {
            return false;
        };
        let Some(entry) = found.as_deref() else {
            return false;
        };
        if !send(&out[..length]) {
            return false;
        }
        let outcome = &entry.outcome;
        let counters = &self.counters;
        counters.queries.fetch_add(1, Ordering::Relaxed);
        counters.fast_answers.fetch_add(1, Ordering::Relaxed);
        match outcome.decision {
            DecisionKind::Blocked => counters.blocked.fetch_add(1, Ordering::Relaxed),
            DecisionKind::Logged => counters.logged.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if !outcome.synthesized {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        let record = DecisionRecord {
            time: arrival.batch.wall,
            generation: state.generation,
            client,
            transport: Transport::Udp.as_str(),
            qname: QName::from_wire(query.qname).unwrap_or(QName::ROOT),
            qtype: RecordType::from(query.qtype),
            qclass: DNSClass::from(query.qclass),
            decision: outcome.decision,
            rule: outcome.rule.clone(),
            action: outcome.action,
            rcode: outcome.rcode,
            answer: outcome.answer.clone(),
            ede: outcome.ede,
            source: outcome.source(),
            latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        };
        record.emit();
        if self.audit.is_some() {
            audit_batch.push(record);
        }
        true
    }

    /// A datagram or TCP message that does not parse as a query but has a header to answer
    /// FORMERR to: recorded like any query (`. ZERO IN`, decision `error`), whether the FORMERR
    /// went out (`sent`) or not.
    pub(super) fn record_formerr(
        &self,
        arrival: &Arrival,
        transport: Transport,
        sent: bool,
        audit_batch: &mut Vec<DecisionRecord>,
    ) {
        let state = self.state.load();
        let mut record = DecisionRecord {
            time: arrival.batch.wall,
            generation: state.generation,
            client: arrival.client,
            transport: transport.as_str(),
            qname: QName::ROOT,
            qtype: RecordType::ZERO,
            qclass: DNSClass::IN,
            decision: DecisionKind::Error,
            rule: None,
            action: None,
            rcode: ResponseCode::FormErr,
            answer: AnswerText::NONE,
            ede: None,
            source: AnswerSource::Local,
            latency_us: u64::try_from(arrival.batch.at.elapsed().as_micros()).unwrap_or(u64::MAX),
        };
        if !sent {
            record.mark_not_sent();
        }
        record.emit();
        if self.audits(&state, &record) {
            audit_batch.push(record);
        }
    }

    /// Whether `record` goes to the audit log: always for a client inside `server.allow`, and
    /// for one outside within `outsider_records_per_sec` (beyond it the writer counts it).
    fn audits(&self, state: &State, record: &DecisionRecord) -> bool {
        self.audit.as_ref().is_some_and(|audit| {
            state.acl.allows(record.client.ip()) || audit.admits_outsider(record.time)
        })
    }

    /// Hands the decision records gathered by `answer_fast` over one receive batch to the audit
    /// writer (see `AuditHandle::record_batch`).
    pub(super) fn flush_audit(&self, audit_batch: &mut Vec<DecisionRecord>) {
        if let Some(audit) = &self.audit {
            audit.record_batch(audit_batch);
        }
    }

    /// Stores a UDP response for the fast path when replaying it is exactly right: a query of
    /// the shape the fast path parses, a decision that depends only on the name and the
    /// serving lists, and an answer that is either synthesized by policy or valid for a known
    /// time. Refusals (per client) and errors are never stored.
    fn store_for_fast_path(
        &self,
        state: &State,
        request: &Request,
        reply: &Reply,
        record: &DecisionRecord,
    ) {
        let Some(wire) = &self.wire else {
            return;
        };
        let fresh_for = match (record.decision, record.source, reply.fresh_for) {
            (DecisionKind::Refused | DecisionKind::Error, _, _) => return,
            (
                _,
                AnswerSource::Cache | AnswerSource::Upstream(_) | AnswerSource::Recursion,
                Some(secs),
            ) => Some(secs),
            // Blocked on the question itself: the same for the whole generation. Blocked on a
            // CNAME in an upstream answer (source: that upstream or the cache, no fresh_for):
            // that answer may change, and its life is not kept, so it is not stored.
            (DecisionKind::Blocked, AnswerSource::Local, None)
                if record
                    .rule
                    .as_ref()
                    .is_some_and(|rule| rule.trigger == Trigger::Question) =>
            {
                None
            }
            _ => return,
        };
        if fresh_for == Some(0)
            || request.metadata.op_code != OpCode::Query
            || !matches!(
                reply.response_code,
                ResponseCode::NoError | ResponseCode::NXDomain
            )
        {
            return;
        }
        let [query] = request.queries.queries() else {
            return;
        };
        let edns = request.edns.as_ref();
        if edns.is_some_and(|edns| edns.version() != 0 || !edns.options().as_ref().is_empty()) {
            return;
        }
        let flags = fastpath::request_flags(
            request.metadata.recursion_desired,
            request.metadata.checking_disabled,
            request.metadata.authentic_data,
            edns.is_some(),
            edns.is_some_and(|edns| edns.flags().dnssec_ok),
        );
        let mut key_buffer = [0u8; fastpath::KEY_MAX];
        let key = fastpath::write_key(
            query.name().iter(),
            u16::from(query.query_type()),
            u16::from(query.query_class()),
            flags,
            &mut key_buffer,
        );
        if wire.contains(key, state.generation) {
            return;
        }
        let (metadata, response_edns) =
            response_header(request, reply, state.config.server.udp_payload_max);
        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        // No size limit here (a replay checks the client's), so nothing is rolled back.
        if super::seed_question_pointers(&mut encoder, request.queries.as_bytes(), u16::MAX)
            .and_then(|()| response.destructive_emit(&mut encoder))
            .is_err()
        {
            return;
        }
        let outcome = Outcome {
            decision: record.decision,
            rule: record.rule.clone(),
            action: record.action,
            rcode: record.rcode,
            answer: record.answer.clone(),
            ede: record.ede,
            synthesized: record.source == AnswerSource::Local,
        };
        wire.store(
            key,
            &bytes,
            state.generation,
            fresh_for,
            outcome,
            Instant::now(),
        );
    }

    /// Runs the chain for one request and returns the reply with its decision record.
    async fn answer(
        &self,
        state: &State,
        request: &Request,
        client: Client,
        record: &mut DecisionRecord,
    ) -> Reply {
        // 1. ACL first: an outsider gets REFUSED before any work is done for it, so we are
        //    never an open resolver (and never an amplifier). EDE 18 "Prohibited" says why.
        if !state.acl.allows(client.addr.ip()) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            record.decision = DecisionKind::Refused;
            return Reply::error(ResponseCode::Refused, Some((18, String::new())));
        }
        // With `when_unwritable = "refuse"`, nothing is answered that cannot be recorded. EDE
        // 14 "Not Ready": the server is not fully working.
        if self.audit.as_ref().is_some_and(AuditHandle::refusing) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            record.decision = DecisionKind::Refused;
            return Reply::error(
                ResponseCode::Refused,
                Some((14, "audit log cannot be written".to_owned())),
            );
        }

        // 2. Only standard queries with exactly one question are served (RFC 9619).
        if request.metadata.op_code != OpCode::Query {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            record.decision = DecisionKind::Error;
            return Reply::error(ResponseCode::NotImp, None);
        }
        if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            // RFC 6891 §6.1.3: unknown EDNS version.
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            record.decision = DecisionKind::Error;
            return Reply::error(ResponseCode::BADVERS, None);
        }
        let [query] = request.queries.queries() else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            record.decision = DecisionKind::Error;
            return Reply::error(ResponseCode::FormErr, None);
        };
        let qname: &Name = query.original().name();
        let qtype = query.query_type();
        let qclass = query.query_class();
        if let Some(rcode) = unserved(qtype, qclass) {
            record.decision = DecisionKind::Error;
            return Reply::error(rcode, Some((21, String::new())));
        }

        // 3. Policy on the question, before cache or upstream: forwarding a blocked name would
        //    leak it to the upstream, and the block must not depend on what is cached.
        let mut key_buffer = LookupBuffer::new();
        let verdict = write_lookup_key(query.name().iter(), &mut key_buffer)
            .map_or(Verdict::Pass, |key| state.policy.decide(key, &client));
        match verdict {
            Verdict::Blocked(rule) => {
                return self.block(state, rule, Trigger::Question, qname, qtype, qclass, record);
            }
            Verdict::Allowed(rule) | Verdict::Logged(rule) => {
                record.rule = Some(Arc::new(rule_match(&state.policy, rule, Trigger::Question)));
                if matches!(verdict, Verdict::Logged(_)) {
                    record.decision = DecisionKind::Logged;
                }
            }
            Verdict::Pass => {}
        }
        // RD clear: the client asks for no recursion (RFC 1035 §4.3.1), and a resolver has
        // no data of its own to give; answering from the cache instead would let any client
        // see what others have resolved (cache snooping). Refused, as Unbound does, with EDE
        // 20 (Not Authoritative). A block was answered above: that answer is our own data.
        if !request.metadata.recursion_desired {
            return Reply::error(ResponseCode::Refused, Some((20, String::new())));
        }

        // 4. Cache, then upstream. The cache holds upstream replies before policy, so a list
        //    change applies to cached answers at once.
        let dnssec_ok = request
            .edns
            .as_ref()
            .is_some_and(|edns| edns.flags().dnssec_ok);
        let cache_key = CacheKey {
            name: query.name().clone(),
            qtype,
            qclass,
            dnssec_ok,
            checking_disabled: request.metadata.checking_disabled,
        };
        let now = Instant::now();
        let cached = self.cache.get(&cache_key, now).and_then(|(cached, age)| {
            let sections = cached.sections(age)?;
            Some((cached, age, sections))
        });
        let mut reply = if let Some((cached, age, sections)) = cached {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            record.source = AnswerSource::Cache;
            Reply {
                response_code: cached.response_code,
                authentic_data: cached.authentic_data,
                answers: sections.answers,
                authorities: sections.authorities,
                additionals: sections.additionals,
                ede: None,
                summary: Some(cached.summary.clone()),
                fresh_for: Some(cached.remaining_secs(age)),
            }
        } else {
            let upstream_query = UpstreamQuery {
                name: qname,
                qtype,
                qclass,
                dnssec_ok,
                checking_disabled: request.metadata.checking_disabled,
            };
            let (resolved, shared) = self
                .inflight
                .run(cache_key.clone(), self.resolve(state, &upstream_query))
                .await;
            if shared {
                self.counters.merged.fetch_add(1, Ordering::Relaxed);
            }
            match resolved {
                Ok((message, source, Some(ede))) => {
                    record.source = source;
                    record.fail();
                    return Reply::error(message.metadata.response_code, Some(ede));
                }
                Ok((message, source, None)) => {
                    record.source = source;
                    let summary = summarize(&message.answers);
                    let cached_ttl = self.cache.insert(cache_key, &message, &summary, now);
                    let mut reply = Reply {
                        response_code: message.metadata.response_code,
                        authentic_data: message.metadata.authentic_data,
                        answers: message.answers,
                        authorities: message.authorities,
                        additionals: message.additionals,
                        ede: None,
                        summary: Some(summary),
                        fresh_for: cached_ttl,
                    };
                    // Clients see the same TTL ceiling (`cache.max_ttl_secs`) on a fresh answer
                    // as on a cached one.
                    if let Some(ceiling) = cached_ttl {
                        for record in reply.answers.iter_mut().chain(&mut reply.authorities) {
                            record.ttl = record.ttl.min(ceiling);
                        }
                    }
                    reply
                }
                Err((source, ede_code, error)) => {
                    // SERVFAIL at once rather than leave the client to time out.
                    self.counters
                        .upstream_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(not_shown) = UPSTREAM_FAILED.admit() {
                        tracing::warn!(
                            %error,
                            %qname,
                            similar_not_shown = not_shown,
                            "upstream resolution failed"
                        );
                    }
                    record.source = source;
                    record.fail();
                    return Reply::error(ResponseCode::ServFail, Some((ede_code, error)));
                }
            }
        };

        // The asker's letter case (DNS 0x20): a cached answer carries the first asker's.
        for section in [
            &mut reply.answers,
            &mut reply.authorities,
            &mut reply.additionals,
        ] {
            in_askers_case(qname, section);
        }

        // 5. Policy on the answer: every name the CNAME chain passes through is checked as if
        //    asked directly (CNAME cloaking must not launder a blocked name). The question's own
        //    allow rule vouches for the question name only.
        match cname_chain_verdict(state, qname, &reply.answers, &client) {
            Some((Verdict::Blocked(rule), trigger)) => {
                return self.block(state, rule, trigger, qname, qtype, qclass, record);
            }
            // Monitoring sees every touch of a watched name: a log-only name in the chain is
            // recorded even when an allow rule let the question through (as a blocked name in
            // the chain blocks it); a log-only match on the question itself stays first.
            Some((Verdict::Logged(rule), trigger)) if record.decision == DecisionKind::Allowed => {
                record.rule = Some(Arc::new(rule_match(&state.policy, rule, trigger)));
                record.decision = DecisionKind::Logged;
            }
            // An allow rule on a chain name decided nothing else may have: it is what let a
            // name under a blocked domain through, and the auditor must see which rule did.
            Some((Verdict::Allowed(rule), trigger))
                if record.decision == DecisionKind::Allowed && record.rule.is_none() =>
            {
                record.rule = Some(Arc::new(rule_match(&state.policy, rule, trigger)));
            }
            _ => {}
        }

        // RFC 6840 §5.8: AD only to clients that asked for DNSSEC-aware answers.
        reply.authentic_data &= dnssec_ok || request.metadata.authentic_data;
        reply
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        state: &State,
        rule: RuleRef,
        trigger: Trigger,
        qname: &Name,
        qtype: RecordType,
        qclass: hickory_proto::rr::DNSClass,
        record: &mut DecisionRecord,
    ) -> Reply {
        self.counters.blocked.fetch_add(1, Ordering::Relaxed);
        let list = state.policy.list(rule);
        let synthesized = sinkhole::respond(
            &state.policy,
            rule,
            qname,
            qtype,
            qclass,
            state.config.blocking.ttl_secs,
        );
        // Blocked on the question: nothing was asked. Blocked on a name in the CNAME chain: the
        // record keeps where that chain came from (an upstream, recursion or the cache).
        if trigger == Trigger::Question {
            record.source = AnswerSource::Local;
        }
        record.decision = DecisionKind::Blocked;
        record.action = Some(list.action);
        record.rule = Some(Arc::new(rule_match(&state.policy, rule, trigger)));
        Reply {
            response_code: synthesized.response_code,
            authentic_data: false,
            answers: synthesized.answers,
            authorities: synthesized.authorities,
            additionals: Vec::new(),
            ede: Some(synthesized.ede),
            summary: None,
            fresh_for: None,
        }
    }
}

/// Writes the labels each owner name shares with the question (its trailing labels equal to
/// the question's, ignoring case) in the question's letter case, as a response whose names
/// point into the question reads: an answer kept from one asker (the cache holds the case it
/// asked in) must not show another asker that case, nor lose a client's DNS 0x20 pattern.
/// Allocates only for a name whose case differs.
fn in_askers_case(qname: &Name, records: &mut [Record]) {
    for record in records {
        let mut shared = 0;
        let mut differs = false;
        for (own, asked) in record.name.iter().rev().zip(qname.iter().rev()) {
            if !own.eq_ignore_ascii_case(asked) {
                break;
            }
            shared += 1;
            differs |= own != asked;
        }
        if !differs {
            continue;
        }
        let own_labels = usize::from(record.name.num_labels());
        let asked_labels = usize::from(qname.num_labels());
        let labels = record
            .name
            .iter()
            .take(own_labels - shared)
            .chain(qname.iter().skip(asked_labels - shared));
        if let Ok(mut name) = Name::from_labels(labels) {
            name.set_fqdn(record.name.is_fqdn());
            record.name = name;
        }
    }
}

/// The CNAME targets of an answer, in chain order from the question. Stops at a loop or a
/// break in the chain.
fn cname_targets<'a>(qname: &Name, answers: &'a [Record]) -> Vec<&'a Name> {
    let mut chain: Vec<&Name> = Vec::new();
    let mut current = qname;
    // A chain longer than the answer section is a loop.
    for _ in 0..answers.len() {
        let next = answers.iter().find_map(|record| match &record.data {
            RData::CNAME(target) if record.name.eq_ignore_root(current) => Some(&target.0),
            _ => None,
        });
        match next {
            Some(target) if !chain.iter().any(|seen| seen.eq_ignore_root(target)) => {
                chain.push(target);
                current = target;
            }
            _ => break,
        }
    }
    chain
}

/// Decides every name the answer's CNAME chain passes through, once each: the first enforcing
/// block wins; otherwise the first log-only match; otherwise the first allow-list hit, to be
/// recorded (it vouches for that name only, so it never outranks a block or a log-only match
/// further down the chain).
fn cname_chain_verdict(
    state: &State,
    qname: &Name,
    answers: &[Record],
    client: &Client,
) -> Option<(Verdict, Trigger)> {
    if !answers
        .iter()
        .any(|record| record.record_type() == RecordType::CNAME)
    {
        return None;
    }
    let chain = cname_targets(qname, answers);
    let mut logged = None;
    let mut allowed = None;
    for (index, target) in chain.iter().enumerate() {
        let mut buffer = LookupBuffer::new();
        let Some(key) = write_lookup_key(target.iter(), &mut buffer) else {
            continue;
        };
        let verdict = state.policy.decide(key, client);
        let trigger = || Trigger::Cname {
            matched: target.to_string(),
            chain: std::iter::once(qname)
                .chain(chain[..=index].iter().copied())
                .map(ToString::to_string)
                .collect(),
        };
        match verdict {
            Verdict::Blocked(_) => return Some((verdict, trigger())),
            Verdict::Logged(_) if logged.is_none() => logged = Some((verdict, trigger())),
            Verdict::Allowed(_) if allowed.is_none() => allowed = Some((verdict, trigger())),
            _ => {}
        }
    }
    logged.or(allowed)
}

fn rule_match(policy: &Policy, rule: RuleRef, trigger: Trigger) -> RuleMatch {
    let list = policy.list(rule);
    RuleMatch {
        list: list.name.clone(),
        rule: policy.rule_text(rule).to_string().into(),
        file: list.display_path.clone(),
        line: rule.line,
        trigger,
    }
}

/// Makes the record say what left, not what was meant to: a UDP answer too large for the
/// client's buffer went out truncated (TC set, only the records that fit), and a reply that
/// could not be encoded went out as a bare SERVFAIL.
fn record_what_was_sent(record: &mut DecisionRecord, reply: &Reply, info: &ResponseInfo) {
    if info.response_code != record.rcode {
        record.rcode = info.response_code;
        record.answer = AnswerText::NONE;
        return;
    }
    let sent = usize::from(info.counts().answers);
    if sent < reply.answers.len() {
        record.answer = AnswerText::new(&summarize_truncated(&reply.answers, sent));
    }
}

/// The summary of an answer section of which only the first `sent` records went out.
fn summarize_truncated(answers: &[Record], sent: usize) -> Arc<str> {
    let mut summary = String::from(&*summarize(&answers[..sent]));
    if !summary.is_empty() {
        summary.push(' ');
    }
    let _ = write!(
        summary,
        "(truncated, TC: {sent} of {} records sent)",
        answers.len()
    );
    summary.into()
}

/// A short, human-readable summary of the answer section for the decision record: each
/// record as `TYPE rdata` in zone-file presentation form.
fn summarize(answers: &[Record]) -> Arc<str> {
    let mut summary = String::new();
    for record in answers.iter().take(8) {
        if !summary.is_empty() {
            summary.push_str(", ");
        }
        let _ = write!(summary, "{} ", TypeText(record.record_type()));
        write_rdata(&mut summary, &record.data);
    }
    if answers.len() > 8 {
        let _ = write!(summary, ", ... ({} records)", answers.len());
    }
    summary.into()
}

/// Record data in presentation form. hickory's `Display` is used where it gives that; TXT
/// (whose strings it runs together), SVCB/HTTPS (trailing commas after lists) and unknown types
/// (base64 instead of RFC 3597's `\# length hex`) are written here.
fn write_rdata(out: &mut String, data: &RData) {
    match data {
        RData::TXT(txt) => {
            for (index, text) in txt.txt_data.iter().enumerate() {
                if index > 0 {
                    out.push(' ');
                }
                write_character_string(out, text);
            }
        }
        RData::HINFO(hinfo) => {
            write_character_string(out, &hinfo.cpu);
            out.push(' ');
            write_character_string(out, &hinfo.os);
        }
        RData::SVCB(svcb) | RData::HTTPS(hickory_proto::rr::rdata::HTTPS(svcb)) => {
            let _ = write!(out, "{} {}", svcb.svc_priority, svcb.target_name);
            for (key, value) in &svcb.svc_params {
                let _ = write!(out, " {key}");
                let text = value.to_string();
                let text = text.trim_end_matches(',');
                if !text.is_empty() {
                    let _ = write!(out, "={text}");
                }
            }
        }
        RData::Unknown { rdata, .. } | RData::NULL(rdata) => {
            let _ = write!(out, "\\# {}", rdata.anything.len());
            if !rdata.anything.is_empty() {
                out.push(' ');
                out.push_str(&hex::encode(&rdata.anything));
            }
        }
        other => {
            // hickory's presentation form, with any control character it lets through (its
            // NAPTR and CAA text fields are written raw) as `\DDD` bytes: the summary is shown
            // on auditors' terminals.
            let start = out.len();
            let _ = write!(out, "{other}");
            if out[start..].chars().any(char::is_control) {
                let text = out.split_off(start);
                for c in text.chars() {
                    if c.is_control() {
                        for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                            let _ = write!(out, "\\{byte:03}");
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }
}

/// A `<character-string>` in zone-file form (RFC 1035 §5.1): quoted, `"` and `\\` escaped,
/// bytes outside printable ASCII as `\DDD`.
fn write_character_string(out: &mut String, text: &[u8]) {
    out.push('"');
    for &byte in text {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out.push('"');
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.answer_query(request, response_handle, BatchTime::now())
            .await
    }
}

impl Handler {
    /// The request chain for a query that arrived in the receive batch (UDP) or read (TCP)
    /// `arrived`: its record's `time` and `latency_us` count from there, as the fast path's
    /// and FORMERR's do, so latencies of the two paths compare.
    pub(super) async fn answer_query<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
        arrived: BatchTime,
    ) -> ResponseInfo {
        let started = arrived.at;
        // One snapshot for the whole query (see the module doc).
        let state = self.state.load_full();
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let transport = match request.protocol() {
            Protocol::Tcp => Transport::Tcp,
            _ => Transport::Udp,
        };
        let client = Client {
            addr: request.src(),
            transport,
        };
        // A query without a question is recorded as `. ZERO IN`.
        let (qname, qtype, qclass) = match request.queries.queries().first() {
            Some(query) => (
                QName::from_name(query.original().name()),
                query.query_type(),
                query.query_class(),
            ),
            None => (QName::ROOT, RecordType::ZERO, DNSClass::IN),
        };
        let mut record = DecisionRecord {
            time: arrived.wall,
            generation: state.generation,
            client: client.addr,
            transport: transport.as_str(),
            qname,
            qtype,
            qclass,
            decision: DecisionKind::Allowed,
            rule: None,
            action: None,
            rcode: ResponseCode::NoError,
            answer: AnswerText::NONE,
            ede: None,
            source: AnswerSource::Local,
            latency_us: 0,
        };

        // Dropped before it is paid, the query left no record: a stop whose grace ran out drops
        // the queries still waiting on an upstream with their worker's runtime.
        let owed = RecordOwed(self.audit.as_ref());
        let reply = self.answer(&state, request, client, &mut record).await;
        if record.decision == DecisionKind::Logged {
            self.counters.logged.fetch_add(1, Ordering::Relaxed);
        }

        record.rcode = reply.response_code;
        record.answer = match &reply.summary {
            Some(summary) => AnswerText::new(summary),
            None if reply.answers.is_empty() => AnswerText::NONE,
            None => AnswerText::new(&summarize(&reply.answers)),
        };
        record.ede = reply
            .ede
            .as_ref()
            .map(|(code, _)| *code)
            .filter(|_| request.edns.is_some());
        // Stored before the answer leaves, so a client that asks again as soon as it has it
        // is answered by the fast path.
        if transport == Transport::Udp {
            self.store_for_fast_path(&state, request, &reply, &record);
        }
        let (info, sent) = send(
            request,
            &mut response_handle,
            &reply,
            state.config.server.udp_payload_max,
        )
        .await;
        if sent {
            record_what_was_sent(&mut record, &reply, &info);
        } else {
            record.mark_not_sent();
        }
        record.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        record.emit();
        owed.paid();
        // The audit queue never blocks: a full queue is counted and becomes a gap record.
        if let Some(audit) = self.audit.as_ref().filter(|_| self.audits(&state, &record)) {
            audit.record(record);
        }
        info
    }
}

/// Warnings a failure repeats once per query, written at most once a second (the counters
/// and, for failed sends, the audit log's `(not sent)` keep every case).
static UPSTREAM_FAILED: Throttle = Throttle::new();
static SEND_FAILED: Throttle = Throttle::new();

/// A query's audit record, owed from the moment the query is read: if the query's future is
/// dropped before the record is handed over, the audit log counts it as lost (a gap record),
/// so every query is in the log either as a record or in a count.
struct RecordOwed<'a>(Option<&'a AuditHandle>);

impl RecordOwed<'_> {
    /// The record is about to be handed over (or, for a client outside `server.allow` beyond
    /// its budget, counted as suppressed): nothing is owed any more.
    fn paid(mut self) {
        self.0 = None;
    }
}

impl Drop for RecordOwed<'_> {
    fn drop(&mut self) {
        if let Some(audit) = self.0 {
            audit.count_lost(1);
        }
    }
}

/// The questions a resolver does not take, answered at once with EDE 21 (Not Supported), as
/// Unbound does, instead of being forwarded: a class other than IN (CHAOS `version.bind`
/// would name the upstream's software, and other classes are not resolved), zone transfers
/// (REFUSED: a resolver has no zones to give, and an IXFR forwarded without its SOA only
/// draws FORMERR), and the other meta types of RFC 6895 §3.1 and OPT, which are not questions
/// (FORMERR).
fn unserved(qtype: RecordType, qclass: DNSClass) -> Option<ResponseCode> {
    if qclass != DNSClass::IN {
        return Some(ResponseCode::Refused);
    }
    match u16::from(qtype) {
        // IXFR, AXFR.
        251 | 252 => Some(ResponseCode::Refused),
        // OPT; the meta and question types except ANY (`*`, 255), which is served.
        41 | 128..=254 => Some(ResponseCode::FormErr),
        _ => None,
    }
}

/// Puts a reply on the wire. The response's OPT advertises the smaller of the client's buffer
/// and `udp_payload_max`, which is also what hickory's encoder truncates to (setting TC) on UDP.
/// Returns the header that went out and whether anything did (false: the socket refused it).
async fn send<R: ResponseHandler>(
    request: &Request,
    response_handle: &mut R,
    reply: &Reply,
    udp_payload_max: u16,
) -> (ResponseInfo, bool) {
    let (metadata, response_edns) = response_header(request, reply, udp_payload_max);
    let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
    let response = builder.build(
        metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        std::iter::empty(),
        reply.additionals.iter(),
    );
    match response_handle.send_response(response).await {
        Ok(info) => (info, true),
        Err(error) => {
            // On TCP this is a client that went away or stopped reading, which any client can
            // do at will: not worth a warning.
            if request.protocol() == Protocol::Tcp {
                tracing::debug!(%error, client = %crate::audit::ShownClient(request.src()), "failed to send response");
            } else if let Some(not_shown) = SEND_FAILED.admit() {
                tracing::warn!(
                    %error,
                    client = %crate::audit::ShownClient(request.src()),
                    similar_not_shown = not_shown,
                    "failed to send response"
                );
            }
            let mut metadata = Metadata::new(
                request.metadata.id,
                MessageType::Response,
                request.metadata.op_code,
            );
            metadata.response_code = ResponseCode::ServFail;
            let info = ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            });
            (info, false)
        }
    }
}

/// The response's header and OPT record for `reply`.
fn response_header(
    request: &Request,
    reply: &Reply,
    udp_payload_max: u16,
) -> (Metadata, Option<Edns>) {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.recursion_available = true;
    metadata.response_code = reply.response_code;
    metadata.authentic_data = reply.authentic_data;

    let response_edns = request.edns.as_ref().map(|client_edns| {
        let mut edns = Edns::new();
        edns.set_max_payload(
            client_edns
                .max_payload()
                .clamp(512, udp_payload_max.max(512)),
        );
        edns.set_dnssec_ok(client_edns.flags().dnssec_ok);
        // The 4-bit header rcode cannot hold BADVERS (16); its high bits travel in the OPT.
        edns.set_rcode_high(reply.response_code.high());
        if let Some((code, text)) = &reply.ede {
            // RFC 8914 §2: INFO-CODE (16 bits) then EXTRA-TEXT (UTF-8, not NUL-terminated).
            let mut data = Vec::with_capacity(2 + text.len());
            data.extend_from_slice(&code.to_be_bytes());
            data.extend_from_slice(text.as_bytes());
            edns.options_mut().insert(EdnsOption::Unknown(15, data));
        }
        edns
    });
    (metadata, response_edns)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::{
        Name, RData, Record, RecordType,
        rdata::{
            A, HTTPS, NULL, SVCB, TXT,
            svcb::{Alpn, IpHint, SvcParamKey, SvcParamValue},
        },
    };

    use super::{Reply, record_what_was_sent, summarize};

    fn record(data: RData) -> Record {
        Record::from_rdata(Name::from_ascii("x.test.").unwrap(), 60, data)
    }

    #[test]
    fn answers_are_summarised_in_presentation_form() {
        let https = SVCB::new(
            1,
            Name::root(),
            vec![
                (
                    SvcParamKey::Alpn,
                    SvcParamValue::Alpn(Alpn(vec!["h2".into(), "h3".into()])),
                ),
                (SvcParamKey::NoDefaultAlpn, SvcParamValue::NoDefaultAlpn),
                (
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![A(Ipv4Addr::new(192, 0, 2, 1))])),
                ),
            ],
        );
        let answers = [
            record(RData::A(A(Ipv4Addr::new(192, 0, 2, 9)))),
            record(RData::TXT(TXT::new(vec!["a".into(), "b \"c\"".into()]))),
            record(RData::HTTPS(HTTPS(https))),
            record(RData::Unknown {
                code: RecordType::Unknown(65534),
                rdata: NULL::with(vec![1, 2, 3]),
            }),
        ];
        assert_eq!(
            &*summarize(&answers),
            "A 192.0.2.9, TXT \"a\" \"b \\\"c\\\"\", \
             HTTPS 1 . alpn=h2,h3 no-default-alpn ipv4hint=192.0.2.1, TYPE65534 \\# 3 010203"
        );
    }

    /// What the record says went out follows the encoder: a reply it could not encode left as
    /// a bare SERVFAIL, and one cut to the client's buffer left with only the records that fit.
    #[test]
    fn the_record_says_what_went_out() {
        use std::time::SystemTime;

        use hickory_proto::op::{
            Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
        };
        use hickory_proto::rr::DNSClass;
        use hickory_server::server::ResponseInfo;

        use crate::policy::{
            DecisionKind,
            decision::{AnswerSource, AnswerText, DecisionRecord, QName},
        };

        let answers: Vec<Record> = (1..=3)
            .map(|host| record(RData::A(A(Ipv4Addr::new(192, 0, 2, host)))))
            .collect();
        let reply = Reply {
            answers,
            ..Reply::default()
        };
        let planned = DecisionRecord {
            time: SystemTime::UNIX_EPOCH,
            generation: 1,
            client: "192.0.2.7:5300".parse().unwrap(),
            transport: "udp",
            qname: QName::ROOT,
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            decision: DecisionKind::Allowed,
            rule: None,
            action: None,
            rcode: ResponseCode::NoError,
            answer: AnswerText::new(&summarize(&reply.answers)),
            ede: None,
            source: AnswerSource::Cache,
            latency_us: 0,
        };
        let sent = |response_code, answers| {
            let mut metadata = Metadata::new(1, MessageType::Response, OpCode::Query);
            metadata.response_code = response_code;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts {
                    answers,
                    ..HeaderCounts::default()
                },
            })
        };

        let mut record = planned.clone();
        record_what_was_sent(&mut record, &reply, &sent(ResponseCode::NoError, 3));
        assert_eq!(
            record.answer.as_deref(),
            Some("A 192.0.2.1, A 192.0.2.2, A 192.0.2.3")
        );

        let mut record = planned.clone();
        record_what_was_sent(&mut record, &reply, &sent(ResponseCode::NoError, 1));
        assert_eq!(
            record.answer.as_deref(),
            Some("A 192.0.2.1 (truncated, TC: 1 of 3 records sent)")
        );

        let mut record = planned;
        record_what_was_sent(&mut record, &reply, &sent(ResponseCode::ServFail, 0));
        assert_eq!(record.rcode, ResponseCode::ServFail);
        assert_eq!(record.answer.as_deref(), None);
    }

    /// Answer data is shown on auditors' terminals: its text fields are in zone-file form with
    /// every control character escaped, so a zone's owner cannot forge a row or an escape
    /// sequence in `audit search`.
    #[test]
    fn answer_text_fields_cannot_carry_control_characters() {
        use hickory_proto::rr::rdata::{CAA, HINFO, NAPTR};

        let forged_row = "x\n2026-12-02T10:00:00.000000Z  10.9.9.9:5353  innocent.example.";
        let answers = [
            record(RData::HINFO(HINFO::new(
                forged_row.into(),
                "\u{1b}[31mRED\u{1b}[0m \"q\"".into(),
            ))),
            record(RData::NAPTR(NAPTR::new(
                10,
                20,
                b"u".to_vec().into_boxed_slice(),
                b"E2U+sip".to_vec().into_boxed_slice(),
                b"!^.*$!sip:a\x07\xc2\x85b!".to_vec().into_boxed_slice(),
                Name::root(),
            ))),
            record(RData::CAA(CAA::new_issue(false, None, vec![]))),
        ];
        let summary = summarize(&answers);
        assert!(!summary.chars().any(char::is_control), "{summary:?}");
        assert_eq!(
            &*summary,
            "HINFO \"x\\0102026-12-02T10:00:00.000000Z  10.9.9.9:5353  innocent.example.\" \
             \"\\027[31mRED\\027[0m \\\"q\\\"\", \
             NAPTR 10 20 \"u\" \"E2U+sip\" \"!^.*$!sip:a\\007\\194\\133b!\" ., \
             CAA 0 issue \";\""
        );
    }
}
