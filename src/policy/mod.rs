//! The filtering decision: given a name (and the client asking), which list and rule decides.
//!
//! Policy is data plus lookups, like pdns's `DNSFilterEngine`: it never builds packets (that is
//! `server::sinkhole`) and never loads files (that is `state`). A [`Policy`] is immutable once
//! built, so a reload builds a new one off the query path and swaps it in whole.

pub mod decision;

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

pub use decision::{DecisionKind, DecisionRecord, Trigger};

use crate::{
    config::{BlockAction, ListKind, ListMode},
    lists::DomainMatcher,
};

/// One compiled list with everything a decision and its answer need.
#[derive(Debug)]
pub struct PolicyList {
    pub name: Arc<str>,
    /// The path as written in the config (what an admin recognises in a log line).
    pub display_path: Arc<str>,
    pub path: PathBuf,
    pub kind: ListKind,
    pub mode: ListMode,
    pub action: BlockAction,
    pub ede: u16,
    pub sinkhole_v4: Option<Ipv4Addr>,
    pub sinkhole_v6: Option<Ipv6Addr>,
    pub matcher: DomainMatcher,
    /// SHA-256 of the file as loaded, so a decision can be tied to the exact list version.
    pub sha256: [u8; 32],
    /// Lines skipped under `on_invalid = "skip"`.
    pub skipped_lines: usize,
}

/// The transport a query came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// Who is asking. Policy takes it from the start so per-client groups can be added without
/// changing every caller.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// Which rule in which list matched. Indexes refer to the [`Policy`] that produced them; the
/// caller keeps that snapshot alive for as long as it holds the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    pub list: u16,
    pub rule: u32,
    pub line: u32,
}

/// The outcome of checking one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No list matched.
    Pass,
    /// An allow list matched: the name is answered normally whatever block lists say.
    Allowed(RuleRef),
    /// An enforcing block list matched: the answer is replaced by that list's action.
    Blocked(RuleRef),
    /// Only a log-only list matched: answered normally, but recorded.
    Logged(RuleRef),
}

/// Every list, compiled, in the order the decision consults them.
#[derive(Debug, Default)]
pub struct Policy {
    lists: Vec<PolicyList>,
    /// Indexes into `lists`, grouped by precedence: allow beats enforce beats log-only; within a
    /// group the config file's order decides which list a decision names.
    allow: Vec<u16>,
    enforce: Vec<u16>,
    log_only: Vec<u16>,
}

impl Policy {
    pub fn new(lists: Vec<PolicyList>) -> Self {
        let mut policy = Self::default();
        for (index, list) in lists.iter().enumerate() {
            // Config validation caps lists far below u16::MAX; see `state::build`.
            let index = u16::try_from(index).unwrap_or(u16::MAX);
            match (list.kind, list.mode) {
                (ListKind::Allow, _) => policy.allow.push(index),
                (ListKind::Block, ListMode::Enforce) => policy.enforce.push(index),
                (ListKind::Block, ListMode::LogOnly) => policy.log_only.push(index),
            }
        }
        policy.lists = lists;
        policy
    }

    /// Decides one name (see [`write_lookup_key`]). Does not allocate.
    pub fn decide(&self, key: LookupKey<'_>, _client: &Client) -> Verdict {
        // An allow rule matches only whole labels: a label holding a dot must not let
        // `q\.ok.evil.test` pass for a name under an allowed `ok.evil.test`.
        if let Some(hit) = self.first_hit(&self.allow, key.labels) {
            return Verdict::Allowed(hit);
        }
        if let Some(hit) = self.first_hit(&self.enforce, key.joined) {
            return Verdict::Blocked(hit);
        }
        if let Some(hit) = self.first_hit(&self.log_only, key.joined) {
            return Verdict::Logged(hit);
        }
        Verdict::Pass
    }

    fn first_hit(&self, group: &[u16], name: &str) -> Option<RuleRef> {
        group.iter().find_map(|&list| {
            self.lists[usize::from(list)]
                .matcher
                .lookup(name)
                .map(|hit| RuleRef {
                    list,
                    rule: hit.rule,
                    line: hit.line,
                })
        })
    }

    pub fn list(&self, rule: RuleRef) -> &PolicyList {
        &self.lists[usize::from(rule.list)]
    }

    pub fn lists(&self) -> &[PolicyList] {
        &self.lists
    }

    /// The rule's canonical text, e.g. `binance.com` or `*.binance.com`.
    pub fn rule_text(&self, rule: RuleRef) -> impl fmt::Display + '_ {
        self.list(rule).matcher.rule_text(rule.rule)
    }

    /// The domain a rule is anchored at (`binance.com` for `*.binance.com`).
    pub fn rule_domain(&self, rule: RuleRef) -> &str {
        self.list(rule).matcher.rule_name(rule.rule)
    }
}

/// A name in the two forms the matcher is asked with: lowercase ASCII, labels joined by dots,
/// without the trailing dot. They differ only for a name with a label that holds a dot byte
/// (`www.binance\.com`), which no rule can name. Block and log-only lists take it as its bytes
/// read (`joined`: `www.binance.com`, blocked by `binance.com`): a resolver or proxy further on
/// may read it so, and such names have no use but evasion, so the fail-safe for a block is to
/// match. Allow lists take it label by label (`labels`), so that the same reading cannot make
/// a name under a blocked domain pass for one under an allowed subdomain: `q\.ok.evil.test` is
/// under `evil.test`, not under `ok.evil.test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupKey<'b> {
    pub joined: &'b str,
    pub labels: &'b str,
}

/// Room for both forms of a [`LookupKey`], on the caller's stack.
#[derive(Debug)]
pub struct LookupBuffer {
    joined: [u8; 256],
    labels: [u8; 256],
}

impl LookupBuffer {
    pub const fn new() -> Self {
        Self {
            joined: [0; 256],
            labels: [0; 256],
        }
    }
}

impl Default for LookupBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// Stands for a byte no rule holds (rules are ASCII letters, digits, `-` and `_`): a label
/// with it can equal no rule's label. Bytes outside ASCII and control bytes are written so.
const NO_RULE_BYTE: u8 = 0;

/// A label's own dot in `labels`: no rule holds it either, so it is no label boundary there,
/// and it is told from [`NO_RULE_BYTE`] so that `joined` can be made from `labels`.
const INNER_DOT: u8 = 1;

/// Writes `labels` into `buffer` as the matcher takes them, so a lookup needs no heap
/// allocation; one pass over the name, and a copy only for the rare name with a label that
/// holds a dot. `None` only for the root, which no rule names. A byte outside ASCII is
/// written as [`NO_RULE_BYTE`]: the label it is in matches no rule, while the labels around
/// it still do (`\200.binance.com` is under `binance.com`, and a wildcard record would
/// answer it).
pub fn write_lookup_key<'b>(
    labels: impl Iterator<Item = &'b [u8]>,
    buffer: &'b mut LookupBuffer,
) -> Option<LookupKey<'b>> {
    let mut length = 0;
    let mut inner_dot = false;
    for label in labels {
        if length > 0 {
            buffer.labels[length] = b'.';
            length += 1;
        }
        let end = length + label.len();
        // A wire name is at most 255 bytes, so this cannot overflow for names from packets.
        if end > buffer.labels.len() {
            return None;
        }
        for (slot, &byte) in buffer.labels[length..end].iter_mut().zip(label) {
            *slot = match byte {
                b'.' => {
                    inner_dot = true;
                    INNER_DOT
                }
                0x20..=0x7e => byte.to_ascii_lowercase(),
                _ => NO_RULE_BYTE,
            };
        }
        length = end;
    }
    if length == 0 {
        return None;
    }
    let labels = &buffer.labels[..length];
    let joined = if inner_dot {
        for (slot, &byte) in buffer.joined.iter_mut().zip(labels) {
            *slot = if byte == INNER_DOT { b'.' } else { byte };
        }
        &buffer.joined[..length]
    } else {
        labels
    };
    // ASCII only, by construction above.
    Some(LookupKey {
        joined: std::str::from_utf8(joined).ok()?,
        labels: std::str::from_utf8(labels).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_key_lowers_and_joins_labels() {
        let mut buffer = LookupBuffer::new();
        let labels: [&[u8]; 3] = [b"WWW", b"Binance", b"com"];
        assert_eq!(
            write_lookup_key(labels.into_iter(), &mut buffer),
            Some(LookupKey {
                joined: "www.binance.com",
                labels: "www.binance.com"
            })
        );
        let mut buffer = LookupBuffer::new();
        assert_eq!(write_lookup_key(std::iter::empty(), &mut buffer), None);
        // A label's own dot: joined as read, kept inside its label for allow lists.
        let mut buffer = LookupBuffer::new();
        let labels: [&[u8]; 3] = [b"Q.ok", b"evil", b"test"];
        assert_eq!(
            write_lookup_key(labels.into_iter(), &mut buffer),
            Some(LookupKey {
                joined: "q.ok.evil.test",
                labels: "q\u{1}ok.evil.test"
            })
        );
        // Bytes outside ASCII no longer make the whole name unmatchable.
        let mut buffer = LookupBuffer::new();
        let labels: [&[u8]; 3] = [b"\x80", b"binance", b"com"];
        assert_eq!(
            write_lookup_key(labels.into_iter(), &mut buffer).map(|key| key.joined),
            Some("\0.binance.com")
        );
    }
}
