//! The UDP fast path: a query asked before, under the same serving state, is answered from the
//! response bytes sent the first time (a packet cache, as in PowerDNS Recursor and dnsdist).
//!
//! The request chain (`handler`) stays the one place that decides. After it answers a query of
//! the common shape (one question, opcode QUERY, no EDNS options), it stores the encoded
//! response here with the decision it made; the next query with the same question and flags
//! is answered by copying those bytes and patching what differs per query: the ID, the case of
//! the question name (DNS 0x20), the OPT payload size, and TTLs counted down by age. Nothing is
//! parsed into hickory types, nothing is encoded, and the decision record is the stored one.
//!
//! An entry is valid only for the state generation it was decided under: policy on the
//! question and on the answer's CNAME chain depends only on the name and the lists (never on
//! the client, for now), so the same generation gives the same decision. The ACL depends on
//! the client and is checked on every query. Answers from upstream or cache expire with the
//! cache entry they came from; synthesized block answers live as long as their generation.

use std::{
    hash::BuildHasher,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU32, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwapOption;

use crate::policy::decision::{AnswerSource, AnswerText, DecisionKind, RuleMatch, wire_labels};

/// Room for a key: a wire name (at most 255 bytes), type, class and the flags byte.
pub const KEY_MAX: usize = 255 + 5;

/// A query of the shape the fast path serves, borrowed from the datagram.
#[derive(Debug)]
pub struct PlainQuery<'a> {
    pub id: [u8; 2],
    /// The question name in wire form, as sent (case kept).
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    /// RD, CD, AD and EDNS/DO: every request flag that changes the response bytes.
    flags: u8,
    /// The client's EDNS UDP payload size, if it sent an OPT record.
    pub edns_payload: Option<u16>,
}

const FLAG_RD: u8 = 1;
const FLAG_CD: u8 = 2;
const FLAG_AD: u8 = 4;
const FLAG_EDNS: u8 = 8;
const FLAG_DO: u8 = 16;

/// The request flags as one byte of the cache key.
pub fn request_flags(rd: bool, cd: bool, ad: bool, edns: bool, dnssec_ok: bool) -> u8 {
    let bit = |on: bool, flag: u8| if on { flag } else { 0 };
    bit(rd, FLAG_RD)
        | bit(cd, FLAG_CD)
        | bit(ad, FLAG_AD)
        | bit(edns, FLAG_EDNS)
        | bit(dnssec_ok, FLAG_DO)
}

impl<'a> PlainQuery<'a> {
    /// Parses the common query shape: a query (QR 0, opcode 0, not truncated) with exactly one
    /// question and no other records but an optional OPT of EDNS version 0 without options,
    /// with nothing after it. Anything else is `None`, and the full request chain handles it
    /// (it also answers FORMERR, NOTIMP or BADVERS where due).
    pub fn parse(packet: &'a [u8]) -> Option<Self> {
        let header = packet.get(..12)?;
        // QR, opcode, AA, TC must be zero; RD is free.
        if header[2] & 0xfe != 0 || header[4..8] != [0, 1, 0, 0] || header[8..10] != [0, 0] {
            return None;
        }
        let additional = u16::from_be_bytes([header[10], header[11]]);
        let mut at = 12;
        loop {
            let len = usize::from(*packet.get(at)?);
            if len > 63 {
                // Compression pointers have no place in a question.
                return None;
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        let qname = &packet[12..at];
        if qname.len() > 255 {
            return None;
        }
        let question = packet.get(at..at + 4)?;
        let qtype = u16::from_be_bytes([question[0], question[1]]);
        let qclass = u16::from_be_bytes([question[2], question[3]]);
        at += 4;
        let rd = header[2] & 1 != 0;
        let cd = header[3] & 0x10 != 0;
        let ad = header[3] & 0x20 != 0;
        let (edns_payload, dnssec_ok) = match additional {
            0 => (None, false),
            1 => {
                // Root owner, type OPT, class = payload, TTL = ext-rcode, version, flags, and
                // an empty RDATA.
                let opt = packet.get(at..at + 11)?;
                if opt[0] != 0 || opt[1..3] != [0, 41] || opt[5] != 0 || opt[6] != 0 {
                    return None;
                }
                if opt[9..11] != [0, 0] {
                    return None;
                }
                at += 11;
                (
                    Some(u16::from_be_bytes([opt[3], opt[4]])),
                    opt[7] & 0x80 != 0,
                )
            }
            _ => return None,
        };
        if at != packet.len() {
            return None;
        }
        Some(Self {
            id: [header[0], header[1]],
            qname,
            qtype,
            qclass,
            flags: request_flags(rd, cd, ad, edns_payload.is_some(), dnssec_ok),
            edns_payload,
        })
    }

    /// The labels of the question name, as sent.
    pub fn labels(&self) -> impl Iterator<Item = &'a [u8]> {
        wire_labels(self.qname)
    }

    /// Writes this query's cache key into `buffer`.
    fn key<'b>(&self, buffer: &'b mut [u8; KEY_MAX]) -> &'b [u8] {
        write_key(self.labels(), self.qtype, self.qclass, self.flags, buffer)
    }
}

/// Key bytes: the lowercased wire name, type, class, flags.
pub fn write_key<'b, 'l>(
    labels: impl Iterator<Item = &'l [u8]>,
    qtype: u16,
    qclass: u16,
    flags: u8,
    buffer: &'b mut [u8; KEY_MAX],
) -> &'b [u8] {
    let mut at = 0;
    for label in labels {
        // Names come from parsed packets (at most 255 wire bytes); stop rather than panic.
        if at + 1 + label.len() > 255 {
            break;
        }
        buffer[at] = label.len() as u8;
        for (slot, byte) in buffer[at + 1..].iter_mut().zip(label) {
            *slot = byte.to_ascii_lowercase();
        }
        at += 1 + label.len();
    }
    buffer[at] = 0;
    buffer[at + 1..at + 3].copy_from_slice(&qtype.to_be_bytes());
    buffer[at + 3..at + 5].copy_from_slice(&qclass.to_be_bytes());
    buffer[at + 5] = flags;
    &buffer[..at + 6]
}

/// The decision behind a stored answer: what each fast answer's decision record says.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: DecisionKind,
    pub rule: Option<Arc<RuleMatch>>,
    pub action: Option<crate::config::BlockAction>,
    pub rcode: hickory_proto::op::ResponseCode,
    pub answer: AnswerText,
    pub ede: Option<u16>,
    /// Made by policy (source `local`), not replayed from upstream (source `cache`).
    pub synthesized: bool,
}

impl Outcome {
    pub fn source(&self) -> AnswerSource {
        if self.synthesized {
            AnswerSource::Local
        } else {
            AnswerSource::Cache
        }
    }
}

/// Stored bytes up to this length live inside the entry itself: a hit then reads the entry and
/// its response from neighbouring cache lines instead of following a second pointer (the
/// question compare in `answers`, the first read of those bytes, was 2.6 % of a worker's
/// samples, most of it that miss). The kit's allowed answers fit (A or AAAA, the zone's NS,
/// glue, OPT: 122–136 bytes, plus their TTL offsets); larger ones, such as a blocked name's
/// NXDOMAIN with SOA and EDE text (180), go to the heap. Every entry carries the inline space:
/// at 176 or 192 bytes the kit's RSS after warm-up was 4–8 MB higher.
const INLINE_BYTES: usize = 144;

/// A stored response's bytes: inline when they fit (nearly always), else on the heap.
enum EntryBytes {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Heap(Box<[u8]>),
}

impl EntryBytes {
    /// Takes the buffer the bytes were gathered in: kept as it is when too long to copy inline.
    fn new(data: Vec<u8>) -> Self {
        match u8::try_from(data.len()) {
            Ok(len) if data.len() <= INLINE_BYTES => {
                let mut bytes = [0; INLINE_BYTES];
                bytes[..data.len()].copy_from_slice(&data);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(data.into_boxed_slice()),
        }
    }
}

impl std::ops::Deref for EntryBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for EntryBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryBytes")
            .field("len", &self.len())
            .field("inline", &matches!(self, Self::Inline { .. }))
            .finish()
    }
}

/// One stored response; a cache holds one per question and flag combination. About 270 bytes
/// with `outcome`, half of it `data`'s inline space (also taken by a heap entry).
/// `repr(C)`: what a lookup reads first (generation, flags, then the question at the start of
/// `data`) comes first, next to each other.
#[derive(Debug)]
#[repr(C)]
pub struct WireAnswer {
    /// The hash of the key it is stored under (`WireCache`).
    hash: u64,
    generation: u64,
    /// The request flags of the key (the name, type and class are the response's question).
    flags: u8,
    /// The response as first sent (ID and question case are overwritten per query), then the
    /// offsets of the TTL fields counted down by age, two bytes each (none for synthesized
    /// answers, whose TTL is the configured `blocking.ttl_secs` at any time).
    data: EntryBytes,
    response_len: u16,
    /// Offset of the OPT record's CLASS (payload size) field; 0: none.
    opt_payload_at: u16,
    /// Seconds from `stored_at` the entry is valid; `u32::MAX`: the whole generation.
    life_secs: u32,
    stored_at: Instant,
    pub outcome: Outcome,
}

impl WireAnswer {
    /// Whether this entry answers `key` (see [`write_key`]): its question, compared without
    /// regard to case, with the key's name, type and class, and the same request flags.
    fn answers(&self, key: &[u8]) -> bool {
        let Some(name_len) = key.len().checked_sub(5) else {
            return false;
        };
        let question = self.data.get(12..12 + name_len + 4);
        question.is_some_and(|question| {
            question[..name_len].eq_ignore_ascii_case(&key[..name_len])
                && question[name_len..] == key[name_len..name_len + 4]
        }) && self.flags == key[name_len + 4]
    }
}

/// The stored responses: a set-associative table (like a CPU cache) of `WAYS` slots per set.
///
/// Why not a general concurrent map (`quick_cache`, which this replaced): a lookup there read
/// the shard's lock word, the table's control bytes, a bucket, a slab entry and then the
/// entry, and took a reference count on the entry. Under load from both cores that count's
/// cache line went back and forth between them on every answer for a popular name, and the
/// lookup was the largest piece of user time on the query path (8 % of a worker's CPU in
/// `perf`). Here a lookup reads one line of tags, then the one matching slot through
/// `arc_swap` (which borrows the entry without writing to it), then the entry: hot entries stay
/// in both cores' caches.
///
/// A slot is found by a 64-bit hash of the key, not by the key: the stored response's question
/// already holds the name, type and class, so a found entry is checked against the key
/// (`WireAnswer::answers`). Replacement within a set is CLOCK (second chance): an answer marks
/// its slot referenced (a write only the first time), and a store takes the slot with the same
/// tag (the same key, or rarely one it then displaces), else an empty one, else the next slot
/// from the set's hand that was not referenced since the hand last passed it.
#[derive(Debug)]
pub struct WireCache {
    /// Per slot: `0` when never used, else the tag (`place`) of the last key stored there, with
    /// bit 0 set while referenced. The tag is only a filter: a reader may see a tag and a slot
    /// of different stores for a moment, or a tag over a slot emptied by expiry, and checks the
    /// entry itself.
    tags: Box<[AtomicU32]>,
    slots: Box<[ArcSwapOption<WireAnswer>]>,
    /// Per set: where the CLOCK sweep of the next eviction starts.
    hands: Box<[AtomicU8]>,
    /// Sets minus one (a power of two minus one).
    set_mask: usize,
    hasher: foldhash::quality::RandomState,
}

/// Slots per set: 16 four-byte tags fill one cache line. With as many slots as entries, 16
/// ways lose well under 0.1 % of a random key set to full sets (8 ways: over half a percent).
const WAYS: usize = 16;
const REFERENCED: u32 = 1;

/// A stored answer as found: borrowed from its slot (an `arc_swap` guard) without changing its
/// reference count. Hold it briefly (one query): a thread has a few such borrows before
/// `arc_swap` falls back to counting.
pub type Found = arc_swap::Guard<Option<Arc<WireAnswer>>>;

impl WireCache {
    /// A table of at least `capacity` slots (rounded up to a power of two, at least one set).
    pub fn new(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        let slots = sets * WAYS;
        Self {
            tags: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            slots: (0..slots).map(|_| ArcSwapOption::empty()).collect(),
            hands: (0..sets).map(|_| AtomicU8::new(0)).collect(),
            set_mask: sets - 1,
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The first slot of `hash`'s set and the tag stored for it. The set comes from the low
    /// bits, the tag from the high ones, so keys of one set still differ in their tags.
    fn place(&self, hash: u64) -> (usize, u32) {
        let first = (hash as usize & self.set_mask) * WAYS;
        // Bit 1 set: never 0 (empty); bit 0 is the referenced mark.
        let tag = ((hash >> 32) as u32 | 2) & !REFERENCED;
        (first, tag)
    }

    /// The slot holding an entry stored under `hash`, and that entry, if any; `mark`: a use
    /// (an answer), which keeps the entry over unreferenced ones when its set is full.
    fn find(&self, hash: u64, mark: bool) -> Option<(usize, Found)> {
        let (first, tag) = self.place(hash);
        for index in first..first + WAYS {
            let seen = self.tags[index].load(Ordering::Relaxed);
            if seen & !REFERENCED != tag {
                continue;
            }
            let found = self.slots[index].load();
            if found.as_ref().is_some_and(|entry| entry.hash == hash) {
                if mark && seen & REFERENCED == 0 {
                    self.tags[index].fetch_or(REFERENCED, Ordering::Relaxed);
                }
                return Some((index, found));
            }
        }
        None
    }

    /// Writes the stored answer to `query` into `out` and returns its length and entry, if one
    /// is stored for this generation, still fresh, and fits the client's UDP limit.
    pub fn answer(
        &self,
        query: &PlainQuery<'_>,
        generation: u64,
        udp_payload_max: u16,
        now: Instant,
        out: &mut [u8],
    ) -> Option<(usize, Found)> {
        let mut key_buffer = [0u8; KEY_MAX];
        let key = query.key(&mut key_buffer);
        let (index, found) = self.find(self.hash(key), true)?;
        let entry = found.as_deref()?;
        if entry.generation != generation || !entry.answers(key) {
            return None;
        }
        let age = now.saturating_duration_since(entry.stored_at).as_secs();
        if entry.life_secs != u32::MAX && age >= u64::from(entry.life_secs) {
            // Only this expired entry: another worker may have stored a fresh one meanwhile.
            // The tag stays: clearing it could hide a fresh entry stored in between, and a
            // store of the same key finds the slot by it.
            self.slots[index].compare_and_swap(&*found, None);
            return None;
        }
        // RFC 6891 §7 / RFC 1035 §4.2.1, as the request chain does: the larger answer, with TC,
        // is its business.
        let limit = query
            .edns_payload
            .map_or(512, |payload| payload.clamp(512, udp_payload_max.max(512)));
        let (bytes, ttl_offsets) = entry.data.split_at(usize::from(entry.response_len));
        if bytes.len() > usize::from(limit) || bytes.len() > out.len() {
            return None;
        }
        let out = &mut out[..bytes.len()];
        out.copy_from_slice(bytes);
        out[..2].copy_from_slice(&query.id);
        out[12..12 + query.qname.len()].copy_from_slice(query.qname);
        if entry.opt_payload_at != 0 {
            let at = usize::from(entry.opt_payload_at);
            out[at..at + 2].copy_from_slice(&limit.to_be_bytes());
        }
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        for offset in ttl_offsets.chunks_exact(2) {
            let at = usize::from(u16::from_be_bytes([offset[0], offset[1]]));
            let ttl = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        let length = bytes.len();
        Some((length, found))
    }

    /// Whether an answer to `key` is stored for `generation` (an entry of an earlier generation
    /// is replaced by the next store, or the name would stay off the fast path after a reload).
    pub fn contains(&self, key: &[u8], generation: u64) -> bool {
        self.find(self.hash(key), false).is_some_and(|(_, found)| {
            found
                .as_deref()
                .is_some_and(|entry| entry.generation == generation && entry.answers(key))
        })
    }

    /// Puts `entry` into its set: over the slot with the same tag, else into an empty slot
    /// (never used, or emptied by expiry), else by the CLOCK sweep (`evict`).
    fn insert(&self, entry: WireAnswer) {
        let (first, tag) = self.place(entry.hash);
        let set = first..first + WAYS;
        let same = set
            .clone()
            .find(|&index| self.tags[index].load(Ordering::Relaxed) & !REFERENCED == tag);
        let target = same
            .or_else(|| {
                set.clone()
                    .find(|&index| self.tags[index].load(Ordering::Relaxed) == 0)
            })
            .or_else(|| {
                set.clone()
                    .find(|&index| self.slots[index].load().is_none())
            })
            .unwrap_or_else(|| self.evict(first));
        self.slots[target].store(Some(Arc::new(entry)));
        self.tags[target].store(tag, Ordering::Relaxed);
    }

    /// The CLOCK sweep over the set starting at `first`: from the set's hand, the first slot
    /// not referenced since the hand last passed it; marks it passes are cleared. Two turns at
    /// most (after one, every mark is clear). Two stores racing may pick the same slot: one of
    /// the two answers then waits for its next store.
    fn evict(&self, first: usize) -> usize {
        let hand = &self.hands[first / WAYS];
        let start = usize::from(hand.load(Ordering::Relaxed)) % WAYS;
        let offset = (0..2 * WAYS)
            .map(|step| (start + step) % WAYS)
            .find(|&offset| {
                self.tags[first + offset].fetch_and(!REFERENCED, Ordering::Relaxed) & REFERENCED
                    == 0
            })
            .unwrap_or(start);
        // WAYS fits in a byte.
        hand.store(((offset + 1) % WAYS) as u8, Ordering::Relaxed);
        first + offset
    }

    /// Stores `response` (as sent) under `key` (see [`write_key`]). `fresh_for`: seconds the
    /// answer stays valid (its TTLs are then counted down); `None` for synthesized answers.
    /// Responses that do not walk cleanly, or whose question is not the key's, are not stored.
    pub fn store(
        &self,
        key: &[u8],
        response: &[u8],
        generation: u64,
        fresh_for: Option<u32>,
        outcome: Outcome,
        now: Instant,
    ) {
        let Some((opt_payload_at, ttl_fields)) = walk(response) else {
            return;
        };
        // Offsets fit in 16 bits: a stored response is at most 64 KiB (and replayed only if it
        // fits the client's UDP limit).
        let (Ok(response_len), Ok(opt_payload_at)) = (
            u16::try_from(response.len()),
            u16::try_from(opt_payload_at.unwrap_or(0)),
        ) else {
            return;
        };
        let mut data = Vec::with_capacity(response.len() + 2 * ttl_fields.len());
        data.extend_from_slice(response);
        if fresh_for.is_some() {
            for at in ttl_fields {
                data.extend_from_slice(&(at as u16).to_be_bytes());
            }
        }
        let Some(&flags) = key.last() else {
            return;
        };
        let entry = WireAnswer {
            hash: self.hash(key),
            flags,
            data: EntryBytes::new(data),
            response_len,
            opt_payload_at,
            life_secs: fresh_for.map_or(u32::MAX, |secs| secs.min(u32::MAX - 1)),
            stored_at: now,
            generation,
            outcome,
        };
        if !entry.answers(key) {
            return;
        }
        self.insert(entry);
    }
}

/// Finds the OPT payload field and the TTL fields of every other record in a response.
fn walk(message: &[u8]) -> Option<(Option<usize>, Vec<usize>)> {
    let count = |at: usize| usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    if message.len() < 12 || count(4) != 1 {
        return None;
    }
    let records = count(6) + count(8) + count(10);
    let mut at = skip_name(message, 12)? + 4;
    let mut opt = None;
    let mut ttls = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(message, at)?;
        let fixed = message.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if rtype == 41 {
            opt = Some(at + 2);
        } else {
            ttls.push(at + 4);
        }
        at += 10 + rdlength;
    }
    (at == message.len()).then_some((opt, ttls))
}

/// The offset after a (possibly compressed) name starting at `at`.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            0xc0..=0xff => return message.get(at + 1).map(|_| at + 2),
            1..=63 => at += 1 + usize::from(len),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn query(edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(b"\x03WwW\x07example\x03com\x00\x00\x01\x00\x01");
        if let Some((payload, dnssec_ok)) = edns {
            packet[11] = 1;
            packet.extend_from_slice(&[0, 0, 41]);
            packet.extend_from_slice(&payload.to_be_bytes());
            packet.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
        }
        packet
    }

    #[test]
    fn parses_the_plain_shape_only() {
        let plain = query(None);
        let parsed = PlainQuery::parse(&plain).unwrap();
        assert_eq!(parsed.id, [0x12, 0x34]);
        assert_eq!(parsed.qname, b"\x03WwW\x07example\x03com\x00");
        assert_eq!(
            (parsed.qtype, parsed.qclass, parsed.edns_payload),
            (1, 1, None)
        );
        let edns = query(Some((1232, true)));
        let parsed = PlainQuery::parse(&edns).unwrap();
        assert_eq!(parsed.edns_payload, Some(1232));
        assert_ne!(parsed.flags & FLAG_DO, 0);

        let mut response = plain.clone();
        response[2] |= 0x80;
        let mut notify = plain.clone();
        notify[2] = 4 << 3;
        let mut two_questions = plain.clone();
        two_questions[5] = 2;
        let mut trailing = plain.clone();
        trailing.push(0);
        let mut with_option = edns.clone();
        with_option[edns.len() - 1] = 4;
        with_option.extend_from_slice(&[0, 10, 0, 0]);
        let mut version_1 = edns.clone();
        version_1[edns.len() - 5] = 1;
        let mut compressed = plain.clone();
        compressed[12] = 0xc0;
        for packet in [
            response,
            notify,
            two_questions,
            trailing,
            with_option,
            version_1,
            compressed,
        ] {
            assert!(PlainQuery::parse(&packet).is_none(), "{packet:?}");
        }
        assert!(PlainQuery::parse(&plain[..20]).is_none());
    }

    #[test]
    fn keys_ignore_case_but_not_flags() {
        let plain = query(None);
        let lower = {
            let mut p = plain.clone();
            p[13..16].copy_from_slice(b"www");
            p
        };
        let edns = query(Some((1232, false)));
        let mut a = [0u8; KEY_MAX];
        let mut b = [0u8; KEY_MAX];
        let mut c = [0u8; KEY_MAX];
        let first = PlainQuery::parse(&plain).unwrap();
        let second = PlainQuery::parse(&lower).unwrap();
        let third = PlainQuery::parse(&edns).unwrap();
        assert_eq!(first.key(&mut a), second.key(&mut b));
        assert_ne!(first.key(&mut a), third.key(&mut c));
    }

    /// A response to `query(edns)`: one A record (TTL 300) whose owner is a pointer to the
    /// question, plus the OPT record when asked with EDNS.
    fn response(request: &[u8], with_opt: bool) -> Vec<u8> {
        let question_end = 12 + 17 + 4;
        let mut out = request[..question_end].to_vec();
        out[2] |= 0x80;
        out[7] = 1;
        out[11] = u8::from(with_opt);
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 1]);
        if with_opt {
            out.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        }
        out
    }

    fn outcome() -> Outcome {
        Outcome {
            decision: DecisionKind::Allowed,
            rule: None,
            action: None,
            rcode: hickory_proto::op::ResponseCode::NoError,
            answer: AnswerText::from("A 192.0.2.1"),
            ede: None,
            synthesized: false,
        }
    }

    #[test]
    fn answers_patch_id_case_payload_and_ttl() {
        let cache = WireCache::new(16);
        let first = query(Some((4096, false)));
        let parsed = PlainQuery::parse(&first).unwrap();
        let mut key = [0u8; KEY_MAX];
        let now = Instant::now();
        cache.store(
            parsed.key(&mut key),
            &response(&first, true),
            7,
            Some(100),
            outcome(),
            now,
        );

        let mut second = query(Some((1400, false)));
        second[0] = 0xab;
        second[13..16].copy_from_slice(b"wWw");
        let parsed = PlainQuery::parse(&second).unwrap();
        let mut out = [0u8; 4096];
        let later = now + Duration::from_secs(30);
        let (len, entry) = cache.answer(&parsed, 7, 1232, later, &mut out).unwrap();
        let answer = &out[..len];
        assert_eq!(answer[..2], [0xab, 0x34]);
        assert_eq!(&answer[13..16], b"wWw");
        // TTL 300 at offset 33 + 6, counted down by 30 s.
        assert_eq!(answer[39..43], 270u32.to_be_bytes());
        // OPT payload: the client's 1400, capped at our 1232.
        assert_eq!(answer[len - 8..len - 6], 1232u16.to_be_bytes());
        assert_eq!(
            entry.as_deref().unwrap().outcome.answer.as_deref(),
            Some("A 192.0.2.1")
        );

        // Another generation, or past the entry's life: not answered here.
        assert!(cache.answer(&parsed, 8, 1232, later, &mut out).is_none());
        let expired = now + Duration::from_secs(100);
        assert!(cache.answer(&parsed, 7, 1232, expired, &mut out).is_none());
    }

    #[test]
    fn synthesized_answers_keep_their_ttl_and_oversized_ones_are_declined() {
        let cache = WireCache::new(16);
        let request = query(None);
        let parsed = PlainQuery::parse(&request).unwrap();
        let mut key = [0u8; KEY_MAX];
        let now = Instant::now();
        cache.store(
            parsed.key(&mut key),
            &response(&request, false),
            1,
            None,
            outcome(),
            now,
        );
        let mut out = [0u8; 4096];
        let (len, _) = cache
            .answer(&parsed, 1, 1232, now + Duration::from_secs(5000), &mut out)
            .unwrap();
        assert_eq!(out[39..43], 300u32.to_be_bytes());
        assert_eq!(len, 33 + 16);
        let mut small = [0u8; 20];
        assert!(cache.answer(&parsed, 1, 1232, now, &mut small).is_none());
    }

    #[test]
    fn an_entry_answers_only_its_own_question_and_flags() {
        let cache = WireCache::new(16);
        let request = query(None);
        let parsed = PlainQuery::parse(&request).unwrap();
        let mut key_buffer = [0u8; KEY_MAX];
        let key = parsed.key(&mut key_buffer).to_vec();
        cache.store(
            &key,
            &response(&request, false),
            1,
            None,
            outcome(),
            Instant::now(),
        );
        let (_, found) = cache.find(cache.hash(&key), false).unwrap();
        let entry = found.as_deref().unwrap();
        assert!(entry.answers(&key));
        // Entries are found by hash; a key that lands on another's slot must not be answered.
        let mut other_name = key.clone();
        other_name[1] = b'x';
        assert!(!entry.answers(&other_name));
        let mut other_type = key.clone();
        let at = key.len() - 4;
        other_type[at] ^= 1;
        assert!(!entry.answers(&other_type));
        let mut other_flags = key.clone();
        *other_flags.last_mut().unwrap() ^= 1;
        assert!(!entry.answers(&other_flags));
        assert!(!entry.answers(&key[..3]));
        // A response whose question is not the key's is not stored.
        let cache = WireCache::new(16);
        cache.store(
            &other_name,
            &response(&request, false),
            1,
            None,
            outcome(),
            Instant::now(),
        );
        assert!(!cache.contains(&other_name, 1));
    }

    /// Entries keep small responses inline and larger ones on the heap; both replay whole,
    /// with every TTL counted down.
    #[test]
    fn inline_and_heap_entries_replay_alike() {
        let request = query(None);
        let mut key = [0u8; KEY_MAX];
        let parsed = PlainQuery::parse(&request).unwrap();
        let key = parsed.key(&mut key).to_vec();
        let now = Instant::now();
        for (records, inline) in [(1u8, true), (12, false)] {
            let mut stored = response(&request, false);
            stored[7] = records;
            for index in 1..records {
                stored.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2]);
                stored.push(index + 1);
            }
            let cache = WireCache::new(16);
            cache.store(&key, &stored, 1, Some(300), outcome(), now);
            let (_, found) = cache.find(cache.hash(&key), false).unwrap();
            let entry = found.as_deref().unwrap();
            assert_eq!(
                matches!(entry.data, EntryBytes::Inline { .. }),
                inline,
                "{} bytes",
                stored.len()
            );
            let mut out = [0u8; 4096];
            let (len, _) = cache
                .answer(&parsed, 1, 1232, now + Duration::from_secs(10), &mut out)
                .unwrap();
            assert_eq!(len, stored.len());
            let mut expected = stored.clone();
            for record in 0..usize::from(records) {
                let ttl_at = 33 + 16 * record + 6;
                expected[ttl_at..ttl_at + 4].copy_from_slice(&290u32.to_be_bytes());
            }
            assert_eq!(out[..len], expected[..]);
        }
    }

    #[test]
    fn walk_rejects_a_damaged_message() {
        let request = query(None);
        let good = response(&request, false);
        assert!(walk(&good).is_some());
        assert!(walk(&good[..good.len() - 1]).is_none());
        let mut long = good.clone();
        long.push(0);
        assert!(walk(&long).is_none());
    }

    /// A query for `name` (plain, no EDNS) and a response to it with one A record, whose last
    /// two bytes are the name's hash (to tell whose answer a replay is).
    fn named(name: &str) -> (Vec<u8>, Vec<u8>) {
        let mut request = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            request.push(label.len() as u8);
            request.extend_from_slice(label.as_bytes());
        }
        request.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut response = request.clone();
        response[2] |= 0x80;
        response[7] = 1;
        response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 0]);
        response.extend_from_slice(&name_mark(name));
        (request, response)
    }

    fn name_mark(name: &str) -> [u8; 2] {
        let sum = name
            .bytes()
            .fold(0u16, |sum, b| sum.wrapping_mul(31).wrapping_add(b.into()));
        sum.to_be_bytes()
    }

    fn store_named(cache: &WireCache, name: &str) -> Vec<u8> {
        let (request, response) = named(name);
        let parsed = PlainQuery::parse(&request).unwrap();
        let mut key = [0u8; KEY_MAX];
        let key = parsed.key(&mut key).to_vec();
        cache.store(&key, &response, 1, Some(300), outcome(), Instant::now());
        key
    }

    #[test]
    fn a_full_set_gives_up_an_unreferenced_entry_first() {
        // Sixteen slots: one set.
        let cache = WireCache::new(WAYS);
        assert_eq!(cache.slots.len(), WAYS);
        let keys: Vec<Vec<u8>> = (0..WAYS)
            .map(|i| store_named(&cache, &format!("n{i}.test")))
            .collect();
        assert!(keys.iter().all(|key| cache.contains(key, 1)));
        // Asked again: marked referenced, so the next store passes it over.
        let (request, _) = named("n0.test");
        let mut out = [0u8; 512];
        let query = PlainQuery::parse(&request).unwrap();
        assert!(
            cache
                .answer(&query, 1, 1232, Instant::now(), &mut out)
                .is_some()
        );
        let newcomer = store_named(&cache, "new.test");
        assert!(cache.contains(&newcomer, 1));
        assert!(cache.contains(&keys[0], 1));
        let kept = keys.iter().filter(|key| cache.contains(key, 1)).count();
        assert_eq!(kept, WAYS - 1);
        // Storing the same key again replaces it in place.
        store_named(&cache, "new.test");
        assert_eq!(
            keys.iter().filter(|key| cache.contains(key, 1)).count(),
            kept
        );
    }

    #[test]
    fn an_expired_entry_leaves_a_slot_the_next_store_takes() {
        let cache = WireCache::new(WAYS);
        let live: Vec<Vec<u8>> = (0..WAYS - 1)
            .map(|i| store_named(&cache, &format!("n{i}.test")))
            .collect();
        // The last slot of the set: an answer valid for 10 s.
        let (request, response) = named("gone.test");
        let parsed = PlainQuery::parse(&request).unwrap();
        let mut key = [0u8; KEY_MAX];
        let key = parsed.key(&mut key).to_vec();
        let now = Instant::now();
        cache.store(&key, &response, 1, Some(10), outcome(), now);
        let mut out = [0u8; 512];
        let later = now + std::time::Duration::from_secs(10);
        assert!(cache.answer(&parsed, 1, 1232, later, &mut out).is_none());
        assert!(!cache.contains(&key, 1));
        // The next store takes the emptied slot, not a live entry's.
        let newcomer = store_named(&cache, "new.test");
        assert!(cache.contains(&newcomer, 1));
        assert!(live.iter().all(|key| cache.contains(key, 1)));
    }

    #[test]
    fn evictions_move_round_the_set() {
        let cache = WireCache::new(WAYS);
        let keys: Vec<Vec<u8>> = (0..WAYS)
            .map(|i| store_named(&cache, &format!("n{i}.test")))
            .collect();
        // Nothing referenced: each store evicts the next slot from the hand, oldest first,
        // not the same slot again.
        for i in 0..3 {
            store_named(&cache, &format!("x{i}.test"));
        }
        let kept: Vec<bool> = keys.iter().map(|key| cache.contains(key, 1)).collect();
        assert_eq!(kept[..3], [false, false, false]);
        assert!(kept[3..].iter().all(|&kept| kept));
    }

    #[test]
    fn racing_stores_and_lookups_never_answer_another_question() {
        // A small table, so the threads keep replacing each other's entries in shared sets.
        let cache = Arc::new(WireCache::new(32));
        let names: Vec<String> = (0..200).map(|i| format!("host{i}.race.test")).collect();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let cache = Arc::clone(&cache);
                let names = names.clone();
                std::thread::spawn(move || {
                    let mut answered = 0;
                    let mut out = [0u8; 512];
                    for round in 0..20_000usize {
                        let name = &names[(round * 7 + thread * 13) % names.len()];
                        if round % 3 == thread % 3 {
                            store_named(&cache, name);
                            continue;
                        }
                        let (request, _) = named(name);
                        let query = PlainQuery::parse(&request).unwrap();
                        if let Some((length, _)) =
                            cache.answer(&query, 1, 1232, Instant::now(), &mut out)
                        {
                            // The replayed bytes are the answer stored for this name.
                            assert_eq!(length, request.len() + 16);
                            assert_eq!(out[length - 2..length], name_mark(name));
                            answered += 1;
                        }
                    }
                    answered
                })
            })
            .collect();
        let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(answered > 0);
    }
}
