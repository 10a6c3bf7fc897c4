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

    std::fs::write(dnsward.dir.path().join("block.txt"), "bad..name\n").unwrap();
    let output = diff(&dnsward, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("block.txt:1:"));
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
