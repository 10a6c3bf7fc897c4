//! Test fixtures shared by the transports' unit tests: a handler with a real audit log and a
//! block list, the queries to send it, and what the log recorded.

use std::{net::SocketAddr, path::Path, sync::Arc};

use arc_swap::ArcSwap;
use hickory_proto::{
    op::{Message, Query},
    rr::RecordType,
};

use super::handler::{Counters, Handler};
use crate::{
    audit::{
        self, AuditLog, AuditSettings, AuditWriter, Entry, InstanceId, query::ExportFormat,
        segment::Record,
    },
    cache::AnswerCache,
    state,
};

/// A handler that forwards to `upstream` and blocks `blocked.test` for clients in
/// `2001:db8::/32` and 127.0.0.0/8, with an audit log under `dir` (its writer and settings
/// returned for reading it back).
pub fn audited_handler(
    dir: &Path,
    upstream: SocketAddr,
) -> (Arc<Handler>, AuditWriter, AuditSettings) {
    std::fs::write(dir.join("block.txt"), "blocked.test\n").expect("list");
    let config_path = dir.join("dnsward.toml");
    let text = format!(
        "[server]\nallow = [\"2001:db8::/32\", \"127.0.0.0/8\"]\n\
         [forward]\nupstreams = [\"{upstream}\"]\n\
         [[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n"
    );
    std::fs::write(&config_path, text).expect("config");
    let config = crate::config::load(&config_path).expect("config");
    let settings = config.audit.clone();
    let cache = AnswerCache::new(&config.cache);
    let (state, _) = state::build(config).expect("state");
    let (audit, writer) = AuditLog::open(&settings, InstanceId::random()).expect("audit log");
    let handler = Arc::new(Handler::new(
        Arc::new(ArcSwap::from_pointee(state)),
        cache,
        Arc::new(Counters::default()),
        None,
        Some(audit),
    ));
    (handler, writer, settings)
}

/// An upstream nobody listens on (the discard port): queries sent there fail at once.
pub const NO_UPSTREAM: &str = "127.0.0.1:9";

/// `www.blocked.test. A`, as a client sends it.
pub fn blocked_query() -> Vec<u8> {
    query("www.blocked.test.")
}

/// `name A` with RD, as a client sends it.
pub fn query(name: &str) -> Vec<u8> {
    let mut query = Message::query();
    query.metadata.id = 7;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name.parse().expect("name"), RecordType::A));
    query.to_vec().expect("encode")
}

/// A header that announces a question it does not carry: answered FORMERR.
pub const UNPARSABLE: [u8; 12] = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];

/// Stops the writer and reads back every record of the log, in order.
pub fn stop_and_read(writer: AuditWriter, settings: &AuditSettings) -> Vec<Record> {
    writer.shutdown().expect("stop");
    let mut export = Vec::new();
    audit::export(&settings.dir, ExportFormat::Jsonl, &mut export).expect("export");
    export
        .split(|&byte| byte == b'\n')
        .filter_map(|line| Record::parse(line).ok())
        .collect()
}

/// What a query record says was answered to whom.
pub type Answered = (String, String, String, String);

/// `(client, qname, rcode, answer)` of every query record in the log, sorted; stops the writer
/// first.
pub fn recorded_answers(writer: AuditWriter, settings: &AuditSettings) -> Vec<Answered> {
    let mut answers: Vec<_> = stop_and_read(writer, settings)
        .into_iter()
        .filter_map(|record| match record.entry {
            Entry::Query(q) => Some((q.client, q.qname, q.rcode, q.answer)),
            _ => None,
        })
        .collect();
    answers.sort();
    answers
}

/// The record of an answer to `client` that did not go out.
pub fn not_sent(client: &str, qname: &str, rcode: &str) -> Answered {
    answered(client, qname, rcode, "(not sent)")
}

pub fn answered(client: &str, qname: &str, rcode: &str, answer: &str) -> Answered {
    (
        client.to_owned(),
        qname.to_owned(),
        rcode.to_owned(),
        answer.to_owned(),
    )
}

/// The single-threaded runtime the transports' tests run on (as each UDP worker does).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A handler whose upstream reads every query and never answers, so queries stay in flight;
/// the upstream's socket is returned to see them arrive.
pub fn handler_with_silent_upstream(
    dir: &Path,
) -> (
    Arc<Handler>,
    AuditWriter,
    AuditSettings,
    std::net::UdpSocket,
) {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("upstream");
    let (handler, writer, settings) = audited_handler(dir, silent.local_addr().expect("address"));
    (handler, writer, settings, silent)
}

/// The counts of the log's gap records, in order.
pub fn gaps(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|record| match record.entry {
            Entry::Gap { dropped, .. } => Some(dropped),
            _ => None,
        })
        .collect()
}
