//! Line syntax of block lists: plain domains, hosts files, `||name^` and `*.name`, into [`Rule`]s.

use std::fmt;
use std::net::IpAddr;

use super::error::{AdblockFeature, NameFault, SyntaxReason};

/// Which names a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RuleKind {
    /// The name itself and every name below it.
    Domain,
    /// Only names strictly below it (`*.name`).
    Subdomains,
}

/// One block entry: `name` is lowercase ASCII (punycode), without trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub kind: RuleKind,
    pub name: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_rule(f, self.kind, &self.name)
    }
}

pub(super) fn write_rule(f: &mut fmt::Formatter<'_>, kind: RuleKind, name: &str) -> fmt::Result {
    match kind {
        RuleKind::Domain => f.write_str(name),
        RuleKind::Subdomains => write!(f, "*.{name}"),
    }
}

/// Names that hosts files carry for the machine's own use; blocking them is never meant.
const HOSTS_HOUSEKEEPING: [&str; 12] = [
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Parses one line and hands each rule it holds to `emit` (none for blank and comment lines).
///
/// A line is either wholly accepted or wholly rejected: on error nothing was emitted.
pub fn parse_line(line: &str, mut emit: impl FnMut(Rule)) -> Result<(), SyntaxReason> {
    let content = strip_comments(line);
    if content.is_empty() {
        return Ok(());
    }
    let mut tokens = content.split_ascii_whitespace();
    // Invariant: `content` is trimmed and non-empty, so it has a first token.
    let first = tokens.next().unwrap_or_default();
    if let Some(address) = parse_address(first) {
        return parse_hosts_names(address, tokens, emit);
    }
    if let Some(feature) = adblock_feature(content) {
        return match feature {
            AdblockOutcome::Name(raw) => {
                let name = normalize_name(raw).map_err(|why| invalid(raw, why))?;
                emit(Rule {
                    kind: RuleKind::Domain,
                    name,
                });
                Ok(())
            }
            AdblockOutcome::Unsupported(feature) => {
                Err(SyntaxReason::UnsupportedAdblock { feature })
            }
        };
    }
    if tokens.next().is_some() {
        return Err(invalid(content, NameFault::Whitespace));
    }
    emit(parse_plain(first)?);
    Ok(())
}

/// Returns the entry part of a line: empty for blank and comment lines, and without any
/// ` # comment` tail (a `#` only starts an inline comment after whitespace, so that
/// cosmetic adblock rules like `a.com##.ad` still reach the adblock check).
fn strip_comments(line: &str) -> &str {
    let text = line.trim_start_matches('\u{feff}').trim();
    if text.starts_with('#') || text.starts_with('!') {
        return "";
    }
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices('#') {
        if at > 0 && bytes[at - 1].is_ascii_whitespace() {
            return text[..at].trim_end();
        }
    }
    text
}

/// Recognises the address column of a hosts line, including IPv6 zone ids (`fe80::1%lo0`).
fn parse_address(token: &str) -> Option<&str> {
    let bare = token.split_once('%').map_or(token, |(addr, _zone)| addr);
    bare.parse::<IpAddr>().ok().map(|_| token)
}

fn parse_hosts_names<'a>(
    address: &str,
    names: impl Iterator<Item = &'a str>,
    mut emit: impl FnMut(Rule),
) -> Result<(), SyntaxReason> {
    // Every good name on the line goes out, and the first bad one is the line's error: under
    // `on_invalid = "skip"` a bad name costs only itself, not the good names beside it (under
    // "fail" the list is refused either way).
    let mut named = false;
    let mut first_error = None;
    for raw in names {
        named = true;
        match hosts_name(raw) {
            Ok(rule) => rule.into_iter().for_each(&mut emit),
            Err(reason) => {
                first_error.get_or_insert(reason);
            }
        }
    }
    if !named {
        return Err(SyntaxReason::AddressWithoutNames {
            address: address.to_owned(),
        });
    }
    first_error.map_or(Ok(()), Err)
}

fn hosts_name(raw: &str) -> Result<Option<Rule>, SyntaxReason> {
    let bare = raw.strip_suffix('.').unwrap_or(raw);
    if HOSTS_HOUSEKEEPING
        .iter()
        .any(|name| name.eq_ignore_ascii_case(bare))
    {
        return Ok(None);
    }
    let name = normalize_name(raw).map_err(|why| invalid(raw, why))?;
    Ok(Some(Rule {
        kind: RuleKind::Domain,
        name,
    }))
}

enum AdblockOutcome<'a> {
    /// A `||name^` rule; the name still needs validation.
    Name(&'a str),
    Unsupported(AdblockFeature),
}

/// Tells adblock syntax apart from plain names; `None` means "not adblock at all".
fn adblock_feature(content: &str) -> Option<AdblockOutcome<'_>> {
    use AdblockFeature as F;
    let unsupported = |feature| Some(AdblockOutcome::Unsupported(feature));
    if content.starts_with("@@") {
        return unsupported(F::Exception);
    }
    if is_cosmetic(content) {
        return unsupported(F::Cosmetic);
    }
    if content.contains('$') {
        return unsupported(F::Modifiers);
    }
    if let Some(rest) = content.strip_prefix("||") {
        let Some((name, after)) = rest.split_once('^') else {
            return unsupported(if rest.contains('/') {
                F::Path
            } else {
                F::MissingSeparator
            });
        };
        if name.contains('/') {
            return unsupported(F::Path);
        }
        if !after.is_empty() {
            return unsupported(F::TextAfterSeparator);
        }
        return Some(AdblockOutcome::Name(name));
    }
    if content.starts_with('|') {
        return unsupported(F::AddressAnchor);
    }
    if content.starts_with('/') {
        return unsupported(if content.len() > 1 && content.ends_with('/') {
            F::Regex
        } else {
            F::Path
        });
    }
    if content.contains('^') {
        return unsupported(F::StraySeparator);
    }
    None
}

/// Cosmetic markers are `##`, `#@#`, `#?#`, `#$#`, `#%#` and their `@` exception forms.
fn is_cosmetic(content: &str) -> bool {
    content.match_indices('#').any(|(at, _)| {
        content[at + 1..]
            .trim_start_matches(['@', '?', '$', '%'])
            .starts_with('#')
    })
}

fn parse_plain(raw: &str) -> Result<Rule, SyntaxReason> {
    if let Some(parent) = raw.strip_prefix("*.") {
        let name = normalize_name(parent).map_err(|why| invalid(raw, why))?;
        if name.bytes().filter(|&b| b == b'.').count() < 1 {
            return Err(SyntaxReason::WildcardTooBroad { name });
        }
        return Ok(Rule {
            kind: RuleKind::Subdomains,
            name,
        });
    }
    let name = normalize_name(raw).map_err(|why| invalid(raw, why))?;
    Ok(Rule {
        kind: RuleKind::Domain,
        name,
    })
}

fn invalid(raw: &str, why: NameFault) -> SyntaxReason {
    SyntaxReason::InvalidName {
        name: raw.to_owned(),
        why,
    }
}

/// Lowercases, drops one trailing dot, converts Unicode to punycode, then validates.
pub(super) fn normalize_name(raw: &str) -> Result<String, NameFault> {
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    let name = if raw.is_ascii() {
        raw.to_ascii_lowercase()
    } else {
        // idna's error type says nothing beyond "Errors", so the fault carries no detail.
        idna::domain_to_ascii(raw).map_err(|_| NameFault::Idna)?
    };
    check_name(&name)?;
    Ok(name)
}

/// Validates a lowercase ASCII name against the rules of the list syntax.
fn check_name(name: &str) -> Result<(), NameFault> {
    if name.is_empty() {
        return Err(NameFault::Empty);
    }
    if name.len() > 253 {
        return Err(NameFault::TooLong { len: name.len() });
    }
    let mut last = "";
    for label in name.split('.') {
        check_label(label)?;
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameFault::NumericTopLevel {
            label: last.to_owned(),
        });
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), NameFault> {
    if label.is_empty() {
        return Err(NameFault::EmptyLabel);
    }
    if label.len() > 63 {
        return Err(NameFault::LabelTooLong {
            label: label.to_owned(),
            len: label.len(),
        });
    }
    if let Some(ch) = label
        .chars()
        .find(|&c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
    {
        return Err(match ch {
            '*' => NameFault::MisplacedWildcard,
            c if c.is_whitespace() => NameFault::Whitespace,
            c => NameFault::BadChar { ch: c },
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameFault::HyphenAtEdge {
            label: label.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(line: &str) -> Result<Vec<Rule>, SyntaxReason> {
        let mut out = Vec::new();
        parse_line(line, |rule| out.push(rule))?;
        Ok(out)
    }

    fn domain(name: &str) -> Rule {
        Rule {
            kind: RuleKind::Domain,
            name: name.to_owned(),
        }
    }

    fn subdomains(name: &str) -> Rule {
        Rule {
            kind: RuleKind::Subdomains,
            name: name.to_owned(),
        }
    }

    fn fault(line: &str) -> NameFault {
        match rules(line) {
            Err(SyntaxReason::InvalidName { why, .. }) => why,
            other => panic!("{line:?}: expected InvalidName, got {other:?}"),
        }
    }

    fn adblock(line: &str) -> AdblockFeature {
        match rules(line) {
            Err(SyntaxReason::UnsupportedAdblock { feature }) => feature,
            other => panic!("{line:?}: expected UnsupportedAdblock, got {other:?}"),
        }
    }

    #[test]
    fn blank_and_comment_lines_yield_nothing() {
        for line in [
            "",
            "   ",
            "\t",
            "# comment",
            "   # indented comment",
            "! adblock comment",
            "  !x",
            "#0.0.0.0 a.com",
            "\u{feff}# bom then comment",
            "\r",
        ] {
            assert_eq!(rules(line).unwrap(), vec![], "{line:?}");
        }
    }

    #[test]
    fn plain_domain() {
        assert_eq!(rules("example.com").unwrap(), vec![domain("example.com")]);
        assert_eq!(
            rules("  example.com  \r").unwrap(),
            vec![domain("example.com")]
        );
        assert_eq!(rules("com").unwrap(), vec![domain("com")]);
    }

    #[test]
    fn inline_comments() {
        assert_eq!(
            rules("binance.com  # Binance").unwrap(),
            vec![domain("binance.com")]
        );
        assert_eq!(rules("a.com\t#x").unwrap(), vec![domain("a.com")]);
        assert_eq!(
            rules("0.0.0.0 a.com b.com # two").unwrap(),
            vec![domain("a.com"), domain("b.com")]
        );
        assert_eq!(rules("||a.com^ # ad").unwrap(), vec![domain("a.com")]);
        // Without whitespace, `#` is part of the entry and so invalid.
        assert_eq!(fault("a.com#x"), NameFault::BadChar { ch: '#' });
    }

    #[test]
    fn normalisation() {
        assert_eq!(rules("Example.COM.").unwrap(), vec![domain("example.com")]);
        assert_eq!(
            rules("bücher.example").unwrap(),
            vec![domain("xn--bcher-kva.example")]
        );
        assert_eq!(
            rules("BÜCHER.example.").unwrap(),
            vec![domain("xn--bcher-kva.example")]
        );
        assert_eq!(
            rules("*.bücher.example").unwrap(),
            vec![subdomains("xn--bcher-kva.example")]
        );
        assert_eq!(
            rules("0.0.0.0 bücher.example").unwrap(),
            vec![domain("xn--bcher-kva.example")]
        );
        assert_eq!(
            rules("xn--bcher-kva.example").unwrap(),
            vec![domain("xn--bcher-kva.example")]
        );
        assert_eq!(rules("_dmarc.a.com").unwrap(), vec![domain("_dmarc.a.com")]);
        assert_eq!(rules("0----0.info").unwrap(), vec![domain("0----0.info")]);
    }

    #[test]
    fn hosts_lines() {
        assert_eq!(rules("0.0.0.0 a.com").unwrap(), vec![domain("a.com")]);
        assert_eq!(rules("127.0.0.1\tx.com").unwrap(), vec![domain("x.com")]);
        assert_eq!(rules(":: x.com").unwrap(), vec![domain("x.com")]);
        assert_eq!(rules("::1 x.com").unwrap(), vec![domain("x.com")]);
        assert_eq!(rules("fe80::1%lo0 x.com").unwrap(), vec![domain("x.com")]);
        assert_eq!(
            rules("0.0.0.0 a.com B.com c.com.").unwrap(),
            vec![domain("a.com"), domain("b.com"), domain("c.com")]
        );
        assert_eq!(
            rules("0.0.0.0").unwrap_err(),
            SyntaxReason::AddressWithoutNames {
                address: "0.0.0.0".into()
            }
        );
    }

    #[test]
    fn hosts_housekeeping_names_are_skipped() {
        for line in [
            "127.0.0.1 localhost",
            "127.0.0.1 localhost.localdomain",
            "127.0.0.1 local",
            "255.255.255.255 broadcasthost",
            "::1 ip6-localhost ip6-loopback",
            "fe00::0 ip6-localnet",
            "ff00::0 ip6-mcastprefix",
            "ff02::1 ip6-allnodes",
            "ff02::2 ip6-allrouters",
            "ff02::3 ip6-allhosts",
            "0.0.0.0 0.0.0.0",
            "127.0.0.1 LocalHost.",
        ] {
            assert_eq!(rules(line).unwrap(), vec![], "{line:?}");
        }
        assert_eq!(
            rules("127.0.0.1 localhost ads.com").unwrap(),
            vec![domain("ads.com")]
        );
    }

    #[test]
    fn hosts_line_keeps_its_good_names_and_reports_the_first_bad_one() {
        let mut emitted = Vec::new();
        let err = parse_line("0.0.0.0 a.com b..com c.com x..com", |rule| {
            emitted.push(rule.name);
        })
        .unwrap_err();
        assert_eq!(emitted, ["a.com", "c.com"]);
        assert_eq!(
            err,
            SyntaxReason::InvalidName {
                name: "b..com".into(),
                why: NameFault::EmptyLabel
            }
        );
        assert_eq!(fault("0.0.0.0 *.a.com"), NameFault::MisplacedWildcard);
    }

    #[test]
    fn adblock_domain() {
        assert_eq!(
            rules("||example.com^").unwrap(),
            vec![domain("example.com")]
        );
        assert_eq!(rules("||Ex.Com.^").unwrap(), vec![domain("ex.com")]);
        assert_eq!(fault("||a..com^"), NameFault::EmptyLabel);
        assert_eq!(fault("||*.a.com^"), NameFault::MisplacedWildcard);
    }

    #[test]
    fn unsupported_adblock_is_named_precisely() {
        use AdblockFeature as F;
        assert_eq!(adblock("@@||a.com^"), F::Exception);
        assert_eq!(adblock("||a.com^$important"), F::Modifiers);
        assert_eq!(adblock("a.com$third-party"), F::Modifiers);
        assert_eq!(adblock("||a.com/ads^"), F::Path);
        assert_eq!(adblock("||a.com/ads"), F::Path);
        assert_eq!(adblock("||a.com"), F::MissingSeparator);
        assert_eq!(adblock("||a.com^|"), F::TextAfterSeparator);
        assert_eq!(adblock("|http://a.com/"), F::AddressAnchor);
        assert_eq!(adblock("/ads[0-9]+/"), F::Regex);
        assert_eq!(adblock("/banner.gif"), F::Path);
        assert_eq!(adblock("a.com##.banner"), F::Cosmetic);
        assert_eq!(adblock("a.com#@#.banner"), F::Cosmetic);
        assert_eq!(adblock("a.com#?#div"), F::Cosmetic);
        assert_eq!(adblock("a.com#$#body"), F::Cosmetic);
        assert_eq!(adblock("a.com^"), F::StraySeparator);
    }

    #[test]
    fn wildcard_semantics() {
        assert_eq!(
            rules("*.example.com").unwrap(),
            vec![subdomains("example.com")]
        );
        assert_eq!(
            rules("*.com").unwrap_err(),
            SyntaxReason::WildcardTooBroad { name: "com".into() }
        );
        assert!(
            SyntaxReason::WildcardTooBroad { name: "com".into() }
                .to_string()
                .contains("top-level domain")
        );
        assert_eq!(fault("*"), NameFault::MisplacedWildcard);
        assert_eq!(fault("*.*.a.com"), NameFault::MisplacedWildcard);
        assert_eq!(fault("a.*.com"), NameFault::MisplacedWildcard);
        assert_eq!(fault("*example.com"), NameFault::MisplacedWildcard);
        assert_eq!(fault("*."), NameFault::Empty);
    }

    #[test]
    fn bad_names_and_their_reasons() {
        assert_eq!(fault("a..b"), NameFault::EmptyLabel);
        assert_eq!(fault(".a.com"), NameFault::EmptyLabel);
        assert_eq!(fault("a.com.."), NameFault::EmptyLabel);
        assert_eq!(fault("."), NameFault::Empty);
        assert_eq!(
            fault("-a.com"),
            NameFault::HyphenAtEdge { label: "-a".into() }
        );
        assert_eq!(
            fault("a-.com"),
            NameFault::HyphenAtEdge { label: "a-".into() }
        );
        assert_eq!(fault("a:b.com"), NameFault::BadChar { ch: ':' });
        assert_eq!(fault("http://a.com/x"), NameFault::BadChar { ch: ':' });
        assert_eq!(fault("exa mple.com"), NameFault::Whitespace);
        assert_eq!(
            fault("a.123"),
            NameFault::NumericTopLevel {
                label: "123".into()
            }
        );
        let long_label = "a".repeat(64);
        assert_eq!(
            fault(&format!("{long_label}.com")),
            NameFault::LabelTooLong {
                label: long_label,
                len: 64
            }
        );
        let label63 = "a".repeat(63);
        let name253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        assert_eq!(name253.len(), 253);
        assert_eq!(rules(&name253).unwrap(), vec![domain(&name253)]);
        assert_eq!(
            fault(&format!("x{name253}")),
            NameFault::TooLong { len: 254 }
        );
        assert_eq!(fault("a\u{0}.com"), NameFault::BadChar { ch: '\0' });
        assert_eq!(fault("xn--ü.com"), NameFault::Idna);
        assert_eq!(fault("a\u{200d}ü.com"), NameFault::Idna);
        // idna passes these through; the label check after it catches them.
        assert_eq!(fault("ü%.com"), NameFault::BadChar { ch: '%' });
        assert_eq!(fault("ü..com"), NameFault::EmptyLabel);
    }

    #[test]
    fn invalid_name_message_quotes_the_name() {
        let err = rules("exa mple.com").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid domain name \"exa mple.com\": contains whitespace"),
            "{err}"
        );
    }

    #[test]
    fn render_round_trips() {
        for rule in [
            domain("example.com"),
            subdomains("example.com"),
            domain("xn--bcher-kva.example"),
        ] {
            assert_eq!(rules(&rule.to_string()).unwrap(), vec![rule.clone()]);
        }
        assert_eq!(subdomains("a.b.c").to_string(), "*.a.b.c");
    }
}
