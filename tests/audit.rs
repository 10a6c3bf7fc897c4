//! The audit log end to end: the real server answers real queries, then the real `dnsward audit`
//! CLI searches, summarises, exports and verifies what it wrote — and catches tampering.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use common::*;
use hickory_proto::{op::ResponseCode, rr::RecordType};
use serde_json::Value;
use sha2::Digest as _;

fn audit(dnsward_config: &Path, args: &[&str]) -> Output {
    dnsward_command()
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(dnsward_config)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn audit_dir(dnsward: &Dnsward) -> PathBuf {
    dnsward.dir.path().join("data/audit")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "dwlog"))
        .collect();
    files.sort();
    files
}

/// The standard server with an audit section, plus a known set of queries answered.
fn served(upstream: &Upstream, audit_section: &str) -> Dnsward {
    let config = config_text_with_server(
        &[upstream.addr],
        "allow = [\"127.0.0.1/32\", \"::1/128\"]",
        &format!("{audit_section}\n{STANDARD_LIST_TABLES}"),
    );
    Dnsward::start(&config, STANDARD_LISTS)
}

fn send_known_queries(dnsward: &Dnsward) {
    for transport in BOTH {
        ask(dnsward.addr, transport, "www.test.", RecordType::A); // allowed
        ask(dnsward.addr, transport, "www.blocked.test.", RecordType::A); // blocked
        ask(dnsward.addr, transport, "www.watch.test.", RecordType::A); // logged
        ask(dnsward.addr, transport, "promo.shop.test.", RecordType::A); // blocked via CNAME
        ask(
            dnsward.addr,
            transport,
            "pay.blocked.test.",
            RecordType::AAAA,
        ); // allow list
    }
    let outsider = Ask {
        source: "127.0.0.2".parse().unwrap(),
        ..Ask::default()
    };
    let reply = query(
        dnsward.addr,
        Transport::Udp,
        "www.test.",
        RecordType::A,
        &outsider,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn every_query_has_exactly_one_record_with_its_rule() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "");
    send_known_queries(&dnsward);
    assert!(dnsward.terminate());
    let config = dnsward.config_path();

    let records = json_lines(&audit(&config, &["search", "--json"]));
    assert_eq!(records.len(), 11, "{records:#?}");
    let find = |qname: &str, transport: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| {
                r["qname"] == qname && r["transport"] == transport && r["decision"] != "refused"
            })
            .collect()
    };
    for transport in ["udp", "tcp"] {
        let allowed = find("www.test.", transport);
        assert_eq!(allowed.len(), 1, "exactly one record per query");
        assert_eq!(allowed[0]["decision"], "allowed");
        assert_eq!(allowed[0]["rcode"], "NOERROR");
        assert!(
            allowed[0]["answer"]
                .as_str()
                .unwrap()
                .contains("192.0.2.10")
        );
        assert_eq!(allowed[0]["generation"], 1);

        let blocked = find("www.blocked.test.", transport);
        assert_eq!(blocked.len(), 1);
        assert_eq!(blocked[0]["decision"], "blocked");
        assert_eq!(blocked[0]["action"], "nxdomain");
        assert_eq!(blocked[0]["ede"], 15);
        assert_eq!(blocked[0]["rule"]["list"], "exchanges");
        assert_eq!(blocked[0]["rule"]["rule"], "blocked.test");
        assert_eq!(blocked[0]["rule"]["file"], "block.txt");
        assert_eq!(blocked[0]["rule"]["line"], 2);

        let logged = find("www.watch.test.", transport);
        assert_eq!(logged[0]["decision"], "logged");
        assert_eq!(logged[0]["rule"]["list"], "watch");
        assert_eq!(logged[0]["rule"]["line"], 1);

        let cloaked = find("promo.shop.test.", transport);
        assert_eq!(cloaked[0]["decision"], "blocked");
        assert_eq!(cloaked[0]["rule"]["rule"], "binance.com");
        assert_eq!(cloaked[0]["rule"]["trigger"]["kind"], "cname");
        assert_eq!(
            cloaked[0]["rule"]["trigger"]["matched"],
            "trade.binance.com."
        );
        // The chain came from the upstream (then its cache), not from dnsward: the record says
        // where, as it does for an allowed answer; a block on the question itself is local.
        let chain_source = if transport == "udp" {
            upstream.addr.to_string()
        } else {
            "cache".to_owned()
        };
        assert_eq!(cloaked[0]["source"], chain_source.as_str());
        assert_eq!(blocked[0]["source"], "local");

        let allow_hit = find("pay.blocked.test.", transport);
        assert_eq!(allow_hit[0]["decision"], "allowed");
        assert_eq!(allow_hit[0]["rule"]["list"], "allow");
    }
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:")
    );

    // A clean stop verifies, and the log carries its start, load and stop records.
    let verify = audit(&config, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let export = audit(&config, &["export", "--format", "jsonl"]);
    let all = json_lines(&export);
    for kind in ["start", "load", "stop", "checkpoint"] {
        assert!(all.iter().any(|r| r["type"] == kind), "no {kind} record");
    }
    let load = all.iter().find(|r| r["type"] == "load").unwrap();
    assert_eq!(load["lists"].as_array().unwrap().len(), 3);
    assert_eq!(load["lists"][1]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn search_filters_and_output_formats() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "");
    send_known_queries(&dnsward);
    assert!(dnsward.terminate());
    let config = dnsward.config_path();
    let count = |args: &[&str]| {
        let mut all = vec!["search", "--json"];
        all.extend_from_slice(args);
        json_lines(&audit(&config, &all)).len()
    };
    assert_eq!(count(&["--decision", "blocked"]), 4);
    assert_eq!(count(&["--decision", "logged"]), 2);
    assert_eq!(count(&["--list", "exchanges"]), 4);
    // A list name the configuration does not have still searches (an earlier configuration
    // may have had it), with a warning that says so and suggests the name meant.
    let output = audit(&config, &["search", "--list", "Exchanges"]);
    assert!(output.status.success());
    assert!(!stdout(&output).contains("blocked.test"), "case-sensitive");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--list Exchanges") && stderr.contains("did you mean `exchanges`?"),
        "{stderr}"
    );
    let output = audit(&config, &["search", "--list", "exchanges"]);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(count(&["--domain", "blocked.test"]), 4, "suffix match");
    assert_eq!(count(&["--domain", "=blocked.test"]), 0, "exact match");
    // Cloaking: promo.shop.test was blocked for its CNAME target trade.binance.com, and an
    // auditor asking who reached binance.com finds those queries too.
    assert_eq!(count(&["--domain", "binance.com"]), 2, "via CNAME");
    assert_eq!(
        count(&["--domain", "=trade.binance.com"]),
        2,
        "via CNAME, exact"
    );
    let table = stdout(&audit(&config, &["search", "--domain", "binance.com"]));
    assert!(
        table.contains("promo.shop.test.") && table.contains("(via CNAME trade.binance.com.)"),
        "{table}"
    );
    assert_eq!(count(&["--qtype", "AAAA"]), 2);
    assert_eq!(count(&["--client", "127.0.0.2"]), 1);
    assert_eq!(count(&["--client", "127.0.0.1/32"]), 10);
    assert_eq!(count(&["--client", "127.0.0.0/24"]), 11);
    assert_eq!(count(&["--since", "1h"]), 11);
    assert_eq!(
        count(&[
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2001-01-01T00:00:00Z"
        ]),
        0
    );
    assert_eq!(count(&["--limit", "3"]), 3);
    for spelling in ["aaaa", "28", "type28", "TYPE28"] {
        assert_eq!(count(&["--qtype", spelling]), 2, "--qtype {spelling}");
    }
    assert_eq!(count(&["--domain", "."]), 11, "the root: every name");

    // Arguments that could never match are refused, naming the argument, instead of
    // printing an empty result.
    let missing = config.with_file_name("no-such-dir");
    let missing = missing.to_str().unwrap();
    for (args, says) in [
        (&["--qtype", "AAAAA"][..], "--qtype"),
        (&["--domain", "*.blocked.test"], "--domain"),
        (&["--domain", "bad domain!"], "--domain"),
        (&["--client", "nope"], "--client"),
        (&["--decision", "nope"], "--decision"),
        (&["--from", "yesterday"], "--from"),
        (&["--to", "2026-02-31T00:00:00.000000Z"], "--to"),
        (&["--since", "-1h"], "--since"),
        (&["--limit", "-1"], "--limit"),
        (
            &[
                "--from",
                "2026-12-02T00:00:00Z",
                "--to",
                "2026-12-01T00:00:00Z",
            ],
            "--from 2026-12-02T00:00:00.000000Z is not before --to",
        ),
        (
            &["--since", "1h", "--to", "2020-01-01T00:00:00Z"],
            "--since ",
        ),
        (&["--dir", missing], "--dir: "),
    ] {
        let mut all = vec!["search"];
        all.extend_from_slice(args);
        let output = audit(&config, &all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: {}", stdout(&output));
    }

    // An export of a period without records fails and leaves no file to be taken for one.
    let empty = config.with_file_name("empty-range.jsonl");
    let output = audit(
        &config,
        &[
            "export",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2001-01-01T00:00:00Z",
            "--output",
            empty.to_str().unwrap(),
        ],
    );
    // Its own exit status: a quiet period is not a damaged log (1) nor a bad command (2).
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no records in the time range"), "{stderr}");
    assert!(!empty.exists());

    let csv = stdout(&audit(
        &config,
        &["search", "--csv", "--decision", "blocked"],
    ));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "header + 4 rows: {csv}");
    assert!(lines[0].contains("qname"), "{csv}");
    let table = stdout(&audit(&config, &["search", "--decision", "logged"]));
    assert!(table.contains("www.watch.test."), "{table}");
    assert!(table.lines().count() >= 3, "header + rows: {table}");
}

#[test]
fn summary_counts_match_the_queries_sent() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "");
    send_known_queries(&dnsward);
    assert!(dnsward.terminate());
    let output = audit(&dnsward.config_path(), &["summary", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let text = summary.to_string();
    // 11 queries: 4 allowed (2 plain + 2 allow-list), 4 blocked, 2 logged, 1 refused.
    assert!(text.contains("\"allowed\":4"), "{text}");
    assert!(text.contains("\"blocked\":4"), "{text}");
    assert!(text.contains("\"logged\":2"), "{text}");
    assert!(text.contains("\"refused\":1"), "{text}");
    let plain = stdout(&audit(&dnsward.config_path(), &["summary"]));
    assert!(
        plain.contains("www.blocked.test."),
        "top blocked domains: {plain}"
    );
}

/// `dnsward audit keygen --out DIR/auditor`: the private and public key files it wrote.
fn auditor_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let prefix = dir.join("auditor");
    let keygen = dnsward_command()
        .args(["audit", "keygen", "--out"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let (private, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    assert!(
        private.is_file() && public.is_file(),
        "PREFIX.key and PREFIX.pub"
    );
    (private, public)
}

/// A signing key others can read is warned about when the server starts (as `check` does),
/// and still signs: secret mounts are often world-readable.
#[test]
fn serve_warns_of_an_exposed_signing_key_and_signs_with_it() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = Upstream::start();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = auditor_keys(keys.path());
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut dnsward = served(
        &upstream,
        &format!("[audit]\nsigning_key = \"{}\"\n", private.display()),
    );
    dnsward
        .wait_for_log(|line| {
            line.contains("WARN")
                && line.contains("audit.signing_key: ")
                && line.contains("mode 644")
        })
        .expect("a warning about the key's mode");
    ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert!(dnsward.terminate());
    let public = public.to_string_lossy().into_owned();
    let verify = audit(&dnsward.config_path(), &["verify", "--pubkey", &public]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

/// SIGINT (Ctrl-C in a terminal) stops as cleanly as SIGTERM: every record written, then the
/// stop record and a signed closing checkpoint as the log's last line.
#[test]
fn sigint_flushes_and_signs_before_exit() {
    let upstream = Upstream::start();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = auditor_keys(keys.path());
    let mut dnsward = served(
        &upstream,
        &format!(
            "[audit]\nsigning_key = \"{}\"\ncheckpoint_interval_secs = 20\n",
            private.display()
        ),
    );
    send_known_queries(&dnsward);
    assert!(dnsward.stop_with("INT"), "a clean exit on SIGINT");
    let config = dnsward.config_path();
    let public = public.to_string_lossy().into_owned();
    let verify = audit(&config, &["verify", "--pubkey", &public]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let all = json_lines(&audit(&config, &["export", "--format", "jsonl"]));
    let records: Vec<&Value> = all
        .iter()
        .filter(|r| r.get("seq").is_some() && r["type"] != "export_end")
        .collect();
    assert_eq!(
        records.iter().filter(|r| r["type"] == "query").count(),
        11,
        "every query written before exit"
    );
    let [.., stop, last] = records.as_slice() else {
        panic!("too few records: {records:#?}");
    };
    assert_eq!(stop["type"], "stop");
    assert_eq!(last["type"], "checkpoint");
    assert_eq!(last["close"], true);
    assert!(
        last["sig"].is_string(),
        "the closing checkpoint is signed: {last}"
    );
}

#[test]
fn a_second_instance_on_the_same_log_is_refused() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "[audit]\n");
    send_known_queries(&dnsward);
    let config = dnsward.config_path();

    // Same configuration, so the same log; its listen port is ephemeral, so without the lock
    // this second instance would start and write into the first one's chain.
    let (exited, output) = serve_expecting_exit(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited, "a second writer ran on the same log: {stderr}");
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "in use by another running dnsward (pid {})",
            dnsward.pid()
        )),
        "{stderr}"
    );
    // The error names the log's directory once, not once per layer.
    let dir = config.parent().unwrap().join("data").join("audit");
    let dir = dir.to_string_lossy();
    assert!(
        stderr
            .lines()
            .filter(|line| line.contains("in use by"))
            .all(|line| line.matches(&*dir).count() == 1),
        "{stderr}"
    );

    // The first instance goes on logging into a chain that only it wrote.
    ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert!(dnsward.terminate());
    let verify = audit(&config, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let all = json_lines(&audit(&config, &["export", "--format", "jsonl"]));
    assert_eq!(all.iter().filter(|r| r["type"] == "start").count(), 1);
    assert_eq!(all.iter().filter(|r| r["type"] == "query").count(), 12);

    // The lock goes with the process: a restart takes it again.
    dnsward.restart();
    ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert!(dnsward.terminate());
    let verify = audit(&config, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

/// With the audit log anonymised, the diagnostic log's decision lines show the client as the
/// audit log stores it, never the whole address it leaves out.
#[test]
fn diagnostics_show_clients_as_the_anonymised_log_does() {
    let upstream = Upstream::start();
    let dnsward = served(&upstream, "[audit]\nanonymize = \"truncate\"\n");
    ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    ask(
        dnsward.addr,
        Transport::Tcp,
        "www.blocked.test.",
        RecordType::A,
    );
    for name in ["www.test.", "www.blocked.test."] {
        let line = dnsward
            .wait_for_log(|line| line.contains(" decision ") && line.contains(name))
            .expect("a decision line");
        assert!(line.contains("client=127.0.0.0/24"), "{line}");
        assert!(!line.contains("client=127.0.0.1"), "{line}");
    }
}

/// The same for the server's own diagnostics: a message that does not parse is logged (at
/// debug) with the client as the anonymised log shows it, on UDP and on TCP.
#[test]
fn malformed_query_diagnostics_show_clients_anonymised() {
    let upstream = Upstream::start();
    let config = config_text_with_server(
        &[upstream.addr],
        "allow = [\"127.0.0.1/32\", \"::1/128\"]",
        &format!("[audit]\nanonymize = \"truncate\"\n{STANDARD_LIST_TABLES}"),
    );
    let level = "level = \"info,dnsward::decision=debug\"";
    assert!(config.contains(level), "{config}");
    let config = config.replace(
        level,
        "level = \"info,dnsward::decision=debug,dnsward::server=debug\"",
    );
    let dnsward = Dnsward::start(&config, STANDARD_LISTS);
    // A query whose question is cut short: answered FORMERR, logged as malformed.
    let (_, good) = build_query("www.test.", RecordType::A, &Ask::default());
    let cut = &good[..good.len() - 3];
    for (transport, target) in [
        (Transport::Udp, "dnsward::server::udp"),
        (Transport::Tcp, "dnsward::server::tcp"),
    ] {
        exchange_raw(dnsward.addr, transport, "127.0.0.1".parse().unwrap(), cut);
        let line = dnsward
            .wait_for_log(|line| line.contains("malformed query") && line.contains(target))
            .unwrap_or_else(|| panic!("a malformed-query line from {target}"));
        assert!(line.contains("client=127.0.0.0/24"), "{line}");
        assert!(!line.contains("127.0.0.1"), "{line}");
    }
}

/// A segment removed from the middle of the log: search and summary warn where records are
/// missing (their figures would pass for the whole log), and export fails, leaving the file
/// it would have replaced as it was (before: exit 0, and an export that does not verify).
#[test]
fn a_missing_segment_is_warned_of_and_stops_an_export() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "[audit]\nsegment_max_bytes = 4096\n");
    for i in 0..40 {
        ask(
            dnsward.addr,
            Transport::Udp,
            &format!("host{i}.test."),
            RecordType::A,
        );
    }
    assert!(dnsward.terminate());
    let segs = segments(&audit_dir(&dnsward));
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    let config = dnsward.config_path();
    for command in [&["search"][..], &["summary"]] {
        let output = audit(&config, command);
        assert!(output.status.success(), "{command:?}");
        let warning = String::from_utf8_lossy(&output.stderr);
        let before = segs[2].file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            warning.contains("warning: records seq")
                && warning.contains(&format!("are missing before {before}")),
            "{command:?}: {warning}"
        );
    }
    let file = dnsward.dir.path().join("old.jsonl");
    std::fs::write(&file, "the last good export\n").unwrap();
    let export = audit(&config, &["export", "-o", file.to_str().unwrap()]);
    assert_eq!(export.status.code(), Some(1));
    let error = String::from_utf8_lossy(&export.stderr);
    assert!(error.contains("nothing exported: records seq"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "the last good export\n"
    );
    // The intact log has no warning.
    std::fs::remove_dir_all(audit_dir(&dnsward)).unwrap();
    dnsward.restart();
    ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert!(dnsward.terminate());
    assert!(audit(&config, &["summary"]).stderr.is_empty());
}

/// A hashed log (anonymize = "hash") read without the configuration that wrote it: a search
/// by address cannot match, and says why instead of just finding nothing.
#[test]
fn a_hashed_log_searched_without_its_key_says_why_nothing_matches() {
    let upstream = Upstream::start();
    let mut files = STANDARD_LISTS.to_vec();
    files.push(("anon.key", "0123456789abcdef0123456789abcdef"));
    let config = config_text_with_server(
        &[upstream.addr],
        "allow = [\"127.0.0.1/32\", \"::1/128\"]",
        &format!(
            "[audit]\nanonymize = \"hash\"\nanonymize_key = \"anon.key\"\n{STANDARD_LIST_TABLES}"
        ),
    );
    let mut dnsward = Dnsward::start(&config, &files);
    ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert!(dnsward.terminate());
    let search = |config: &Path| {
        let dir = audit_dir(&dnsward);
        audit(
            config,
            &[
                "search",
                "--json",
                "--dir",
                dir.to_str().unwrap(),
                "--client",
                "127.0.0.1",
            ],
        )
    };
    // With its configuration the address is hashed with the key and found.
    let found = search(&dnsward.config_path());
    assert_eq!(json_lines(&found).len(), 1);
    // The diagnostic log shows the client as that hash, not the address.
    let hash = json_lines(&found)[0]["client"].as_str().unwrap().to_owned();
    let line = dnsward
        .log()
        .into_iter()
        .find(|line| line.contains(" decision ") && line.contains("www.test."))
        .expect("a decision line");
    assert!(line.contains(&format!("client={hash}")), "{hash}: {line}");
    assert!(
        found.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    // A network cannot be searched by hash: said plainly, as a wrong argument.
    let network = audit(
        &dnsward.config_path(),
        &["search", "--client", "127.0.0.0/24"],
    );
    assert_eq!(network.status.code(), Some(2));
    let message = String::from_utf8_lossy(&network.stderr);
    assert!(
        message.contains(
            "--client: 127.0.0.0/24: a network cannot be searched in a log whose clients are hashed"
        ) && !message.contains("expected an IP address or a CIDR network"),
        "{message}"
    );
    // With another one it cannot be.
    let other = dnsward.dir.path().join("other.toml");
    std::fs::write(&other, "").unwrap();
    let missed = search(&other);
    assert!(missed.status.success());
    assert!(json_lines(&missed).is_empty());
    let note = String::from_utf8_lossy(&missed.stderr);
    assert!(note.contains("stores hashed clients"), "{note}");
    // With none that can be read (the log copied to an auditor's machine), `--dir` still
    // works, and the search says the key is missing, whatever it finds.
    let unreadable = search(&dnsward.dir.path().join("not-there.toml"));
    assert!(unreadable.status.success());
    let note = String::from_utf8_lossy(&unreadable.stderr);
    assert!(
        note.contains("the configuration could not be read, so --client is matched against stored clients as they are")
            && note.contains("not-there.toml"),
        "{note}"
    );
}

#[test]
fn signed_log_verifies_and_tampering_is_named() {
    let upstream = Upstream::start();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = auditor_keys(keys.path());

    let mut dnsward = served(
        &upstream,
        &format!("[audit]\nsigning_key = \"{}\"\n", private.display()),
    );
    send_known_queries(&dnsward);
    assert!(dnsward.terminate());
    let config = dnsward.config_path();
    let public_arg = public.to_string_lossy().into_owned();

    let verify = audit(&config, &["verify", "--pubkey", &public_arg]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let report = stdout(&verify);
    assert!(report.contains("checkpoint"), "{report}");

    // An export verifies on its own.
    let export_path = dnsward.dir.path().join("export.jsonl");
    let export_arg = export_path.to_string_lossy().into_owned();
    assert!(
        audit(
            &config,
            &["export", "--format", "jsonl", "--output", &export_arg]
        )
        .status
        .success()
    );
    let verify_export = audit(&config, &["verify", "--pubkey", &public_arg, &export_arg]);
    assert!(verify_export.status.success(), "{}", stdout(&verify_export));
    // An export made whole is a success whoever stops reading the line that says so
    // (`export -o x.jsonl | true`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let unread_path = dnsward.dir.path().join("unread.jsonl");
    let unread = dnsward_command()
        .args(["audit", "export", "--format", "jsonl", "--output"])
        .arg(&unread_path)
        .arg("--config")
        .arg(&config)
        .stdout(writer)
        .status()
        .unwrap();
    assert!(unread.success(), "{unread}");
    let unread_arg = unread_path.to_string_lossy().into_owned();
    let verify_unread = audit(&config, &["verify", "--pubkey", &public_arg, &unread_arg]);
    assert!(verify_unread.status.success(), "{}", stdout(&verify_unread));
    // Through a pipe, as `ssh host dnsward audit export | dnsward audit verify /dev/stdin`,
    // both formats: the file is read once.
    let csv_path = dnsward.dir.path().join("export.csv");
    let csv_arg = csv_path.to_string_lossy().into_owned();
    let csv_export = audit(
        &config,
        &["export", "--format", "csv", "--output", &csv_arg],
    );
    assert!(csv_export.status.success());
    for (path, stdin) in [
        (&export_path, "/dev/stdin"),
        (&csv_path, "/dev/stdin"),
        (&export_path, "-"),
    ] {
        let mut verify = dnsward_command()
            .args(["audit", "verify", "--pubkey", &public_arg, stdin])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = verify.stdin.take().unwrap();
        let bytes = std::fs::read(path).unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            // The reader may stop early on a failure: a broken pipe is its answer, not ours.
            let _ = pipe.write_all(&bytes);
        });
        let verified = verify.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(
            verified.status.success(),
            "{}: {}",
            path.display(),
            stdout(&verified)
        );
    }

    // Change one byte of a stored record: verify fails and names the segment and sequence.
    let segment = segments(&audit_dir(&dnsward)).pop().unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    let tampered = text.replacen("www.blocked.test.", "www.blockeD.test.", 1);
    assert_ne!(text, tampered);
    std::fs::write(&segment, tampered).unwrap();
    let verify = audit(&config, &["verify", "--pubkey", &public_arg]);
    assert_eq!(verify.status.code(), Some(1));
    let report = format!(
        "{}{}",
        stdout(&verify),
        String::from_utf8_lossy(&verify.stderr)
    );
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(report.contains(&name), "{report}");
    assert!(report.to_lowercase().contains("modified"), "{report}");
    assert!(report.contains("seq"), "{report}");
    // Nor does it export: exit 1 and no file, not an export that `verify` fails later.
    let damaged_export = dnsward.dir.path().join("damaged.jsonl");
    let export = audit(
        &config,
        &[
            "export",
            "--format",
            "jsonl",
            "--output",
            &damaged_export.to_string_lossy(),
        ],
    );
    assert_eq!(export.status.code(), Some(1), "{}", stdout(&export));
    let said = String::from_utf8_lossy(&export.stderr);
    assert!(
        said.contains(&name) && said.contains("does not follow"),
        "{said}"
    );
    assert!(!damaged_export.exists());

    // A record made unreadable by a one-byte edit is not hidden from search without a word.
    let text = std::fs::read_to_string(&segment).unwrap();
    let unreadable = text.replacen("\"decision\":\"blocked\"", "\"decision\":\"blockedX\"", 1);
    assert_ne!(text, unreadable);
    std::fs::write(&segment, unreadable).unwrap();
    let search = audit(&config, &["search", "--csv"]);
    assert!(search.status.success());
    let warning = String::from_utf8_lossy(&search.stderr);
    assert!(
        warning.contains("1 record line(s) that may match could not be read"),
        "{warning}"
    );
    // Nor from a summary's figures (a line whose JSON is broken: one its scan cannot read).
    let text = std::fs::read_to_string(&segment).unwrap();
    let broken = text.replacen("\"qtype\":\"A\"", "\"qtype\":\"A", 1);
    assert_ne!(text, broken);
    std::fs::write(&segment, broken).unwrap();
    let summary = audit(&config, &["summary"]);
    assert!(summary.status.success());
    let warning = String::from_utf8_lossy(&summary.stderr);
    assert!(
        warning.contains("1 record line(s) could not be read"),
        "{warning}"
    );
    let figures: Value =
        serde_json::from_slice(&audit(&config, &["summary", "--json"]).stdout).unwrap();
    assert_eq!(figures["unreadable"], 1);
}

#[test]
fn kill_9_leaves_a_truncated_tail_not_tampering() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "[audit]\nfsync_interval_ms = 0\n");
    for index in 0..200 {
        ask(
            dnsward.addr,
            Transport::Udp,
            if index % 2 == 0 {
                "www.test."
            } else {
                "www.blocked.test."
            },
            RecordType::A,
        );
    }
    // Records still queued at a crash are lost by design; those written (and synced, with
    // `fsync_interval_ms = 0`) must survive. Wait until the writer has caught up, so what
    // survives is known, then crash with more queries in flight.
    let config = dnsward.config_path();
    let count = || json_lines(&audit(&config, &["search", "--json"])).len();
    assert!(eventually(|| count() == 200), "written: {}", count());
    for _ in 0..20 {
        ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    }
    dnsward.signal("KILL");
    assert!(eventually(|| !dnsward.is_running()));
    let dir = audit_dir(&dnsward);
    // Simulate the torn last write a crash can leave (kill -9 between write calls).
    let last = segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(b"{\"seq\":999999,\"prev\":\"00");
    std::fs::write(&last, &bytes).unwrap();

    let verify = audit(&config, &["verify"]);
    let report = stdout(&verify);
    assert!(
        verify.status.success(),
        "a torn tail is not tampering: {report}"
    );
    assert!(report.to_lowercase().contains("truncated"), "{report}");

    let records_before = json_lines(&audit(&config, &["search", "--json"])).len();
    assert!(
        (200..=220).contains(&records_before),
        "every record written before the crash survives: {records_before}"
    );

    // Restart: the chain continues past the torn tail, and the whole log still verifies.
    dnsward.restart();
    ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    assert!(dnsward.terminate());
    let after = json_lines(&audit(&config, &["search", "--json"])).len();
    assert_eq!(after, records_before + 1);
    let export = json_lines(&audit(&config, &["export", "--format", "jsonl"]));
    assert!(
        export.iter().any(|r| r["type"] == "recovered"),
        "the recovery is recorded"
    );
    let verify = audit(&config, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn a_full_queue_is_counted_and_recorded_as_a_gap() {
    let upstream = Upstream::start();
    // A one-slot queue and an fsync per batch: a burst must overflow it.
    let mut dnsward = served(
        &upstream,
        "[audit]\nqueue_capacity = 1\nfsync_interval_ms = 0\n",
    );
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let (_, query_bytes) = build_query("www.blocked.test.", RecordType::A, &Ask::default());
    for _ in 0..3000 {
        socket.send_to(&query_bytes, dnsward.addr).unwrap();
    }
    let mut buffer = [0u8; 1500];
    while socket.recv_from(&mut buffer).is_ok() {}
    assert!(dnsward.terminate());
    let (queries, gaps) = written_and_lost(&dnsward.config_path());
    assert!(gaps > 0, "the burst must overflow a one-slot queue");
    let answered = queries + gaps;
    assert!(
        answered <= 3000 && answered > 0,
        "queries {queries} + dropped {gaps}"
    );
}

/// After a clean stop: the query records in the log and the records counted in its gap
/// records, checking that the stop record counts the same drops and that the log verifies.
fn written_and_lost(config: &Path) -> (u64, u64) {
    let all = json_lines(&audit(config, &["export", "--format", "jsonl"]));
    let queries = all.iter().filter(|r| r["type"] == "query").count() as u64;
    let gaps: u64 = all
        .iter()
        .filter(|r| r["type"] == "gap")
        .map(|r| r["dropped"].as_u64().unwrap())
        .sum();
    let stop = all
        .iter()
        .find(|r| r["type"] == "stop")
        .expect("stop record");
    assert_eq!(
        stop["dropped"].as_u64().unwrap(),
        gaps,
        "every drop is in a gap record"
    );
    let verify = audit(config, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    (queries, gaps)
}

#[test]
fn retention_removes_old_segments_and_the_rest_verifies() {
    let upstream = Upstream::start();
    let mut dnsward = served(
        &upstream,
        "[audit]\nsegment_max_bytes = 4096\nretention_max_total_bytes = 16384\n",
    );
    for _ in 0..150 {
        ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
    }
    assert!(dnsward.terminate());
    let dir = audit_dir(&dnsward);
    let files = segments(&dir);
    let first = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_ne!(
        first, "seg-00000000000000000001.dwlog",
        "the oldest segments were removed"
    );
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        total <= 16384 + 4096 * 2,
        "retention keeps the total near its limit: {total}"
    );
    let verify = audit(&dnsward.config_path(), &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn reloads_are_audit_records_and_queries_name_their_generation() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "");
    let list = dnsward.dir.path().join("block.txt");
    std::fs::write(&list, "blocked.test\nwww.test\n").unwrap();
    assert!(eventually(|| {
        ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A)
            .metadata
            .response_code
            == ResponseCode::NXDomain
    }));
    std::fs::write(&list, "bad..line\n").unwrap();
    dnsward
        .wait_for_log(|line| line.contains("reload refused"))
        .expect("refused");
    assert!(dnsward.terminate());
    let all = json_lines(&audit(
        &dnsward.config_path(),
        &["export", "--format", "jsonl"],
    ));
    let loads: Vec<&Value> = all.iter().filter(|r| r["type"] == "load").collect();
    assert_eq!(loads.len(), 2, "start and one accepted reload");
    assert_eq!(loads[1]["generation"], 2);
    // Each load names the configuration file and every list by absolute path and hash, so an
    // auditor can show which content was in force.
    let config = std::path::absolute(dnsward.config_path()).unwrap();
    let sha256 = |path: &Path| hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()));
    for load in &loads {
        assert_eq!(
            load["config"]["path"],
            config.display().to_string(),
            "{load}"
        );
        assert_eq!(load["config"]["sha256"], sha256(&config), "{load}");
    }
    let block_list = loads[1]["lists"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["path"].as_str().unwrap().ends_with("block.txt"))
        .expect("the block list");
    assert!(
        Path::new(block_list["path"].as_str().unwrap()).is_absolute(),
        "{block_list}"
    );
    // The content of generation 2, not the broken edit refused after it.
    assert_eq!(
        block_list["sha256"],
        hex::encode(sha2::Sha256::digest(b"blocked.test\nwww.test\n"))
    );
    let start = all.iter().find(|r| r["type"] == "start").unwrap();
    assert_eq!(start["config"], config.display().to_string());
    let refused = all
        .iter()
        .find(|r| r["type"] == "reload_refused")
        .expect("refusal recorded");
    assert!(
        refused["errors"][0]
            .as_str()
            .unwrap()
            .contains("block.txt:1:")
    );
    let blocked_www = all
        .iter()
        .find(|r| r["type"] == "query" && r["qname"] == "www.test." && r["decision"] == "blocked")
        .expect("the new rule decided");
    assert_eq!(blocked_www["generation"], 2);
}

/// A reload whose config changes a setting that only a restart applies says so in its `load`
/// record, and so does every later one while the process runs on the old setting: the config
/// hash a load cites is otherwise a claim about settings that are not in force.
#[test]
fn load_records_name_the_settings_waiting_for_a_restart() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "");
    let config_path = dnsward.config_path();
    let config = std::fs::read_to_string(&config_path).unwrap();
    let allow = "allow = [\"127.0.0.1/32\", \"::1/128\"]";
    assert!(config.contains(allow));
    let edited = config.replace(allow, &format!("{allow}\ntcp_idle_timeout_secs = 7"));
    std::fs::write(&config_path, edited).unwrap();
    dnsward
        .wait_for_log(|line| line.contains("reload applied") && line.contains("generation=2"))
        .expect("config edit applied");
    std::fs::write(
        dnsward.dir.path().join("block.txt"),
        "blocked.test\nwww.test\n",
    )
    .unwrap();
    dnsward
        .wait_for_log(|line| line.contains("reload applied") && line.contains("generation=3"))
        .expect("list edit applied");
    assert!(dnsward.terminate());
    let all = json_lines(&audit(&config_path, &["export", "--format", "jsonl"]));
    let loads: Vec<&Value> = all.iter().filter(|r| r["type"] == "load").collect();
    assert_eq!(loads.len(), 3, "{loads:#?}");
    assert!(
        loads[0].get("waiting_for_restart").is_none(),
        "{}",
        loads[0]
    );
    for load in &loads[1..] {
        assert_eq!(
            load["waiting_for_restart"],
            serde_json::json!(["server.tcp_idle_timeout_secs"]),
            "{load}"
        );
    }
}

/// Sets the file size limit of process `pid` (as `prlimit --fsize` does).
#[allow(unsafe_code)]
fn limit_file_size(pid: u32, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid limit for a process of ours; the old value is not asked for.
    let result = unsafe {
        libc::prlimit(
            libc::pid_t::try_from(pid).unwrap(),
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
}

/// A log that cannot be written (here past the file size limit, which fails writes with EFBIG
/// as a full disk fails them with ENOSPC): the server goes on answering, counts the records it
/// cannot write, and once it can write again, a gap record says how many were lost.
#[test]
fn a_log_that_cannot_be_written_is_counted_and_recorded_as_a_gap() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "[audit]\nfsync_interval_ms = 0\n");
    // A few hundred records per file (the hard limit stays, so this cannot fail).
    limit_file_size(dnsward.pid(), 64 * 1024);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buffer = [0u8; 1500];
    let mut send = |count: usize| {
        let (_, query_bytes) = build_query("www.blocked.test.", RecordType::A, &Ask::default());
        let mut answered = 0;
        for _ in 0..count / 50 {
            for _ in 0..50 {
                socket.send_to(&query_bytes, dnsward.addr).unwrap();
            }
            // Stops at the first timeout: a dead server must fail the test, not stall it.
            answered += (0..50)
                .take_while(|_| socket.recv_from(&mut buffer).is_ok())
                .count();
        }
        answered
    };
    // About 350 KB of records: past the limit.
    let mut sent = 1000;
    assert_eq!(send(sent), sent, "the server answers while its log fails");
    let dir = audit_dir(&dnsward);
    let gap_written = || {
        let gap = br#""type":"gap","#;
        segments(&dir).iter().any(|path| {
            std::fs::read(path)
                .unwrap()
                .windows(gap.len())
                .any(|window| window == gap)
        })
    };
    assert!(
        eventually(gap_written),
        "a gap record once the log can be written"
    );
    assert_eq!(send(50), 50);
    sent += 50;
    assert!(dnsward.terminate(), "a clean stop");
    let config = dnsward.config_path();
    let (_, gaps) = written_and_lost(&config);
    assert!(gaps > 0, "records were lost, and counted");
    // Only this test's queries: a datagram another test sent to a port this server reuses
    // would be recorded too, and is named here rather than miscounted.
    let ours = socket.local_addr().unwrap().to_string();
    let (mine, others): (Vec<_>, Vec<_>) = json_lines(&audit(&config, &["search", "--json"]))
        .into_iter()
        .partition(|record| record["client"] == ours.as_str());
    assert_eq!(
        mine.len() as u64 + gaps,
        sent as u64,
        "each query written or counted; records from other clients: {others:?}"
    );
}

/// With `when_unwritable = "refuse"`, queries are refused (EDE 14) while the log cannot be
/// written, and answered again once it can.
#[test]
fn refuse_while_the_log_cannot_be_written() {
    let upstream = Upstream::start();
    let mut dnsward = served(
        &upstream,
        "[audit]\nfsync_interval_ms = 0\nwhen_unwritable = \"refuse\"\n",
    );
    let answer = |name: &str| ask(dnsward.addr, Transport::Udp, name, RecordType::A);
    assert_eq!(
        answer("www.test.").metadata.response_code,
        ResponseCode::NoError
    );
    limit_file_size(dnsward.pid(), 64 * 1024);
    let refused = |reply: &hickory_proto::op::Message| {
        reply.metadata.response_code == ResponseCode::Refused
            && ede(reply).is_some_and(|(code, _)| code == 14)
    };
    // Each query adds a record; a few hundred fill the allowed size.
    assert!(
        eventually(|| (0..50).any(|_| refused(&answer("www.blocked.test.")))),
        "refused once the log cannot be written"
    );
    for transport in BOTH {
        let reply = ask(dnsward.addr, transport, "www.test.", RecordType::A);
        assert!(refused(&reply), "{transport:?}: {reply:?}");
    }
    limit_file_size(dnsward.pid(), libc::RLIM_INFINITY);
    assert!(
        eventually(|| answer("www.test.").metadata.response_code == ResponseCode::NoError),
        "answered again once the log can be written"
    );
    assert!(dnsward.terminate());
    let config = dnsward.config_path();
    let verify = audit(&config, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let all = json_lines(&audit(&config, &["export", "--format", "jsonl"]));
    assert!(
        all.iter().any(|r| r["type"] == "gap"),
        "the outage's loss is recorded"
    );
}

/// A datagram that does not parse as a query is still answered (FORMERR), so it is recorded
/// like any answer: one record per answer sent, `. ZERO`, decision `error`.
#[test]
fn an_unparsable_query_answered_formerr_is_recorded() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "");
    let (_, good) = build_query("www.test.", RecordType::A, &Ask::default());
    for transport in BOTH {
        let reply = hickory_proto::op::Message::from_vec(&exchange_raw(
            dnsward.addr,
            transport,
            "127.0.0.1".parse().unwrap(),
            &good[..good.len() - 3],
        ))
        .unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }
    assert!(dnsward.terminate());
    let records = json_lines(&audit(&dnsward.config_path(), &["search", "--json"]));
    assert_eq!(records.len(), 2, "{records:#?}");
    let mut transports = Vec::new();
    for record in &records {
        assert_eq!(record["rcode"], "FORMERR");
        assert_eq!(record["decision"], "error");
        assert_eq!(record["qname"], ".");
        assert_eq!(record["qtype"], "ZERO");
        transports.push(record["transport"].as_str().unwrap().to_owned());
    }
    // Either order: the UDP record is handed over at the end of its receive batch.
    transports.sort();
    assert_eq!(transports, ["tcp", "udp"]);
    // FORMAT.md points auditors at `qtype ZERO` for these: the name finds them, as the
    // number does.
    for spelling in ["ZERO", "zero", "0"] {
        let found = json_lines(&audit(
            &dnsward.config_path(),
            &["search", "--json", "--qtype", spelling],
        ));
        assert_eq!(found.len(), 2, "--qtype {spelling}");
    }
}

/// Queries from outside `server.allow` are recorded within `outsider_records_per_sec`; past it
/// they are still answered, and counted in `suppressed` records in the chain, so a flood from
/// outside cannot fill the log (and make retention remove older records) while every query
/// stays accounted for. Clients inside `allow` are never limited.
#[test]
fn outsider_records_over_the_limit_are_counted_not_written() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "[audit]\noutsider_records_per_sec = 1");
    let outsider: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let from_outside = Ask {
        source: outsider,
        ..Ask::default()
    };
    // One a second are recorded: 40 refused queries and 10 FORMERR datagrams would have to
    // take 50 s for all to be written one by one.
    for _ in 0..20 {
        for transport in BOTH {
            let reply = query(
                dnsward.addr,
                transport,
                "www.test.",
                RecordType::A,
                &from_outside,
            );
            assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        }
    }
    let (_, good) = build_query("www.test.", RecordType::A, &Ask::default());
    for _ in 0..10 {
        let reply = exchange_raw(
            dnsward.addr,
            Transport::Udp,
            outsider,
            &good[..good.len() - 3],
        );
        let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }
    // Insiders are recorded one by one whatever the outsiders did.
    for _ in 0..10 {
        ask(
            dnsward.addr,
            Transport::Udp,
            "www.blocked.test.",
            RecordType::A,
        );
    }
    assert!(dnsward.terminate());
    let config = dnsward.config_path();
    assert!(
        dnsward
            .log()
            .iter()
            .any(|line| line.contains("audit_outsiders_suppressed_total")),
        "the stop figures name the suppressed records"
    );

    let export = json_lines(&audit(&config, &["export", "--format", "jsonl"]));
    let from = |record: &&Value| {
        record["client"]
            .as_str()
            .is_some_and(|client| client.starts_with("127.0.0.2:"))
    };
    let outsider_records = export
        .iter()
        .filter(|r| r["type"] == "query")
        .filter(from)
        .count();
    let suppressed: u64 = export
        .iter()
        .filter(|r| r["type"] == "suppressed")
        .map(|r| r["records"].as_u64().unwrap())
        .sum();
    assert!(
        suppressed > 0,
        "nothing was suppressed: {outsider_records} written"
    );
    assert_eq!(
        outsider_records as u64 + suppressed,
        50,
        "every outsider query is either written or counted"
    );
    let insiders = export
        .iter()
        .filter(|r| r["type"] == "query" && r["qname"] == "www.blocked.test.")
        .count();
    assert_eq!(insiders, 10);
    for record in export.iter().filter(|r| r["type"] == "suppressed") {
        assert!(
            record["first"].as_str() <= record["last"].as_str(),
            "{record}"
        );
    }

    // The summary reports them; the log verifies.
    let summary = audit(&config, &["summary", "--json"]);
    let summary: Value = serde_json::from_str(&stdout(&summary)).unwrap();
    assert_eq!(summary["suppressed"], suppressed);
    let text = stdout(&audit(&config, &["summary"]));
    assert!(
        text.contains(&format!(
            "outsider_records_per_sec, see suppressed records): {suppressed}"
        )),
        "{text}"
    );
    let verify = audit(&config, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

/// An allow rule lets the question through, but a log-only name reached through its CNAME
/// chain is still recorded as such: monitoring sees every touch of a watched name.
#[test]
fn a_watched_name_behind_an_allowed_question_is_recorded() {
    let upstream = Upstream::start();
    let config = config_text_with_server(
        &[upstream.addr],
        "allow = [\"127.0.0.1/32\"]",
        STANDARD_LIST_TABLES,
    );
    let lists: Vec<(&str, &str)> = STANDARD_LISTS
        .iter()
        .map(|&(file, text)| match file {
            "allow.txt" => (file, "pay.blocked.test\nwatched-alias.test\n"),
            _ => (file, text),
        })
        .collect();
    let mut dnsward = Dnsward::start(&config, &lists);
    let reply = ask(
        dnsward.addr,
        Transport::Udp,
        "watched-alias.test.",
        RecordType::A,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(dnsward.terminate());
    let records = json_lines(&audit(&dnsward.config_path(), &["search", "--json"]));
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["decision"], "logged");
    assert_eq!(records[0]["rule"]["list"], "watch");
    assert_eq!(records[0]["rule"]["trigger"]["kind"], "cname");
    assert_eq!(records[0]["rule"]["trigger"]["matched"], "www.watch.test.");
}

/// A UDP answer too large for the client's buffer goes out truncated (TC, only the records
/// that fit); its record summarises what was sent, not the whole answer section.
#[test]
fn a_truncated_udp_answer_is_recorded_as_sent() {
    let upstream = Upstream::start();
    let mut dnsward = served(&upstream, "");
    let small = Ask {
        payload: 512,
        ..Ask::default()
    };
    let udp = query(
        dnsward.addr,
        Transport::Udp,
        "big.test.",
        RecordType::TXT,
        &small,
    );
    assert!(udp.metadata.truncation);
    let sent = udp.answers.len();
    assert!(sent < 40, "{sent}");
    let tcp = query(
        dnsward.addr,
        Transport::Tcp,
        "big.test.",
        RecordType::TXT,
        &small,
    );
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 40);
    assert!(dnsward.terminate());
    let records = json_lines(&audit(&dnsward.config_path(), &["search", "--json"]));
    assert_eq!(records.len(), 2, "{records:#?}");
    let answer = |transport: &str| {
        let record = records
            .iter()
            .find(|record| record["transport"] == transport)
            .unwrap();
        record["answer"].as_str().unwrap().to_owned()
    };
    let udp_answer = answer("udp");
    assert!(
        udp_answer.ends_with(&format!("(truncated, TC: {sent} of 40 records sent)")),
        "{udp_answer}"
    );
    assert_eq!(
        udp_answer.matches("TXT \"record").count(),
        sent.min(8),
        "{udp_answer}"
    );
    let tcp_answer = answer("tcp");
    assert!(tcp_answer.ends_with(", ... (40 records)"), "{tcp_answer}");
    assert!(!tcp_answer.contains("truncated"), "{tcp_answer}");
}

/// A resolution that fails is recorded with the upstream that failed as its source, and a
/// watched name stays `logged` (with rcode SERVFAIL): monitoring sees the attempt even when no
/// answer could be had; an unlisted name is an `error`.
#[test]
fn a_failed_resolution_names_the_upstream_and_keeps_a_watched_name_logged() {
    let (dead, _socket) = dead_upstream();
    let config =
        config_text_with_server(&[dead], "allow = [\"127.0.0.1/32\"]", STANDARD_LIST_TABLES);
    let mut dnsward = Dnsward::start(&config, STANDARD_LISTS);
    for name in ["www.watch.test.", "www.test."] {
        let reply = ask(dnsward.addr, Transport::Udp, name, RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }
    assert!(dnsward.terminate());
    let records = json_lines(&audit(&dnsward.config_path(), &["search", "--json"]));
    assert_eq!(records.len(), 2, "{records:#?}");
    let record = |qname: &str| {
        records
            .iter()
            .find(|record| record["qname"] == qname)
            .unwrap()
    };
    let watched = record("www.watch.test.");
    assert_eq!(watched["decision"], "logged", "{watched:#}");
    assert_eq!(watched["rule"]["list"], "watch");
    assert_eq!(watched["rcode"], "SERVFAIL");
    assert_eq!(watched["ede"], 22);
    assert_eq!(watched["source"], dead.to_string());
    let unlisted = record("www.test.");
    assert_eq!(unlisted["decision"], "error", "{unlisted:#}");
    assert_eq!(unlisted["source"], dead.to_string());
    let logged = json_lines(&audit(
        &dnsward.config_path(),
        &["search", "--json", "--decision", "logged"],
    ));
    assert_eq!(logged.len(), 1, "{logged:#?}");
}

/// `audit search --follow`: the matches so far, then each new match as it is logged, across
/// segment rotations (4 KiB segments: a few records each), each exactly once, in log order.
#[test]
fn search_follow_prints_new_matches_as_they_are_logged() {
    let upstream = Upstream::start();
    let dnsward = served(&upstream, "[audit]\nsegment_max_bytes = 4096\n");
    ask(
        dnsward.addr,
        Transport::Udp,
        "www.blocked.test.",
        RecordType::A,
    );
    let mut follower = dnsward_command()
        .args([
            "audit",
            "search",
            "--follow",
            "--json",
            "--decision",
            "blocked",
        ])
        .arg("--config")
        .arg(dnsward.config_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = printed
            .recv_timeout(IO_GUARD)
            .expect("the follower printed the next match");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next()["qname"], "www.blocked.test.");
    let mut expected = Vec::new();
    for index in 0..15 {
        let name = format!("b{index}.blocked.test.");
        ask(dnsward.addr, Transport::Udp, &name, RecordType::A);
        ask(dnsward.addr, Transport::Udp, "www.test.", RecordType::A);
        expected.push(name);
    }
    // In log order (seq), which is not quite the order sent: the UDP worker threads hand
    // their records over in batches of their own.
    let mut seqs = Vec::new();
    let mut followed: Vec<String> = (0..expected.len())
        .map(|_| {
            let record = next();
            assert_eq!(record["decision"], "blocked", "{record}");
            seqs.push(record["seq"].as_u64().unwrap());
            record["qname"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(seqs.is_sorted(), "{seqs:?}");
    followed.sort();
    expected.sort();
    assert_eq!(followed, expected, "each exactly once");
    assert!(
        segments(&audit_dir(&dnsward)).len() > 3,
        "the log rotated while followed"
    );
    // Nothing else: the next line is the next blocked query's.
    ask(
        dnsward.addr,
        Transport::Udp,
        "last.blocked.test.",
        RecordType::A,
    );
    assert_eq!(next()["qname"], "last.blocked.test.");
    follower.kill().unwrap();
    follower.wait().unwrap();
}
