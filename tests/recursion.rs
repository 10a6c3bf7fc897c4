//! Black-box tests of recursive mode: the real binary resolves from test root hints through a
//! signed hierarchy of real `nsd` servers on 127.0.53.x:53 (see `tests/hierarchy/README.md`),
//! validating with the test root's key. Needs root (port 53) and the Debian packages `nsd` and
//! `ldnsutils`.
//!
//! See: issue 6 (recursive resolution with DNSSEC validation).

mod common;
#[path = "common/hierarchy.rs"]
mod hierarchy;

use std::{net::SocketAddr, str::FromStr};

use common::{Ask, BOTH, Dnsward, Transport, Upstream, ede, exchange_raw, query, rdata_of};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use hierarchy::{Hierarchy, HierarchyLease};

const LISTS: &[(&str, &str)] = &[("block.txt", "tracker.ok.lab\n")];

const LIST_TABLES: &str = r#"
[[list]]
name = "trackers"
path = "block.txt"
"#;

/// dnsward in recursive mode on the test hierarchy, plus `extra` config (e.g. forward zones).
fn recursive_dnsward(lease: &HierarchyLease, forward_extra: &str) -> Dnsward {
    recursive_dnsward_logging(lease, forward_extra, "info")
}

/// [`recursive_dnsward`] logging at `level` (a tracing filter; `DNSWARD_TEST_LOG` overrides it).
fn recursive_dnsward_logging(lease: &HierarchyLease, forward_extra: &str, level: &str) -> Dnsward {
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:0"]

[forward]
timeout_ms = 500
attempts = 2
{forward_extra}

[recursion]
enabled = true
root_hints = "{hints}"
trust_anchor = "{anchor}"
# The hierarchy lives on loopback, which hickory's default server filter refuses.
deny_servers = []
timeout_ms = 20000

[log]
# DNSWARD_TEST_LOG=hickory_resolver=debug shows the recursor's steps when a case fails.
level = "{level}"

{LIST_TABLES}
"#,
        hints = lease.info.root_hints.display(),
        anchor = lease.info.trust_anchor.display(),
        level = std::env::var("DNSWARD_TEST_LOG").unwrap_or_else(|_| level.to_owned()),
    );
    Dnsward::start(&config, LISTS)
}

fn dnssec() -> Ask {
    Ask {
        dnssec_ok: true,
        ..Ask::default()
    }
}

/// A DO query with CD set (the client validates itself, RFC 4035 §3.2.2).
fn query_cd(server: SocketAddr, transport: Transport, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.checking_disabled = true;
    message.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(true);
    message.set_edns(edns);
    let bytes = message.to_vec().unwrap();
    Message::from_vec(&exchange_raw(
        server,
        transport,
        std::net::IpAddr::from([127, 0, 0, 1]),
        &bytes,
    ))
    .unwrap()
}

fn assert_secure_a(reply: &Message, expected: &str) {
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{reply} {:?}",
        ede(reply)
    );
    assert_eq!(
        rdata_of(reply, RecordType::A),
        vec![expected.to_owned()],
        "{reply}"
    );
    assert!(reply.metadata.authentic_data, "AD expected: {reply}");
}

#[test]
fn delegation_with_glue_validates() {
    let lease = Hierarchy::lease();
    let mut dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.good.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_secure_a(&reply, "192.0.2.1");
        // RRSIGs go to DO clients only.
        assert!(
            reply
                .answers
                .iter()
                .any(|r| r.record_type() == RecordType::RRSIG)
        );
        let plain = query(
            dnsward.addr,
            transport,
            "www.good.ward.",
            RecordType::A,
            &Ask::default(),
        );
        assert!(
            plain
                .answers
                .iter()
                .all(|r| r.record_type() != RecordType::RRSIG)
        );
        // RFC 6840 §5.8: no AD to a client that did not ask for DNSSEC.
        assert!(!plain.metadata.authentic_data);
    }
    // The audit record says the answer came from recursion, then from the cache.
    assert!(dnsward.terminate());
    let output = common::dnsward_command()
        .args([
            "audit",
            "search",
            "--json",
            "--domain",
            "=www.good.ward",
            "--config",
        ])
        .arg(dnsward.config_path())
        .output()
        .unwrap();
    let sources: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["source"].to_string())
        .collect();
    assert!(sources.iter().any(|s| s == "\"recursion\""), "{sources:?}");
    assert!(sources.iter().any(|s| s == "\"cache\""), "{sources:?}");
}

#[test]
fn glueless_delegation_resolves_the_name_server_first() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.glueless.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_secure_a(&reply, "192.0.2.50");
    }
}

#[test]
fn cname_across_zones_is_followed_and_validated() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "alias.good.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            rdata_of(&reply, RecordType::CNAME),
            vec!["www.ok.lab.".to_owned()]
        );
        assert_secure_a(&reply, "192.0.2.20");
    }
}

/// Owner and type of each answer record in order, RRSIGs left out.
fn answer_order(reply: &Message) -> Vec<String> {
    reply
        .answers
        .iter()
        .filter(|record| record.record_type() != RecordType::RRSIG)
        .map(|record| format!("{} {}", record.name, record.record_type()))
        .collect()
}

#[test]
fn cname_chains_are_answered_in_chain_order_once_and_loops_fail() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    // The second round is answered from the cache.
    for _round in 0..2 {
        for transport in BOTH {
            let reply = query(
                dnsward.addr,
                transport,
                "in1.good.ward.",
                RecordType::A,
                &dnssec(),
            );
            // RFC 1034 §4.3.2: glibc's parser follows the chain in answer order.
            assert_eq!(
                answer_order(&reply),
                [
                    "in1.good.ward. CNAME",
                    "in2.good.ward. CNAME",
                    "in3.good.ward. CNAME",
                    "www.good.ward. A"
                ],
                "{reply}"
            );
            assert_secure_a(&reply, "192.0.2.1");
            let reply = query(
                dnsward.addr,
                transport,
                "chain.good.ward.",
                RecordType::A,
                &dnssec(),
            );
            assert_eq!(
                answer_order(&reply),
                [
                    "chain.good.ward. CNAME",
                    "alias.good.ward. CNAME",
                    "www.ok.lab. A"
                ],
                "{reply}"
            );
            assert_secure_a(&reply, "192.0.2.20");
        }
    }
    // RFC 1034 §3.6.2: a loop is an error, not an answer (as Unbound: SERVFAIL).
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "loop1.good.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{reply}"
        );
        assert!(!reply.metadata.authentic_data, "{reply}");
    }
}

#[test]
fn signed_dname_and_its_unsigned_cname_validate() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.dn.good.ward.",
            RecordType::A,
            &dnssec(),
        );
        // RFC 6672 §5.3.1, RFC 4035 §5.3.3: the CNAME is synthesized from the signed DNAME.
        assert_secure_a(&reply, "192.0.2.20");
        assert_eq!(
            answer_order(&reply),
            [
                "dn.good.ward. DNAME",
                "www.dn.good.ward. CNAME",
                "www.ok.lab. A"
            ],
            "{reply}"
        );
    }
}

#[test]
fn opt_out_and_over_limit_nsec3_denials_answer_without_ad() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for zone in ["optout.ward.", "iter.ward."] {
        for transport in BOTH {
            let reply = query(
                dnsward.addr,
                transport,
                &format!("www.{zone}"),
                RecordType::A,
                &dnssec(),
            );
            assert_secure_a(&reply, "192.0.2.41");
            let reply = query(
                dnsward.addr,
                transport,
                &format!("nx.{zone}"),
                RecordType::A,
                &dnssec(),
            );
            // RFC 5155 §9.2 (opt-out), RFC 9276 §3.2 (iterations over the limit: insecure, as
            // Unbound answers it; it had been SERVFAIL with EDE 6).
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{zone}: {reply}"
            );
            assert!(
                !reply.metadata.authentic_data,
                "{zone}: no AD expected: {reply}"
            );
        }
    }
}

/// RFC 8482 §4.1: ANY gets a validated subset, the A and AAAA RRsets (it had been SERVFAIL
/// with EDE 6 in every signed zone).
#[test]
fn any_in_a_signed_zone_is_answered_with_a_validated_subset() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.good.ward.",
            RecordType::ANY,
            &dnssec(),
        );
        assert_secure_a(&reply, "192.0.2.1");
        assert_eq!(
            rdata_of(&reply, RecordType::AAAA),
            ["2001:db8::1"],
            "{reply}"
        );
        let reply = query(
            dnsward.addr,
            transport,
            "nx.good.ward.",
            RecordType::ANY,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{reply}"
        );
        assert!(reply.metadata.authentic_data, "{reply}");
    }
}

#[test]
fn nxdomain_is_validated_with_nsec() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "nope.good.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{reply}"
        );
        assert!(common::soa_in_authority(&reply).is_some(), "{reply}");
        assert!(reply.metadata.authentic_data, "AD expected: {reply}");
    }
}

#[test]
fn nodata_is_validated_with_nsec() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.good.ward.",
            RecordType::MX,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply}"
        );
        assert!(reply.answers.is_empty(), "{reply}");
        assert!(common::soa_in_authority(&reply).is_some(), "{reply}");
        assert!(reply.metadata.authentic_data, "AD expected: {reply}");
    }
}

/// NSEC3 (RFC 5155) zone: a positive answer, NXDOMAIN and NODATA all validate.
#[test]
fn nsec3_signed_zone_validates_positive_and_negative_answers() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.nsec3.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_secure_a(&reply, "192.0.2.31");
        let reply = query(
            dnsward.addr,
            transport,
            "nope.nsec3.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{reply}"
        );
        assert!(
            reply.metadata.authentic_data,
            "NSEC3-proven NXDOMAIN: {reply}"
        );
        let reply = query(
            dnsward.addr,
            transport,
            "www.nsec3.ward.",
            RecordType::MX,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply}"
        );
        assert!(reply.answers.is_empty(), "{reply}");
        assert!(
            reply.metadata.authentic_data,
            "NSEC3-proven NODATA: {reply}"
        );
    }
}

/// Wildcard answers (RFC 4035 §5.3.4, RFC 5155 §8.8): a name one or two labels below
/// `*.wild` is answered from the wildcard, with the NSEC or NSEC3 record proving that the name
/// itself does not exist, and validates; so does a wildcard NODATA (RFC 4035 §3.1.3.4).
#[test]
fn wildcard_answers_validate_with_nsec_and_nsec3() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        for (zone, address) in [("good.ward.", "192.0.2.7"), ("nsec3.ward.", "192.0.2.37")] {
            for name in [format!("x.wild.{zone}"), format!("a.b.wild.{zone}")] {
                let reply = query(dnsward.addr, transport, &name, RecordType::A, &dnssec());
                assert_secure_a(&reply, address);
                assert!(
                    reply.answers.iter().all(|r| r.name.to_string() == name),
                    "{reply}"
                );
            }
            let name = format!("y.wild.{zone}");
            let reply = query(dnsward.addr, transport, &name, RecordType::MX, &dnssec());
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{name}: {reply} {:?}",
                ede(&reply)
            );
            assert!(reply.answers.is_empty(), "{reply}");
            assert!(
                reply.metadata.authentic_data,
                "wildcard NODATA proven: {reply}"
            );
        }
    }
}

/// Logs which servers were passed over (`servers` logs each at debug level).
const SERVER_LOG: &str = "info,dnsward::resolve::servers=debug";

/// `lame.ward.`'s first server answers REFUSED (it does not serve the zone): the second answers.
#[test]
fn lame_server_is_skipped() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward_logging(&lease, "", SERVER_LOG);
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.lame.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_secure_a(&reply, "192.0.2.30");
    }
    // The lame server was asked (not merely ranked last) and its REFUSED passed over.
    assert!(
        dnsward
            .wait_for_log(|line| line.contains("127.0.53.15") && line.contains("rejected"))
            .is_some(),
        "the lame server was never asked: {:#?}",
        dnsward.log()
    );
}

/// Nothing listens at `dead.ward.`'s first server: after `server_timeout_ms` the second answers.
#[test]
fn dead_server_times_out_and_the_next_answers() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward_logging(&lease, "", SERVER_LOG);
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.dead.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_secure_a(&reply, "192.0.2.40");
    }
    // The dead server was asked and given up on by our per-server timeout (which hands the
    // question to the zone's next server), not by hickory's deadline for the whole question.
    assert!(
        dnsward
            .wait_for_log(|line| {
                line.contains(&hierarchy::DEAD_SERVER.to_string())
                    && line.contains("server not answering")
            })
            .is_some(),
        "the dead server was never timed out: {:#?}",
        dnsward.log()
    );
}

#[test]
fn the_root_is_primed_at_start() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    // No question asked: RFC 8109 priming fetches and validates the root NS and DNSKEY sets.
    assert!(
        dnsward
            .wait_for_log(|line| line.contains("root primed"))
            .is_some(),
        "{:?}",
        dnsward.log()
    );
}

#[test]
fn truncated_answer_is_fetched_over_tcp() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    // The TXT RRset is ~2.8 KB: nsd truncates it over UDP, so the recursor must retry on TCP.
    let reply = query(
        dnsward.addr,
        Transport::Tcp,
        "big.good.ward.",
        RecordType::TXT,
        &dnssec(),
    );
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{reply}"
    );
    assert_eq!(rdata_of(&reply, RecordType::TXT).len(), 30, "{reply}");
    assert!(reply.metadata.authentic_data);
    // And a UDP client gets TC, as the answer does not fit its 1232 bytes either.
    let udp = query(
        dnsward.addr,
        Transport::Udp,
        "big.good.ward.",
        RecordType::TXT,
        &dnssec(),
    );
    assert!(udp.metadata.truncation, "{udp}");
}

#[test]
fn bogus_signature_is_servfail_with_ede_6() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.bogus.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{reply}"
        );
        assert!(reply.answers.is_empty());
        assert_eq!(ede(&reply).map(|(code, _)| code), Some(6), "{reply}");
        // The rest of the zone is fine.
        let fine = query(
            dnsward.addr,
            transport,
            "ok.bogus.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_secure_a(&fine, "192.0.2.65");
    }
}

#[test]
fn checking_disabled_returns_bogus_data_without_ad() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query_cd(dnsward.addr, transport, "www.bogus.ward.", RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply}"
        );
        assert_eq!(
            rdata_of(&reply, RecordType::A),
            vec!["192.0.2.99".to_owned()]
        );
        assert!(!reply.metadata.authentic_data);
    }
}

#[test]
fn expired_signature_is_servfail_with_ede_7() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.expired.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{reply}"
        );
        assert_eq!(ede(&reply).map(|(code, _)| code), Some(7), "{reply}");
    }
}

/// `ward.` has a DS for `nokey.ward.`, but no key in `nokey.ward.`'s DNSKEY RRset matches it.
#[test]
fn dnskey_missing_is_servfail_with_ede_9() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        for (name, qtype) in [
            ("www.nokey.ward.", RecordType::A),
            ("nope.nokey.ward.", RecordType::A),
            ("nokey.ward.", RecordType::DNSKEY),
        ] {
            let reply = query(dnsward.addr, transport, name, qtype, &dnssec());
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::ServFail,
                "{name} {qtype}: {reply}"
            );
            assert!(reply.answers.is_empty(), "{reply}");
            let (code, text) = ede(&reply).unwrap_or_default();
            assert_eq!(code, 9, "{name} {qtype}: {reply}");
            assert!(text.contains("nokey.ward"), "{text}");
        }
    }
}

#[test]
fn insecure_delegation_answers_without_ad() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "www.insecure.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply}"
        );
        assert_eq!(
            rdata_of(&reply, RecordType::A),
            vec!["192.0.2.88".to_owned()]
        );
        assert!(
            !reply.metadata.authentic_data,
            "no AD for an insecure zone: {reply}"
        );
    }
}

#[test]
fn blocked_name_is_blocked_in_recursive_mode() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "tracker.ok.lab.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{reply}"
        );
        assert_eq!(ede(&reply).map(|(code, _)| code), Some(15), "{reply}");
    }
}

#[test]
fn cname_into_blocked_name_is_blocked_in_recursive_mode() {
    let lease = Hierarchy::lease();
    let dnsward = recursive_dnsward(&lease, "");
    for transport in BOTH {
        let reply = query(
            dnsward.addr,
            transport,
            "tracker-alias.good.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{reply}"
        );
        assert_eq!(ede(&reply).map(|(code, _)| code), Some(15), "{reply}");
        assert!(rdata_of(&reply, RecordType::A).is_empty());
    }
}

#[test]
fn forward_zone_is_forwarded_in_recursive_mode() {
    let lease = Hierarchy::lease();
    let upstream = Upstream::start();
    let dnsward = recursive_dnsward(
        &lease,
        &format!(
            "\n[[forward.zone]]\nname = \"test\"\nupstreams = [\"{}\"]\n",
            upstream.addr
        ),
    );
    for transport in BOTH {
        // `test.` does not exist in the hierarchy's root: only forwarding can answer it.
        let reply = query(
            dnsward.addr,
            transport,
            "www.test.",
            RecordType::A,
            &Ask::default(),
        );
        assert_eq!(
            rdata_of(&reply, RecordType::A),
            vec!["192.0.2.10".to_owned()]
        );
        let recursed = query(
            dnsward.addr,
            transport,
            "www.good.ward.",
            RecordType::A,
            &dnssec(),
        );
        assert_secure_a(&recursed, "192.0.2.1");
    }
}

/// Unbound, on 127.0.53.100:53, with the same root hints and trust anchor.
struct Unbound {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

const UNBOUND_ADDR: &str = "127.0.53.100:53";

impl Unbound {
    fn start(lease: &HierarchyLease) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            r#"server:
  interface: 127.0.53.100
  port: 53
  do-ip6: no
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: "{dir}/unbound.pid"
  use-syslog: no
  logfile: "{dir}/unbound.log"
  num-threads: 1
  root-hints: "{hints}"
  trust-anchor-file: "{anchor}"
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  qname-minimisation: yes
  module-config: "validator iterator"
remote-control:
  control-enable: no
"#,
            dir = dir.path().display(),
            hints = lease.info.root_hints.display(),
            anchor = lease.info.trust_anchor.display(),
        );
        let path = dir.path().join("unbound.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("unbound not found: install the Debian package unbound");
        let addr: SocketAddr = UNBOUND_ADDR.parse().unwrap();
        assert!(
            common::eventually(|| common::try_query(
                addr,
                Transport::Udp,
                ".",
                RecordType::NS,
                std::time::Duration::from_millis(200)
            )
            .is_ok()),
            "unbound did not start"
        );
        Self { child, _dir: dir }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A DO query over TCP that may fail (a resolver under comparison may time out).
fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message, String> {
    common::try_query_with(
        server,
        Transport::Tcp,
        name,
        qtype,
        &dnssec(),
        std::time::Duration::from_secs(30),
    )
}

/// What the differential test compares: rcode, AD, and the answer RRsets (owner, type, data;
/// TTLs and RRSIGs left out: TTLs decay, and RRSIGs follow from the RRsets).
fn comparable(reply: &Message) -> (ResponseCode, bool, Vec<String>) {
    let mut rrsets: Vec<String> = reply
        .answers
        .iter()
        .filter(|record| record.record_type() != RecordType::RRSIG)
        .map(|record| {
            format!(
                "{} {} {}",
                record.name.to_ascii().to_lowercase(),
                record.record_type(),
                record.data
            )
        })
        .collect();
    rrsets.sort();
    (
        reply.metadata.response_code,
        reply.metadata.authentic_data,
        rrsets,
    )
}

#[test]
fn differential_against_unbound() {
    let lease = Hierarchy::lease();
    let unbound = Unbound::start(&lease);
    let dnsward = recursive_dnsward(&lease, "");
    let unbound_addr: SocketAddr = UNBOUND_ADDR.parse().unwrap();
    let names = [
        ".",
        "ward.",
        "lab.",
        "nic.ward.",
        "ns1.nic.ward.",
        "good.ward.",
        "www.good.ward.",
        "txt.good.ward.",
        "alias.good.ward.",
        "chain.good.ward.",
        "big.good.ward.",
        "ns.good.ward.",
        "nope.good.ward.",
        "deep.nope.good.ward.",
        "x.wild.good.ward.",
        "a.b.wild.good.ward.",
        "wild.good.ward.",
        "x.wild.nsec3.ward.",
        "x.wcname.good.ward.",
        "x.wcname.nsec3.ward.",
        "ok.lab.",
        "www.ok.lab.",
        "hosting.lab.",
        "ns.hosting.lab.",
        "glueless.ward.",
        "www.glueless.ward.",
        "www.bogus.ward.",
        "ok.bogus.ward.",
        "www.expired.ward.",
        "www.nokey.ward.",
        "insecure.ward.",
        "www.insecure.ward.",
        "alias.insecure.ward.",
        "nope.insecure.ward.",
        "www.dead.ward.",
        "nonexistent.ward.",
        "x.nonexistent.lab.",
        "nonexistent-tld.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::NS,
        RecordType::SOA,
        RecordType::CNAME,
        RecordType::DS,
        RecordType::DNSKEY,
    ];
    // Intended or known differences, each explained in the report on issue 6:
    // - `. DS`: hickory 0.26.3 cannot validate the root's (absent) DS and answers SERVFAIL,
    //   Unbound a secure NODATA. Harmless: stubs do not ask it.
    let known_differences = [(".", RecordType::DS)];
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for name in names {
        for qtype in types {
            if known_differences.contains(&(name, qtype)) {
                continue;
            }
            // TCP for both: the comparison is about resolution, not client-side truncation.
            let started = std::time::Instant::now();
            let ours = ask_tcp(dnsward.addr, name, qtype).map(|reply| comparable(&reply));
            let ours_time = started.elapsed();
            let theirs_started = std::time::Instant::now();
            let mut theirs = ask_tcp(unbound_addr, name, qtype).map(|reply| comparable(&reply));
            // Unbound 1.17 now and then closes the TCP connection without an answer while it
            // waits out the dead server of `dead.ward.` (seen after ~2.3 s); a stub would ask
            // again, so the comparison does too. dnsward gets no second chance.
            if let Err(error) = &theirs {
                eprintln!(
                    "unbound: {name} {qtype}: {error} after {:?}, asking again",
                    theirs_started.elapsed()
                );
                theirs = ask_tcp(unbound_addr, name, qtype).map(|reply| comparable(&reply));
            }
            compared += 1;
            if ours_time > std::time::Duration::from_secs(3) {
                eprintln!("slow: {name} {qtype} took {ours_time:?} in dnsward");
            }
            if ours != theirs {
                mismatches.push(format!(
                    "{name} {qtype}:\n  dnsward {ours:?}\n  unbound {theirs:?}"
                ));
            }
        }
    }
    drop(unbound);
    assert!(compared >= 250, "only {compared} queries compared");
    assert!(
        mismatches.is_empty(),
        "{} of {compared} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
