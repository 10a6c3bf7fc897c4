//! The answer cache: upstream replies kept for their TTL, positive and negative (RFC 2308).
//!
//! What is cached is the upstream's reply *before* policy, so a list change applies to cached
//! answers at once. The store is `quick_cache`'s sharded cache: no global lock on the query path,
//! and a hard entry limit with a scan-resistant eviction policy.
//!
//! Records are kept in wire form (as Unbound and PowerDNS Recursor keep theirs), not as hickory
//! `Record`s: a typical reply (one A record, the zone's NS in authority, its glue) is about 50
//! bytes on the wire against some 750 bytes as three `Record`s, and the cache holds one entry
//! per distinct question. A hit decodes the records, which measured a little cheaper than
//! cloning three `Record`s did (`cargo bench --bench hot_path -- cache_hit`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{DNSClass, LowerName, RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder},
};

use crate::config::CacheSection;

/// What a cached answer is keyed by: the question plus the flags that change the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub name: LowerName,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// DO changes whether RRSIGs are present.
    pub dnssec_ok: bool,
    /// CD changes whether a validating upstream withholds bogus data.
    pub checking_disabled: bool,
}

/// One upstream reply as stored.
#[derive(Debug)]
pub struct CachedAnswer {
    pub response_code: ResponseCode,
    pub authentic_data: bool,
    /// The answer, authority and additional records in wire form, one after the other, names
    /// compressed against earlier ones in the same bytes (RFC 1035 §4.1.4).
    records: Box<[u8]>,
    /// Records in each section: answer, authority, additional.
    counts: [u16; 3],
    /// The answer section in brief, for decision records: made once, not per hit.
    pub summary: Arc<str>,
    stored_at: Instant,
    /// Seconds this entry lives; also the ceiling of every TTL we hand out from it.
    ttl_secs: u32,
}

impl CachedAnswer {
    /// Seconds since stored, if still fresh at `now`.
    pub fn age_if_fresh(&self, now: Instant) -> Option<u32> {
        let age = now.saturating_duration_since(self.stored_at);
        let age_secs = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        (age < Duration::from_secs(u64::from(self.ttl_secs))).then_some(age_secs)
    }

    /// Seconds left of this entry's life at `age_secs`.
    pub fn remaining_secs(&self, age_secs: u32) -> u32 {
        self.ttl_secs.saturating_sub(age_secs)
    }

    /// The answer, authority and additional sections with TTLs counted down by `age_secs` and
    /// capped at the entry's TTL (so a `max_ttl` clamp also shows in what clients see). `None`
    /// if the stored bytes do not decode, which `encode_sections` rules out at store time.
    pub fn sections(&self, age_secs: u32) -> Option<Sections> {
        let mut decoder = BinDecoder::new(&self.records);
        let mut section = |count: u16| -> Option<Vec<Record>> {
            (0..count)
                .map(|_| {
                    let mut record = Record::read(&mut decoder).ok()?;
                    record.ttl = record.ttl.min(self.ttl_secs).saturating_sub(age_secs);
                    Some(record)
                })
                .collect()
        };
        let [answers, authorities, additionals] = self.counts;
        let sections = Sections {
            answers: section(answers)?,
            authorities: section(authorities)?,
            additionals: section(additionals)?,
        };
        decoder.is_empty().then_some(sections)
    }
}

/// The three record sections of a cached reply, decoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sections {
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// Encodes the three sections of `reply` for storage; `None` if a record does not encode or
/// does not decode back to exactly itself (owner case, TTL, data), so a cache hit never differs
/// from what the upstream sent: such a reply is simply not cached.
fn encode_sections(reply: &Message) -> Option<(Box<[u8]>, [u16; 3])> {
    let mut bytes = Vec::with_capacity(128);
    let mut counts = [0u16; 3];
    {
        let mut encoder = BinEncoder::new(&mut bytes);
        let sections = [&reply.answers, &reply.authorities, &reply.additionals];
        for (count, records) in counts.iter_mut().zip(sections) {
            *count = u16::try_from(records.len()).ok()?;
            for record in records {
                record.emit(&mut encoder).ok()?;
            }
        }
    }
    // Compression pointers are 14-bit offsets: past 16 KiB (or 120 names) later names are
    // written in full, which still decodes. The encoder stops at 65,535 bytes, so a reply near
    // the TCP limit may not fit uncompressed and is then not cached.
    let mut decoder = BinDecoder::new(&bytes);
    let originals = reply
        .answers
        .iter()
        .chain(&reply.authorities)
        .chain(&reply.additionals);
    for original in originals {
        let decoded = Record::read(&mut decoder).ok()?;
        // `Record`'s `==` ignores TTL and the case of the owner name.
        let exact = decoded == *original
            && decoded.ttl == original.ttl
            && decoded.name.eq_case(&original.name);
        if !exact {
            return None;
        }
    }
    if !decoder.is_empty() {
        return None;
    }
    Some((bytes.into_boxed_slice(), counts))
}

/// The cache; cheap to share (`Arc` inside).
#[derive(Debug)]
pub struct AnswerCache {
    entries: Option<quick_cache::sync::Cache<CacheKey, Arc<CachedAnswer>>>,
    settings: CacheSection,
}

impl AnswerCache {
    /// The configured entry limit (0: caching off).
    pub fn capacity(&self) -> usize {
        self.settings.max_entries
    }

    pub fn new(settings: &CacheSection) -> Self {
        Self {
            entries: (settings.max_entries > 0)
                .then(|| quick_cache::sync::Cache::new(settings.max_entries)),
            settings: settings.clone(),
        }
    }

    /// A fresh entry and its age in seconds.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<(Arc<CachedAnswer>, u32)> {
        let entry = self.entries.as_ref()?.get(key)?;
        match entry.age_if_fresh(now) {
            Some(age) => Some((entry, age)),
            None => {
                self.entries.as_ref()?.remove(key);
                None
            }
        }
    }

    /// Stores a reply if RFC 2308 says it may be cached; returns the TTL it was stored with.
    pub fn insert(
        &self,
        key: CacheKey,
        reply: &Message,
        summary: &Arc<str>,
        now: Instant,
    ) -> Option<u32> {
        let entries = self.entries.as_ref()?;
        let ttl_secs = self.ttl_for(reply)?;
        if ttl_secs == 0 {
            return None;
        }
        let (records, counts) = encode_sections(reply)?;
        let entry = CachedAnswer {
            response_code: reply.metadata.response_code,
            authentic_data: reply.metadata.authentic_data,
            records,
            counts,
            summary: summary.clone(),
            stored_at: now,
            ttl_secs,
        };
        entries.insert(key, Arc::new(entry));
        Some(ttl_secs)
    }

    /// How long a reply may be cached, or `None` if it must not be.
    fn ttl_for(&self, reply: &Message) -> Option<u32> {
        let settings = &self.settings;
        if reply.metadata.truncation {
            return None;
        }
        match reply.metadata.response_code {
            ResponseCode::NoError if !reply.answers.is_empty() => {
                let min_ttl = reply.answers.iter().map(|record| record.ttl).min()?;
                Some(min_ttl.clamp(
                    settings.min_ttl_secs,
                    settings.max_ttl_secs.max(settings.min_ttl_secs),
                ))
            }
            // NODATA and NXDOMAIN: RFC 2308 §5, the negative TTL is the smaller of the SOA's TTL
            // and its MINIMUM field. Without an SOA the reply SHOULD NOT be cached.
            ResponseCode::NoError | ResponseCode::NXDomain => {
                let negative_ttl =
                    reply
                        .authorities
                        .iter()
                        .find_map(|record| match &record.data {
                            RData::SOA(soa) => Some(record.ttl.min(soa.minimum)),
                            _ => None,
                        })?;
                Some(negative_ttl.clamp(
                    settings.min_ttl_secs.min(settings.negative_max_ttl_secs),
                    settings.negative_max_ttl_secs,
                ))
            }
            // RFC 2308 §7.1: a server failure may be cached, for at most five minutes.
            ResponseCode::ServFail => Some(settings.servfail_ttl_secs.min(300)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |entries| entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{
        op::{MessageType, OpCode},
        rr::{
            Name,
            rdata::{A, CNAME, NS, SOA, TXT},
        },
    };

    use super::*;

    fn key(name: &str) -> CacheKey {
        CacheKey {
            name: LowerName::from(Name::from_str(name).unwrap()),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn reply(code: ResponseCode, answer_ttl: Option<u32>, soa: Option<(u32, u32)>) -> Message {
        let mut message = Message::new(1, MessageType::Response, OpCode::Query);
        message.metadata.response_code = code;
        let name = Name::from_str("a.test.").unwrap();
        if let Some(ttl) = answer_ttl {
            message.add_answer(Record::from_rdata(
                name.clone(),
                ttl,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        }
        if let Some((ttl, minimum)) = soa {
            let soa = SOA::new(name.clone(), name.clone(), 1, 3600, 600, 86400, minimum);
            message.add_authority(Record::from_rdata(name, ttl, RData::SOA(soa)));
        }
        message
    }

    fn settings() -> CacheSection {
        CacheSection {
            max_entries: 100,
            min_ttl_secs: 10,
            max_ttl_secs: 1000,
            negative_max_ttl_secs: 600,
            servfail_ttl_secs: 5,
        }
    }

    #[test]
    fn positive_ttl_is_clamped_and_counts_down() {
        let cache = AnswerCache::new(&settings());
        let now = Instant::now();
        assert_eq!(
            cache.insert(
                key("a.test."),
                &reply(ResponseCode::NoError, Some(5000), None),
                &Arc::from(""),
                now
            ),
            Some(1000)
        );
        assert_eq!(
            cache.insert(
                key("b.test."),
                &reply(ResponseCode::NoError, Some(1), None),
                &Arc::from(""),
                now
            ),
            Some(10)
        );
        let (entry, age) = cache
            .get(&key("a.test."), now + Duration::from_secs(100))
            .unwrap();
        assert_eq!(age, 100);
        assert_eq!(entry.sections(age).unwrap().answers[0].ttl, 900);
        assert!(
            cache
                .get(&key("a.test."), now + Duration::from_secs(1000))
                .is_none()
        );
    }

    #[test]
    fn negative_ttl_follows_rfc2308() {
        let cache = AnswerCache::new(&settings());
        let now = Instant::now();
        // min(SOA TTL, MINIMUM)
        assert_eq!(
            cache.insert(
                key("n.test."),
                &reply(ResponseCode::NXDomain, None, Some((3600, 120))),
                &Arc::from(""),
                now
            ),
            Some(120)
        );
        // capped by negative_max_ttl_secs
        assert_eq!(
            cache.insert(
                key("m.test."),
                &reply(ResponseCode::NoError, None, Some((3600, 3600))),
                &Arc::from(""),
                now
            ),
            Some(600)
        );
        // no SOA: not cached
        assert_eq!(
            cache.insert(
                key("o.test."),
                &reply(ResponseCode::NXDomain, None, None),
                &Arc::from(""),
                now
            ),
            None
        );
        assert!(cache.get(&key("o.test."), now).is_none());
    }

    #[test]
    fn refused_and_truncated_are_not_cached() {
        let cache = AnswerCache::new(&settings());
        let now = Instant::now();
        assert_eq!(
            cache.insert(
                key("r.test."),
                &reply(ResponseCode::Refused, None, None),
                &Arc::from(""),
                now
            ),
            None
        );
        let mut truncated = reply(ResponseCode::NoError, Some(300), None);
        truncated.metadata.truncation = true;
        assert_eq!(
            cache.insert(key("t.test."), &truncated, &Arc::from(""), now),
            None
        );
    }

    #[test]
    fn every_section_comes_back_as_stored_with_aged_ttls() {
        let cache = AnswerCache::new(&settings());
        let now = Instant::now();
        let name = |text: &str| Name::from_str(text).unwrap();
        let mut message = Message::new(1, MessageType::Response, OpCode::Query);
        // Mixed case is kept (it is what the upstream sent); names repeat, so the stored bytes
        // use compression pointers that must decode within the entry.
        message.add_answer(Record::from_rdata(
            Name::from_ascii("WwW.Example.test.").unwrap(),
            600,
            RData::CNAME(CNAME(name("edge.cdn.example.test."))),
        ));
        message.add_answer(Record::from_rdata(
            name("edge.cdn.example.test."),
            300,
            RData::A(A::new(192, 0, 2, 7)),
        ));
        message.add_answer(Record::from_rdata(
            name("edge.cdn.example.test."),
            300,
            RData::TXT(TXT::new(vec!["a \"quoted\" string".into(), String::new()])),
        ));
        message.add_authority(Record::from_rdata(
            name("example.test."),
            3600,
            RData::NS(NS(name("ns1.example.test."))),
        ));
        message.add_additional(Record::from_rdata(
            name("ns1.example.test."),
            3600,
            RData::A(A::new(192, 0, 2, 53)),
        ));
        assert_eq!(
            cache.insert(key("www.example.test."), &message, &Arc::from(""), now),
            Some(300)
        );
        let (entry, age) = cache
            .get(&key("www.example.test."), now + Duration::from_secs(40))
            .unwrap();
        let sections = entry.sections(age).unwrap();
        // TTLs: capped at the entry's 300 s, then counted down by 40 s.
        let expected = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|record| {
                    let mut record = record.clone();
                    record.ttl = record.ttl.min(300) - 40;
                    record
                })
                .collect()
        };
        assert_eq!(sections.answers, expected(&message.answers));
        assert_eq!(sections.authorities, expected(&message.authorities));
        assert_eq!(sections.additionals, expected(&message.additionals));
        // `Record`'s `==` leaves TTLs out: compare them on their own.
        let ttls = |sections: [&Vec<Record>; 3]| -> Vec<u32> {
            sections
                .into_iter()
                .flatten()
                .map(|record| record.ttl)
                .collect()
        };
        assert_eq!(
            ttls([
                &sections.answers,
                &sections.authorities,
                &sections.additionals
            ]),
            [260, 260, 260, 260, 260]
        );
        assert_eq!(sections.answers[0].name.to_string(), "WwW.Example.test.");
        // The stored form is the wire form: smaller than the records' wire size without
        // compression, far smaller than hickory's in-memory records.
        let uncompressed: usize = [&message.answers, &message.authorities, &message.additionals]
            .into_iter()
            .flatten()
            .map(|record| record.to_bytes().unwrap().len())
            .sum();
        assert!(
            entry.records.len() < uncompressed,
            "{}",
            entry.records.len()
        );
    }

    #[test]
    fn undecodable_bytes_are_a_miss_not_a_panic() {
        let cache = AnswerCache::new(&settings());
        let now = Instant::now();
        cache.insert(
            key("a.test."),
            &reply(ResponseCode::NoError, Some(300), None),
            &Arc::from(""),
            now,
        );
        let (entry, _) = cache.get(&key("a.test."), now).unwrap();
        let damaged = CachedAnswer {
            response_code: entry.response_code,
            authentic_data: false,
            records: entry.records[..entry.records.len() - 1].into(),
            counts: entry.counts,
            summary: Arc::from(""),
            stored_at: now,
            ttl_secs: 300,
        };
        assert!(damaged.sections(0).is_none());
        let mut trailing = entry.records.to_vec();
        trailing.push(0);
        let trailing = CachedAnswer {
            records: trailing.into(),
            summary: Arc::from(""),
            ..damaged
        };
        assert!(trailing.sections(0).is_none());
    }

    #[test]
    fn zero_entries_disables_the_cache() {
        let cache = AnswerCache::new(&CacheSection {
            max_entries: 0,
            ..settings()
        });
        let now = Instant::now();
        assert_eq!(
            cache.insert(
                key("a.test."),
                &reply(ResponseCode::NoError, Some(300), None),
                &Arc::from(""),
                now
            ),
            None
        );
    }
}
