//! `dnsward lists diff`: previews an edit against the generation the running server serves.

mod common;

use common::*;

fn diff(dnsward: &Dnsward, extra: &[&str]) -> std::process::Output {
    let config = dnsward.config_path();
    let mut command = dnsward_command();
    command
        .args(["lists", "diff", "--config"])
        .arg(&config)
        .args(extra);
    command.output().unwrap()
}

#[test]
fn diff_reports_rules_added_and_removed_and_exit_codes() {
    let upstream = Upstream::start();
    let config = config_text(
        &[upstream.addr],
        "[reload]\nwatch = false\n[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n",
    );
    let dnsward = Dnsward::start(&config, &[("block.txt", "blocked.test\nkeep.test\n")]);

    let output = diff(&dnsward, &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "no edit, no change: {output:?}"
    );

    std::fs::write(
        dnsward.dir.path().join("block.txt"),
        "keep.test\nwww.test\n*.wild.test\n",
    )
    .unwrap();
    let output = diff(&dnsward, &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("+ www.test"), "{report}");
    assert!(report.contains("+ *.wild.test"), "{report}");
    assert!(report.contains("- blocked.test"), "{report}");
    assert!(
        !report.contains("keep.test"),
        "unchanged rules are not listed: {report}"
    );

    let output = diff(&dnsward, &["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["serving_generation"], 1);
    assert_eq!(json["lists"][0]["added"].as_array().unwrap().len(), 2);

    // The server itself still serves the old list: diff never reloads.
    let reply = ask(
        dnsward.addr,
        Transport::Udp,
        "blocked.test.",
        hickory_proto::rr::RecordType::A,
    );
    assert_eq!(
        reply.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );

    // What the reload would warn of is shown before it goes live.
    std::fs::write(dnsward.dir.path().join("block.txt"), "keep.test\nco\n").unwrap();
    let output = diff(&dnsward, &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("block.txt:2: rule \"co\" covers a whole top-level domain"),
        "{stderr}"
    );

    std::fs::write(dnsward.dir.path().join("block.txt"), "bad..name\n").unwrap();
    let output = diff(&dnsward, &[]);
    assert_eq!(output.status.code(), Some(2));
    // Said once (the error's own text and its cause's printed the problems twice).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("block.txt:1:").count(), 1, "{stderr}");
    assert!(stderr.contains("the edited lists do not load"), "{stderr}");
}

#[test]
fn diff_sees_settings_and_lists_added_or_removed() {
    let upstream = Upstream::start();
    let config = config_text(
        &[upstream.addr],
        "[reload]\nwatch = false\n[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n",
    );
    let dnsward = Dnsward::start(&config, &[("block.txt", "blocked.test\n")]);
    let edited = std::fs::read_to_string(dnsward.config_path())
        .unwrap()
        .replace(
            "path = \"block.txt\"",
            "path = \"block.txt\"\nmode = \"log-only\"",
        )
        + "[[list]]\nname = \"new\"\npath = \"new.txt\"\n";
    std::fs::write(dnsward.dir.path().join("new.txt"), "x.test\n").unwrap();
    std::fs::write(dnsward.config_path(), edited).unwrap();
    let output = diff(&dnsward, &[]);
    assert_eq!(output.status.code(), Some(1));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("mode: enforce -> log-only"), "{report}");
    assert!(report.contains("list new"), "{report}");
    assert!(report.contains("added"), "{report}");
}

/// An audit directory without a segment yet (the resolver has only just started, and its
/// writer has not written its first record) holds no names: the diff shows the rule changes
/// (it failed with "no audit log here", exit 2, now and then in CI).
#[test]
fn diff_of_a_log_without_segments_shows_the_rule_changes() {
    let upstream = Upstream::start();
    let config = config_text(
        &[upstream.addr],
        "[reload]\nwatch = false\n[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n",
    );
    let mut dnsward = Dnsward::start(&config, &[("block.txt", "blocked.test\n")]);
    assert!(dnsward.terminate());
    let audit_dir = dnsward.dir.path().join("data/audit");
    for entry in std::fs::read_dir(&audit_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "dwlog") {
            std::fs::remove_file(path).unwrap();
        }
    }
    std::fs::write(dnsward.dir.path().join("block.txt"), "other.test\n").unwrap();
    let output = diff(&dnsward, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no audit records"), "{stderr}");
}

#[test]
fn diff_reports_outcome_changes_for_names_in_the_audit_log() {
    use hickory_proto::rr::RecordType;
    let upstream = Upstream::start();
    let config = config_text(
        &[upstream.addr],
        "[reload]\nwatch = false\n[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n[[list]]\nname = \"watch\"\npath = \"watch.txt\"\nmode = \"log-only\"\n",
    );
    let mut dnsward = Dnsward::start(
        &config,
        &[
            ("block.txt", "blocked.test\n"),
            ("watch.txt", "watch.test\n"),
        ],
    );
    for _ in 0..3 {
        ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    }
    ask(
        dnsward.addr,
        Transport::Tcp,
        "www.blocked.test.",
        RecordType::A,
    );
    ask(
        dnsward.addr,
        Transport::Udp,
        "www.watch.test.",
        RecordType::A,
    );
    ask(dnsward.addr, Transport::Udp, "mail.test.", RecordType::MX);
    // Names with bytes the log escapes (`\128`, `\032`): decided from their labels, as the
    // server decided them (they had been left out of the diff).
    for label in [&b"\x80"[..], b"a b"] {
        use hickory_proto::{
            op::{Message, MessageType, OpCode, Query},
            rr::{Label, Name},
        };
        let name = Name::from_labels([
            Label::from_raw_bytes(label).unwrap(),
            Label::from_ascii("blocked").unwrap(),
            Label::from_ascii("test").unwrap(),
        ])
        .unwrap();
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name, RecordType::A));
        let reply = exchange_raw(
            dnsward.addr,
            Transport::Udp,
            std::net::IpAddr::from([127, 0, 0, 1]),
            &message.to_vec().unwrap(),
        );
        assert_eq!(reply[3] & 0x0f, 3, "blocked: NXDOMAIN");
    }
    assert!(dnsward.terminate(), "the audit log is flushed at stop");

    // The edit: block www.test, drop blocked.test, enforce the watch list.
    std::fs::write(dnsward.dir.path().join("block.txt"), "www.test\n").unwrap();
    let edited = std::fs::read_to_string(dnsward.config_path())
        .unwrap()
        .replace("mode = \"log-only\"\n", "");
    std::fs::write(dnsward.config_path(), edited).unwrap();

    let output = diff(&dnsward, &["--since", "1h", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let changes = json["outcome_changes"].as_array().unwrap();
    let change = |name: &str| {
        changes
            .iter()
            .find(|change| change["name"] == name)
            .unwrap_or_else(|| panic!("no change for {name}: {changes:#?}"))
    };
    let www = change("www.test");
    assert_eq!(www["before"]["outcome"], "allowed");
    assert_eq!(www["after"]["outcome"], "blocked");
    assert_eq!(www["after"]["list"], "exchanges");
    assert_eq!(www["queries"], 3);
    assert_eq!(www["clients"], 1);
    assert_eq!(change("www.blocked.test")["after"]["outcome"], "allowed");
    assert_eq!(change("www.watch.test")["before"]["outcome"], "logged");
    assert_eq!(change("www.watch.test")["after"]["outcome"], "blocked");
    assert!(
        !changes.iter().any(|change| change["name"] == "mail.test"),
        "unaffected names are not listed"
    );
    for name in ["\\128.blocked.test", "a\\032b.blocked.test"] {
        assert_eq!(change(name)["before"]["outcome"], "blocked", "{name}");
        assert_eq!(change(name)["after"]["outcome"], "allowed", "{name}");
    }
    assert_eq!(json["names_examined"], 6);

    let text = diff(&dnsward, &["--since", "1h"]);
    let report = String::from_utf8_lossy(&text.stdout);
    assert!(report.contains("www.test"), "{report}");
    assert!(report.contains("blocked (exchanges, nxdomain)"), "{report}");
}

/// A new sinkhole address changes what clients get: the diff names it (it had said "no
/// change", exit 0).
#[test]
fn diff_sees_a_changed_sinkhole_address() {
    let upstream = Upstream::start();
    let config = config_text(
        &[upstream.addr],
        "[reload]\nwatch = false\n[[list]]\nname = \"sink\"\npath = \"block.txt\"\n\
         action = \"sinkhole\"\nsinkhole = [\"192.0.2.9\"]\n",
    );
    let dnsward = Dnsward::start(&config, &[("block.txt", "blocked.test\n")]);
    let output = diff(&dnsward, &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let edited = std::fs::read_to_string(dnsward.config_path())
        .unwrap()
        .replace("192.0.2.9\"", "192.0.2.7\", \"2001:db8::7\"");
    std::fs::write(dnsward.config_path(), edited).unwrap();
    let output = diff(&dnsward, &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("sinkhole: 192.0.2.9 -> 192.0.2.7 2001:db8::7"),
        "{report}"
    );
}

/// A name's outcome follows its answer's CNAME chain, as the server decides it: a rule added
/// for a chain target blocks the alias too, one removed unblocks it, and an allow rule on the
/// alias does not unblock it or stop its logging (it vouches for the name it matches only).
/// The preview had decided the question name alone.
#[test]
fn diff_follows_the_recorded_cname_chain() {
    use hickory_proto::rr::RecordType;
    let upstream = Upstream::start();
    let config = config_text(
        &[upstream.addr],
        "[reload]\nwatch = false\n[[list]]\nname = \"allow\"\npath = \"allow.txt\"\ntype = \"allow\"\n\
         [[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n\
         [[list]]\nname = \"watch\"\npath = \"watch.txt\"\nmode = \"log-only\"\n",
    );
    let mut dnsward = Dnsward::start(
        &config,
        &[
            ("allow.txt", "# none\n"),
            ("block.txt", "binance.com\nblocked.test\n"),
            ("watch.txt", "www.watch.test\n"),
        ],
    );
    for name in [
        "promo.shop.test.",
        "alias.test.",
        "watched-alias.test.",
        "pay-alias.test.",
    ] {
        ask(dnsward.addr, Transport::Udp, name, RecordType::A);
    }
    assert!(dnsward.terminate(), "the audit log is flushed at stop");

    std::fs::write(
        dnsward.dir.path().join("block.txt"),
        "www.test\nblocked.test\n",
    )
    .unwrap();
    std::fs::write(
        dnsward.dir.path().join("allow.txt"),
        "watched-alias.test\npay-alias.test\n",
    )
    .unwrap();
    let output = diff(&dnsward, &["--since", "1h", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let changes = json["outcome_changes"].as_array().unwrap();
    let change = |name: &str| changes.iter().find(|change| change["name"] == name);
    let promo = change("promo.shop.test").expect("unblocked through its chain");
    assert_eq!(promo["before"]["outcome"], "blocked");
    assert_eq!(promo["after"]["outcome"], "allowed");
    let alias = change("alias.test").expect("blocked through its chain");
    assert_eq!(alias["before"]["outcome"], "allowed");
    assert_eq!(alias["after"]["outcome"], "blocked");
    assert!(
        change("watched-alias.test").is_none() && change("pay-alias.test").is_none(),
        "an allow rule on the alias changes nothing down its chain: {changes:#?}"
    );
}
