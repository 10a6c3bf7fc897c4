//! The answer cache: upstream replies kept for their TTL, positive and negative (RFC 2308).
//!
//! What is cached is the upstream's reply *before* policy, so a list change applies to cached
//! answers at once. The store is `quick_cache`'s sharded cache: no global lock on the query path,
//! and a hard entry limit with a scan-resistant eviction policy.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{DNSClass, LowerName, RData, Record, RecordType},
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
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
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

    /// The records of one section with TTLs counted down by `age_secs` and capped at the entry's
    /// TTL (so a `max_ttl` clamp also shows in what clients see).
    pub fn aged(&self, records: &[Record], age_secs: u32) -> Vec<Record> {
        records
            .iter()
            .map(|record| {
                let mut record = record.clone();
                let ttl = record.ttl.min(self.ttl_secs).saturating_sub(age_secs);
                record.ttl = ttl;
                record
            })
            .collect()
    }
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
        let entry = CachedAnswer {
            response_code: reply.metadata.response_code,
            authentic_data: reply.metadata.authentic_data,
            answers: reply.answers.clone(),
            authorities: reply.authorities.clone(),
            additionals: reply.additionals.clone(),
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
            rdata::{A, SOA},
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
        assert_eq!(entry.aged(&entry.answers, age)[0].ttl, 900);
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
