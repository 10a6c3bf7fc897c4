//! Hot reload against the real binary: each trigger (write in place, rename, symlink swap,
//! SIGHUP) changes answers; broken edits change nothing and are reported with path:line; queries
//! never fail while lists reload.

mod common;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::*;
use hickory_proto::{op::ResponseCode, rr::RecordType};

const BLOCK_TABLES: &str = "[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n";

fn rcode(dnsward: &Dnsward, name: &str) -> ResponseCode {
    ask(dnsward.addr, Transport::Udp, name, RecordType::A)
        .metadata
        .response_code
}

fn start(upstream: &Upstream, reload: &str) -> Dnsward {
    let config = config_text(&[upstream.addr], &format!("{reload}\n{BLOCK_TABLES}"));
    Dnsward::start(&config, &[("block.txt", "blocked.test\n")])
}

#[test]
fn write_in_place_edit_changes_answers() {
    let upstream = Upstream::start();
    let dnsward = start(&upstream, "");
    assert!(!blocked(&dnsward, "www.test."));
    std::fs::write(
        dnsward.dir.path().join("block.txt"),
        "blocked.test\nwww.test\n",
    )
    .unwrap();
    assert!(
        eventually(|| blocked(&dnsward, "www.test.")),
        "edit not applied"
    );
    assert!(blocked(&dnsward, "blocked.test."));
    // Decisions now name the new generation.
    dnsward
        .wait_for_log(|line| line.contains("decision=\"blocked\"") && line.contains("generation=2"))
        .expect("decision records carry the generation");
}

#[test]
fn save_by_rename_changes_answers() {
    let upstream = Upstream::start();
    let dnsward = start(&upstream, "");
    let dir = dnsward.dir.path();
    std::fs::write(dir.join("block.txt.tmp"), "www.test\n").unwrap();
    std::fs::rename(dir.join("block.txt.tmp"), dir.join("block.txt")).unwrap();
    assert!(eventually(|| blocked(&dnsward, "www.test.")));
    assert!(!blocked(&dnsward, "blocked.test."), "the old rule is gone");
}

/// Kubernetes ConfigMap style: `block.txt -> ..data/block.txt`, `..data -> v1`, and an update
/// swaps `..data` to a new directory with one atomic rename.
#[test]
fn symlink_swap_changes_answers() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let lists = dir.path().join("lists");
    std::fs::create_dir_all(lists.join("v1")).unwrap();
    std::fs::write(lists.join("v1/block.txt"), "blocked.test\n").unwrap();
    std::os::unix::fs::symlink("v1", lists.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/block.txt", lists.join("block.txt")).unwrap();
    let tables = format!(
        "[[list]]\nname = \"exchanges\"\npath = \"{}\"\n",
        lists.join("block.txt").display()
    );
    let dnsward = Dnsward::start(&config_text(&[upstream.addr], &tables), &[]);
    assert!(blocked(&dnsward, "blocked.test."));
    assert!(!blocked(&dnsward, "www.test."));

    std::fs::create_dir_all(lists.join("v2")).unwrap();
    std::fs::write(lists.join("v2/block.txt"), "www.test\n").unwrap();
    std::os::unix::fs::symlink("v2", lists.join("..data_tmp")).unwrap();
    std::fs::rename(lists.join("..data_tmp"), lists.join("..data")).unwrap();
    assert!(
        eventually(|| blocked(&dnsward, "www.test.")),
        "symlink swap not seen"
    );
    assert!(!blocked(&dnsward, "blocked.test."));
}

/// A config file that is gone for a moment (moved away and back, or deleted and copied in
/// again) is watched again once it is back, also when it is reached through another path than
/// its directory's own (here a symlinked directory; a relative path did the same) and its lists
/// live elsewhere: the watch of its directory had been dropped with the file's canonical path,
/// and no later edit was seen until some other reload.
#[test]
fn config_edits_are_seen_after_the_file_was_gone_for_a_moment() {
    let upstream = Upstream::start();
    let config = config_text(
        &[upstream.addr],
        "[reload]\ndebounce_ms = 100\n[[list]]\nname = \"exchanges\"\npath = \"../lists/block.txt\"\n",
    );
    let dnsward = Dnsward::start_at(
        &config,
        &[("lists/block.txt", "blocked.test\n")],
        "link/dnsward.toml",
        |dir| {
            std::fs::create_dir(dir.join("cfg")).unwrap();
            std::fs::create_dir(dir.join("lists")).unwrap();
            std::os::unix::fs::symlink("cfg", dir.join("link")).unwrap();
        },
    );
    assert!(blocked(&dnsward, "blocked.test."));
    let real = dnsward.dir.path().join("cfg/dnsward.toml");
    let away = dnsward.dir.path().join("cfg/dnsward.away");
    std::fs::rename(&real, &away).unwrap();
    dnsward
        .wait_for_log(|line| line.contains("cannot read config"))
        .expect("the missing config reported");
    std::fs::rename(&away, &real).unwrap();
    dnsward
        .wait_for_log(|line| line.contains("reload applied") && line.contains("generation=2"))
        .expect("the restored config reloaded");
    let edited = std::fs::read_to_string(&real)
        .unwrap()
        .replace("../lists/block.txt", "../lists/other.txt");
    std::fs::write(dnsward.dir.path().join("lists/other.txt"), "www.test\n").unwrap();
    std::fs::write(&real, edited).unwrap();
    assert!(eventually(|| blocked(&dnsward, "www.test.")));
    assert!(!blocked(&dnsward, "blocked.test."));
}

/// SIGUSR1 and SIGUSR2, which operators send DNS daemons by habit, are ignored: their default
/// had killed the server without a clean stop.
#[test]
fn sigusr1_and_sigusr2_are_ignored() {
    let upstream = Upstream::start();
    let mut dnsward = start(&upstream, "");
    for signal in ["USR1", "USR2"] {
        dnsward.signal(signal);
    }
    assert_eq!(rcode(&dnsward, "www.test."), ResponseCode::NoError);
    assert!(dnsward.is_running());
    assert!(dnsward.terminate(), "a clean stop afterwards");
}

#[test]
fn sighup_reloads_when_watching_is_off() {
    let upstream = Upstream::start();
    let dnsward = start(&upstream, "[reload]\nwatch = false\n");
    std::fs::write(dnsward.dir.path().join("block.txt"), "www.test\n").unwrap();
    dnsward.signal("HUP");
    assert!(eventually(|| blocked(&dnsward, "www.test.")));
    dnsward
        .wait_for_log(|line| line.contains("reload applied") && line.contains("SIGHUP"))
        .expect("the reload names its trigger");
}

/// A list file cut to nothing (a download or save that truncates first) while its serving
/// version has rules is refused, and `lists diff` says so beforehand; a list emptied on
/// purpose (a comment line left in it) applies.
#[test]
fn emptied_list_is_refused_but_a_commented_empty_list_applies() {
    let upstream = Upstream::start();
    let dnsward = start(&upstream, "[reload]\nwatch = false\n");
    let list = dnsward.dir.path().join("block.txt");
    std::fs::write(&list, "\u{feff}\n  \n").unwrap();
    let preview = dnsward_command()
        .args(["lists", "diff", "--config"])
        .arg(dnsward.config_path())
        .output()
        .unwrap();
    assert_eq!(preview.status.code(), Some(2), "{preview:?}");
    let said = String::from_utf8_lossy(&preview.stderr);
    assert!(said.contains("block.txt: the file is empty"), "{said}");
    dnsward.signal("HUP");
    let error = dnsward
        .wait_for_log(|line| line.contains("the file is empty"))
        .expect("emptied list reported");
    assert!(error.contains("1 rule(s)"), "{error}");
    assert!(blocked(&dnsward, "blocked.test."));

    std::fs::write(&list, "# no rules for now\n").unwrap();
    dnsward.signal("HUP");
    assert!(eventually(
        || rcode(&dnsward, "blocked.test.") == ResponseCode::NoError
    ));
}

#[test]
fn broken_list_edit_is_refused_whole_then_a_fix_applies() {
    let upstream = Upstream::start();
    let dnsward = start(&upstream, "");
    let list = dnsward.dir.path().join("block.txt");
    // A good new rule and a bad line: neither may apply.
    std::fs::write(&list, "blocked.test\nwww.test\nexa mple.com\n").unwrap();
    let error = dnsward
        .wait_for_log(|line| line.contains("block.txt:3:"))
        .expect("the bad line is reported as path:line");
    assert!(error.contains("exa mple.com"), "{error}");
    let refusal = dnsward
        .wait_for_log(|line| line.contains("reload refused"))
        .expect("the refusal is logged");
    assert!(
        refusal.contains("failures_total=1"),
        "the refusal is counted: {refusal}"
    );
    assert!(refusal.contains("serving_generation=1"), "{refusal}");
    assert!(
        !blocked(&dnsward, "www.test."),
        "half an edit must not apply"
    );
    assert!(
        blocked(&dnsward, "blocked.test."),
        "the last good state keeps serving"
    );

    std::fs::write(&list, "blocked.test\nwww.test\n").unwrap();
    assert!(
        eventually(|| blocked(&dnsward, "www.test.")),
        "the fix applies"
    );
}

#[test]
fn broken_config_and_missing_list_are_refused() {
    let upstream = Upstream::start();
    let dnsward = start(&upstream, "");
    let config_path = dnsward.config_path();
    let good = std::fs::read_to_string(&config_path).unwrap();

    std::fs::write(&config_path, format!("{good}\n[cache]\nmax_entires = 5\n")).unwrap();
    let error = dnsward
        .wait_for_log(|line| line.contains("max_entires"))
        .expect("unknown key reported");
    assert!(error.contains("dnsward.toml:"), "{error}");
    assert!(blocked(&dnsward, "blocked.test."));

    std::fs::write(&config_path, good.replace("block.txt", "missing.txt")).unwrap();
    dnsward
        .wait_for_log(|line| line.contains("missing.txt") && line.contains("cannot read"))
        .expect("missing list reported");
    assert!(blocked(&dnsward, "blocked.test."));
    assert_eq!(rcode(&dnsward, "www.test."), ResponseCode::NoError);

    // A setting that waits for a restart is checked all the same: applied, it would have left
    // a config that cannot start (it had been "reload applied ... needs a restart").
    std::fs::write(
        &config_path,
        format!("{good}\n[recursion]\nenabled = true\ntrust_anchor = \"nope.anchor\"\n"),
    )
    .unwrap();
    dnsward
        .wait_for_log(|line| line.contains("nope.anchor") && line.contains("recursion"))
        .expect("missing trust anchor reported");
    assert!(
        !dnsward
            .log()
            .iter()
            .any(|line| line.contains("reload applied")),
        "{:#?}",
        dnsward.log()
    );
    assert!(blocked(&dnsward, "blocked.test."));

    // A FIFO at a list's path is refused at once: opening it to read had waited for a writer
    // forever, and every later reload with it.
    std::fs::write(&config_path, &good).unwrap();
    let list = config_path.with_file_name("block.txt");
    std::fs::remove_file(&list).unwrap();
    rustix::fs::mkfifoat(rustix::fs::CWD, &list, rustix::fs::Mode::from(0o644)).unwrap();
    dnsward.signal("HUP");
    dnsward
        .wait_for_log(|line| line.contains("block.txt") && line.contains("is a FIFO"))
        .expect("FIFO reported");
    assert!(blocked(&dnsward, "blocked.test."));
    std::fs::remove_file(&list).unwrap();
    std::fs::write(&list, "www.test\n").unwrap();
    dnsward.signal("HUP");
    assert!(eventually(
        || rcode(&dnsward, "www.test.") == ResponseCode::NXDomain
    ));
    assert_eq!(rcode(&dnsward, "blocked.test."), ResponseCode::NoError);
}

#[test]
fn listen_change_needs_restart_but_the_rest_applies() {
    let upstream = Upstream::start();
    let dnsward = start(&upstream, "");
    let config_path = dnsward.config_path();
    // Never the number it runs with (one thread per core).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let original = std::fs::read_to_string(&config_path).unwrap();
    let edited = original.replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!(
            "listen = [\"127.0.0.1:0\", \"[::1]:0\"]\nthreads = {threads}\ndata_dir = \"data2\""
        ),
    );
    std::fs::write(dnsward.dir.path().join("watch.txt"), "www.test\n").unwrap();
    let edited = format!(
        "{edited}\n[audit]\nqueue_capacity = 1234\n\n[[list]]\nname = \"added\"\npath = \"watch.txt\"\naction = \"refused\"\n"
    );
    std::fs::write(&config_path, edited).unwrap();
    for setting in [
        "server.listen",
        "server.threads",
        "server.data_dir",
        "audit",
    ] {
        dnsward
            .wait_for_log(|line| line.contains("needs a restart") && line.contains(setting))
            .unwrap_or_else(|| panic!("restart-needed {setting} reported"));
    }
    // The list added in the same edit is live.
    assert!(eventually(
        || rcode(&dnsward, "www.test.") == ResponseCode::Refused
    ));
    // The serving state is still recorded where the audit log is, the start's data directory
    // (it had moved to the new one, and `lists diff` then saw no audit records).
    let served = |dir: &str| dnsward.dir.path().join(dir).join("served/serving.json");
    let manifest = std::fs::read_to_string(served("data")).unwrap();
    assert!(manifest.contains("\"added\""), "{manifest}");
    assert!(!served("data2").exists());

    // A later reload still runs on the start's settings: it warns again (its `load` record
    // cites a config whose audit settings are not the writer's), and undoing the edit does not.
    let audit_warnings = |dnsward: &Dnsward| {
        dnsward
            .log()
            .iter()
            .filter(|line| line.contains("needs a restart") && line.contains("audit"))
            .count()
    };
    dnsward
        .wait_for_log(|line| line.contains("reload applied") && line.contains("generation=2"))
        .expect("first reload applied");
    assert_eq!(audit_warnings(&dnsward), 1);
    std::fs::write(dnsward.dir.path().join("watch.txt"), "mail.test\n").unwrap();
    dnsward
        .wait_for_log(|line| line.contains("reload applied") && line.contains("generation=3"))
        .expect("list edit applied");
    assert_eq!(audit_warnings(&dnsward), 2, "{:#?}", dnsward.log());
    std::fs::write(&config_path, original).unwrap();
    dnsward
        .wait_for_log(|line| line.contains("reload applied") && line.contains("generation=4"))
        .expect("undo applied");
    assert_eq!(audit_warnings(&dnsward), 2, "{:#?}", dnsward.log());
}

/// 50 reloads of a 100k-rule list while clients query over UDP and TCP: no query fails or
/// times out, and every answer matches either the old or the new state.
#[test]
fn queries_never_fail_during_reloads() {
    let upstream = Upstream::start();
    let filler: String = (0..100_000)
        .map(|i| format!("filler-{i}.example\n"))
        .collect();
    let version_a = format!("{filler}www.test\n");
    let version_b = format!("{filler}mail.test\n");
    let config = config_text(
        &[upstream.addr],
        &format!("[reload]\nwatch = false\n{BLOCK_TABLES}"),
    );
    let dnsward = Dnsward::start(&config, &[("block.txt", version_a.as_str())]);
    let addr = dnsward.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for transport in BOTH {
        let stop = stop.clone();
        let answered = answered.clone();
        clients.push(std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match try_query(
                    addr,
                    transport,
                    "www.test.",
                    RecordType::A,
                    Duration::from_secs(3),
                ) {
                    Ok(reply) => {
                        let blocked = reply.metadata.response_code == ResponseCode::NXDomain
                            && reply.answers.is_empty();
                        let allowed = reply.metadata.response_code == ResponseCode::NoError
                            && reply.answers.len() == 1;
                        if !(blocked || allowed) {
                            failures.push(format!("inconsistent answer: {reply:?}"));
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => failures.push(format!("{transport:?}: {error}")),
                }
            }
            failures
        }));
    }

    let list = dnsward.dir.path().join("block.txt");
    for generation in 2..=51u64 {
        let text = if generation % 2 == 0 {
            &version_b
        } else {
            &version_a
        };
        std::fs::write(&list, text).unwrap();
        dnsward.signal("HUP");
        let marker = format!("generation={generation} trigger=\"SIGHUP\"");
        let applied =
            dnsward.wait_for_log(|line| line.contains("reload applied") && line.contains(&marker));
        assert!(
            applied.is_some(),
            "reload {generation} not applied; log tail:\n{}",
            dnsward
                .log()
                .iter()
                .rev()
                .take(15)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|client| client.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        answered.load(Ordering::Relaxed) > 100,
        "clients must have been querying"
    );
    // Generation 51 is version A: www.test blocked.
    assert_eq!(rcode(&dnsward, "www.test."), ResponseCode::NXDomain);
    assert!(Path::new(&list).exists());
}
