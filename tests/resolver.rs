//! Black-box tests of the filtering resolver: the real binary, a real upstream on loopback, and
//! real queries over UDP and TCP.

mod common;

use std::time::Duration;

use common::*;
use hickory_proto::{
    op::{Message, OpCode, ResponseCode},
    rr::{Name, RecordType},
};

#[test]
fn allowed_names_resolve_with_upstream_data_over_udp_and_tcp() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.recursion_available);
        assert_eq!(
            rdata_of(&reply, RecordType::A),
            ["192.0.2.10"],
            "{transport:?}"
        );

        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::AAAA);
        assert_eq!(rdata_of(&reply, RecordType::AAAA), ["2001:db8::10"]);

        let reply = ask(dnsward.addr, transport, "mail.test.", RecordType::MX);
        assert_eq!(rdata_of(&reply, RecordType::MX), ["10 mx.test."]);

        let reply = ask(dnsward.addr, transport, "txt.test.", RecordType::TXT);
        assert_eq!(rdata_of(&reply, RecordType::TXT), ["hello world"]);

        let reply = ask(dnsward.addr, transport, "_sip._tcp.test.", RecordType::SRV);
        assert_eq!(rdata_of(&reply, RecordType::SRV), ["10 5 5060 sip.test."]);

        let reply = ask(dnsward.addr, transport, "caa.test.", RecordType::CAA);
        assert_eq!(rdata_of(&reply, RecordType::CAA).len(), 1);

        let reply = ask(dnsward.addr, transport, "svc.test.", RecordType::HTTPS);
        let https = rdata_of(&reply, RecordType::HTTPS);
        assert_eq!(https.len(), 1, "{reply:?}");
        assert!(https[0].contains("8443"), "{https:?}");
        let reply = ask(dnsward.addr, transport, "svc.test.", RecordType::SVCB);
        assert_eq!(rdata_of(&reply, RecordType::SVCB).len(), 1);

        let reply = ask(dnsward.addr, transport, "alias.test.", RecordType::A);
        assert_eq!(rdata_of(&reply, RecordType::CNAME), ["www.test."]);
    }
}

#[test]
fn upstream_nxdomain_passes_through_with_its_soa() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "nothing-here.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        let soa = soa_in_authority(&reply).expect("negative answer keeps the upstream SOA");
        assert_eq!(soa.name.to_string(), "test.");
        assert_eq!(ede(&reply), None, "an upstream NXDOMAIN is not a block");
    }
}

/// An upstream that refuses without echoing the question (some do) has answered: the failure
/// says so, instead of waiting out the timeout and reporting silence.
#[test]
fn an_upstream_refusing_without_the_question_is_not_reported_silent() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let refusing = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((length, from)) = socket.recv_from(&mut buffer) {
            if length < 12 {
                continue;
            }
            // The header only: same id, QR, the opcode and RD, REFUSED; no sections.
            let mut reply = buffer[..12].to_vec();
            reply[2] = 0x80 | (buffer[2] & 0x79);
            reply[3] = 0x05;
            reply[4..12].fill(0);
            let _ = socket.send_to(&reply, from);
        }
    });
    let config = config_text(&[refusing], STANDARD_LIST_TABLES);
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let reply = ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::ServFail,
        "{reply}"
    );
    let (_, text) = ede(&reply).expect("an EDE says why");
    assert!(
        text.contains("answered REFUSED without the question"),
        "{text}"
    );
    assert!(!text.contains("no answer within"), "{text}");
}

/// An upstream on loopback that answers every question with what `script` makes of it.
fn scripted_upstream(script: fn(&Message) -> Message) -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok((length, from)) = socket.recv_from(&mut buffer) {
            let Ok(query) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            let _ = socket.send_to(&script(&query).to_vec().unwrap(), from);
        }
    });
    addr
}

/// What reaches clients of an upstream's answer is the question's chain alone (records for
/// other names, a blocked one among them, had been passed on undecided); a CNAME loop, and an
/// upstream that will not answer (REFUSED, FORMERR), are SERVFAIL with an EDE saying why
/// (they had been relayed: a stub takes REFUSED from its resolver as its own refusal).
#[test]
fn upstream_answers_are_scrubbed_and_refusals_are_servfail() {
    use hickory_proto::rr::{
        RData, Record,
        rdata::{A, CNAME, TXT},
    };
    let upstream = scripted_upstream(|query| {
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.metadata.recursion_desired = true;
        reply.metadata.recursion_available = true;
        reply.add_queries(query.queries.clone());
        let qname = query.queries[0].name().clone();
        let name = |text: &str| Name::from_ascii(text).unwrap();
        let a = |owner: &str, last: u8| {
            Record::from_rdata(name(owner), 60, RData::A(A::new(192, 0, 2, last)))
        };
        let cname = |owner: &str, target: &str| {
            Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
        };
        match qname.to_string().as_str() {
            "junk.test." => {
                reply.answers = vec![
                    a("junk.test.", 1),
                    a("blocked.test.", 6),
                    a("victim.example.", 6),
                    Record::from_rdata(
                        name("junk.test."),
                        60,
                        RData::TXT(TXT::new(vec!["x".into()])),
                    ),
                ];
            }
            "loop.test." => {
                reply.answers = vec![
                    cname("loop.test.", "loop2.test."),
                    cname("loop2.test.", "loop.test."),
                ];
            }
            "refused.test." => reply.metadata.response_code = ResponseCode::Refused,
            _ => reply.metadata.response_code = ResponseCode::FormErr,
        }
        reply
    });
    let dnsward = Dnsward::start(
        &config_text(&[upstream], STANDARD_LIST_TABLES),
        STANDARD_LISTS,
    );
    for transport in [Transport::Udp, Transport::Tcp] {
        let reply = ask(dnsward.addr, transport, "junk.test.", RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply}"
        );
        let answers: Vec<String> = reply.answers.iter().map(ToString::to_string).collect();
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(answers[0].starts_with("junk.test. "), "{answers:?}");

        for (name, expected_code, says) in [
            ("loop.test.", 0, "CNAME loop at loop.test."),
            ("refused.test.", 22, "answered REFUSED"),
            ("formerr.test.", 22, "answered FORMERR"),
        ] {
            let reply = ask(dnsward.addr, transport, name, RecordType::A);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::ServFail,
                "{reply}"
            );
            let (code, text) = ede(&reply).expect("EDE");
            assert_eq!(code, expected_code, "{name}");
            assert!(text.contains(says), "{text}");
        }
    }
}

/// A blocked answer that fits the client's buffer is not truncated, and one whose EDE text
/// does not fit keeps its OPT record and EDE code. hickory checks the size on each name as
/// written in full, before compressing it, so a long name's NXDOMAIN (331 bytes) came back TC
/// without EDNS; and it drops the OPT first, so with EDNS the EDE's text cost the client its
/// OPT (RFC 6891 §7) and a retry over TCP.
#[test]
fn blocked_answers_to_long_names_fit_and_keep_their_opt() {
    let label = |c: char, n: usize| c.to_string().repeat(n);
    let long = format!(
        "{}.{}.{}.{}.test",
        label('a', 60),
        label('b', 60),
        label('c', 60),
        label('d', 60)
    );
    let medium = format!(
        "{}.{}.{}.test",
        label('a', 50),
        label('b', 50),
        label('c', 50)
    );
    let lists = [("block.txt", format!("{long}\n{medium}\n"))];
    let lists: Vec<(&str, &str)> = lists.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let upstream = Upstream::start();
    let dnsward = Dnsward::start(
        &config_text(
            &[upstream.addr],
            "[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n",
        ),
        &lists,
    );
    let plain = Ask {
        edns: false,
        ..Ask::default()
    };
    let reply = query(
        dnsward.addr,
        Transport::Udp,
        &format!("{long}."),
        RecordType::A,
        &plain,
    );
    assert!(!reply.metadata.truncation, "{reply}");
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NXDomain,
        "{reply}"
    );
    assert!(soa_in_authority(&reply).is_some(), "{reply}");

    let small = Ask {
        payload: 512,
        ..Ask::default()
    };
    let reply = query(
        dnsward.addr,
        Transport::Udp,
        &format!("{long}."),
        RecordType::A,
        &small,
    );
    assert!(
        !reply.metadata.truncation,
        "fits without the EDE text: {reply}"
    );
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NXDomain,
        "{reply}"
    );
    assert!(soa_in_authority(&reply).is_some(), "{reply}");
    assert_eq!(ede(&reply), Some((15, String::new())), "{reply}");
    // With room for it, the text is there.
    for (name, ask) in [(&medium, &small), (&long, &Ask::default())] {
        let reply = query(
            dnsward.addr,
            Transport::Udp,
            &format!("{name}."),
            RecordType::A,
            ask,
        );
        let (code, text) = ede(&reply).expect("EDE");
        assert_eq!(code, 15);
        assert!(text.contains(name.as_str()), "{text}");
    }
}

/// On a wildcard listen address, every answer comes from the address the query was sent to:
/// a stub drops a reply from another address. The kernel chose the source by its routing
/// table, so a client of 127.0.0.2 got its answers from 127.0.0.1 and timed out. Covered:
/// the chain's answers, the fast path's (a repeated question), blocks, and FORMERR.
#[test]
fn a_wildcard_listener_answers_from_the_address_asked() {
    let upstream = Upstream::start();
    let port = free_wildcard_port();
    let config = format!(
        "[server]\nlisten = [\"0.0.0.0:{port}\", \"[::]:{port}\"]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n\n\
         [forward]\nupstreams = [\"{}\"]\n\n{STANDARD_LIST_TABLES}",
        upstream.addr
    );
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    assert_eq!(dnsward.listening_addrs(2).len(), 2);
    let (v4_port, v6_port) = (port, port);
    let asked: Vec<std::net::SocketAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.53"]
        .iter()
        .map(|ip| std::net::SocketAddr::new(ip.parse().unwrap(), v4_port))
        .chain([std::net::SocketAddr::new("::1".parse().unwrap(), v6_port)])
        .collect();
    for server in asked {
        let source = if server.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            "::1".parse().unwrap()
        };
        let from = Ask {
            source,
            ..Ask::default()
        };
        // Only a reply from `server` itself is taken (`recv_reply`).
        for _ in 0..2 {
            let reply = query(server, Transport::Udp, "www.test.", RecordType::A, &from);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{server}"
            );
        }
        let reply = query(
            server,
            Transport::Udp,
            "blocked.test.",
            RecordType::A,
            &from,
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{server}"
        );
        // A header that promises a question it does not hold: FORMERR.
        let garbage = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w'];
        let reply = exchange_raw(server, Transport::Udp, source, &garbage);
        assert_eq!(reply[3] & 0x0f, 1, "FORMERR from {server}");
    }
}

/// An answer from the cache comes in the asker's letter case (DNS 0x20), not in the case of
/// whoever asked first (it had come back as `WwW.tEsT.` to a query for `www.test.`). Without
/// EDNS, so the request chain answers, not the fast path (which already did this).
#[test]
fn cached_answers_come_in_the_askers_case() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for (name, repeat) in [("WwW.tEsT.", 1), ("www.test.", 2), ("WWW.TEST.", 2)] {
        for _ in 0..repeat {
            // `from_ascii`: the test helpers' `from_str` folds case (IDNA).
            let mut message = Message::new(
                rand::random(),
                hickory_proto::op::MessageType::Query,
                OpCode::Query,
            );
            message.metadata.recursion_desired = true;
            message.add_query(hickory_proto::op::Query::query(
                Name::from_ascii(name).unwrap(),
                RecordType::A,
            ));
            let bytes = exchange_raw(
                dnsward.addr,
                Transport::Udp,
                std::net::IpAddr::from([127, 0, 0, 1]),
                &message.to_vec().unwrap(),
            );
            let reply = Message::from_vec(&bytes).unwrap();
            assert_eq!(reply.queries[0].name().to_string(), name);
            assert!(!reply.answers.is_empty(), "{reply}");
            for record in &reply.answers {
                assert_eq!(record.name.to_string(), name, "{reply}");
            }
        }
    }
}

/// A block list with one `action`, plus the standard allow list.
fn with_action(upstream: &Upstream, action_lines: &str) -> Dnsward {
    let tables = format!(
        "[[list]]\nname = \"allow\"\npath = \"allow.txt\"\ntype = \"allow\"\n\n[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n{action_lines}\n"
    );
    Dnsward::start(&config_text(&[upstream.addr], &tables), STANDARD_LISTS)
}

#[test]
fn nxdomain_action_answers_with_soa_and_ede_naming_list_and_rule() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "[blocking]\nttl_secs = 123\n");
    for transport in BOTH {
        for name in [
            "blocked.test.",
            "www.blocked.test.",
            "deep.www.blocked.test.",
        ] {
            let reply = ask(dnsward.addr, transport, name, RecordType::A);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}"
            );
            assert!(reply.answers.is_empty());
            let soa = soa_in_authority(&reply).expect("blocked NXDOMAIN carries an SOA");
            assert_eq!(soa.name.to_string(), "blocked.test.");
            assert_eq!(soa.ttl, 123);
            let (code, text) = ede(&reply).expect("EDE on a blocked answer");
            assert_eq!(code, 15);
            assert!(text.contains("list=exchanges"), "{text}");
            assert!(text.contains("rule=blocked.test"), "{text}");
        }
    }
}

#[test]
fn adblock_and_wildcard_rules_block_as_documented() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    // ||binance.com^ covers the domain and its subdomains.
    for name in ["binance.com.", "trade.binance.com."] {
        let reply = ask(dnsward.addr, Transport::Udp, name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert_eq!(ede(&reply).unwrap().0, 15);
    }
    // *.wild.test covers subdomains only.
    let reply = ask(dnsward.addr, Transport::Udp, "a.wild.test.", RecordType::A);
    assert_eq!(ede(&reply).map(|e| e.0), Some(15));
    assert!(ede(&reply).unwrap().1.contains("rule=*.wild.test"));
    let reply = ask(dnsward.addr, Transport::Udp, "wild.test.", RecordType::A);
    assert_eq!(ede(&reply), None, "the parent of a *. rule is not blocked");
}

#[test]
fn no_ede_without_edns() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    let plain = Ask {
        edns: false,
        ..Ask::default()
    };
    let reply = query(
        dnsward.addr,
        Transport::Udp,
        "blocked.test.",
        RecordType::A,
        &plain,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        reply.edns.is_none(),
        "no OPT to a client that sent none (RFC 6891)"
    );
}

#[test]
fn nodata_action() {
    let upstream = Upstream::start();
    let dnsward = with_action(&upstream, "action = \"nodata\"");
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.blocked.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert!(soa_in_authority(&reply).is_some());
        assert_eq!(ede(&reply).unwrap().0, 15);
    }
}

#[test]
fn null_action_answers_unspecified_addresses() {
    let upstream = Upstream::start();
    let dnsward = with_action(&upstream, "action = \"null\"");
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.blocked.test.", RecordType::A);
        assert_eq!(rdata_of(&reply, RecordType::A), ["0.0.0.0"]);
        assert_eq!(ede(&reply).unwrap().0, 15);
        let reply = ask(
            dnsward.addr,
            transport,
            "www.blocked.test.",
            RecordType::AAAA,
        );
        assert_eq!(rdata_of(&reply, RecordType::AAAA), ["::"]);
        let reply = ask(dnsward.addr, transport, "www.blocked.test.", RecordType::MX);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty(), "other types get NODATA");
        assert!(soa_in_authority(&reply).is_some());
    }
}

#[test]
fn sinkhole_action_answers_configured_addresses() {
    let upstream = Upstream::start();
    let dnsward = with_action(
        &upstream,
        "action = \"sinkhole\"\nsinkhole = [\"192.0.2.1\", \"2001:db8::1\"]\nede = 16",
    );
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.blocked.test.", RecordType::A);
        assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.1"]);
        assert_eq!(
            ede(&reply).unwrap().0,
            16,
            "EDE code is configurable per list"
        );
        let reply = ask(
            dnsward.addr,
            transport,
            "www.blocked.test.",
            RecordType::AAAA,
        );
        assert_eq!(rdata_of(&reply, RecordType::AAAA), ["2001:db8::1"]);
        let reply = ask(
            dnsward.addr,
            transport,
            "www.blocked.test.",
            RecordType::TXT,
        );
        assert!(reply.answers.is_empty());
    }
}

#[test]
fn sinkhole_with_only_ipv4_gives_nodata_for_aaaa() {
    let upstream = Upstream::start();
    let dnsward = with_action(
        &upstream,
        "action = \"sinkhole\"\nsinkhole = [\"192.0.2.1\"]\nede = 17",
    );
    let reply = ask(
        dnsward.addr,
        Transport::Udp,
        "www.blocked.test.",
        RecordType::AAAA,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert_eq!(ede(&reply).unwrap().0, 17);
}

#[test]
fn refused_action() {
    let upstream = Upstream::start();
    let dnsward = with_action(&upstream, "action = \"refused\"");
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.blocked.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert_eq!(ede(&reply).unwrap().0, 15);
    }
}

#[test]
fn allow_list_beats_block_list() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "pay.blocked.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.67"]);
        assert_eq!(ede(&reply), None);
    }
    // The sibling is still blocked.
    let reply = ask(
        dnsward.addr,
        Transport::Udp,
        "www.blocked.test.",
        RecordType::A,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    // Reached through a CNAME, the allowed name is answered, and the record names the allow
    // rule that let it through (it had no rule at all).
    let reply = ask(
        dnsward.addr,
        Transport::Udp,
        "pay-alias.test.",
        RecordType::A,
    );
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.67"]);
    let line = dnsward
        .wait_for_log(|line| {
            line.contains("decision=\"allowed\"") && line.contains("pay-alias.test")
        })
        .expect("a decision record for the alias");
    for field in ["list=\"allow\"", "rule=\"pay.blocked.test\"", "line=1"] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
}

/// An A query with EDNS for a name given by its raw labels (hickory's parser refuses some).
fn wire_query(labels: &[&[u8]]) -> Vec<u8> {
    wire_question(labels, 1, 1)
}

/// A query with EDNS for any type and class, built by hand (hickory's builder will not make
/// some of them).
fn wire_question(labels: &[&[u8]], qtype: u16, qclass: u16) -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in labels {
        query.push(u8::try_from(label.len()).unwrap());
        query.extend_from_slice(label);
    }
    query.push(0);
    query.extend_from_slice(&qtype.to_be_bytes());
    query.extend_from_slice(&qclass.to_be_bytes());
    // OPT: root owner, type 41, payload 1232, no extended flags, no options.
    query.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    query
}

/// Questions a resolver does not take are answered at once, with EDE 21, not forwarded: other
/// classes (CHAOS `version.bind` named the upstream's software), zone transfers (an IXFR was
/// forwarded and ended in SERVFAIL seconds later), and meta types that are not questions.
#[test]
fn questions_a_resolver_does_not_take_are_answered_locally() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    let cases: [(&[&[u8]], u16, u16, ResponseCode); 8] = [
        (&[b"version", b"bind"], 16, 3, ResponseCode::Refused),
        (&[b"www", b"test"], 1, 4, ResponseCode::Refused),
        (&[b"www", b"test"], 1, 255, ResponseCode::Refused),
        (&[b"test"], 252, 1, ResponseCode::Refused),
        (&[b"test"], 251, 1, ResponseCode::Refused),
        (&[b"www", b"test"], 41, 1, ResponseCode::FormErr),
        (&[b"www", b"test"], 250, 1, ResponseCode::FormErr),
        (&[b"www", b"test"], 253, 1, ResponseCode::FormErr),
    ];
    for transport in BOTH {
        for (labels, qtype, qclass, rcode) in cases {
            let reply = Message::from_vec(&exchange_raw(
                dnsward.addr,
                transport,
                "127.0.0.1".parse().unwrap(),
                &wire_question(labels, qtype, qclass),
            ))
            .unwrap();
            let case = format!("{transport:?} type {qtype} class {qclass}");
            assert_eq!(reply.metadata.response_code, rcode, "{case}: {reply}");
            assert_eq!(
                ede(&reply).map(|(code, _)| code),
                Some(21),
                "{case}: {reply}"
            );
            assert!(reply.answers.is_empty(), "{case}: {reply}");
        }
        // ANY in class IN is still a question like any other.
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::ANY);
        assert_ne!(
            reply.metadata.response_code,
            ResponseCode::FormErr,
            "{reply}"
        );
        assert_eq!(ede(&reply), None, "{reply}");
    }
}

/// A query with RD clear is not resolved and not answered from the cache (which would show a
/// client what others resolved): REFUSED with EDE 20, as Unbound does. It was forwarded. A
/// blocked name is still answered with its block, our own data.
#[test]
fn queries_without_recursion_desired_are_refused_unless_blocked() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for transport in BOTH {
        // In the cache first, so a refusal is not just a miss.
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply}"
        );
        let mut question = wire_query(&[b"www", b"test"]);
        question[2] &= !0x01; // RD off
        let no_rd = |question: &[u8]| {
            Message::from_vec(&exchange_raw(
                dnsward.addr,
                transport,
                "127.0.0.1".parse().unwrap(),
                question,
            ))
            .unwrap()
        };
        for _ in 0..2 {
            let reply = no_rd(&question);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::Refused,
                "{reply}"
            );
            assert_eq!(ede(&reply).map(|(code, _)| code), Some(20), "{reply}");
            assert!(reply.answers.is_empty(), "{reply}");
            assert!(!reply.metadata.recursion_desired, "{reply}");
        }
        let mut blocked = wire_query(&[b"www", b"blocked", b"test"]);
        blocked[2] &= !0x01;
        let reply = no_rd(&blocked);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{reply}"
        );
        assert_eq!(ede(&reply).map(|(code, _)| code), Some(15), "{reply}");
    }
}

/// Names no rule can name, under a blocked domain: a label holding a dot must not make a name
/// under `blocked.test` pass for one under the allowed `pay.blocked.test` (it was allowed, and
/// forwarded), and a label with a byte outside ASCII must not make the whole name unmatchable
/// (it was passed upstream, where a wildcard record would answer it).
#[test]
fn labels_no_rule_can_name_do_not_escape_a_block() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for transport in BOTH {
        for name in [
            &[&b"q.pay"[..], b"blocked", b"test"][..],
            &[b"pay.blocked", b"test"],
            &[b"\x80", b"blocked", b"test"],
            &[b"www", b"\xffx", b"blocked", b"test"],
        ] {
            let reply = Message::from_vec(&exchange_raw(
                dnsward.addr,
                transport,
                "127.0.0.1".parse().unwrap(),
                &wire_query(name),
            ))
            .unwrap();
            let name = name
                .iter()
                .map(|label| label.escape_ascii().to_string())
                .collect::<Vec<_>>()
                .join("|");
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}: {reply}"
            );
            let (code, text) = ede(&reply).unwrap_or_else(|| panic!("{name}: no EDE: {reply}"));
            assert_eq!(code, 15, "{name}");
            assert!(text.contains("rule=blocked.test"), "{name}: {text}");
        }
        // A label's dot still counts as a boundary for a block (fail-safe): as before.
        let reply = ask(
            dnsward.addr,
            transport,
            "www.blocked\\.test.",
            RecordType::A,
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{reply}"
        );
        // And the allowed subdomain itself, with a label holding a dot below it, stays allowed.
        let reply = ask(
            dnsward.addr,
            transport,
            "a\\.b.pay.blocked.test.",
            RecordType::A,
        );
        assert_eq!(ede(&reply), None, "{reply}");
    }
}

#[test]
fn cname_cloaking_is_blocked() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for transport in BOTH {
        // promo.shop.test is not listed, but its answer is a CNAME to trade.binance.com.
        let reply = ask(dnsward.addr, transport, "promo.shop.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty(), "the cloaked chain must not leak");
        let (code, text) = ede(&reply).unwrap();
        assert_eq!(code, 15);
        assert!(text.contains("rule=binance.com"), "{text}");
    }
    let line = dnsward
        .wait_for_log(|line| {
            line.contains("decision=\"blocked\"") && line.contains("promo.shop.test")
        })
        .expect("a decision record for the cloaked query");
    assert!(line.contains("cname trade.binance.com."), "{line}");
}

#[test]
fn log_only_answers_normally_and_records_the_decision() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.watch.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.77"]);
        assert_eq!(ede(&reply), None, "log-only must not mark the answer");
    }
    let line = dnsward
        .wait_for_log(|line| {
            line.contains("decision=\"logged\"") && line.contains("www.watch.test")
        })
        .expect("a log-only decision record");
    for field in [
        "list=\"watch\"",
        "rule=\"watch.test\"",
        "file=\"watch.txt\"",
        "line=1",
        "rcode=NOERROR",
    ] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
    // Through a CNAME chain too.
    let reply = ask(
        dnsward.addr,
        Transport::Udp,
        "watched-alias.test.",
        RecordType::A,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(!reply.answers.is_empty());
    dnsward
        .wait_for_log(|line| {
            line.contains("decision=\"logged\"") && line.contains("watched-alias.test")
        })
        .expect("a log-only decision for the CNAME chain");
}

/// The datagram holds the message and nothing more: a record that did not fit is not left
/// half-written after the records the header counts (hickory's encoder rolls its offset back
/// but not the buffer; dig warned of "extra bytes at end" and dnspython refused the answer).
#[test]
fn a_truncated_udp_answer_ends_where_its_message_ends() {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for edns in [false, true] {
        let ask = Ask {
            edns,
            ..Ask::default()
        };
        let (_, bytes) = build_query("big.test.", RecordType::TXT, &ask);
        let reply = exchange_raw(dnsward.addr, Transport::Udp, ask.source, &bytes);
        let mut decoder = BinDecoder::new(&reply);
        let message = Message::read(&mut decoder).unwrap();
        assert!(message.metadata.truncation, "edns {edns}");
        assert_eq!(decoder.len(), 0, "edns {edns}: bytes after the message");
    }
}

/// The answer's owner name is a pointer to the question (RFC 1035 §4.1.4): hickory-server
/// notes the question it repeats as one piece with its type and class, which no name matches,
/// so every answer's first owner went out in full.
#[test]
fn an_answer_owner_is_compressed_against_the_question() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    let name = format!("{}.long.test.", "a".repeat(60));
    let ask = Ask {
        edns: false,
        ..Ask::default()
    };
    let (_, bytes) = build_query(&name, RecordType::A, &ask);
    let question_len = bytes.len() - 12;
    // The second UDP answer is a replay of the first (`server::fastpath`).
    for transport in [Transport::Udp, Transport::Udp, Transport::Tcp] {
        let reply = exchange_raw(dnsward.addr, transport, ask.source, &bytes);
        let message = Message::from_vec(&reply).unwrap();
        assert_eq!(
            rdata_of(&message, RecordType::A),
            ["192.0.2.88"],
            "{transport:?}"
        );
        // Header, question, then the A record: a 2-byte pointer, type, class, TTL, length and
        // the address.
        assert_eq!(reply.len(), 12 + question_len + 2 + 10 + 4, "{transport:?}");
    }
}

/// `[[forward.zone]]` routes its names in forward mode too (it had worked only with
/// recursion, and internal names went to the public upstreams).
#[test]
fn forward_zones_route_their_names_in_forward_mode() {
    let upstream = Upstream::start();
    // Nothing listens on the discard port: only the zone's upstream can answer.
    let dead: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = config_text(
        &[dead],
        &format!(
            "[[forward.zone]]\nname = \"test\"\nupstreams = [\"{}\"]\n",
            upstream.addr
        ),
    );
    let dnsward = Dnsward::start(&config, &[]);
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
        assert_eq!(
            rdata_of(&reply, RecordType::A),
            ["192.0.2.10"],
            "{transport:?}"
        );
        let reply = ask(dnsward.addr, transport, "binance.com.", RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{transport:?}: outside the zone, [forward]'s upstreams"
        );
    }
}

#[test]
fn large_answer_truncates_over_udp_and_succeeds_over_tcp() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    let reply = ask(dnsward.addr, Transport::Udp, "big.test.", RecordType::TXT);
    assert!(
        reply.metadata.truncation,
        "a 3 kB answer does not fit 1232 bytes"
    );
    let plain = Ask {
        edns: false,
        ..Ask::default()
    };
    let reply = query(
        dnsward.addr,
        Transport::Udp,
        "big.test.",
        RecordType::TXT,
        &plain,
    );
    assert!(reply.metadata.truncation, "nor 512 bytes without EDNS");
    let reply = ask(dnsward.addr, Transport::Tcp, "big.test.", RecordType::TXT);
    assert!(!reply.metadata.truncation);
    assert_eq!(rdata_of(&reply, RecordType::TXT).len(), 40);
}

#[test]
fn client_outside_allow_gets_refused() {
    let upstream = Upstream::start();
    let config = config_text_with_server(
        &[upstream.addr],
        "allow = [\"127.0.0.1/32\"]",
        STANDARD_LIST_TABLES,
    );
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let outsider = Ask {
        source: "127.0.0.2".parse().unwrap(),
        ..Ask::default()
    };
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.test.",
            RecordType::A,
            &outsider,
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "{transport:?}"
        );
        assert!(reply.answers.is_empty());
        assert_eq!(ede(&reply).map(|e| e.0), Some(18), "EDE 18 Prohibited");
        // The insider is served.
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
        assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
    }
    dnsward
        .wait_for_log(|line| line.contains("decision=\"refused\"") && line.contains("127.0.0.2"))
        .expect("refusals are recorded");
}

#[test]
fn dead_upstream_gives_servfail_with_ede() {
    let (dead, _socket) = dead_upstream();
    let config = config_text(&[dead], STANDARD_LIST_TABLES);
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(
            ede(&reply).map(|e| e.0),
            Some(22),
            "EDE 22 No Reachable Authority"
        );
    }
    // Blocking does not depend on the upstream.
    let reply = ask(dnsward.addr, Transport::Udp, "blocked.test.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

/// An upstream address nobody listens on (a port bound and released): UDP gets ICMP port
/// unreachable, which is a connection refused, and TCP a reset.
fn refusing_upstream() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn refusing_upstream_gives_network_error_ede() {
    let config = config_text(&[refusing_upstream()], "");
    let dnsward = Dnsward::start(&config, &[]);
    let reply = ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&reply).map(|e| e.0), Some(23), "EDE 23 Network Error");
}

/// An upstream that fails every query must not become a warning line per query, written to
/// stderr by the query workers: one a second at most, saying how many were not shown.
#[test]
fn upstream_failures_are_warned_about_at_most_once_a_second() {
    // Refused at once, so the failures come fast.
    let config = config_text(&[refusing_upstream()], "");
    let dnsward = Dnsward::start(&config, &[]);
    const QUERIES: usize = 50;
    let fail = |i: usize| {
        let name = format!("host{i}.test.");
        let reply = ask(dnsward.addr, Transport::Udp, &name, RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    };
    (0..QUERIES).for_each(fail);
    // A second later, one more: its warning says how many were not shown since the last.
    std::thread::sleep(Duration::from_millis(1100));
    fail(QUERIES);
    let held_back = dnsward
        .wait_for_log(|line| {
            line.contains("upstream resolution failed")
                && line.contains("similar_not_shown=")
                && !line.contains("similar_not_shown=0")
        })
        .expect("a warning counting those not shown");
    let warnings = dnsward
        .log()
        .iter()
        .filter(|line| line.contains("upstream resolution failed"))
        .count();
    assert!(
        warnings < QUERIES,
        "{warnings} warnings for {} failures: {held_back}",
        QUERIES + 1
    );
}

#[test]
fn second_upstream_is_used_when_the_first_is_dead() {
    let upstream = Upstream::start();
    let (dead, _socket) = dead_upstream();
    let config = config_text(&[dead, upstream.addr], "");
    let dnsward = Dnsward::start(&config, &[]);
    let reply = ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
}

#[test]
fn cache_answers_positive_and_negative_while_upstream_is_down() {
    let mut upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    let first = ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert_eq!(rdata_of(&first, RecordType::A), ["192.0.2.10"]);
    let negative = ask(dnsward.addr, Transport::Udp, "gone.test.", RecordType::A);
    assert_eq!(negative.metadata.response_code, ResponseCode::NXDomain);
    upstream.stop();

    let cached = ask(dnsward.addr, Transport::Tcp, "www.test.", RecordType::A);
    assert_eq!(rdata_of(&cached, RecordType::A), ["192.0.2.10"]);
    assert!(cached.answers[0].ttl <= 300);
    let cached = ask(dnsward.addr, Transport::Udp, "gone.test.", RecordType::A);
    assert_eq!(
        cached.metadata.response_code,
        ResponseCode::NXDomain,
        "RFC 2308 negative cache"
    );
    assert!(soa_in_authority(&cached).is_some());
    // Something never asked before now fails: the answers above really came from the cache.
    let uncached = ask(dnsward.addr, Transport::Udp, "mail.test.", RecordType::MX);
    assert_eq!(uncached.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn cache_entries_expire_after_max_ttl() {
    let mut upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "[cache]\nmax_ttl_secs = 1\n");
    let first = ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert_eq!(
        first.answers[0].ttl, 1,
        "max_ttl_secs caps the TTL clients see"
    );
    upstream.stop();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let expired = ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert_eq!(expired.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn malformed_packets_do_not_kill_the_server() {
    let upstream = Upstream::start();
    let mut dnsward = Dnsward::standard(&upstream, "");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (_, good) = build_query("www.test.", RecordType::A, &Ask::default());
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0u8; 11],
        good[..good.len() - 3].to_vec(),
        vec![0xff; 512],
    ];
    // A header claiming 5 questions with none present.
    let mut lying = good.clone();
    lying[5] = 5;
    junk.push(lying);
    // No question at all.
    let mut empty = good[..12].to_vec();
    empty[5] = 0;
    empty[11] = 0;
    junk.push(empty);
    for seed in 0..200u32 {
        let length = 12 + (seed as usize * 7) % 300;
        junk.push(
            (0..length)
                .map(|i| (i as u32 * 31 + seed * 17) as u8)
                .collect(),
        );
    }
    for packet in &junk {
        socket.send_to(packet, dnsward.addr).unwrap();
    }
    // Over TCP: a length prefix promising more than is sent, then a close.
    {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(dnsward.addr).unwrap();
        stream.write_all(&[0x01, 0x00, 0xde, 0xad]).unwrap();
    }
    // A question-less query is answered FORMERR.
    let reply = hickory_proto::op::Message::from_vec(&exchange_raw(
        dnsward.addr,
        Transport::Tcp,
        "127.0.0.1".parse().unwrap(),
        &junk[6],
    ))
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // A query whose question is cut short gets FORMERR over UDP and TCP, with its RD bit
    // copied (RFC 1035 §4.1.1).
    for transport in BOTH {
        let reply = hickory_proto::op::Message::from_vec(&exchange_raw(
            dnsward.addr,
            transport,
            "127.0.0.1".parse().unwrap(),
            &junk[3],
        ))
        .unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert!(reply.metadata.recursion_desired, "{reply}");
    }

    assert!(dnsward.is_running());
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
        assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
    }
    // The question-less query is counted as malformed, and reported at a clean stop.
    assert!(dnsward.terminate(), "SIGTERM is a clean exit");
    let line = dnsward
        .wait_for_log(|line| line.contains("stopped"))
        .expect("a stop summary");
    let malformed: u64 = line
        .split("malformed=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("malformed counter in the stop summary");
    // Most of the 207 junk datagrams do not parse; every one that does not is counted.
    assert!(malformed >= 100, "{line}");
}

/// SIGTERM while a query waits for its upstream: the query is still answered, and its audit
/// record written, before the process exits.
fn a_stop_answers_queries_still_waiting_for_the_upstream(transport: Transport) {
    let upstream = Upstream::start();
    // Under the test config's 500 ms upstream timeout, so the first attempt is answered.
    let relay = DelayRelay::start(upstream.addr, Duration::from_millis(300));
    let config = config_text(
        &[relay.addr],
        &format!("{STANDARD_LIST_TABLES}\n[audit]\nenabled = true\n"),
    );
    let mut dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let server = dnsward.addr;
    let client = std::thread::spawn(move || {
        try_query(server, transport, "www.test.", RecordType::A, IO_GUARD)
    });
    relay
        .received
        .recv_timeout(IO_GUARD)
        .expect("the query reached the upstream");
    assert!(dnsward.terminate(), "SIGTERM is a clean exit");
    let reply = client
        .join()
        .unwrap()
        .expect("the waiting query is answered before the process exits");
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
    let log = std::fs::read_dir(dnsward.dir.path().join("data/audit"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(
        log.contains(r#""qname":"www.test.","qtype":"A""#),
        "the answer's audit record is in the log"
    );
}

#[test]
fn a_stop_answers_udp_queries_still_waiting_for_the_upstream() {
    a_stop_answers_queries_still_waiting_for_the_upstream(Transport::Udp);
}

#[test]
fn a_stop_answers_tcp_queries_still_waiting_for_the_upstream() {
    a_stop_answers_queries_still_waiting_for_the_upstream(Transport::Tcp);
}

/// RFC 7766 §6.2.1.1: queries pipelined on one TCP connection are answered concurrently, each
/// as soon as it is ready: a blocked name (answered at once) overtakes a name still waiting for
/// its slow upstream.
#[test]
fn pipelined_tcp_queries_are_answered_as_they_are_ready() {
    let upstream = Upstream::start();
    let relay = DelayRelay::start(upstream.addr, Duration::from_millis(300));
    let config = config_text(&[relay.addr], STANDARD_LIST_TABLES);
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let mut socket = std::net::TcpStream::connect(dnsward.addr).unwrap();
    socket.set_read_timeout(Some(IO_GUARD)).unwrap();
    let (slow_id, slow) = build_query("www.test.", RecordType::A, &Ask::default());
    let (fast_id, fast) = build_query("www.blocked.test.", RecordType::A, &Ask::default());
    let mut framed = Vec::new();
    for message in [&slow, &fast] {
        framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
        framed.extend_from_slice(message);
    }
    std::io::Write::write_all(&mut socket, &framed).unwrap();
    let mut read_reply = || {
        let mut length = [0u8; 2];
        std::io::Read::read_exact(&mut socket, &mut length).unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
        std::io::Read::read_exact(&mut socket, &mut reply).unwrap();
        hickory_proto::op::Message::from_vec(&reply).unwrap()
    };
    let first = read_reply();
    let second = read_reply();
    assert_eq!(
        (first.metadata.id, second.metadata.id),
        (fast_id, slow_id),
        "the blocked name is answered first"
    );
    assert_eq!(first.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(rdata_of(&second, RecordType::A), ["192.0.2.10"]);
}

/// A TCP connection that sends nothing for `tcp_idle_timeout_secs` is closed by the server,
/// after answering what it asked: the idle time counts from its last answer, not from the
/// longest a query may take (here 5 s x 2 attempts x 2 = 20 s, past the client's wait).
#[test]
fn idle_tcp_connections_are_closed() {
    let upstream = Upstream::start();
    let config = config_text_with_server(
        &[upstream.addr],
        "tcp_idle_timeout_secs = 1",
        STANDARD_LIST_TABLES,
    )
    .replace("timeout_ms = 500", "timeout_ms = 5000");
    assert!(config.contains("timeout_ms = 5000"));
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let socket = std::net::TcpStream::connect(dnsward.addr).unwrap();
    let (_, query) = build_query("www.test.", RecordType::A, &Ask::default());
    let reply = tcp_exchange(socket.try_clone().unwrap(), &query);
    let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
    let mut socket = socket;
    socket.set_read_timeout(Some(IO_GUARD)).unwrap();
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut socket, &mut byte);
    assert!(
        matches!(read, Ok(0)),
        "the server closes the idle connection: {read:?}"
    );
}

#[test]
fn serves_every_listen_address_on_ipv4_and_ipv6() {
    let upstream = Upstream::start();
    let config = config_text(&[upstream.addr], STANDARD_LIST_TABLES).replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let addrs = dnsward.listening_addrs(2);
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let v6 = addrs
        .iter()
        .find(|addr| addr.is_ipv6())
        .expect("an IPv6 listener");
    for transport in BOTH {
        let ask_v6 = Ask {
            source: "::1".parse().unwrap(),
            ..Ask::default()
        };
        let reply = query(*v6, transport, "www.test.", RecordType::AAAA, &ask_v6);
        assert_eq!(
            rdata_of(&reply, RecordType::AAAA),
            ["2001:db8::10"],
            "{transport:?}"
        );
        let reply = query(*v6, transport, "blocked.test.", RecordType::A, &ask_v6);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    }
}

/// `server.threads` sets the UDP receive loops and the runtime's workers; by default there is
/// one of each per core.
#[test]
fn the_number_of_query_threads_follows_the_config() {
    let upstream = Upstream::start();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dnsward = Dnsward::standard(&upstream, "");
    assert_eq!(dnsward.threads_named("udp-worker"), cores);
    // Never the default, so the setting is what decides.
    let threads = cores + 1;
    let config = config_text_with_server(
        &[upstream.addr],
        &format!("threads = {threads}"),
        STANDARD_LIST_TABLES,
    );
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    assert_eq!(dnsward.threads_named("udp-worker"), threads);
    assert_eq!(dnsward.threads_named("runtime-worker"), threads);
    for transport in BOTH {
        for _ in 0..(4 * threads) {
            let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
            assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
        }
    }
}

/// `tcp_max_connections`: past the limit, a connection waits (in the listen backlog) for a
/// free slot; with no slot free the idle timeout drops to 1 s, so an idle connection makes
/// room long before its configured 60 s. Without the limit the first connection would stay
/// open; without the shorter timeout the second would wait 60 s.
#[test]
fn tcp_connections_beyond_the_limit_wait_for_an_idle_one_to_close() {
    let upstream = Upstream::start();
    let config = config_text_with_server(
        &[upstream.addr],
        "tcp_max_connections = 1\ntcp_idle_timeout_secs = 60",
        STANDARD_LIST_TABLES,
    );
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let (_, query) = build_query("www.test.", RecordType::A, &Ask::default());
    let mut first = std::net::TcpStream::connect(dnsward.addr).unwrap();
    tcp_exchange(first.try_clone().unwrap(), &query);
    let second = std::net::TcpStream::connect(dnsward.addr).unwrap();
    let reply = tcp_exchange(second, &query);
    let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
    first.set_read_timeout(Some(IO_GUARD)).unwrap();
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut first, &mut byte);
    assert!(
        matches!(read, Ok(0)),
        "the idle first connection was closed: {read:?}"
    );
}

/// A connection the server closes while the client is still sending (here: a zero length,
/// which ends the stream, then more bytes) still delivers every answer it owes, even to a
/// client slow to read them: the server reads and discards what arrives until the client
/// closes, instead of closing with unread input, which resets the connection and destroys
/// the answers still queued (RFC 7766 §6.2.3).
#[test]
fn a_closing_tcp_connection_delivers_its_answers() {
    const QUERIES: usize = 20;
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    // A small receive window: most of the answers wait in the server's send queue.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&dnsward.addr.into(), IO_GUARD)
        .unwrap();
    let mut socket: std::net::TcpStream = socket.into();
    socket.set_read_timeout(Some(IO_GUARD)).unwrap();
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..QUERIES {
        let (id, query) = build_query("big.test.", RecordType::TXT, &Ask::default());
        bytes.extend_from_slice(&(query.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&query);
        ids.push(id);
    }
    bytes.extend_from_slice(&[0, 0]);
    // More than the server's read buffer, sent after the end of the stream.
    bytes.extend_from_slice(&vec![0x55; 64 * 1024]);
    std::io::Write::write_all(&mut socket, &bytes).unwrap();
    // Slow to read: the server has answered everything and closes meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let mut answered = Vec::new();
    for _ in 0..QUERIES {
        let mut length = [0u8; 2];
        if let Err(error) = std::io::Read::read_exact(&mut socket, &mut length) {
            panic!("{} of {QUERIES} answers, then {error}", answered.len());
        }
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
        std::io::Read::read_exact(&mut socket, &mut reply).unwrap();
        let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
        assert_eq!(reply.answers.len(), 40);
        answered.push(reply.metadata.id);
    }
    answered.sort_unstable();
    ids.sort_unstable();
    assert_eq!(answered, ids);
}

/// `tcp_max_connections_per_client`: one client address cannot hold more; its next
/// connection is closed at once, while another client is still served.
#[test]
fn tcp_connections_per_client_are_limited() {
    let upstream = Upstream::start();
    let config = config_text_with_server(
        &[upstream.addr],
        "tcp_max_connections_per_client = 1",
        STANDARD_LIST_TABLES,
    );
    let mut dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let (_, query) = build_query("www.test.", RecordType::A, &Ask::default());
    let first = std::net::TcpStream::connect(dnsward.addr).unwrap();
    tcp_exchange(first.try_clone().unwrap(), &query);
    let second = std::net::TcpStream::connect(dnsward.addr).unwrap();
    let refused = try_tcp_exchange(second, &query, IO_GUARD);
    assert!(
        refused.is_err(),
        "the second connection is closed: {refused:?}"
    );
    // Another address is another client.
    let reply = exchange_raw(
        dnsward.addr,
        Transport::Tcp,
        "127.0.0.2".parse().unwrap(),
        &query,
    );
    let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
    assert_eq!(rdata_of(&reply, RecordType::A), ["192.0.2.10"]);
    drop(first);
    // The closed connection is counted, and reported at a clean stop.
    assert!(dnsward.terminate(), "SIGTERM is a clean exit");
    let line = dnsward
        .wait_for_log(|line| line.contains("stopped"))
        .expect("a stop summary");
    assert!(line.contains("tcp_refused=1"), "{line}");
}
