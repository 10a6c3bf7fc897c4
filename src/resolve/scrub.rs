//! What of an upstream's answer section reaches clients: the records on the question's alias
//! chain, in chain order, and nothing else.
//!
//! A forwarder that passes the answer section on as received lets an upstream (or whoever
//! spoofs one) put records for other names in front of clients: an address for a name the
//! lists block, beside the one asked for, is never decided by policy, and a stub that does not
//! check owner names (some do not) uses it. As Unbound's scrubber does, an answer keeps only
//! the question name's records of the asked type, the CNAMEs from it onwards and the DNAMEs
//! above each name of that chain (RFC 6672), with their signatures. A chain that comes back to
//! a name it has passed is a loop, which no answer can be made of.

use hickory_proto::{
    dnssec::rdata::DNSSECRData,
    rr::{Name, RData, Record, RecordType},
};

/// The records of `answers` on `qname`'s chain for `qtype`, in chain order, and how many
/// others were left out; `Err` with the name at which the chain loops.
pub fn chain_records(
    qname: &Name,
    qtype: RecordType,
    answers: Vec<Record>,
) -> Result<(Vec<Record>, usize), Name> {
    let mut left: Vec<Option<Record>> = answers.into_iter().map(Some).collect();
    let mut kept = Vec::with_capacity(left.len());
    let mut passed: Vec<Name> = Vec::new();
    let mut current = qname.clone();
    loop {
        take_where(&mut left, &mut kept, |record| dname_above(record, &current));
        let from = kept.len();
        take_where(&mut left, &mut kept, |record| {
            record.name.eq_ignore_root(&current) && on_chain(record, qtype)
        });
        // A CNAME question is answered by the CNAME itself: its target is not followed.
        let next = (qtype != RecordType::CNAME)
            .then(|| {
                kept[from..].iter().find_map(|record| match &record.data {
                    RData::CNAME(target) => Some(target.0.clone()),
                    _ => None,
                })
            })
            .flatten();
        let Some(next) = next else { break };
        passed.push(current);
        if passed.iter().any(|name| name.eq_ignore_root(&next)) {
            return Err(next);
        }
        current = next;
    }
    Ok((kept, left.iter().flatten().count()))
}

/// Whether a record at a chain name belongs in the answer: the asked type (any, for ANY), a
/// CNAME, or a signature over either.
fn on_chain(record: &Record, qtype: RecordType) -> bool {
    let wanted = |rtype: RecordType| {
        qtype == RecordType::ANY || rtype == qtype || rtype == RecordType::CNAME
    };
    match &record.data {
        RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) => wanted(rrsig.input().type_covered),
        _ => wanted(record.record_type()),
    }
}

/// A DNAME (or its signature) owned by a proper ancestor of `name`: it rewrites `name`.
fn dname_above(record: &Record, name: &Name) -> bool {
    let is_dname = match &record.data {
        RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) => rrsig.input().type_covered == RecordType::DNAME,
        _ => record.record_type() == RecordType::DNAME,
    };
    is_dname && record.name.num_labels() < name.num_labels() && record.name.zone_of(name)
}

/// Moves the records `wanted` picks from `left` to the end of `kept`, in their order.
fn take_where(
    left: &mut [Option<Record>],
    kept: &mut Vec<Record>,
    wanted: impl Fn(&Record) -> bool,
) {
    for slot in left.iter_mut() {
        if slot.as_ref().is_some_and(&wanted) {
            kept.extend(slot.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{
        rr::rdata::{A, CNAME, NULL, TXT},
        serialize::binary::BinEncodable,
    };

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    fn a(owner: &str, last: u8) -> Record {
        Record::from_rdata(name(owner), 300, RData::A(A::new(192, 0, 2, last)))
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 300, RData::CNAME(CNAME(name(target))))
    }

    fn owners(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|record| format!("{} {}", record.name, record.record_type()))
            .collect()
    }

    #[test]
    fn records_off_the_chain_are_left_out_and_the_chain_is_put_in_order() {
        let answers = vec![
            a("victim.example.", 6),
            a("www.example.", 1),
            cname("alias.example.", "www.example."),
            Record::from_rdata(
                name("alias.example."),
                300,
                RData::TXT(TXT::new(vec!["x".into()])),
            ),
            a("blocked.example.", 6),
        ];
        let (kept, dropped) =
            chain_records(&name("alias.example."), RecordType::A, answers).unwrap();
        assert_eq!(owners(&kept), ["alias.example. CNAME", "www.example. A"]);
        assert_eq!(dropped, 3);
    }

    #[test]
    fn a_cname_with_another_owner_answers_nothing() {
        let answers = vec![
            cname("other.example.", "www.example."),
            a("www.example.", 1),
        ];
        let (kept, dropped) =
            chain_records(&name("asked.example."), RecordType::A, answers).unwrap();
        assert!(kept.is_empty());
        assert_eq!(dropped, 2);
    }

    #[test]
    fn dnames_above_the_chain_stay_and_loops_are_refused() {
        let answers = vec![
            cname("x.old.example.", "x.new.example."),
            Record::from_rdata(
                name("old.example."),
                300,
                // hickory keeps DNAME data undecoded.
                RData::Unknown {
                    code: RecordType::DNAME,
                    rdata: NULL::with(name("new.example.").to_bytes().unwrap()),
                },
            ),
            a("x.new.example.", 2),
        ];
        let (kept, dropped) =
            chain_records(&name("x.old.example."), RecordType::A, answers).unwrap();
        assert_eq!(
            owners(&kept),
            [
                "old.example. DNAME",
                "x.old.example. CNAME",
                "x.new.example. A"
            ]
        );
        assert_eq!(dropped, 0);
        let looped = vec![
            cname("a.example.", "b.example."),
            cname("b.example.", "A.example."),
        ];
        assert_eq!(
            chain_records(&name("a.example."), RecordType::A, looped).unwrap_err(),
            name("a.example.")
        );
    }

    #[test]
    fn a_cname_question_is_answered_by_the_cname_and_any_by_every_type() {
        let answers = vec![
            cname("alias.example.", "www.example."),
            a("www.example.", 1),
        ];
        let (kept, _) =
            chain_records(&name("alias.example."), RecordType::CNAME, answers.clone()).unwrap();
        assert_eq!(owners(&kept), ["alias.example. CNAME"]);
        let mut any = vec![a("www.example.", 1)];
        any.push(Record::from_rdata(
            name("www.example."),
            300,
            RData::TXT(TXT::new(vec!["y".into()])),
        ));
        let (kept, dropped) = chain_records(&name("www.example."), RecordType::ANY, any).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(dropped, 0);
    }
}
