//! Hot reload on a machine kept busy: the reload builder starts in SCHED_IDLE and is given a
//! normal CPU share after a while. In a file of its own because it spins every core for a few
//! seconds, which would slow the other reload tests if they ran beside it.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::*;

/// A machine kept busy by other work holds a reload up for a few seconds, not indefinitely:
/// the builder starts in SCHED_IDLE (so it never delays a query worker) and is given a normal
/// CPU share when it is still building after 5 s.
#[test]
fn a_reload_completes_on_a_machine_kept_busy() {
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    let upstream = Upstream::start();
    let filler: String = (0..200_000)
        .map(|i| format!("filler-{i}.example\n"))
        .collect();
    let config = config_text(
        &[upstream.addr],
        "[reload]\nwatch = false\n[[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n",
    );
    let dnsward = Dnsward::start(&config, &[("block.txt", &format!("{filler}www.test\n"))]);
    std::fs::write(
        dnsward.dir.path().join("block.txt"),
        format!("{filler}mail.test\n"),
    )
    .unwrap();
    // Two normal-priority spinners per core: SCHED_IDLE alone would get about 0.15 % of a core
    // and need minutes for this list.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..2 * cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    dnsward.signal("HUP");
    // 5 s in SCHED_IDLE, then a normal share against the spinners and whatever else the CI
    // machine runs: well under a minute, where SCHED_IDLE alone would take minutes.
    let applied = dnsward.wait_for_log_within(Duration::from_secs(60), |line| {
        line.contains("reload applied")
    });
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    assert!(applied.is_some(), "the reload is applied on a busy machine");
    assert!(
        dnsward
            .log()
            .iter()
            .any(|line| line.contains("given a normal CPU share")),
        "the builder was moved out of SCHED_IDLE"
    );
    assert!(blocked(&dnsward, "mail.test."));
}
