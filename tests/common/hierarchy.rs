//! A complete, DNSSEC-signed DNS hierarchy on loopback for the recursion tests: a root, two TLDs
//! (`ward.`, `lab.`) and leaf zones, each served by a real `nsd` on its own 127.0.53.x:53.
//!
//! The zone templates live in `tests/hierarchy/` (see its README for the address plan and the
//! cases). At start the templates are copied to a temporary directory, keys are generated with
//! `ldns-keygen`, zones are signed with `ldns-signzone` children first (each child's DS is
//! appended to its parent before the parent is signed), then one `nsd` per address is started.
//! It owns the authoritative side only; it does not start dnsward or Unbound.
//!
//! The hierarchy binds fixed addresses, so every test in a process shares one instance through
//! [`Hierarchy::lease`]; the last lease to go stops the servers (SIGTERM, then wait), so a later
//! lease starts a fresh one without racing the old one for the sockets.
#![allow(dead_code)]

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

/// The fixture's source directory (zone templates).
const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hierarchy");

/// One authoritative server: its address and the zones it serves (signed file names).
struct ServerPlan {
    addr: Ipv4Addr,
    zones: &'static [&'static str],
}

/// Which zones each address serves. No server holds a zone and one of its descendants, so every
/// answer below a delegation comes from walking it.
const SERVERS: &[ServerPlan] = &[
    ServerPlan {
        addr: Ipv4Addr::new(127, 0, 53, 1),
        zones: &["."],
    },
    ServerPlan {
        addr: Ipv4Addr::new(127, 0, 53, 2),
        zones: &["ward."],
    },
    ServerPlan {
        addr: Ipv4Addr::new(127, 0, 53, 3),
        zones: &["lab."],
    },
    ServerPlan {
        addr: Ipv4Addr::new(127, 0, 53, 10),
        zones: &[
            "good.ward.",
            "bogus.ward.",
            "expired.ward.",
            "insecure.ward.",
            "lame.ward.",
            "dead.ward.",
            "nsec3.ward.",
            "optout.ward.",
            "iter.ward.",
            "nokey.ward.",
            "ok.lab.",
        ],
    },
    ServerPlan {
        addr: Ipv4Addr::new(127, 0, 53, 11),
        zones: &["glueless.ward.", "hosting.lab."],
    },
    ServerPlan {
        addr: Ipv4Addr::new(127, 0, 53, 15),
        zones: &["lamedummy."],
    },
];

/// The address of `dead.ward.`'s first name server, where nothing listens.
pub const DEAD_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 16);

/// Signing order: children before parents, so each parent gets its children's DS. `None` =
/// unsigned (and no DS in the parent: an insecure delegation).
const ZONES: &[(&str, Signing)] = &[
    ("good.ward.", Signing::Normal),
    ("bogus.ward.", Signing::Tampered),
    ("expired.ward.", Signing::Expired),
    ("insecure.ward.", Signing::None),
    ("lame.ward.", Signing::Normal),
    ("dead.ward.", Signing::Normal),
    ("nsec3.ward.", Signing::Nsec3),
    ("optout.ward.", Signing::Nsec3OptOut),
    ("iter.ward.", Signing::Nsec3Iterations),
    ("nokey.ward.", Signing::ForeignDs),
    ("glueless.ward.", Signing::Normal),
    ("ok.lab.", Signing::Normal),
    ("hosting.lab.", Signing::Normal),
    ("lamedummy.", Signing::None),
    ("ward.", Signing::Normal),
    ("lab.", Signing::Normal),
    (".", Signing::Normal),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signing {
    Normal,
    /// Signed, then `www`'s address changed so its RRSIG no longer verifies.
    Tampered,
    /// Signed with a validity period that ended in 2020.
    Expired,
    /// Signed with NSEC3 (hashed denial of existence, RFC 5155) instead of NSEC.
    Nsec3,
    /// NSEC3 with the opt-out flag on every record (RFC 5155 §6): denials prove no AD.
    Nsec3OptOut,
    /// NSEC3 with 200 iterations: over the validator's soft limit (RFC 9276 §3.2).
    Nsec3Iterations,
    /// Signed normally, but the parent's DS is made from another KSK that the zone does not
    /// publish: the DS names a DNSKEY the child lacks (RFC 8914 code 9).
    ForeignDs,
    None,
}

/// Paths a resolver under test needs.
#[derive(Debug, Clone)]
pub struct HierarchyInfo {
    /// Root hints: `a.root-servers.net.` at 127.0.53.1.
    pub root_hints: PathBuf,
    /// The test root's KSK as a DNSKEY record (hickory and Unbound both read this form).
    pub trust_anchor: PathBuf,
    /// The same KSK as a DS record.
    pub trust_anchor_ds: PathBuf,
}

pub struct Hierarchy {
    dir: tempfile::TempDir,
    servers: Vec<Child>,
    info: HierarchyInfo,
}

/// A shared use of the one hierarchy; the servers stop when the last lease is dropped.
pub struct HierarchyLease {
    pub info: HierarchyInfo,
}

static SHARED: Mutex<(usize, Option<Hierarchy>)> = Mutex::new((0, None));

impl Hierarchy {
    /// Starts the hierarchy if no test holds it yet, and returns a lease on it.
    pub fn lease() -> HierarchyLease {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shared.1.is_none() {
            shared.1 = Some(Self::start());
        }
        shared.0 += 1;
        let info = shared.1.as_ref().unwrap().info.clone();
        HierarchyLease { info }
    }

    fn start() -> Self {
        for tool in ["nsd", "ldns-keygen", "ldns-signzone", "ldns-key2ds"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success()),
                "{tool} not found: install the Debian packages nsd and ldnsutils"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let mut ds_of: Vec<(String, String)> = Vec::new();
        let mut root_ksk = String::new();
        let mut root_ds = String::new();
        for &(zone, signing) in ZONES {
            let stem = if zone == "." {
                "root".to_owned()
            } else {
                zone.trim_end_matches('.').to_owned()
            };
            let mut text =
                std::fs::read_to_string(Path::new(TEMPLATES).join(format!("{stem}.zone")))
                    .unwrap_or_else(|error| panic!("template {stem}.zone: {error}"));
            // The children's DS records, which must be signed by this zone.
            for (child, ds) in &ds_of {
                if parent_of(child) == zone {
                    text.push_str(ds);
                    text.push('\n');
                }
            }
            let unsigned = path.join(format!("{stem}.zone"));
            std::fs::write(&unsigned, &text).unwrap();
            let signed = path.join(format!("{stem}.zone.signed"));
            if signing == Signing::None {
                std::fs::copy(&unsigned, &signed).unwrap();
                continue;
            }
            let ksk = run(path, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", zone]);
            let zsk = run(path, "ldns-keygen", &["-a", "ECDSAP256SHA256", zone]);
            let mut args: Vec<String> = Vec::new();
            match signing {
                Signing::Nsec3 => args.push("-n".to_owned()),
                Signing::Nsec3OptOut => args.extend(["-n", "-p"].map(String::from)),
                Signing::Nsec3Iterations => args.extend(["-n", "-t", "200"].map(String::from)),
                _ => {}
            }
            if signing == Signing::Expired {
                args.extend(["-i", "20190101000000", "-e", "20200101000000"].map(String::from));
            }
            args.extend([
                "-f".to_owned(),
                signed.display().to_string(),
                unsigned.display().to_string(),
                zsk.trim().to_owned(),
                ksk.trim().to_owned(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(path, "ldns-signzone", &args);
            if signing == Signing::Tampered {
                let text = std::fs::read_to_string(&signed).unwrap();
                assert!(text.contains("192.0.2.66"));
                std::fs::write(&signed, text.replace("192.0.2.66", "192.0.2.99")).unwrap();
            }
            let ds_key = if signing == Signing::ForeignDs {
                run(path, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", zone])
            } else {
                ksk.clone()
            };
            let ds = run(
                path,
                "ldns-key2ds",
                &["-n", "-2", &format!("{}.key", ds_key.trim())],
            );
            if zone == "." {
                let key =
                    std::fs::read_to_string(path.join(format!("{}.key", ksk.trim()))).unwrap();
                // Drop ldns's trailing `;{id = ...}` comment: plain zone-file syntax only.
                root_ksk = key.split(';').next().unwrap().trim().to_owned();
                root_ds = ds.trim().to_owned();
            } else {
                ds_of.push((zone.to_owned(), ds.trim().to_owned()));
            }
        }
        let root_hints = path.join("root.hints");
        std::fs::write(
            &root_hints,
            ".                    3600000 IN NS a.root-servers.net.\n\
             a.root-servers.net.  3600000 IN A  127.0.53.1\n",
        )
        .unwrap();
        let trust_anchor = path.join("root.anchor");
        std::fs::write(&trust_anchor, format!("{root_ksk}\n")).unwrap();
        let trust_anchor_ds = path.join("root.ds");
        std::fs::write(&trust_anchor_ds, format!("{root_ds}\n")).unwrap();

        let mut servers = Vec::new();
        for plan in SERVERS {
            servers.push(start_nsd(path, plan));
        }
        for plan in SERVERS {
            wait_until_serving(plan);
        }
        Self {
            dir,
            servers,
            info: HierarchyInfo {
                root_hints,
                trust_anchor,
                trust_anchor_ds,
            },
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for HierarchyLease {
    fn drop(&mut self) {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.0 -= 1;
        if shared.0 == 0 {
            // Stopped while the lock is held: a new lease cannot start servers on the same
            // sockets before these are gone.
            shared.1 = None;
        }
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        for child in &mut self.servers {
            // SIGTERM, not SIGKILL: nsd forks helpers that exit only when the main process
            // shuts down cleanly.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.servers {
            let _ = child.wait();
        }
    }
}

fn parent_of(zone: &str) -> &str {
    match zone.split_once('.') {
        Some((_, "")) | None => ".",
        Some((_, parent)) => parent,
    }
}

/// Runs a tool in `dir` and returns its stdout; panics with its stderr on failure.
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("{program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A pid file outside the temporary directory, so a run killed before teardown can clean up
/// after itself next time instead of failing to bind.
fn stale_pid_file(addr: Ipv4Addr) -> PathBuf {
    std::env::temp_dir().join(format!("dnsward-test-nsd-{addr}.pid"))
}

fn start_nsd(dir: &Path, plan: &ServerPlan) -> Child {
    let stale = stale_pid_file(plan.addr);
    if let Ok(pid) = std::fs::read_to_string(&stale) {
        let pid = pid.trim();
        let is_ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.contains("nsd") && cmdline.contains("dnsward-nsd"));
        if is_ours {
            let _ = Command::new("kill").args(["-TERM", pid]).status();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let name = plan.addr.to_string();
    let mut conf = format!(
        "server:\n  ip-address: {addr}\n  port: 53\n  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  \
         zonesdir: \"{dir}\"\n  database: \"\"\n  pidfile: \"{pid}\"\n  \
         xfrdfile: \"{dir}/xfrd-{name}\"\n  zonelistfile: \"{dir}/zonelist-{name}\"\n  \
         xfrdir: \"{dir}\"\n  logfile: \"{dir}/nsd-{name}.log\"\n  server-count: 1\n  \
         verbosity: 1\n  tcp-count: 64\n\nremote-control:\n  control-enable: no\n\n",
        addr = plan.addr,
        dir = dir.display(),
        pid = stale.display(),
    );
    for zone in plan.zones {
        let stem = if *zone == "." {
            "root"
        } else {
            zone.trim_end_matches('.')
        };
        conf.push_str(&format!(
            "zone:\n  name: \"{zone}\"\n  zonefile: \"{stem}.zone.signed\"\n\n"
        ));
    }
    let conf_path = dir.join(format!("dnsward-nsd-{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    Command::new("nsd")
        .arg("-d")
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("nsd: {error}"))
}

/// Polls the server with an SOA query for its first zone until it answers.
fn wait_until_serving(plan: &ServerPlan) {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };
    let zone: Name = plan.zones[0].parse().unwrap();
    let mut message = Message::new(4242, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(zone, RecordType::SOA));
    let bytes = message.to_vec().unwrap();
    let server = SocketAddr::from((plan.addr, 53));
    let deadline = Instant::now() + Duration::from_secs(15);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = socket.send_to(&bytes, server);
        if socket.recv_from(&mut buffer).is_ok() {
            return;
        }
    }
    panic!("nsd on {} did not start", plan.addr);
}
