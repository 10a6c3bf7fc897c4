//! The UDP fast path (`server::fastpath`): a query answered before, under the same lists, is
//! answered from the stored response bytes. These tests hold it to the full chain's answers:
//! its own ID and question case, TTLs counted down, the same decision and audit record, the
//! ACL checked per client, nothing replayed across a reload, and large answers still truncated.

mod common;

use std::{net::IpAddr, time::Duration};

use common::*;
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RData,
};

/// A query built by hand so the test controls the ID and the case of every letter.
fn raw_query(id: u16, labels: &[&str], qtype: u16, edns_payload: Option<u16>) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in labels {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    if let Some(payload) = edns_payload {
        packet[11] = 1;
        packet.extend_from_slice(&[0, 0, 41]);
        packet.extend_from_slice(&payload.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    packet
}

fn exchange(dnsward: &Dnsward, source: &str, packet: &[u8]) -> Vec<u8> {
    let source: IpAddr = source.parse().unwrap();
    exchange_raw(dnsward.addr, Transport::Udp, source, packet)
}

/// The parsed reply to `packet` sent from `source`.
fn reply(dnsward: &Dnsward, source: &str, packet: &[u8]) -> Message {
    Message::from_vec(&exchange(dnsward, source, packet)).unwrap()
}

fn a_ttl(reply: &Message) -> u32 {
    reply
        .answers
        .iter()
        .find(|record| matches!(record.data, RData::A(_)))
        .map(|record| record.ttl)
        .expect("an A record")
}

/// The `name=` counter of the stop summary.
fn stop_counter(dnsward: &mut Dnsward, name: &str) -> u64 {
    assert!(dnsward.terminate(), "SIGTERM is a clean exit");
    let line = dnsward
        .wait_for_log(|line| line.contains("stopped"))
        .expect("a stop summary");
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// Rewrites the standard `block.txt` and waits until generation 2 serves it.
fn reload_block_list(dnsward: &Dnsward, block_list: &str) {
    std::fs::write(dnsward.dir.path().join("block.txt"), block_list).unwrap();
    dnsward.signal("HUP");
    assert!(
        dnsward
            // "reload applied" comes after the swap; the "list loaded" lines of generation 2
            // come before it.
            .wait_for_log(|line| line.contains("reload applied") && line.contains("generation=2"))
            .is_some(),
        "reloaded"
    );
}

#[test]
fn repeated_queries_are_replayed_with_their_own_id_case_and_aged_ttl() {
    let upstream = Upstream::start();
    let mut dnsward = Dnsward::standard(&upstream, "");
    let first_bytes = exchange(
        &dnsward,
        "127.0.0.1",
        &raw_query(0x1111, &["www", "test"], 1, Some(1232)),
    );
    let first = Message::from_vec(&first_bytes).unwrap();
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);

    let second_bytes = exchange(
        &dnsward,
        "127.0.0.1",
        &raw_query(0x2222, &["WwW", "tEsT"], 1, Some(1232)),
    );
    assert_eq!(second_bytes[..2], [0x22, 0x22], "the query's own ID");
    assert_eq!(
        &second_bytes[12..21],
        b"\x03WwW\x04tEsT",
        "the question as asked"
    );
    let second = Message::from_vec(&second_bytes).unwrap();
    assert_eq!(second.answers.len(), first.answers.len());
    assert_eq!(second.metadata.response_code, first.metadata.response_code);
    assert!(second.metadata.recursion_available && second.metadata.recursion_desired);
    assert_eq!(
        second.edns.as_ref().map(|edns| edns.max_payload()),
        Some(1232)
    );

    std::thread::sleep(Duration::from_millis(2100));
    let third = reply(
        &dnsward,
        "127.0.0.1",
        &raw_query(0x3333, &["www", "test"], 1, Some(1232)),
    );
    assert!(
        a_ttl(&third) + 2 <= a_ttl(&first),
        "TTL counts down: {} then {}",
        a_ttl(&first),
        a_ttl(&third)
    );

    // A client without EDNS is a different key; its answer has no OPT.
    let plain = reply(
        &dnsward,
        "127.0.0.1",
        &raw_query(0x4444, &["www", "test"], 1, None),
    );
    assert!(plain.edns.is_none());
    let plain_again = reply(
        &dnsward,
        "127.0.0.1",
        &raw_query(0x5555, &["www", "test"], 1, None),
    );
    assert!(plain_again.edns.is_none());
    assert_eq!(plain_again.metadata.id, 0x5555);

    let config = dnsward.config_path();
    let fast = stop_counter(&mut dnsward, "fast_answers");
    assert!(
        fast >= 3,
        "second, third and fifth answers were replayed: {fast}"
    );

    // Every query, replayed or not, has exactly one audit record, with the name as asked.
    let output = dnsward_command()
        .args([
            "audit", "search", "--json", "--domain", "www.test", "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let mut records: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // In query order: the log is in the order workers handed records over, and a worker can
    // hand over its record after the next query's worker does (the client was answered first).
    records.sort_by_key(|record| record["time"].as_str().unwrap_or_default().to_owned());
    assert_eq!(records.len(), 5, "{records:?}");
    assert_eq!(records[1]["qname"], "WwW.tEsT.");
    assert_eq!(records[1]["source"], "cache");
    assert_eq!(records[1]["decision"], "allowed");
    assert_eq!(records[1]["answer"], records[0]["answer"]);
}

#[test]
fn blocked_answers_are_replayed_with_their_decision_and_ede() {
    let upstream = Upstream::start();
    let mut dnsward = Dnsward::standard(&upstream, "");
    let mut replies = Vec::new();
    for id in [1u16, 2, 3] {
        let bytes = exchange(
            &dnsward,
            "127.0.0.1",
            &raw_query(id, &["www", "blocked", "test"], 1, Some(1232)),
        );
        replies.push(Message::from_vec(&bytes).unwrap());
    }
    for reply in &replies {
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ede(reply).map(|(code, _)| code), Some(15), "{reply}");
    }
    let config = dnsward.config_path();
    assert_eq!(stop_counter(&mut dnsward, "fast_answers"), 2);
    let output = dnsward_command()
        .args([
            "audit",
            "search",
            "--json",
            "--decision",
            "blocked",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    for record in &records {
        assert_eq!(record["rule"]["list"], "exchanges");
        assert_eq!(record["ede"], 15);
        assert_eq!(record["source"], "local");
    }
}

#[test]
fn a_stored_answer_is_never_replayed_to_a_refused_client_or_after_a_reload() {
    let upstream = Upstream::start();
    let config = config_text_with_server(
        &[upstream.addr],
        "allow = [\"127.0.0.1/32\"]",
        STANDARD_LIST_TABLES,
    );
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    let query = raw_query(7, &["www", "test"], 1, Some(1232));
    for _ in 0..2 {
        let reply = reply(&dnsward, "127.0.0.1", &query);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    }
    let outsider = reply(&dnsward, "127.0.0.2", &query);
    assert_eq!(outsider.metadata.response_code, ResponseCode::Refused);

    // The name joins the block list: the stored answer belongs to the previous generation.
    reload_block_list(
        &dnsward,
        "blocked.test\n||binance.com^\n*.wild.test\nwww.test\n",
    );
    let reply = reply(&dnsward, "127.0.0.1", &query);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn a_name_answered_before_a_reload_is_replayed_again_after_it() {
    let upstream = Upstream::start();
    let mut dnsward = Dnsward::standard(&upstream, "");
    let query = raw_query(9, &["www", "test"], 1, Some(1232));
    // Generation 1: asked and stored.
    assert_eq!(
        reply(&dnsward, "127.0.0.1", &query).metadata.response_code,
        ResponseCode::NoError
    );
    // An edit that leaves www.test allowed.
    reload_block_list(
        &dnsward,
        "blocked.test\n||binance.com^\n*.wild.test\nother.test\n",
    );
    // Generation 2: the old entry is not replayed; this answer replaces it, and the next four
    // are replayed.
    for _ in 0..5 {
        assert_eq!(
            reply(&dnsward, "127.0.0.1", &query).metadata.response_code,
            ResponseCode::NoError
        );
    }
    assert_eq!(stop_counter(&mut dnsward, "fast_answers"), 4);
}

#[test]
fn answers_too_large_for_the_client_are_still_truncated() {
    let upstream = Upstream::start();
    let dnsward = Dnsward::standard(&upstream, "");
    for payload in [Some(1232), Some(1232), None, None] {
        let reply = reply(
            &dnsward,
            "127.0.0.1",
            &raw_query(9, &["big", "test"], 16, payload),
        );
        assert!(reply.metadata.truncation, "TC for {payload:?}");
    }
}
