//! The compiled rule set and its allocation-free most-specific-suffix lookup (the hot path).

use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::error::CapacityError;
use super::parse::{Rule, RuleKind, write_rule};

/// What matched a query: the rule's index in the matcher, its kind and its source line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleHit {
    pub rule: u32,
    pub kind: RuleKind,
    pub line: u32,
}

/// Record layout in the arena: `[rule index: u32 LE][line: u32 LE][kind: u8][len: u8][name]`.
///
/// Keeping everything a hit reports next to the name it was verified against means a hit
/// touches three cache lines (control bytes, slot, record) instead of four or five.
const HEADER: usize = 10;
const INDEX_AT: usize = 0;
const LINE_AT: usize = 4;
const KIND_AT: usize = 8;
const LEN_AT: usize = 9;

/// Collects rules; one record per distinct name, so duplicates cost nothing.
#[derive(Debug)]
pub struct DomainMatcherBuilder {
    inner: DomainMatcher,
}

impl Default for DomainMatcherBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DomainMatcherBuilder {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// Pre-sizes for about `rules` rules, sparing the rehashes of a growing table.
    pub fn with_capacity(rules: usize) -> Self {
        Self {
            inner: DomainMatcher {
                records: Vec::with_capacity(rules.saturating_mul(HEADER + 20)),
                offsets: Vec::with_capacity(rules),
                table: HashTable::with_capacity(rules),
                hasher: RandomState::default(),
                depths: 0,
            },
        }
    }

    pub fn insert_rule(&mut self, rule: &Rule, line: u32) -> Result<(), CapacityError> {
        self.insert(&rule.name, rule.kind, line)
    }

    /// Adds a rule; `name` must be canonical (lowercase ASCII, no trailing dot), as
    /// [`parse_line`](super::parse_line) produces.
    ///
    /// A repeated name keeps its first line, except that a `Domain` rule replaces a
    /// `Subdomains` rule for the same name: it covers everything the latter does.
    pub fn insert(&mut self, name: &str, kind: RuleKind, line: u32) -> Result<(), CapacityError> {
        let m = &mut self.inner;
        if name.is_empty() {
            return Err(CapacityError::EmptyName);
        }
        let len =
            u8::try_from(name.len()).map_err(|_| CapacityError::NameTooLong { len: name.len() })?;
        let hash = m.hasher.hash_one(name.as_bytes());
        let records = &m.records;
        let found = m
            .table
            .find(hash, |&at| record_name(records, at) == name.as_bytes());
        if let Some(&at) = found {
            let at = at as usize;
            if m.records[at + KIND_AT] == RuleKind::Subdomains as u8 && kind == RuleKind::Domain {
                m.records[at + KIND_AT] = RuleKind::Domain as u8;
                m.records[at + LINE_AT..at + LINE_AT + 4].copy_from_slice(&line.to_le_bytes());
            }
            return Ok(());
        }
        let at = u32::try_from(m.records.len())
            .ok()
            .filter(|at| {
                u32::try_from(HEADER + name.len()).is_ok_and(|size| at.checked_add(size).is_some())
            })
            .ok_or(CapacityError::ArenaFull)?;
        let index = u32::try_from(m.offsets.len()).map_err(|_| CapacityError::TooManyRules)?;
        m.records.extend_from_slice(&index.to_le_bytes());
        m.records.extend_from_slice(&line.to_le_bytes());
        m.records.push(kind as u8);
        m.records.push(len);
        m.records.extend_from_slice(name.as_bytes());
        m.offsets.push(at);
        let (records, hasher) = (&m.records, &m.hasher);
        m.table.insert_unique(hash, at, |&other| {
            hasher.hash_one(record_name(records, other))
        });
        m.depths |= depth_bit(label_count(name.as_bytes()));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    pub fn build(self) -> DomainMatcher {
        let mut m = self.inner;
        m.records.shrink_to_fit();
        m.offsets.shrink_to_fit();
        let (records, hasher) = (&m.records, &m.hasher);
        m.table
            .shrink_to_fit(|&at| hasher.hash_one(record_name(records, at)));
        m
    }
}

/// An immutable set of domain rules answering "which rule blocks this name".
pub struct DomainMatcher {
    /// Every rule as a record (see [`HEADER`]), back to back.
    records: Vec<u8>,
    /// Rule index to record offset, for the by-index accessors off the hot path.
    offsets: Vec<u32>,
    /// Record offsets, keyed by the name's bytes.
    table: HashTable<u32>,
    /// Random per process: query names are attacker-chosen, so the probe sequence for a
    /// given name should not be predictable.
    hasher: RandomState,
    /// Bit n set when some rule has n labels (bit 63: 63 or more). Lets lookups skip the
    /// hashing and probing of suffixes that no rule can equal, which is most of them
    /// for deep names.
    depths: u64,
}

impl fmt::Debug for DomainMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainMatcher")
            .field("rules", &self.offsets.len())
            .field("heap_bytes", &self.heap_bytes())
            .finish_non_exhaustive()
    }
}

impl Default for DomainMatcher {
    fn default() -> Self {
        DomainMatcherBuilder::new().build()
    }
}

impl DomainMatcher {
    /// The most specific rule covering `qname` (lowercase ASCII, no trailing dot).
    ///
    /// Walks `a.b.example.com`, `b.example.com`, `example.com`, `com` as subslices of
    /// `qname` and stops at the first rule that applies; allocates nothing.
    #[inline]
    pub fn lookup(&self, qname: &str) -> Option<RuleHit> {
        let mut rest = qname.as_bytes();
        let mut labels = label_count(rest);
        // The full name only matches a `Domain` rule; a `Subdomains` rule there is for
        // names below it, so the walk goes on to the parents.
        if let Some(hit) = self.probe(rest, labels)
            && hit.kind == RuleKind::Domain
        {
            return Some(hit);
        }
        while let Some(dot) = rest.iter().position(|&b| b == b'.') {
            rest = &rest[dot + 1..];
            labels -= 1;
            if let Some(hit) = self.probe(rest, labels) {
                return Some(hit);
            }
        }
        None
    }

    #[inline]
    fn probe(&self, key: &[u8], labels: u32) -> Option<RuleHit> {
        if self.depths & depth_bit(labels) == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let &at = self
            .table
            .find(hash, |&at| record_name(&self.records, at) == key)?;
        let header = self.records.get(at as usize..at as usize + HEADER)?;
        Some(RuleHit {
            rule: read_u32(header, INDEX_AT),
            kind: kind_from(header[KIND_AT]),
            line: read_u32(header, LINE_AT),
        })
    }

    /// The rule's name without the `*.` of a `Subdomains` rule.
    ///
    /// Panics if `rule` did not come from this matcher, as slice indexing does.
    pub fn rule_name(&self, rule: u32) -> &str {
        let name = record_name(&self.records, self.offsets[rule as usize]);
        // Names went in as `&str`; a record slice is always one whole name.
        std::str::from_utf8(name).unwrap_or("")
    }

    /// The rule in canonical list syntax (`example.com` or `*.example.com`).
    ///
    /// Panics if `rule` did not come from this matcher, as slice indexing does.
    pub fn rule_text(&self, rule: u32) -> RuleText<'_> {
        let at = self.offsets[rule as usize] as usize;
        RuleText {
            kind: kind_from(self.records[at + KIND_AT]),
            name: self.rule_name(rule),
        }
    }

    /// Number of distinct rules.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Approximate heap footprint: records, index and hash table.
    pub fn heap_bytes(&self) -> usize {
        self.records.capacity()
            + self.offsets.capacity() * std::mem::size_of::<u32>()
            + self.table.allocation_size()
    }
}

impl RuleText<'_> {
    pub fn kind(&self) -> RuleKind {
        self.kind
    }
}

/// Borrowed canonical rendering of a rule, returned by [`DomainMatcher::rule_text`].
#[derive(Debug, Clone, Copy)]
pub struct RuleText<'a> {
    kind: RuleKind,
    name: &'a str,
}

impl fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_rule(f, self.kind, self.name)
    }
}

/// The name bytes of the record at `at`; empty for an offset that is not a record, so
/// a foreign index cannot panic inside a hash probe.
#[inline]
fn record_name(records: &[u8], at: u32) -> &[u8] {
    let at = at as usize;
    let Some(&len) = records.get(at + LEN_AT) else {
        return &[];
    };
    let start = at + HEADER;
    records.get(start..start + usize::from(len)).unwrap_or(&[])
}

#[inline]
fn read_u32(header: &[u8], at: usize) -> u32 {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&header[at..at + 4]);
    u32::from_le_bytes(bytes)
}

#[inline]
fn kind_from(byte: u8) -> RuleKind {
    if byte == RuleKind::Subdomains as u8 {
        RuleKind::Subdomains
    } else {
        RuleKind::Domain
    }
}

#[inline]
fn label_count(name: &[u8]) -> u32 {
    // A name longer than u32::MAX bytes cannot reach here from DNS; saturate anyway.
    let dots = name.iter().filter(|&&b| b == b'.').count();
    u32::try_from(dots).unwrap_or(u32::MAX - 1) + 1
}

#[inline]
fn depth_bit(labels: u32) -> u64 {
    1 << labels.min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(rules: &[(&str, RuleKind)]) -> DomainMatcher {
        let mut builder = DomainMatcherBuilder::new();
        for (line, &(name, kind)) in rules.iter().enumerate() {
            builder.insert(name, kind, line as u32 + 1).unwrap();
        }
        builder.build()
    }

    fn hit_text(m: &DomainMatcher, qname: &str) -> Option<String> {
        m.lookup(qname).map(|hit| m.rule_text(hit.rule).to_string())
    }

    #[test]
    fn domain_rule_covers_name_and_subdomains() {
        let m = matcher(&[("example.com", RuleKind::Domain)]);
        assert_eq!(hit_text(&m, "example.com").as_deref(), Some("example.com"));
        assert_eq!(
            hit_text(&m, "a.b.example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(hit_text(&m, "notexample.com"), None);
        assert_eq!(hit_text(&m, "com"), None);
        assert_eq!(hit_text(&m, "example.com.evil"), None);
    }

    #[test]
    fn subdomains_rule_excludes_the_name_itself() {
        let m = matcher(&[("example.com", RuleKind::Subdomains)]);
        assert_eq!(hit_text(&m, "example.com"), None);
        assert_eq!(
            hit_text(&m, "www.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(
            hit_text(&m, "a.b.example.com").as_deref(),
            Some("*.example.com")
        );
    }

    #[test]
    fn most_specific_rule_wins() {
        let m = matcher(&[
            ("com", RuleKind::Domain),
            ("example.com", RuleKind::Domain),
            ("ads.example.com", RuleKind::Subdomains),
        ]);
        let hit = m.lookup("x.ads.example.com").unwrap();
        assert_eq!(
            hit,
            RuleHit {
                rule: 2,
                kind: RuleKind::Subdomains,
                line: 3
            }
        );
        assert_eq!(m.rule_name(hit.rule), "ads.example.com");
        // The `*.` rule does not match its own name, so the parent rule does.
        assert_eq!(m.lookup("ads.example.com").unwrap().line, 2);
        assert_eq!(m.lookup("other.com").unwrap().line, 1);
    }

    #[test]
    fn duplicates_keep_first_line_and_domain_absorbs_subdomains() {
        let m = matcher(&[
            ("a.com", RuleKind::Domain),
            ("a.com", RuleKind::Domain),
            ("x.com", RuleKind::Subdomains),
            ("x.com", RuleKind::Domain),
            ("y.com", RuleKind::Domain),
            ("y.com", RuleKind::Subdomains),
        ]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.lookup("a.com").unwrap().line, 1);
        assert_eq!(m.lookup("x.com").unwrap().line, 4);
        assert_eq!(m.lookup("w.x.com").unwrap().kind, RuleKind::Domain);
        assert_eq!(m.lookup("y.com").unwrap().line, 5);
        assert_eq!(m.lookup("w.y.com").unwrap().kind, RuleKind::Domain);
    }

    #[test]
    fn odd_query_names_do_not_panic() {
        let m = matcher(&[("a.com", RuleKind::Domain), ("b", RuleKind::Domain)]);
        for q in ["", ".", "..", "a.com.", ".a.com", "x..a.com", "b.", "com"] {
            let _ = m.lookup(q);
        }
        assert!(m.lookup("x..a.com").is_some());
        assert!(DomainMatcher::default().lookup("a.com").is_none());
    }

    #[test]
    fn insert_rejects_what_the_layout_cannot_hold() {
        let mut builder = DomainMatcherBuilder::new();
        assert_eq!(
            builder.insert("", RuleKind::Domain, 1),
            Err(CapacityError::EmptyName)
        );
        assert_eq!(
            builder.insert(&"a".repeat(256), RuleKind::Domain, 1),
            Err(CapacityError::NameTooLong { len: 256 })
        );
        assert!(builder.is_empty());
    }

    #[test]
    fn heap_bytes_counts_every_part() {
        let mut builder = DomainMatcherBuilder::new();
        for i in 0..1000 {
            builder
                .insert(&format!("host{i}.example.com"), RuleKind::Domain, i)
                .unwrap();
        }
        let m = builder.build();
        assert_eq!(m.len(), 1000);
        assert!(
            m.heap_bytes() > 1000 * (16 + HEADER + 4),
            "{}",
            m.heap_bytes()
        );
    }
}
