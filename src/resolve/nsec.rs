//! Wildcard answers proven by NSEC that hickory 0.26.3's validator calls bogus.
//!
//! For an answer synthesized from a wildcard, hickory builds the name of the wildcard that
//! could have answered and wants an NSEC that *covers* it. When that is the very wildcard that
//! answered (`x.wild.example.` from `*.wild.example.`), the NSEC proving `x.wild.example.` absent
//! is the wildcard's own, which matches its name instead of covering it: the most common
//! wildcard answer of an NSEC-signed zone came back SERVFAIL. RFC 4035 §5.3.4 asks for this
//! instead, as Unbound checks it (`val_nsec_proves_positive_wildcard`): the answer's RRSIG
//! validated and its labels field names the closest encloser; an NSEC proves the expanded name
//! does not exist, with that same closest encloser. NSEC3 proofs are not affected.

use hickory_proto::{
    dnssec::{
        Proof,
        rdata::{DNSSECRData, NSEC},
    },
    op::{Message, ResponseCode},
    rr::{Name, RData, Record},
};

/// Whether `message`, a NOERROR answer the validator rejected for its denial proof, is a
/// wildcard expansion its NSEC records prove: every answer record validated, and each name
/// expanded from a wildcard is proven not to exist below the wildcard's closest encloser.
pub fn proves_wildcard_answer(message: &Message) -> bool {
    if message.metadata.response_code != ResponseCode::NoError || message.answers.is_empty() {
        return false;
    }
    if message
        .answers
        .iter()
        .any(|record| record.proof != Proof::Secure)
    {
        return false;
    }
    let nsecs: Vec<(&Name, &NSEC)> = message
        .authorities
        .iter()
        .filter(|record| record.proof == Proof::Secure)
        .filter_map(|record| match &record.data {
            RData::DNSSEC(DNSSECRData::NSEC(nsec)) => Some((&record.name, nsec)),
            _ => None,
        })
        .collect();
    let mut expanded = message.answers.iter().filter_map(expansion).peekable();
    expanded.peek().is_some()
        && expanded.all(|(name, encloser)| proves_absent_below(name, &encloser, &nsecs))
}

/// For an RRSIG over a wildcard-expanded RRset (its labels field counts fewer labels than its
/// owner has, RFC 4034 §3.1.3), the expanded name and the wildcard's closest encloser.
fn expansion(record: &Record) -> Option<(&Name, Name)> {
    let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &record.data else {
        return None;
    };
    let labels = rrsig.input().num_labels;
    (labels < record.name.num_labels()).then(|| (&record.name, record.name.trim_to(labels.into())))
}

/// Whether an NSEC covers `name` (so it does not exist) and its owner and next name place the
/// closest encloser of `name` at `encloser`, which is where the wildcard must then sit.
fn proves_absent_below(name: &Name, encloser: &Name, nsecs: &[(&Name, &NSEC)]) -> bool {
    nsecs.iter().any(|(owner, nsec)| {
        covers(owner, nsec, name)
            && closest_encloser(name, owner, nsec.next_domain_name()) == *encloser
    })
}

/// Whether the NSEC at `owner` covers `name`: `name` sorts strictly between the owner and the
/// next name (or after the owner, for the last NSEC of the zone, whose next name is the apex).
/// A parent-side NSEC at a zone cut says nothing about names below it (RFC 6840 §4.1).
fn covers(owner: &Name, nsec: &NSEC, name: &Name) -> bool {
    if nsec.is_ancestor_delegation() && owner.zone_of(name) {
        return false;
    }
    let next = nsec.next_domain_name();
    name > owner && (name < next || (next <= owner && next.zone_of(name)))
}

/// The longest name that is an ancestor of `name` and of either `owner` or `next`: the names
/// between them do not exist, so that is the closest existing ancestor of `name`.
fn closest_encloser(name: &Name, owner: &Name, next: &Name) -> Name {
    let shared = |other: &Name| {
        name.iter()
            .rev()
            .zip(other.iter().rev())
            .take_while(|(a, b)| a.eq_ignore_ascii_case(b))
            .count()
    };
    name.trim_to(shared(owner).max(shared(next)))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{
        rr::{RecordType, rdata::A},
        serialize::binary::{BinDecoder, BinEncodable, Restrict},
    };

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    fn secure(mut record: Record) -> Record {
        record.proof = Proof::Secure;
        record
    }

    /// An RRSIG over `owner`'s A RRset with the given labels field (signature bytes are
    /// irrelevant here: the validator's verdict is the record's proof).
    fn rrsig(owner: &str, labels: u8) -> Record {
        let mut data = Vec::new();
        data.extend_from_slice(&u16::from(RecordType::A).to_be_bytes());
        data.extend_from_slice(&[13, labels]);
        data.extend_from_slice(&300u32.to_be_bytes());
        data.extend_from_slice(&2_000_000_000u32.to_be_bytes());
        data.extend_from_slice(&1_000_000_000u32.to_be_bytes());
        data.extend_from_slice(&12345u16.to_be_bytes());
        data.extend_from_slice(&name("example.").to_bytes().unwrap());
        data.extend_from_slice(&[0xab; 64]);
        let mut decoder = BinDecoder::new(&data);
        let rdata = RData::read(
            &mut decoder,
            RecordType::RRSIG,
            Restrict::new(data.len() as u16),
        )
        .unwrap();
        secure(Record::from_rdata(name(owner), 300, rdata))
    }

    fn nsec(owner: &str, next: &str) -> Record {
        let data = NSEC::new(
            name(next),
            [RecordType::A, RecordType::RRSIG, RecordType::NSEC],
        );
        secure(Record::from_rdata(
            name(owner),
            300,
            RData::DNSSEC(DNSSECRData::NSEC(data)),
        ))
    }

    fn answer(owner: &str, labels: u8, authorities: Vec<Record>) -> Message {
        let mut message = Message::response(1, hickory_proto::op::OpCode::Query);
        message.answers = vec![
            secure(Record::from_rdata(
                name(owner),
                300,
                RData::A(A::new(192, 0, 2, 7)),
            )),
            rrsig(owner, labels),
        ];
        message.authorities = authorities;
        message
    }

    #[test]
    fn the_wildcards_own_nsec_proves_a_name_one_label_below() {
        let proof = || vec![nsec("*.wild.example.", "www.example.")];
        assert!(proves_wildcard_answer(&answer(
            "x.wild.example.",
            2,
            proof()
        )));
        assert!(proves_wildcard_answer(&answer(
            "a.b.wild.example.",
            2,
            proof()
        )));
        // The wildcard's NSEC is the zone's last: its next name is the apex.
        let last = vec![nsec("*.wild.example.", "example.")];
        assert!(proves_wildcard_answer(&answer("x.wild.example.", 2, last)));
    }

    #[test]
    fn an_nsec_that_does_not_prove_the_name_absent_is_refused() {
        // Covers another stretch of the zone.
        let elsewhere = vec![nsec("alpha.example.", "beta.example.")];
        assert!(!proves_wildcard_answer(&answer(
            "x.wild.example.",
            2,
            elsewhere
        )));
        // Matches the name itself: it exists, no wildcard could answer.
        let matching = vec![nsec("x.wild.example.", "www.example.")];
        assert!(!proves_wildcard_answer(&answer(
            "x.wild.example.",
            2,
            matching
        )));
        // No proof at all.
        assert!(!proves_wildcard_answer(&answer(
            "x.wild.example.",
            2,
            Vec::new()
        )));
        // Not validated.
        let mut unproven = nsec("*.wild.example.", "www.example.");
        unproven.proof = Proof::Bogus;
        assert!(!proves_wildcard_answer(&answer(
            "x.wild.example.",
            2,
            vec![unproven]
        )));
    }

    #[test]
    fn the_closest_encloser_must_be_the_wildcards() {
        // `b.wild.example.` exists (the NSEC's next name is below it), so `*.wild.example.` could not
        // have answered `a.b.wild.example.`: a closer wildcard would have been asked for.
        let closer = vec![nsec("*.wild.example.", "c.b.wild.example.")];
        assert!(!proves_wildcard_answer(&answer(
            "a.b.wild.example.",
            2,
            closer.clone()
        )));
        // Claimed from `*.example.` instead, while `wild.example.` exists.
        assert!(!proves_wildcard_answer(&answer(
            "x.wild.example.",
            1,
            closer
        )));
    }

    #[test]
    fn an_answer_that_is_not_an_expansion_or_did_not_validate_is_not_vouched_for() {
        let proof = || vec![nsec("*.wild.example.", "www.example.")];
        assert!(!proves_wildcard_answer(&answer(
            "x.wild.example.",
            3,
            proof()
        )));
        let mut message = answer("x.wild.example.", 2, proof());
        message.answers[0].proof = Proof::Bogus;
        assert!(!proves_wildcard_answer(&message));
        let mut message = answer("x.wild.example.", 2, proof());
        message.metadata.response_code = ResponseCode::NXDomain;
        assert!(!proves_wildcard_answer(&message));
    }

    #[test]
    fn a_delegation_nsec_says_nothing_below_the_cut() {
        let cut = NSEC::new(name("www.example."), [RecordType::NS, RecordType::NSEC]);
        let record = secure(Record::from_rdata(
            name("wild.example."),
            300,
            RData::DNSSEC(DNSSECRData::NSEC(cut)),
        ));
        assert!(!proves_wildcard_answer(&answer(
            "x.wild.example.",
            2,
            vec![record]
        )));
    }
}
