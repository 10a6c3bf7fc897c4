//! Test harness: a real upstream (an in-process hickory authority on loopback), the real
//! `dnsward` binary started on an ephemeral port, and a plain DNS client over UDP and TCP.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata::opt::EdnsOption},
    serialize::txt::Parser,
};
use hickory_server::{
    Server,
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
};

/// How long any single network wait may take before the test fails instead of hanging. A guard
/// against hangs, not a performance assertion.
pub const IO_GUARD: Duration = Duration::from_secs(10);

/// The zones our test upstream serves.
pub const TEST_ZONE: &str = r#"
$ORIGIN test.
$TTL 300
@           IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@           IN NS  ns.test.
ns          IN A   127.0.0.1
www         IN A   192.0.2.10
www         IN AAAA 2001:db8::10
mail        IN MX  10 mx.test.
mx          IN A   192.0.2.25
txt         IN TXT "hello world"
_sip._tcp   IN SRV 10 5 5060 sip.test.
caa         IN CAA 0 issue "letsencrypt.org"
svc         IN HTTPS 1 . alpn="h2,h3" port=8443
svc         IN SVCB 1 svc-target.test. port=853
alias       IN CNAME www.test.
promo.shop  IN CNAME trade.binance.com.
watched-alias IN CNAME www.watch.test.
pay-alias   IN CNAME pay.blocked.test.
www.blocked IN A   192.0.2.66
pay.blocked IN A   192.0.2.67
www.watch   IN A   192.0.2.77
; Any name, up to the longest there is (a 512-byte answer needs its owner compressed).
*.long      IN A   192.0.2.88
watch       IN A   192.0.2.78
"#;

pub const BINANCE_ZONE: &str = r#"
$ORIGIN binance.com.
$TTL 300
@      IN SOA ns.binance.com. hostmaster.binance.com. 1 3600 600 86400 60
@      IN NS  ns
ns     IN A   127.0.0.1
@      IN A   192.0.2.100
trade  IN A   192.0.2.101
"#;

fn zone_handler(text: &str, origin: &str) -> Arc<dyn ZoneHandler> {
    let origin = Name::from_str(origin).unwrap();
    let (origin, records) = Parser::new(text, None, Some(origin)).parse().unwrap();
    Arc::new(
        InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
            origin,
            records,
            ZoneType::Primary,
            AxfrPolicy::Deny,
        )
        .unwrap(),
    )
}

/// A real authoritative DNS server on 127.0.0.1 (UDP and TCP on one port), serving the test
/// zones plus `big.test`, whose TXT answer does not fit in 1232 bytes.
pub struct Upstream {
    pub addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    runtime: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Self {
        let mut big = String::from(
            "$ORIGIN test.\n$TTL 300\n@ IN SOA ns.test. h.test. 1 3600 600 86400 60\n",
        );
        for index in 0..40 {
            big.push_str(&format!(
                "big IN TXT \"record {index:02} {}\"\n",
                "x".repeat(60)
            ));
        }
        let test_zone = format!(
            "{TEST_ZONE}\n{}",
            big.lines().skip(3).collect::<Vec<_>>().join("\n")
        );
        let (sender, receiver) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut catalog = Catalog::new();
                catalog.upsert(
                    Name::from_str("test.").unwrap().into(),
                    vec![zone_handler(&test_zone, "test.")],
                );
                catalog.upsert(
                    Name::from_str("binance.com.").unwrap().into(),
                    vec![zone_handler(BINANCE_ZONE, "binance.com.")],
                );
                let mut server = Server::new(catalog);
                let (udp, tcp, addr) = loop {
                    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    let addr = udp.local_addr().unwrap();
                    if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                        break (udp, tcp, addr);
                    }
                };
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 64);
                sender
                    .send((addr, server.shutdown_token().clone()))
                    .unwrap();
                let _ = server.block_until_done().await;
            });
        });
        let (addr, shutdown) = receiver.recv_timeout(IO_GUARD).unwrap();
        Self {
            addr,
            shutdown,
            runtime: Some(handle),
        }
    }

    /// Stops serving and closes the sockets: later queries to it go unanswered.
    pub fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.runtime.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A real upstream behind a slow link: every UDP query it receives is announced on
/// `received`, then relayed to `upstream` after `delay`, and the upstream's reply is sent back.
/// Dropping it stops the relay (its thread checks every 100 ms).
pub struct DelayRelay {
    pub addr: SocketAddr,
    pub received: mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
}

impl DelayRelay {
    pub fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let (announce, received) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65535];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((length, client)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let query = buffer[..length].to_vec();
                let reply_socket = socket.try_clone().unwrap();
                let _ = announce.send(());
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
                    relay.set_read_timeout(Some(IO_GUARD)).unwrap();
                    relay.send_to(&query, upstream).unwrap();
                    let mut reply = vec![0u8; 65535];
                    if let Ok(length) = relay.recv(&mut reply) {
                        let _ = reply_socket.send_to(&reply[..length], client);
                    }
                });
            }
        });
        Self {
            addr,
            received,
            stop,
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An address on loopback where nothing answers: a bound UDP socket that never replies (so
/// queries time out) and no TCP listener.
pub fn dead_upstream() -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// The real `dnsward` binary, serving from a temporary directory.
pub struct Dnsward {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// The lists and the `[[list]]` tables most tests use.
pub const STANDARD_LISTS: &[(&str, &str)] = &[
    ("allow.txt", "pay.blocked.test\n"),
    (
        "block.txt",
        "# test block list\nblocked.test\n||binance.com^\n*.wild.test\n",
    ),
    ("watch.txt", "watch.test  # monitored\n"),
];

pub const STANDARD_LIST_TABLES: &str = r#"
[[list]]
name = "allow"
path = "allow.txt"
type = "allow"

[[list]]
name = "exchanges"
path = "block.txt"

[[list]]
name = "watch"
path = "watch.txt"
mode = "log-only"
"#;

pub fn config_text(upstreams: &[SocketAddr], extra: &str) -> String {
    config_text_with_server(upstreams, "", extra)
}

/// Like [`config_text`], with extra `[server]` keys.
pub fn config_text_with_server(upstreams: &[SocketAddr], server: &str, extra: &str) -> String {
    let upstreams = upstreams
        .iter()
        .map(|addr| format!("\"{addr}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n\n[forward]\nupstreams = [{upstreams}]\ntimeout_ms = 500\nattempts = 2\n\n[log]\nlevel = \"info,dnsward::decision=debug\"\n\n{extra}\n"
    )
}

/// A port that was free a moment ago on the wildcard addresses of both families, for UDP and
/// TCP (the server binds both): config refuses port 0 on a wildcard listen address.
pub fn free_wildcard_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("[::]:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let free = UdpSocket::bind(("0.0.0.0", port)).is_err()
            && std::net::TcpListener::bind(("::", port)).is_ok();
        if free {
            return port;
        }
    }
}

pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

pub fn dnsward_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dnsward"))
}

/// Runs `dnsward serve` on a configuration whose start must fail, and waits for it to exit;
/// one still running at the deadline is killed. Returns whether it exited by itself, and its
/// output (standard error captured).
pub fn serve_expecting_exit(config: impl AsRef<std::ffi::OsStr>) -> (bool, std::process::Output) {
    let mut server = dnsward_command()
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(|| server.try_wait().unwrap().is_some());
    if !exited {
        let _ = server.kill();
    }
    (exited, server.wait_with_output().unwrap())
}

/// Starts `dnsward serve` on `config_path`; returns the process, its log and its first address.
fn spawn(config_path: &Path) -> (Child, Arc<Mutex<Vec<String>>>, SocketAddr) {
    let mut child = dnsward_command()
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (sender, receiver) = mpsc::channel();
    let log_writer = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|addr| addr.parse::<SocketAddr>().ok())
            {
                let _ = sender.send(addr);
            }
            log_writer.lock().unwrap().push(line);
        }
    });
    let Ok(addr) = receiver.recv_timeout(IO_GUARD) else {
        let _ = child.kill();
        panic!(
            "dnsward did not start; log:\n{}",
            log.lock().unwrap().join("\n")
        );
    };
    (child, log, addr)
}

impl Dnsward {
    /// Stops the process (if running) and starts it again on the same config and files.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, log, addr) = spawn(&self.config_path());
        self.child = child;
        self.log = log;
        self.addr = addr;
    }

    /// Starts dnsward with `config` (full TOML text) and `files` written next to it.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Self {
        Self::start_at(config, files, "dnsward.toml", |_| {})
    }

    /// Like [`Dnsward::start`], with the config written to `config_at` (relative to the test
    /// directory, whose subdirectories `prepare` makes) and given to `serve` by that path.
    pub fn start_at(
        config: &str,
        files: &[(&str, &str)],
        config_at: &str,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        write_files(dir.path(), files);
        let config_path = dir.path().join(config_at);
        std::fs::write(&config_path, config).unwrap();
        let (child, log, addr) = spawn(&config_path);
        Self {
            addr,
            dir,
            child,
            log,
        }
    }

    /// The standard set-up: upstream + standard lists + `extra` config.
    pub fn standard(upstream: &Upstream, extra: &str) -> Self {
        let config = config_text(
            &[upstream.addr],
            &format!("{extra}\n{STANDARD_LIST_TABLES}"),
        );
        Self::start(&config, STANDARD_LISTS)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many of the server's threads are named `name` (`udp-worker`, `runtime-worker`).
    pub fn threads_named(&self, name: &str) -> usize {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap();
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line satisfies `predicate` (log lines arrive asynchronously).
    pub fn wait_for_log(&self, predicate: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_log_within(IO_GUARD, predicate)
    }

    /// [`Self::wait_for_log`] with its own deadline, for slow work such as a low-priority reload
    /// of a large list on a busy CI machine.
    pub fn wait_for_log_within(
        &self,
        guard: Duration,
        predicate: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + guard;
        // Scan only the lines not seen yet: a busy server's log grows by thousands of lines.
        let mut seen = 0;
        while Instant::now() < deadline {
            {
                let log = self.log.lock().unwrap();
                if let Some(line) = log[seen..].iter().find(|line| predicate(line)) {
                    return Some(line.clone());
                }
                seen = log.len();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Every address the server reported listening on (it logs them back to back at start).
    pub fn listening_addrs(&self, expected: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + IO_GUARD;
        loop {
            let addrs: Vec<SocketAddr> = self
                .log()
                .iter()
                .filter_map(|line| line.split("listening on ").nth(1))
                .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                .collect();
            if addrs.len() >= expected || Instant::now() > deadline {
                return addrs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        self.stop_with("TERM")
    }

    /// Sends signal `name` (`TERM`, `INT`) and waits for the exit; returns whether it was a
    /// success.
    pub fn stop_with(&mut self, name: &str) -> bool {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + IO_GUARD;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the log reader drain the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dnsward did not stop after SIG{name}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("dnsward.toml")
    }
}

impl Drop for Dnsward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What kind of query to send.
#[derive(Debug, Clone)]
pub struct Ask {
    pub edns: bool,
    pub payload: u16,
    pub dnssec_ok: bool,
    pub source: IpAddr,
}

impl Default for Ask {
    fn default() -> Self {
        Self {
            edns: true,
            payload: 1232,
            dnssec_ok: false,
            source: IpAddr::from([127, 0, 0, 1]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub const BOTH: [Transport; 2] = [Transport::Udp, Transport::Tcp];

pub fn build_query(name: &str, qtype: RecordType, ask: &Ask) -> (u16, Vec<u8>) {
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if ask.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(ask.payload);
        edns.set_dnssec_ok(ask.dnssec_ok);
        message.set_edns(edns);
    }
    (id, message.to_vec().unwrap())
}

/// Sends `bytes` and returns the raw reply.
pub fn exchange_raw(
    server: SocketAddr,
    transport: Transport,
    source: IpAddr,
    bytes: &[u8],
) -> Vec<u8> {
    match transport {
        Transport::Udp => {
            let socket = UdpSocket::bind((source, 0)).unwrap();
            socket.set_read_timeout(Some(IO_GUARD)).unwrap();
            socket.send_to(bytes, server).unwrap();
            recv_reply(&socket, server, bytes).expect("no UDP reply")
        }
        Transport::Tcp => {
            // Bind first so the connection comes from `source` (ACL tests use 127.0.0.2).
            let domain = socket2::Domain::for_address(server);
            let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
            socket.connect_timeout(&server.into(), IO_GUARD).unwrap();
            tcp_exchange(socket.into(), bytes)
        }
    }
}

/// The reply to `query` on `socket`, as a stub resolver takes it (RFC 5452 9.1): from the
/// server asked, with the query's ID. Anything else is a stray: tests in one process bind and
/// close many ephemeral ports, and a late answer to another test's abandoned query can reach a
/// port reused since.
fn recv_reply(socket: &UdpSocket, server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; 65535];
    loop {
        let (length, from) = socket.recv_from(&mut buffer)?;
        let from_server = server.ip().is_unspecified() || from == server;
        let same_id = query.len() < 2 || buffer[..length.min(2)] == query[..2];
        if from_server && same_id {
            buffer.truncate(length);
            return Ok(buffer);
        }
    }
}

pub fn tcp_exchange(socket: TcpStream, bytes: &[u8]) -> Vec<u8> {
    try_tcp_exchange(socket, bytes, IO_GUARD).expect("no TCP reply")
}

/// One length-prefixed exchange on a connected TCP socket (RFC 1035 §4.2.2 framing).
pub fn try_tcp_exchange(
    mut socket: TcpStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    socket.write_all(&framed).map_err(|e| e.to_string())?;
    let mut length = [0u8; 2];
    socket
        .read_exact(&mut length)
        .map_err(|e| format!("tcp: {e}"))?;
    let mut buffer = vec![0u8; usize::from(u16::from_be_bytes(length))];
    socket
        .read_exact(&mut buffer)
        .map_err(|e| format!("tcp: {e}"))?;
    Ok(buffer)
}

/// Like [`query`], but a lost or garbled reply is an `Err` instead of a panic (for load tests).
pub fn try_query(
    server: SocketAddr,
    transport: Transport,
    name: &str,
    qtype: RecordType,
    timeout: Duration,
) -> Result<Message, String> {
    try_query_with(server, transport, name, qtype, &Ask::default(), timeout)
}

/// [`try_query`] with the query's EDNS settings given.
pub fn try_query_with(
    server: SocketAddr,
    transport: Transport,
    name: &str,
    qtype: RecordType,
    ask: &Ask,
    timeout: Duration,
) -> Result<Message, String> {
    let (id, bytes) = build_query(name, qtype, ask);
    let raw = match transport {
        Transport::Udp => {
            let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            socket
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            socket.send_to(&bytes, server).map_err(|e| e.to_string())?;
            recv_reply(&socket, server, &bytes).map_err(|e| format!("udp: {e}"))?
        }
        Transport::Tcp => {
            let socket = TcpStream::connect_timeout(&server, timeout).map_err(|e| e.to_string())?;
            try_tcp_exchange(socket, &bytes, timeout)?
        }
    };
    let reply = Message::from_vec(&raw).map_err(|e| e.to_string())?;
    if reply.metadata.id != id {
        return Err("id mismatch".into());
    }
    Ok(reply)
}

/// Polls `condition` until it holds or the guard deadline passes.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + IO_GUARD;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Whether `name` (A, over UDP) is answered as blocked: NXDOMAIN with an Extended DNS Error.
pub fn blocked(dnsward: &Dnsward, name: &str) -> bool {
    let reply = ask(dnsward.addr, Transport::Udp, name, RecordType::A);
    reply.metadata.response_code == hickory_proto::op::ResponseCode::NXDomain
        && ede(&reply).is_some()
}

/// Asks `server` one question and returns the parsed reply.
pub fn query(
    server: SocketAddr,
    transport: Transport,
    name: &str,
    qtype: RecordType,
    ask: &Ask,
) -> Message {
    let (id, bytes) = build_query(name, qtype, ask);
    let reply = Message::from_vec(&exchange_raw(server, transport, ask.source, &bytes)).unwrap();
    assert_eq!(reply.metadata.id, id, "reply id must echo the query id");
    reply
}

pub fn ask(server: SocketAddr, transport: Transport, name: &str, qtype: RecordType) -> Message {
    query(server, transport, name, qtype, &Ask::default())
}

/// The RFC 8914 Extended DNS Error in a reply: (INFO-CODE, EXTRA-TEXT).
pub fn ede(reply: &Message) -> Option<(u16, String)> {
    let edns = reply.edns.as_ref()?;
    edns.options()
        .as_ref()
        .iter()
        .find_map(|(_, option)| match option {
            EdnsOption::Unknown(15, data) if data.len() >= 2 => Some((
                u16::from_be_bytes([data[0], data[1]]),
                String::from_utf8_lossy(&data[2..]).into_owned(),
            )),
            _ => None,
        })
}

/// Answer records of one type, rendered (`192.0.2.10`, `10 mx.test.` ...).
pub fn rdata_of(reply: &Message, rtype: RecordType) -> Vec<String> {
    reply
        .answers
        .iter()
        .filter(|record| record.record_type() == rtype)
        .map(|record| record.data.to_string())
        .collect()
}

pub fn soa_in_authority(reply: &Message) -> Option<&Record> {
    reply
        .authorities
        .iter()
        .find(|record| matches!(record.data, RData::SOA(_)))
}

/// A UDP upstream on loopback that answers as `answer` says (`None`: no reply), for behaviour
/// no real server shows on demand (FORMERR to EDNS, odd TTLs and rcodes, coming and going).
/// Counts the datagrams it receives. Dropping it stops it (its thread checks every 100 ms).
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    pub received: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ScriptedUpstream {
    pub fn start(answer: impl Fn(&Message) -> Option<Message> + Send + 'static) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopped) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65535];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((length, client)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(query) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                if let Some(reply) = answer(&query) {
                    let _ = socket.send_to(&reply.to_vec().unwrap(), client);
                }
            }
        });
        Self {
            addr,
            received,
            stop,
        }
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A response to `query` echoing its id, question and RD, with RA set and no records.
pub fn response_to(query: &Message) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    for question in &query.queries {
        reply.add_query(question.clone());
    }
    reply
}

/// `response_to(query)` with one A record for the question's name.
pub fn a_response(query: &Message, address: [u8; 4], ttl: u32) -> Message {
    let mut reply = response_to(query);
    let name = query.queries[0].name().clone();
    reply.add_answer(Record::from_rdata(
        name,
        ttl,
        RData::A(hickory_proto::rr::rdata::A(address.into())),
    ));
    reply
}
