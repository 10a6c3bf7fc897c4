//! Turns a block decision into the answer the list's `action` asks for, with an RFC 8914
//! Extended DNS Error naming the list and rule.
//!
//! The sinkhole never matches names (that is `policy`); it only knows how each action looks on
//! the wire.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use hickory_proto::{
    op::ResponseCode,
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, SOA},
    },
};

use crate::{
    config::BlockAction,
    policy::{Policy, RuleRef},
};

/// A synthesized answer for a blocked question.
#[derive(Debug)]
pub struct Synthesized {
    pub response_code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// RFC 8914 INFO-CODE and EXTRA-TEXT; sent only if the client spoke EDNS.
    pub ede: (u16, String),
}

/// Builds the answer for `qname`/`qtype` blocked by `rule`. `ttl` is `blocking.ttl_secs`: the
/// TTL of synthesized addresses and of the SOA, which stubs take as the negative-cache TTL.
pub fn respond(
    policy: &Policy,
    rule: RuleRef,
    qname: &Name,
    qtype: RecordType,
    qclass: DNSClass,
    ttl: u32,
) -> Synthesized {
    let list = policy.list(rule);
    let ede = (
        list.ede,
        format!("list={} rule={}", list.name, policy.rule_text(rule)),
    );
    let address = |rdata: RData| Synthesized {
        response_code: ResponseCode::NoError,
        answers: vec![with_class(
            Record::from_rdata(qname.clone(), ttl, rdata),
            qclass,
        )],
        authorities: Vec::new(),
        ede: ede.clone(),
    };
    let negative = |response_code| Synthesized {
        response_code,
        answers: Vec::new(),
        authorities: vec![soa(policy, rule, qname, qclass, ttl)],
        ede: ede.clone(),
    };
    match (list.action, qtype) {
        (BlockAction::Refused, _) => Synthesized {
            response_code: ResponseCode::Refused,
            answers: Vec::new(),
            authorities: Vec::new(),
            ede: ede.clone(),
        },
        (BlockAction::Nxdomain, _) => negative(ResponseCode::NXDomain),
        (BlockAction::Null, RecordType::A) => address(RData::A(A(Ipv4Addr::UNSPECIFIED))),
        (BlockAction::Null, RecordType::AAAA) => address(RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))),
        (BlockAction::Sinkhole, RecordType::A) if list.sinkhole_v4.is_some() => {
            address(RData::A(A(list
                .sinkhole_v4
                .unwrap_or(Ipv4Addr::UNSPECIFIED))))
        }
        (BlockAction::Sinkhole, RecordType::AAAA) if list.sinkhole_v6.is_some() => address(
            RData::AAAA(AAAA(list.sinkhole_v6.unwrap_or(Ipv6Addr::UNSPECIFIED))),
        ),
        // NODATA, and the types null/sinkhole have no address for.
        _ => negative(ResponseCode::NoError),
    }
}

fn with_class(mut record: Record, class: DNSClass) -> Record {
    record.dns_class = class;
    record
}

/// The SOA that makes a blocked NXDOMAIN/NODATA cacheable (RFC 2308 §3). Its owner is the
/// blocked domain when that encloses the question (the usual case), else the question itself,
/// so the SOA is always at or above the name it speaks for.
fn soa(policy: &Policy, rule: RuleRef, qname: &Name, qclass: DNSClass, ttl: u32) -> Record {
    let owner = Name::from_str(&format!("{}.", policy.rule_domain(rule)))
        .ok()
        .filter(|domain| domain.zone_of(qname))
        .unwrap_or_else(|| qname.clone());
    let soa = SOA::new(
        local_name("ns"),
        local_name("hostmaster"),
        1,
        3600,
        600,
        86_400,
        ttl,
    );
    with_class(Record::from_rdata(owner, ttl, RData::SOA(soa)), qclass)
}

/// Names under `dnsward.invalid.`: `.invalid` (RFC 6761) can never collide with a real zone.
fn local_name(label: &str) -> Name {
    Name::from_str(&format!("{label}.dnsward.invalid.")).unwrap_or_else(|_| Name::root())
}
