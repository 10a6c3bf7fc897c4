//! The command line: `check`, `serve` start-up failures, `--help`, `--version`, and the shipped
//! configuration and lists.

mod common;

use std::process::Output;

use common::*;
use hickory_proto::{op::ResponseCode, rr::RecordType};

fn run(args: &[&str]) -> Output {
    dnsward_command().args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A config directory with `config` and `files`; returns it and the config path.
fn setup(config: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    let path = dir.path().join("dnsward.toml");
    std::fs::write(&path, config).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

const UPSTREAM: &str = "127.0.0.1:9";

#[test]
fn version_and_help() {
    let output = run(&["--version"]);
    assert!(output.status.success());
    assert!(
        stdout(&output).starts_with("dnsward "),
        "{}",
        stdout(&output)
    );
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    for needle in ["serve", "check", "Examples:", "dig @127.0.0.1 -p 5353"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let output = run(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("frobnicate"));
}

#[test]
fn check_accepts_the_shipped_config_and_prints_rule_counts() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dnsward.toml");
    let output = run(&["check", "--config", config]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("exchanges"), "{report}");
    assert!(report.contains("257 rules"), "{report}");
    assert!(report.contains("otc-payments"), "{report}");
    assert!(report.contains("33 rules"), "{report}");
    assert!(report.contains("log-only"), "{report}");
}

#[test]
fn check_warns_of_a_rule_that_covers_a_whole_tld() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[[list]]\nname = \"x\"\npath = \"x.txt\"\n"
    );
    let (_dir, path) = setup(
        &config,
        &[("x.txt", "0.0.0.0 ads.example.com\n0.0.0.0 co\n")],
    );
    let output = run(&["check", "--config", &path]);
    // A warning, not a refusal: blocking a TLD can be meant.
    assert!(output.status.success(), "{}", stderr(&output));
    let list = std::path::Path::new(&path).with_file_name("x.txt");
    assert!(
        stderr(&output).contains(&format!(
            "warning: {}:2: rule \"co\" covers a whole top-level domain",
            list.display()
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_config_key_names_file_line_and_key() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[forward]\nupstreams = [\"{UPSTREAM}\"]\ntimeout = 5\n"
    );
    let (_dir, path) = setup(&config, &[]);
    for command in ["check", "serve"] {
        let output = run(&[command, "--config", &path]);
        assert!(!output.status.success(), "{command} must fail");
        let message = stderr(&output);
        assert!(
            message.contains(&format!("{path}:6:")),
            "{command}: {message}"
        );
        assert!(message.contains("timeout"), "{command}: {message}");
    }
}

#[test]
fn bad_values_name_their_line() {
    let cases = [
        ("allow = [\"10.0.0.0/8\", \"not-a-net\"]", ""),
        ("threads = 5000", " server.threads: must be at most 1024"),
        (
            "tcp_max_connections = 0",
            " server.tcp_max_connections: must be at least 1",
        ),
        (
            "tcp_max_connections_per_client = 0",
            " server.tcp_max_connections_per_client: must be at least 1",
        ),
    ];
    for (line, reason) in cases {
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{line}\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n"
        );
        let (_dir, path) = setup(&config, &[]);
        let output = run(&["check", "--config", &path]);
        assert_eq!(output.status.code(), Some(1), "{line}");
        let message = stderr(&output);
        assert!(message.contains(&format!("{path}:3:{reason}")), "{message}");
    }
}

#[test]
fn bad_list_lines_fail_check_and_serve_naming_every_path_and_line() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[[list]]\nname = \"x\"\npath = \"x.txt\"\n"
    );
    let list =
        "# header\ngood.example\nexa mple.com\n||ads.example^$third-party\nalso-good.example\n";
    let (_dir, path) = setup(&config, &[("x.txt", list)]);
    let list_path = std::path::Path::new(&path).with_file_name("x.txt");
    let list_path = list_path.to_string_lossy();
    for command in ["check", "serve"] {
        let output = run(&[command, "--config", &path]);
        assert!(
            !output.status.success(),
            "{command} must refuse a broken list"
        );
        let message = stderr(&output);
        assert!(
            message.contains(&format!("{list_path}:3:")),
            "{command}: {message}"
        );
        assert!(
            message.contains(&format!("{list_path}:4:")),
            "{command}: {message}"
        );
        assert!(
            !message.contains(&format!("{list_path}:2:")),
            "{command}: {message}"
        );
    }
}

#[test]
fn on_invalid_skip_loads_the_rest_and_warns() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[[list]]\nname = \"feed\"\npath = \"feed.txt\"\non_invalid = \"skip\"\n"
    );
    let list = "0.0.0.0 a.example\n0.0.0.0 bad..example\n0.0.0.0 b.example\n";
    let (_dir, path) = setup(&config, &[("feed.txt", list)]);
    let output = run(&["check", "--config", &path]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("2 rules"), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("feed.txt:2:"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_list_file_is_named() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[[list]]\nname = \"x\"\npath = \"nope.txt\"\n"
    );
    let (_dir, path) = setup(&config, &[]);
    let output = run(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("nope.txt"), "{}", stderr(&output));
}

#[test]
fn serve_without_upstreams_refuses_to_start() {
    let (_dir, path) = setup("[server]\nlisten = [\"127.0.0.1:0\"]\n", &[]);
    let output = run(&["serve", "--config", &path]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("forward.upstreams"),
        "{}",
        stderr(&output)
    );
}

/// The shipped config and lists, pointed at a test upstream: the exchanges are blocked with
/// NXDOMAIN + EDE 15, the OTC sites only logged.
#[test]
fn shipped_lists_block_exchanges_and_watch_otc_sites() {
    let upstream = Upstream::start();
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = std::fs::read_to_string(format!("{root}/config/dnsward.toml")).unwrap();
    let config = shipped
        .replace(
            "listen = [\"127.0.0.1:5353\"]",
            "listen = [\"127.0.0.1:0\"]",
        )
        .replace(
            "upstreams  = [\"1.1.1.1:53\", \"9.9.9.9:53\", \"8.8.8.8:53\"]",
            &format!("upstreams = [\"{}\"]", upstream.addr),
        )
        .replace("data_dir = \"../var\"", "data_dir = \"data\"")
        .replace(
            "level  = \"info\"",
            "level  = \"info,dnsward::decision=debug\"",
        )
        .replace("\"../lists/", &format!("\"{root}/lists/"))
        // Forward mode: the test has no Internet root servers to recurse to.
        .replace("enabled           = true", "enabled           = false");
    assert!(config.contains("data_dir = \"data\""));
    assert!(config.contains("127.0.0.1:0") && config.contains(&upstream.addr.to_string()));
    assert!(config.contains("enabled           = false"));
    let dnsward = Dnsward::start(&config, &[]);
    for name in ["binance.com.", "www.binance.com.", "api.okx.com."] {
        let reply = ask(dnsward.addr, Transport::Udp, name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert_eq!(ede(&reply).unwrap().0, 15, "{name}");
    }
    // paxful.com is in the log-only OTC list: answered (here: the upstream has no such zone and
    // refuses), never blocked.
    let reply = ask(dnsward.addr, Transport::Udp, "paxful.com.", RecordType::A);
    assert_ne!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ede(&reply).map(|e| e.0).filter(|code| *code == 15), None);
    dnsward
        .wait_for_log(|line| {
            line.contains("decision=\"logged\"") && line.contains("list=\"otc-payments\"")
        })
        .expect("the OTC match is recorded");
}

#[test]
fn serve_names_a_missing_audit_key_once() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[audit]\nsigning_key = \"missing.key\"\n"
    );
    let (_dir, path) = setup(&config, &[]);
    let output = run(&["serve", "--config", &path]);
    // A configuration problem, found before anything starts (as `check` finds it): exit 2.
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    let last = message.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("{path}: audit.signing_key: ")) && last.contains("missing.key"),
        "{message}"
    );
    assert_eq!(message.matches("missing.key").count(), 1, "{message}");
    // The cause is named once, not once per level of the error chain.
    assert_eq!(last.matches("os error 2").count(), 1, "{message}");
}

/// A signing key others can read still signs (secret mounts are often world-readable), but
/// `check` says so; the public key given by mistake is refused.
#[test]
fn check_warns_of_an_exposed_signing_key_and_refuses_the_public_one() {
    use std::os::unix::fs::PermissionsExt;
    let config = |key: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[audit]\nsigning_key = \"{key}\"\n"
        )
    };
    let (dir, path) = setup(&config("audit.key"), &[]);
    let keygen = run(&[
        "audit",
        "keygen",
        "--out",
        &dir.path().join("audit").to_string_lossy(),
    ]);
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let output = run(&["check", "--config", &path]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));

    std::fs::set_permissions(
        dir.path().join("audit.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let output = run(&["check", "--config", &path]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("warning: audit.signing_key: ")
            && stderr(&output).contains("mode 644"),
        "{}",
        stderr(&output)
    );

    std::fs::write(&path, config("audit.pub")).unwrap();
    let output = run(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("audit.signing_key") && stderr(&output).contains("public key"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_validates_the_audit_key_and_recursion_files() {
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[audit]\nsigning_key = \"missing.key\"\n"
    );
    let (_dir, path) = setup(&config, &[]);
    let output = run(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("audit.signing_key"),
        "{}",
        stderr(&output)
    );

    // The anonymize key as `serve` reads it: missing, or too short to be a secret; one others
    // can read is a warning (with the log, it undoes the hashing).
    use std::os::unix::fs::PermissionsExt;
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[audit]\nanonymize = \"hash\"\nanonymize_key = \"anon.key\"\n"
    );
    let (dir, path) = setup(&config, &[]);
    let key = dir.path().join("anon.key");
    for (contents, expected) in [(None, "anon.key"), (Some("short\n"), "at least 16 bytes")] {
        if let Some(contents) = contents {
            std::fs::write(&key, contents).unwrap();
        }
        let output = run(&["check", "--config", &path]);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains("audit.anonymize_key") && message.contains(expected),
            "{message}"
        );
    }
    // `keygen --anonymize` writes one that checks, without a warning, and never replaces it.
    std::fs::remove_file(&key).unwrap();
    let key_arg = key.to_str().unwrap();
    let keygen = run(&["audit", "keygen", "--anonymize", "--out", key_arg]);
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    assert!(
        String::from_utf8_lossy(&keygen.stdout).contains("anonymize key: "),
        "{}",
        String::from_utf8_lossy(&keygen.stdout)
    );
    let written = std::fs::read(&key).unwrap();
    let output = run(&["check", "--config", &path]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));
    let again = run(&["audit", "keygen", "--anonymize", "--out", key_arg]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert_eq!(std::fs::read(&key).unwrap(), written);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(&["check", "--config", &path]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("warning: audit.anonymize_key: ")
            && stderr(&output).contains("mode 644"),
        "{}",
        stderr(&output)
    );

    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[forward]\nupstreams = [\"{UPSTREAM}\"]\n[recursion]\nenabled = true\nroot_hints = \"nope.hints\"\n"
    );
    let (_dir, path) = setup(&config, &[]);
    let output = run(&["check", "--config", &path]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("recursion") && message.contains("nope.hints"),
        "{message}"
    );
    // `serve` refuses it as a configuration problem: exit 2 (it was 1), said once (it was
    // said twice, as a log line and again on standard error).
    let output = run(&["serve", "--config", &path]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(
        stderr(&output).matches("nope.hints").count(),
        1,
        "{}",
        stderr(&output)
    );
}

/// A start that fails at the sockets (the port is taken) leaves no manifest saying its
/// configuration serves: `lists diff` on it reported "serving generation 1" for a process
/// that never answered.
#[test]
fn a_start_that_cannot_listen_records_no_serving_generation() {
    let upstream = Upstream::start();
    let mut first = Dnsward::standard(&upstream, "");
    let config = config_text(&[upstream.addr], STANDARD_LIST_TABLES).replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{}\"]", first.addr),
    );
    assert!(config.contains(&first.addr.to_string()), "{config}");
    let (dir, path) = setup(&config, STANDARD_LISTS);
    let (exited, output) = serve_expecting_exit(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited, "a second server ran on a taken port: {stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    let manifest = dir.path().join("data").join("served").join("serving.json");
    assert!(!manifest.exists(), "{} written", manifest.display());
    assert!(first.is_running());
}

/// Skipped list lines at a start go through the logger (a JSON log stays JSON: they were
/// plain `warning:` lines on stderr), the first 20 one by one and the rest as a count, as at a
/// reload (which logged every one); `check` lists them all.
#[test]
fn skipped_lines_are_logged_capped_and_checked_in_full() {
    let upstream = Upstream::start();
    let mut feed = String::from("good.test\n");
    for i in 0..25 {
        feed.push_str(&format!("bad{i}..test\n"));
    }
    let tables = "[[list]]\nname = \"feed\"\npath = \"feed.txt\"\non_invalid = \"skip\"\n";
    let level = "level = \"info,dnsward::decision=debug\"";
    let config = config_text(&[upstream.addr], tables);
    assert!(config.contains(level), "{config}");
    let config = config.replace(level, &format!("{level}\nformat = \"json\""));
    let dnsward = Dnsward::start(&config, &[("feed.txt", &feed)]);
    let log = dnsward.log();
    for line in &log {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    let skipped = log.iter().filter(|line| line.contains("(skipped)")).count();
    assert_eq!(skipped, 20, "{log:#?}");
    assert!(
        log.iter()
            .any(|line| line.contains("and 5 more skipped line(s)")),
        "{log:#?}"
    );

    let (_dir, path) = setup(&config, &[("feed.txt", &feed)]);
    let output = run(&["check", "--config", &path]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("(skipped)").count(), 25, "{stderr}");
}

/// A second instance on the same data directory is refused, naming the first: each writes the
/// record of the generation it serves there, and they overwrote each other's (`lists diff` and
/// auditors then read the other instance's lists). Each has its own audit log here, as the
/// audit log's own refusal had advised.
#[test]
fn a_second_instance_on_the_same_data_dir_is_refused() {
    let upstream = Upstream::start();
    let shared = tempfile::tempdir().unwrap();
    let config_for = |audit: &str| {
        config_text_with_server(
            &[upstream.addr],
            &format!("data_dir = \"{}\"", shared.path().display()),
            &format!("[audit]\ndir = \"{audit}\"\n{STANDARD_LIST_TABLES}"),
        )
    };
    let first = Dnsward::start(&config_for("audit-a"), STANDARD_LISTS);
    let second = tempfile::tempdir().unwrap();
    write_files(second.path(), STANDARD_LISTS);
    let config = second.path().join("dnsward.toml");
    std::fs::write(
        &config,
        config_for(&second.path().join("audit-b").display().to_string()),
    )
    .unwrap();
    let (exited, output) = serve_expecting_exit(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        exited,
        "a second instance ran on the same data_dir: {stderr}"
    );
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "in use by another running dnsward (pid {})",
            first.pid()
        )) && stderr.contains("server.data_dir"),
        "{stderr}"
    );
    assert_eq!(
        ask(first.addr, Transport::Udp, "www.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NoError
    );
}

/// An open resolver (an `allow` of every address, on a non-loopback listen address) starts,
/// with a warning that says what it is; a loopback-only one says nothing. It had been
/// accepted without a word.
#[test]
fn an_open_resolver_is_warned_about() {
    let upstream = Upstream::start();
    let open = |listen: &str| {
        format!(
            "[server]\nlisten = [\"{listen}\"]\nallow = [\"0.0.0.0/0\"]\n\n[forward]\nupstreams = [\"{}\"]\n",
            upstream.addr
        )
    };
    let port = free_wildcard_port();
    let exposed = Dnsward::start(&open(&format!("0.0.0.0:{port}")), &[]);
    assert!(
        exposed
            .wait_for_log(|line| line.contains("this is an open resolver"))
            .is_some()
    );
    let local = Dnsward::start(&open("127.0.0.1:0"), &[]);
    assert_eq!(
        ask(local.addr, Transport::Udp, "www.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    assert!(
        !local
            .log()
            .iter()
            .any(|line| line.contains("open resolver")),
        "{:#?}",
        local.log()
    );
}
