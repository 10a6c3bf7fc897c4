//! Test fixtures shared by the transports' unit tests: a handler with a real audit log and a
//! block list, the queries to send it, and what the log recorded.

use std::{path::Path, sync::Arc};

use arc_swap::ArcSwap;
use hickory_proto::{
    op::{Message, Query},
    rr::RecordType,
};

use super::handler::{Counters, Handler};
use crate::{
    audit::{self, AuditLog, AuditSettings, AuditWriter, Entry, Filter, InstanceId},
    cache::AnswerCache,
    state,
};

/// A handler that blocks `blocked.test` for clients in `2001:db8::/32` and 127.0.0.0/8,
/// with an audit log under `dir` (its writer and settings returned for reading it back).
pub fn audited_handler(dir: &Path) -> (Arc<Handler>, AuditWriter, AuditSettings) {
    std::fs::write(dir.join("block.txt"), "blocked.test\n").expect("list");
    let config_path = dir.join("dnsward.toml");
    let text = "[server]\nallow = [\"2001:db8::/32\", \"127.0.0.0/8\"]\n\
                [forward]\nupstreams = [\"127.0.0.1:9\"]\n\
                [[list]]\nname = \"exchanges\"\npath = \"block.txt\"\n";
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

/// `www.blocked.test. A`, as a client sends it.
pub fn blocked_query() -> Vec<u8> {
    let mut query = Message::query();
    query.metadata.id = 7;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        "www.blocked.test.".parse().expect("name"),
        RecordType::A,
    ));
    query.to_vec().expect("encode")
}

/// A header that announces a question it does not carry: answered FORMERR.
pub const UNPARSABLE: [u8; 12] = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];

/// `(qname, rcode, answer)` of every query record in the log, sorted; stops the writer first.
pub fn recorded_answers(
    writer: AuditWriter,
    settings: &AuditSettings,
) -> Vec<(String, String, String)> {
    writer.shutdown().expect("stop");
    let mut answers: Vec<_> = audit::search(&settings.dir, &Filter::default())
        .expect("search")
        .map(|hit| match hit.expect("record").record.entry {
            Entry::Query(q) => (q.qname, q.rcode, q.answer),
            other => panic!("not a query record: {other:?}"),
        })
        .collect();
    answers.sort();
    answers
}

/// The record of an answer that did not go out.
pub fn not_sent(qname: &str, rcode: &str) -> (String, String, String) {
    (qname.to_owned(), rcode.to_owned(), "(not sent)".to_owned())
}
