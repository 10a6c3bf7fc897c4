//! Property tests of the list module: parser robustness, render/parse round trip, and the
//! compiled matcher against a naive reference.

use dnsward::lists::{DomainMatcherBuilder, Rule, RuleKind, parse_line};
use proptest::prelude::*;

fn parse_all(line: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    parse_line(line, |rule| rules.push(rule)).map_err(|reason| reason.to_string())?;
    Ok(rules)
}

/// A label valid under the list rules; the top label is kept non-numeric on purpose.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_]",
        "[a-z0-9_][a-z0-9_-]{0,20}[a-z0-9_]",
        "[a-z0-9_]{63}",
    ]
}

fn top_label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,6}[a-z0-9]"
}

fn valid_rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(label(), 0..4),
        top_label(),
        any::<bool>(),
    )
        .prop_filter_map("name over 253 bytes", |(mut labels, top, wildcard)| {
            labels.push(top);
            let name = labels.join(".");
            let kind = if wildcard && labels.len() >= 2 {
                RuleKind::Subdomains
            } else {
                RuleKind::Domain
            };
            (name.len() <= 253).then_some(Rule { kind, name })
        })
}

/// Few distinct labels, so that random rules and queries share suffixes and hits happen.
const POOL: [&str; 7] = ["a", "b", "ads", "x-y", "_t", "com", "net"];

fn pooled_name(max_labels: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&POOL[..]), 1..=max_labels)
        .prop_map(|labels| labels.join("."))
}

fn pooled_rule() -> impl Strategy<Value = (String, RuleKind)> {
    (
        pooled_name(3),
        prop_oneof![Just(RuleKind::Domain), Just(RuleKind::Subdomains)],
    )
}

/// The specification, stated plainly: the longest matching rule name wins; at that name a
/// `Domain` rule beats a `Subdomains` one, and the earliest line beats later duplicates.
fn reference_lookup(rules: &[(String, RuleKind)], qname: &str) -> Option<(String, RuleKind, u32)> {
    let matches = |name: &str, kind: RuleKind| {
        let below = qname.len() > name.len()
            && qname.ends_with(name)
            && qname.as_bytes()[qname.len() - name.len() - 1] == b'.';
        below || (kind == RuleKind::Domain && qname == name)
    };
    let mut best: Option<(String, RuleKind, u32)> = None;
    for (idx, (name, kind)) in rules.iter().enumerate() {
        if !matches(name, *kind) {
            continue;
        }
        let line = idx as u32 + 1;
        let better = match &best {
            None => true,
            Some((best_name, best_kind, _)) => {
                name.len() > best_name.len()
                    || (name.len() == best_name.len()
                        && *best_kind == RuleKind::Subdomains
                        && *kind == RuleKind::Domain)
            }
        };
        if better {
            best = Some((name.clone(), *kind, line));
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_lines_do_not_panic(line in any::<String>()) {
        let _ = parse_all(&line);
    }

    #[test]
    fn list_like_lines_do_not_panic(line in "[ \t#!|^$@*./:%a-zA-Z0-9_ü\u{200d}-]{0,40}") {
        let _ = parse_all(&line);
    }

    #[test]
    fn render_then_parse_is_identity(rule in valid_rule()) {
        prop_assert_eq!(parse_all(&rule.to_string()), Ok(vec![rule]));
    }

    #[test]
    fn matcher_agrees_with_reference(
        rules in prop::collection::vec(pooled_rule(), 0..40),
        queries in prop::collection::vec(pooled_name(6), 1..40),
    ) {
        let mut builder = DomainMatcherBuilder::new();
        for (idx, (name, kind)) in rules.iter().enumerate() {
            builder.insert(name, *kind, idx as u32 + 1).unwrap();
        }
        let matcher = builder.build();
        for qname in &queries {
            let got = matcher
                .lookup(qname)
                .map(|hit| (matcher.rule_name(hit.rule).to_owned(), hit.kind, hit.line));
            prop_assert_eq!(got, reference_lookup(&rules, qname), "query {}", qname);
        }
    }
}
