//! Benchmarks of the per-query steps around the matcher: the policy decision over several lists
//! (allow, enforce, log-only) with a 1M-rule block list, and an answer-cache hit.

use std::{hint::black_box, net::SocketAddr, str::FromStr, sync::Arc, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dnsward::{
    cache::{AnswerCache, CacheKey},
    config::{BlockAction, CacheSection, ListKind, ListMode},
    lists::{DomainMatcherBuilder, RuleKind},
    policy::{Client, LookupBuffer, Policy, PolicyList, Transport, write_lookup_key},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode},
    rr::{
        DNSClass, LowerName, Name, RData, Record, RecordType,
        rdata::{A, NS},
    },
};

fn list(name: &str, kind: ListKind, mode: ListMode, names: &[String]) -> PolicyList {
    let mut builder = DomainMatcherBuilder::with_capacity(names.len());
    for (line, rule) in names.iter().enumerate() {
        builder
            .insert(rule, RuleKind::Domain, line as u32 + 1)
            .expect("generated names fit");
    }
    PolicyList {
        name: Arc::from(name),
        display_path: Arc::from(format!("{name}.txt").as_str()),
        path: format!("{name}.txt").into(),
        kind,
        mode,
        action: BlockAction::Nxdomain,
        ede: 15,
        sinkhole_v4: None,
        sinkhole_v6: None,
        matcher: builder.build(),
        sha256: [0; 32],
        skipped_lines: 0,
    }
}

fn policy() -> Policy {
    let block: Vec<String> = (0..1_000_000)
        .map(|i| format!("site{i}.example{}.com", i % 97))
        .collect();
    let allow: Vec<String> = (0..100)
        .map(|i| format!("pay.site{i}.example{}.com", i % 97))
        .collect();
    let watch: Vec<String> = (0..1_000).map(|i| format!("otc{i}.net")).collect();
    Policy::new(vec![
        list("allow", ListKind::Allow, ListMode::Enforce, &allow),
        list("exchanges", ListKind::Block, ListMode::Enforce, &block),
        list("watch", ListKind::Block, ListMode::LogOnly, &watch),
    ])
}

fn decide(c: &mut Criterion) {
    let policy = policy();
    let client = Client {
        addr: SocketAddr::from(([127, 0, 0, 1], 5353)),
        transport: Transport::Udp,
    };
    let mut group = c.benchmark_group("decide_1M");
    for (label, name) in [
        ("blocked_deep", "a.b.www.site4242.example71.com."),
        ("allowed_miss", "www.wikipedia.org."),
        ("allow_list_hit", "pay.site7.example7.com."),
    ] {
        let name = LowerName::from(Name::from_str(name).expect("valid name"));
        group.bench_function(label, |b| {
            b.iter(|| {
                let mut buffer = LookupBuffer::new();
                let key = write_lookup_key(black_box(&name).iter(), &mut buffer);
                key.map(|key| policy.decide(key, &client))
            })
        });
    }
    group.finish();
}

fn cache(c: &mut Criterion) {
    let cache = AnswerCache::new(&CacheSection::default());
    let now = Instant::now();
    let keys: Vec<CacheKey> = (0..10_000)
        .map(|i| {
            let name = Name::from_str(&format!("www{i}.example.com.")).expect("valid name");
            // The shape of the bench kit's upstream replies: the A record, the zone's NS in
            // authority, its glue in additional.
            let zone = Name::from_str("example.com.").expect("valid name");
            let server = Name::from_str("ns.example.com.").expect("valid name");
            let mut reply = Message::new(1, MessageType::Response, OpCode::Query);
            reply.add_answer(Record::from_rdata(
                name.clone(),
                300,
                RData::A(A::new(192, 0, 2, 1)),
            ));
            reply.add_authority(Record::from_rdata(
                zone,
                3600,
                RData::NS(NS(server.clone())),
            ));
            reply.add_additional(Record::from_rdata(
                server,
                3600,
                RData::A(A::new(192, 0, 2, 53)),
            ));
            let key = CacheKey {
                name: LowerName::from(name),
                qtype: RecordType::A,
                qclass: DNSClass::IN,
                dnssec_ok: false,
                checking_disabled: false,
            };
            cache.insert(
                key.clone(),
                &reply,
                &std::sync::Arc::from("A 192.0.2.1"),
                now,
            );
            key
        })
        .collect();
    let mut index = 0;
    c.bench_function("cache_hit_and_age", |b| {
        b.iter(|| {
            index = (index + 7) % keys.len();
            let (entry, age) = cache.get(&keys[index], now).expect("cached");
            black_box(entry.sections(age))
        })
    });
}

/// The UDP fast path's replay: parse the query, find the stored response, copy it and patch ID,
/// question case, payload size and TTLs.
fn wire_replay(c: &mut Criterion) {
    use dnsward::{
        policy::decision::{AnswerText, DecisionKind},
        server::fastpath::{Outcome, PlainQuery, WireCache, request_flags, write_key},
    };
    let cache = WireCache::new(100_000);
    let now = Instant::now();
    let queries: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            let name = Name::from_str(&format!("www{i}.example.com.")).expect("valid name");
            let mut query = Message::new(7, MessageType::Query, OpCode::Query);
            query.metadata.recursion_desired = true;
            query.add_query(hickory_proto::op::Query::query(name.clone(), RecordType::A));
            let mut edns = hickory_proto::op::Edns::new();
            edns.set_max_payload(1232);
            query.set_edns(edns.clone());
            let mut response = query.clone();
            response.metadata.message_type = MessageType::Response;
            response.add_answer(Record::from_rdata(
                name.clone(),
                300,
                RData::A(A::new(192, 0, 2, 1)),
            ));
            let mut key = [0u8; dnsward::server::fastpath::KEY_MAX];
            let key = write_key(
                name.iter(),
                1,
                1,
                request_flags(true, false, false, true, false),
                &mut key,
            );
            cache.store(
                key,
                &response.to_vec().expect("encodes"),
                1,
                Some(300),
                Outcome {
                    decision: DecisionKind::Allowed,
                    rule: None,
                    action: None,
                    rcode: hickory_proto::op::ResponseCode::NoError,
                    answer: AnswerText::from("A 192.0.2.1"),
                    ede: None,
                    synthesized: false,
                },
                now,
            );
            query.to_vec().expect("encodes")
        })
        .collect();
    let mut out = vec![0u8; 4096];
    let mut index = 0;
    c.bench_function("wire_replay", |b| {
        b.iter(|| {
            index = (index + 7) % queries.len();
            let query = PlainQuery::parse(&queries[index]).expect("plain");
            black_box(
                cache
                    .answer(&query, 1, 1232, now, &mut out)
                    .expect("stored")
                    .0,
            )
        })
    });
}

criterion_group!(benches, decide, cache, wire_replay);
criterion_main!(benches);
