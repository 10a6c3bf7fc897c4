//! The decision record: one per query, plain data that names who asked what, which rule in which
//! list decided, and what was answered.
//!
//! It is shaped for the audit log, which stores it as is; until then `emit` writes it as one
//! structured `tracing` event.

use std::{fmt, net::SocketAddr, sync::Arc, time::SystemTime};

use hickory_proto::{
    op::ResponseCode,
    rr::{DNSClass, Name, RecordType},
};

use crate::config::BlockAction;

/// The answer section in brief (`A 192.0.2.1, CNAME x.example.`) or the sinkhole address, as a
/// decision record carries it: inline when it fits (nearly all do), shared otherwise.
///
/// Why not always the cached answer's shared `Arc<str>`: a replayed answer's record then took a
/// reference on it in a worker and dropped it in the audit writer, on the other core, so the
/// line holding the count and the text moved between the cores on every query for a popular
/// name (`perf`: the writer's largest single stall was the first read of that text).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AnswerText(AnswerRepr);

#[derive(Clone, Default, PartialEq, Eq)]
enum AnswerRepr {
    #[default]
    None,
    Inline {
        len: u8,
        text: [u8; AnswerText::INLINE],
    },
    Shared(Arc<str>),
}

impl AnswerText {
    /// Longest text held inline, in bytes (the whole value is then 48 bytes).
    pub const INLINE: usize = 46;

    /// No answer records (and no sinkhole address).
    pub const NONE: Self = Self(AnswerRepr::None);

    /// `text` copied inline if it fits, else shared.
    pub fn new(text: &Arc<str>) -> Self {
        match Self::inline(text) {
            Some(inline) => inline,
            None => Self(AnswerRepr::Shared(Arc::clone(text))),
        }
    }

    fn inline(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let len = u8::try_from(bytes.len())
            .ok()
            .filter(|&len| usize::from(len) <= Self::INLINE)?;
        let mut inline = [0u8; Self::INLINE];
        inline[..bytes.len()].copy_from_slice(bytes);
        Some(Self(AnswerRepr::Inline { len, text: inline }))
    }

    /// The text, or `None` when there is none.
    pub fn as_deref(&self) -> Option<&str> {
        match &self.0 {
            AnswerRepr::None => None,
            // Copied whole from a `str`, so always UTF-8; `from_utf8` only checks (a few ns).
            AnswerRepr::Inline { len, text } => {
                std::str::from_utf8(&text[..usize::from(*len)]).ok()
            }
            AnswerRepr::Shared(text) => Some(text),
        }
    }

    /// The text's bytes (empty when there is none), without the UTF-8 check of `as_deref`.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            AnswerRepr::None => &[],
            AnswerRepr::Inline { len, text } => &text[..usize::from(*len)],
            AnswerRepr::Shared(text) => text.as_bytes(),
        }
    }
}

impl From<&str> for AnswerText {
    fn from(text: &str) -> Self {
        Self::inline(text).unwrap_or_else(|| Self(AnswerRepr::Shared(Arc::from(text))))
    }
}

impl fmt::Debug for AnswerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_deref().fmt(f)
    }
}

/// A question name as the client sent it (case kept), in wire form. Names of up to
/// `QName::INLINE` bytes (nearly all) are held inline: taking one costs a copy, not an
/// allocation, on every query, and keeps the record small in the audit queue. It is rendered as
/// text only where it is read (the audit writer, a debug event).
#[derive(Clone)]
pub struct QName(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, wire: [u8; QName::INLINE] },
    Long(Box<[u8]>),
}

impl QName {
    /// Longest name held inline, in wire bytes.
    pub const INLINE: usize = 94;

    /// The root name.
    pub const ROOT: Self = Self(Repr::Inline {
        len: 1,
        wire: [0u8; Self::INLINE],
    });

    /// From uncompressed wire form (labels, then the root's zero byte). `None` if it is not one
    /// well-formed name of at most 255 bytes.
    pub fn from_wire(wire: &[u8]) -> Option<Self> {
        let mut at = 0;
        loop {
            let len = usize::from(*wire.get(at)?);
            if len > 63 {
                return None;
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        (at == wire.len() && at <= 255).then(|| Self::from_valid_wire(wire))
    }

    fn from_valid_wire(wire: &[u8]) -> Self {
        if wire.len() <= Self::INLINE {
            let mut inline = [0u8; Self::INLINE];
            inline[..wire.len()].copy_from_slice(wire);
            Self(Repr::Inline {
                // At most `INLINE` bytes.
                len: wire.len() as u8,
                wire: inline,
            })
        } else {
            Self(Repr::Long(wire.into()))
        }
    }

    pub fn from_name(name: &Name) -> Self {
        let mut wire = [0u8; 256];
        let mut at = 0;
        for label in name.iter() {
            // A `Name` holds at most 255 wire bytes, labels at most 63: this cannot overflow.
            if at + 1 + label.len() >= 255 {
                break;
            }
            wire[at] = label.len() as u8;
            wire[at + 1..at + 1 + label.len()].copy_from_slice(label);
            at += 1 + label.len();
        }
        wire[at] = 0;
        Self::from_valid_wire(&wire[..=at])
    }

    pub fn wire(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, wire } => &wire[..usize::from(*len)],
            Repr::Long(wire) => wire,
        }
    }

    /// The labels, left to right.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        wire_labels(self.wire())
    }
}

/// The labels of an uncompressed wire name, left to right; stops at the root label or at the
/// first label that runs past the end.
pub fn wire_labels(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(*wire.get(at)?);
        let label = wire.get(at + 1..at + 1 + len)?;
        at += 1 + len;
        (len > 0).then_some(label)
    })
}

/// Bytes a label shows as they are in presentation form (`QName::write_text`); a leading `*`
/// also does, but only at the start of a label, so it is handled apart.
const PLAIN_LABEL_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(byte as u8, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_');
        byte += 1;
    }
    table
};

impl QName {
    /// Appends the presentation form (see `Display`) to `out` without `fmt`: the audit writer
    /// renders one per query.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        let mut empty = true;
        for label in self.labels() {
            empty = false;
            // Nearly every label is letters, digits, `-` and `_`: copied whole, not byte by byte
            // (the byte loop was 6 % of the audit writer's time).
            if label
                .iter()
                .all(|&byte| PLAIN_LABEL_BYTE[usize::from(byte)])
            {
                out.extend_from_slice(label);
                out.push(b'.');
                continue;
            }
            for (index, &byte) in label.iter().enumerate() {
                match byte {
                    byte if PLAIN_LABEL_BYTE[usize::from(byte)] => out.push(byte),
                    b'*' if index == 0 => out.push(byte),
                    0x21..=0x7e => out.extend_from_slice(&[b'\\', byte]),
                    _ => out.extend_from_slice(&[
                        b'\\',
                        b'0' + byte / 100,
                        b'0' + byte / 10 % 10,
                        b'0' + byte % 10,
                    ]),
                }
            }
            out.push(b'.');
        }
        if empty {
            out.push(b'.');
        }
    }
}

/// The labels of a name in the presentation form [`QName::write_text`] writes (`\X` for a
/// printable byte, `\DDD` for any other, so `a\.b` is one label): its inverse, for names read
/// back from the audit log. The root (`.`) has none.
pub fn labels_from_text(text: &[u8]) -> Vec<Vec<u8>> {
    let mut labels = Vec::new();
    let mut label = Vec::new();
    let mut rest = text;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match (byte, rest) {
            (b'.', _) => labels.push(std::mem::take(&mut label)),
            (b'\\', [a, b, c, tail @ ..]) if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
                let value =
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
                label.push(u8::try_from(value).unwrap_or(u8::MAX));
                rest = tail;
            }
            (b'\\', [escaped, tail @ ..]) => {
                label.push(*escaped);
                rest = tail;
            }
            (byte, _) => label.push(byte),
        }
    }
    if !label.is_empty() {
        labels.push(label);
    }
    // `.` alone is the root; an empty label anywhere else is not a name part.
    labels.retain(|label| !label.is_empty());
    labels
}

impl fmt::Display for QName {
    /// RFC 1035 §5.1 presentation form, ASCII only: letters, digits, `-`, `_` and a leading `*`
    /// as they are; other printable bytes escaped with `\\`, the rest as `\\DDD` (decimal).
    /// Internationalised names stay in their `xn--` form, exactly as asked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(self.wire().len() * 2);
        self.write_text(&mut text);
        // Only ASCII is written above.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for QName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QName({self})")
    }
}

impl PartialEq for QName {
    fn eq(&self, other: &Self) -> bool {
        self.wire() == other.wire()
    }
}

impl Eq for QName {}

impl From<&Name> for QName {
    fn from(name: &Name) -> Self {
        Self::from_name(name)
    }
}

impl std::str::FromStr for QName {
    type Err = hickory_proto::ProtoError;

    /// Parses presentation form (mostly for tests and benches).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Name::from_ascii(text).map(|name| Self::from_name(&name))
    }
}

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

/// The list and rule that decided, resolved to names so the record stands on its own. List name
/// and file are shared with the policy (a reference count, not a copy, per query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub list: Arc<str>,
    pub rule: Box<str>,
    pub file: Arc<str>,
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
    pub qname: QName,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    pub decision: DecisionKind,
    /// Shared: a replayed answer (`server::fastpath`) names the rule stored with it.
    pub rule: Option<Arc<RuleMatch>>,
    /// The action taken for a block; `None` when answered normally.
    pub action: Option<BlockAction>,
    pub rcode: ResponseCode,
    /// The answer section in brief (`A 192.0.2.1, CNAME x.example.`), or the sinkhole address.
    pub answer: AnswerText,
    pub ede: Option<u16>,
    pub source: AnswerSource,
    pub latency_us: u64,
}

impl DecisionRecord {
    /// The question could not be answered (SERVFAIL). A log-only match stays `logged`: the
    /// monitoring role must see every attempt on a watched name, answered or not.
    pub fn fail(&mut self) {
        if self.decision != DecisionKind::Logged {
            self.decision = DecisionKind::Error;
        }
    }

    /// The answer did not go out (the socket refused it, or the TCP connection's writer was
    /// gone): the decision and rcode stay what was decided, and the answer summary ends in
    /// `(not sent)`, so the log never claims an answer the client cannot have had.
    pub fn mark_not_sent(&mut self) {
        const NOT_SENT: &str = "(not sent)";
        let text: Arc<str> = match self.answer.as_deref() {
            Some(text) if !text.is_empty() => format!("{text} {NOT_SENT}").into(),
            _ => NOT_SENT.into(),
        };
        self.answer = AnswerText::new(&text);
    }

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
                &*rule.list,
                &*rule.rule,
                &*rule.file,
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
                    client = %crate::audit::ShownClient(self.client),
                    transport = self.transport,
                    qname = %self.qname,
                    qtype = %TypeText(self.qtype),
                    qclass = %ClassText(self.qclass),
                    list,
                    rule,
                    file,
                    line,
                    trigger = %trigger,
                    action,
                    rcode = %RcodeText(self.rcode),
                    answer = self.answer.as_deref().unwrap_or(""),
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

/// A record type as written in zone files: its mnemonic, or `TYPE<n>` (RFC 3597) when hickory
/// has none.
pub struct TypeText(pub RecordType);

impl TypeText {
    /// The mnemonic, when there is one.
    pub fn as_static(&self) -> Option<&'static str> {
        match self.0 {
            RecordType::Unknown(_) => None,
            known => Some(known.into()),
        }
    }
}

impl fmt::Display for TypeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            RecordType::Unknown(code) => write!(f, "TYPE{code}"),
            known => f.write_str(known.into()),
        }
    }
}

/// A class mnemonic, or `CLASS<n>` (RFC 3597).
pub struct ClassText(pub DNSClass);

impl ClassText {
    /// The mnemonic, when there is one.
    pub fn as_static(&self) -> Option<&'static str> {
        match self.0 {
            DNSClass::Unknown(_) | DNSClass::OPT(_) => None,
            known => Some(known.into()),
        }
    }
}

impl fmt::Display for ClassText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            DNSClass::Unknown(code) => write!(f, "CLASS{code}"),
            DNSClass::OPT(size) => write!(f, "CLASS{size}"),
            known => f.write_str(known.into()),
        }
    }
}

/// A response code as `dig` and the IANA registry spell it (`NOERROR`, `NXDOMAIN`, ...), or
/// `RCODE<n>`.
pub struct RcodeText(pub ResponseCode);

impl RcodeText {
    /// The mnemonic, when there is one.
    pub fn as_static(&self) -> Option<&'static str> {
        Some(match self.0 {
            ResponseCode::NoError => "NOERROR",
            ResponseCode::FormErr => "FORMERR",
            ResponseCode::ServFail => "SERVFAIL",
            ResponseCode::NXDomain => "NXDOMAIN",
            ResponseCode::NotImp => "NOTIMP",
            ResponseCode::Refused => "REFUSED",
            ResponseCode::YXDomain => "YXDOMAIN",
            ResponseCode::YXRRSet => "YXRRSET",
            ResponseCode::NXRRSet => "NXRRSET",
            ResponseCode::NotAuth => "NOTAUTH",
            ResponseCode::NotZone => "NOTZONE",
            ResponseCode::BADVERS => "BADVERS",
            ResponseCode::BADCOOKIE => "BADCOOKIE",
            _ => return None,
        })
    }
}

impl fmt::Display for RcodeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_static() {
            Some(text) => f.write_str(text),
            None => write!(f, "RCODE{}", u16::from(self.0)),
        }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The presentation form byte by byte, as `write_text` renders labels that are not plain.
    fn reference_text(labels: &[Vec<u8>]) -> String {
        let mut text = String::new();
        for label in labels {
            for (index, &byte) in label.iter().enumerate() {
                match byte {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => text.push(byte.into()),
                    b'*' if index == 0 => text.push('*'),
                    0x21..=0x7e => {
                        text.push('\\');
                        text.push(byte.into());
                    }
                    _ => text.push_str(&format!("\\{byte:03}")),
                }
            }
            text.push('.');
        }
        if labels.is_empty() {
            text.push('.');
        }
        text
    }

    proptest! {
        #[test]
        fn qname_text_matches_the_byte_by_byte_rendering(
            labels in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 1..20),
                    "[a-zA-Z0-9_*-]{1,20}".prop_map(String::into_bytes),
                ],
                0..5,
            )
        ) {
            let mut wire = Vec::new();
            for label in &labels {
                wire.push(label.len() as u8);
                wire.extend_from_slice(label);
            }
            wire.push(0);
            let name = QName::from_wire(&wire).unwrap();
            let mut text = Vec::new();
            name.write_text(&mut text);
            prop_assert_eq!(String::from_utf8(text).unwrap(), reference_text(&labels));
        }
    }

    #[test]
    fn answer_text_is_copied_inline_up_to_its_limit_and_shared_beyond() {
        let short: Arc<str> = Arc::from("A 192.0.2.1");
        let text = AnswerText::new(&short);
        // Copied: the record holds no reference on the cached answer's text.
        assert_eq!(Arc::strong_count(&short), 1);
        assert_eq!(text.as_deref(), Some("A 192.0.2.1"));
        assert_eq!(text.as_bytes(), b"A 192.0.2.1");

        let edge: Arc<str> = "x".repeat(AnswerText::INLINE).into();
        let text = AnswerText::new(&edge);
        assert_eq!(Arc::strong_count(&edge), 1);
        assert_eq!(text.as_deref(), Some(&*edge));

        let long: Arc<str> = "x".repeat(AnswerText::INLINE + 1).into();
        let text = AnswerText::new(&long);
        assert_eq!(Arc::strong_count(&long), 2);
        assert_eq!(text.as_deref(), Some(&*long));

        let unicode = AnswerText::from("TXT \"caf\u{e9}\"");
        assert_eq!(unicode.as_deref(), Some("TXT \"caf\u{e9}\""));
        assert_eq!(AnswerText::NONE.as_deref(), None);
        assert!(AnswerText::NONE.as_bytes().is_empty());
        assert_eq!(std::mem::size_of::<AnswerText>(), 48);
    }
}
