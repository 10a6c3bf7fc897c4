//! What the audit tests that use the writer library share: a deterministic stream of decision
//! records and a plain reader of what was written.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use dnsward::{
    audit::segment::{self, Record},
    config::BlockAction,
    policy::decision::{
        AnswerSource, AnswerText, DecisionKind, DecisionRecord, RuleMatch, Trigger,
    },
};
use hickory_proto::{
    op::ResponseCode,
    rr::{DNSClass, RecordType},
};

pub const BASE_SECS: u64 = 1_738_324_800; // 2025-01-31T12:00:00Z

/// Query `i`: every third is a blocked `www.binance.com.` (list `crypto`), the rest allowed
/// names under `example.org.`; clients 192.0.2.1–4; one record per millisecond from BASE.
pub fn decision(i: u64) -> DecisionRecord {
    let blocked = i.is_multiple_of(3);
    query_record(
        SystemTime::UNIX_EPOCH + Duration::from_secs(BASE_SECS) + Duration::from_millis(i),
        SocketAddr::from(([192, 0, 2, (i % 4 + 1) as u8], 40000 + (i % 1000) as u16)),
        if i.is_multiple_of(5) { "tcp" } else { "udp" },
        &format!("host{}.example.org.", i % 7),
        if i.is_multiple_of(2) {
            RecordType::A
        } else {
            RecordType::AAAA
        },
        blocked,
        100 + i,
    )
}

/// A query record. A blocked one is `www.binance.com.`, blocked by rule `||binance.com^` (line
/// 3 of list `crypto`) with NXDOMAIN and EDE 15; an allowed one is `qname`, answered
/// `A 192.0.2.99` by upstream 198.51.100.1.
pub fn query_record(
    time: SystemTime,
    client: SocketAddr,
    transport: &'static str,
    qname: &str,
    qtype: RecordType,
    blocked: bool,
    latency_us: u64,
) -> DecisionRecord {
    DecisionRecord {
        time,
        generation: 1,
        client,
        transport,
        qname: if blocked { "www.binance.com." } else { qname }
            .parse()
            .unwrap(),
        qtype,
        qclass: DNSClass::IN,
        decision: if blocked {
            DecisionKind::Blocked
        } else {
            DecisionKind::Allowed
        },
        rule: blocked.then(|| {
            std::sync::Arc::new(RuleMatch {
                list: "crypto".into(),
                rule: "||binance.com^".into(),
                file: "lists/crypto.txt".into(),
                line: 3,
                trigger: Trigger::Question,
            })
        }),
        action: blocked.then_some(BlockAction::Nxdomain),
        rcode: if blocked {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        },
        answer: if blocked {
            AnswerText::NONE
        } else {
            AnswerText::from("A 192.0.2.99")
        },
        ede: blocked.then_some(15),
        source: if blocked {
            AnswerSource::Local
        } else {
            AnswerSource::Upstream(SocketAddr::from(([198, 51, 100, 1], 53)))
        },
        latency_us,
    }
}

pub fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

pub fn all_records(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for path in segments(dir) {
        let data = std::fs::read(&path).unwrap();
        // Torn lines (crash tests) are not records.
        let lines = data
            .split(|&b| b == b'\n')
            .skip(1)
            .filter(|l| !l.is_empty());
        out.extend(lines.filter_map(|line| Record::parse(line).ok()));
    }
    out
}
