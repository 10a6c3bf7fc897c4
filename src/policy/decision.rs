//! The decision record: one per query, plain data that names who asked what, which rule in which
//! list decided, and what was answered.
//!
//! It is shaped for the audit log, which stores it as is; until then `emit` writes it as one
//! structured `tracing` event.

use std::{net::SocketAddr, time::SystemTime};

use crate::config::BlockAction;

/// What happened to a query, in the audit log's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// Answered normally (no list matched, or an allow list did).
    Allowed,
    /// An enforcing block list matched; the answer was synthesized.
    Blocked,
    /// A log-only list matched; answered normally.
    Logged,
    /// The client is outside `server.allow`.
    Refused,
    /// We could not answer (upstreams unreachable, malformed query).
    Error,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Blocked => "blocked",
            Self::Logged => "logged",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}

/// Which name in the query triggered a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The question name itself.
    Question,
    /// A name met while following the answer's CNAME chain (CNAME cloaking). `chain` lists the
    /// names from the question to the matching one.
    Cname { matched: String, chain: Vec<String> },
}

/// The list and rule that decided, resolved to names so the record stands on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub list: String,
    pub rule: String,
    pub file: String,
    pub line: u32,
    pub trigger: Trigger,
}

/// Where the answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// Synthesized by policy (block, REFUSED by ACL, local error).
    Local,
    Cache,
    /// Resolved iteratively from the root servers (many servers per answer).
    Recursion,
    Upstream(SocketAddr),
}

impl std::fmt::Display for AnswerSource {
    /// `local`, `cache`, `recursion` or the upstream's `ip:port`: the audit log's spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Cache => f.write_str("cache"),
            Self::Recursion => f.write_str("recursion"),
            Self::Upstream(addr) => write!(f, "{addr}"),
        }
    }
}

/// One query's full story.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub time: SystemTime,
    /// The generation of the serving state (config + lists) that decided: ties the answer to the
    /// exact list content behind it. 1 for the state loaded at start; each accepted reload adds 1.
    pub generation: u64,
    pub client: SocketAddr,
    pub transport: &'static str,
    pub qname: String,
    pub qtype: String,
    pub qclass: String,
    pub decision: DecisionKind,
    pub rule: Option<RuleMatch>,
    /// The action taken for a block; `None` when answered normally.
    pub action: Option<BlockAction>,
    pub rcode: String,
    /// The answer section in brief (`A 192.0.2.1, CNAME x.example.`), or the sinkhole address.
    pub answer: String,
    pub ede: Option<u16>,
    pub source: AnswerSource,
    pub latency_us: u64,
}

impl DecisionRecord {
    /// Writes the record as one structured `debug` event on target `dnsward::decision`. The
    /// audit log is the record of decisions; this event is for operators watching a console
    /// (`RUST_LOG=info,dnsward::decision=debug`). Writing a line per blocked query at `info`
    /// cost a third of the server's throughput in the bench kit.
    pub fn emit(&self) {
        if !tracing::enabled!(target: "dnsward::decision", tracing::Level::DEBUG) {
            return;
        }
        let (list, rule, file, line, trigger) = match &self.rule {
            Some(rule) => (
                rule.list.as_str(),
                rule.rule.as_str(),
                rule.file.as_str(),
                rule.line,
                match &rule.trigger {
                    Trigger::Question => "question".to_owned(),
                    Trigger::Cname { matched, chain } => {
                        format!("cname {matched} via {}", chain.join(" -> "))
                    }
                },
            ),
            None => ("", "", "", 0, String::new()),
        };

        let action = self.action.map(action_name).unwrap_or("");
        let ede = self.ede.map(i64::from).unwrap_or(-1);
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: "dnsward::decision",
                    $level,
                    decision = self.decision.as_str(),
                    generation = self.generation,
                    client = %self.client,
                    transport = self.transport,
                    qname = %self.qname,
                    qtype = %self.qtype,
                    qclass = %self.qclass,
                    list,
                    rule,
                    file,
                    line,
                    trigger = %trigger,
                    action,
                    rcode = %self.rcode,
                    answer = %self.answer,
                    ede,
                    source = %self.source,
                    latency_us = self.latency_us,
                    "decision"
                )
            };
        }
        event!(tracing::Level::DEBUG);
    }
}

pub fn action_name(action: BlockAction) -> &'static str {
    match action {
        BlockAction::Nxdomain => "nxdomain",
        BlockAction::Nodata => "nodata",
        BlockAction::Null => "null",
        BlockAction::Sinkhole => "sinkhole",
        BlockAction::Refused => "refused",
    }
}
