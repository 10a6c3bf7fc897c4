//! Forwarding to upstreams that misbehave: slow, dead and recovering servers, identical questions
//! in flight together, servers without EDNS, odd TTLs and rcodes. The real binary, real UDP
//! servers on loopback (the in-process authority, a delaying relay in front of it, and scripted
//! responders), and counts of what each server received.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn forwarding_to(upstreams: &[std::net::SocketAddr], forward: &str) -> Dnsward {
    let config =
        config_text(upstreams, "").replace("[forward]\n", &format!("[forward]\n{forward}\n"));
    Dnsward::start(&config, &[])
}

/// Asks each name once, from its own thread, all at the same time; returns the rcodes.
fn ask_together(dnsward: &Dnsward, names: &[String]) -> Vec<ResponseCode> {
    let threads: Vec<_> = names
        .iter()
        .map(|name| {
            let (addr, name) = (dnsward.addr, name.clone());
            std::thread::spawn(move || {
                ask(addr, Transport::Udp, &name, RecordType::A)
                    .metadata
                    .response_code
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Names the test zone does not hold: each one a cache miss answered NXDOMAIN.
fn fresh_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}.test.")).collect()
}

/// By default the fastest upstream is asked: a slow first one answers the one query that
/// measures it, and the fast second one the rest. `in_order` keeps to the list's order.
#[test]
fn the_fastest_upstream_is_asked_unless_in_order() {
    let upstream = Upstream::start();
    for (strategy, slow_expected) in [("", 1..=2), ("strategy = \"in_order\"", 12..=12)] {
        let slow = DelayRelay::start(upstream.addr, Duration::from_millis(300));
        let dnsward = forwarding_to(&[slow.addr, upstream.addr], strategy);
        for name in fresh_names("fast", 12) {
            let reply = ask(dnsward.addr, Transport::Udp, &name, RecordType::A);
            assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        }
        let asked_slow = slow.received.try_iter().count();
        assert!(
            slow_expected.contains(&asked_slow),
            "{strategy:?}: the slow upstream got {asked_slow} of 12 queries"
        );
    }
}

/// An upstream that stops answering is passed over; when its hold-down ends, one background
/// probe goes to it, not every client's query (all of them had waited for its timeout, every
/// few seconds); once it answers a probe it is asked again. Each change is logged once.
#[test]
fn a_dead_upstream_is_probed_in_the_background_until_it_answers() {
    let upstream = Upstream::start();
    let alive = Arc::new(AtomicBool::new(false));
    let first = {
        let alive = Arc::clone(&alive);
        ScriptedUpstream::start(move |query| {
            alive
                .load(Ordering::SeqCst)
                .then(|| a_response(query, [192, 0, 2, 77], 300))
        })
    };
    let dnsward = forwarding_to(&[first.addr, upstream.addr], "strategy = \"in_order\"");
    // The first query finds it silent (timeout_ms = 500) and is answered by the second.
    let reply = ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
    assert_eq!(first.received(), 1);
    assert!(
        dnsward
            .wait_for_log(|line| line.contains("upstream not answering"))
            .is_some()
    );
    // Past its 5 s hold-down, ten clients at once: the others answer them, and it gets one
    // probe.
    std::thread::sleep(Duration::from_millis(5500));
    let rcodes = ask_together(&dnsward, &fresh_names("burst", 10));
    assert!(
        rcodes.iter().all(|&rcode| rcode == ResponseCode::NXDomain),
        "{rcodes:?}"
    );
    assert_eq!(first.received(), 2, "one probe, no client query");
    // It comes back: the next probe (its hold-down doubled to 10 s) finds it answering, and
    // clients are sent to it again.
    alive.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(11_500));
    ask(dnsward.addr, Transport::Udp, "probe.test.", RecordType::A);
    assert!(
        dnsward
            .wait_for_log(|line| line.contains("upstream answers again"))
            .is_some()
    );
    let reply = ask(dnsward.addr, Transport::Udp, "back.test.", RecordType::A);
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.77"]);
    let warned = dnsward
        .log()
        .iter()
        .filter(|line| line.contains("upstream not answering"))
        .count();
    assert_eq!(warned, 1, "one warning for the outage");
}

/// The same question from many clients while its resolution is under way: one upstream query.
#[test]
fn identical_questions_in_flight_share_one_upstream_query() {
    let upstream = Upstream::start();
    let slow = DelayRelay::start(upstream.addr, Duration::from_millis(250));
    let dnsward = forwarding_to(&[slow.addr], "");
    let names = vec!["www.test.".to_owned(); 10];
    let rcodes = ask_together(&dnsward, &names);
    assert!(
        rcodes.iter().all(|&rcode| rcode == ResponseCode::NoError),
        "{rcodes:?}"
    );
    assert_eq!(slow.received.try_iter().count(), 1);
    // Different questions are not merged.
    let rcodes = ask_together(&dnsward, &fresh_names("apart", 4));
    assert!(rcodes.iter().all(|&rcode| rcode == ResponseCode::NXDomain));
    assert_eq!(slow.received.try_iter().count(), 4);
}

/// RFC 6891 §7: an upstream that answers FORMERR (without an OPT) to a query with EDNS is asked
/// again without it.
#[test]
fn an_upstream_without_edns_is_asked_again_without_it() {
    let old = ScriptedUpstream::start(|query| {
        Some(if query.edns.is_some() {
            let mut refusal = response_to(query);
            refusal.metadata.response_code = ResponseCode::FormErr;
            refusal
        } else {
            a_response(query, [192, 0, 2, 99], 300)
        })
    });
    let dnsward = forwarding_to(&[old.addr], "");
    let reply = ask(dnsward.addr, Transport::Udp, "old.example.", RecordType::A);
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.99"]);
    assert_eq!(old.received(), 2, "with EDNS, then without");
}

/// RFC 2181 §8: a TTL with its top bit set is zero (not cached, not passed on); YXDOMAIN (a
/// DNAME substitution that overflowed, RFC 6672) is an answer, relayed, not a failure.
#[test]
fn a_ttl_with_the_top_bit_is_zero_and_yxdomain_is_relayed() {
    let odd = ScriptedUpstream::start(|query| {
        let name = query.queries[0].name().to_ascii();
        Some(if name.starts_with("top.") {
            a_response(query, [192, 0, 2, 1], u32::MAX)
        } else {
            let mut reply = response_to(query);
            reply.metadata.response_code = ResponseCode::YXDomain;
            reply
        })
    });
    let dnsward = forwarding_to(&[odd.addr], "");
    for asked in 1..=2 {
        let reply = ask(dnsward.addr, Transport::Udp, "top.example.", RecordType::A);
        assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.1"]);
        assert_eq!(reply.answers[0].ttl, 0);
        assert_eq!(odd.received(), asked, "not answered from the cache");
    }
    let reply = ask(dnsward.addr, Transport::Udp, "yx.example.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::YXDomain);
    assert!(ede(&reply).is_none(), "{:?}", ede(&reply));
}
