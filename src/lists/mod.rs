//! Block lists: loading list files into a [`DomainMatcher`], with per-line error reporting.

mod error;
mod matcher;
mod parse;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use error::{
    AdblockFeature, CapacityError, ListError, LoadError, NameFault, SyntaxReason, WholeTldRule,
};
pub use matcher::{DomainMatcher, DomainMatcherBuilder, RuleHit, RuleText};
pub use parse::{Rule, RuleKind, parse_line};

/// What to do with a line that is not a valid rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Refuse the whole list: a typo should not silently unblock anything.
    #[default]
    Fail,
    /// Load the valid lines and report the others as warnings.
    Skip,
}

/// A list ready for lookups.
#[derive(Debug)]
pub struct LoadedList {
    pub matcher: DomainMatcher,
    /// Lines left out under [`OnInvalid::Skip`]; always empty under `Fail`.
    pub skipped: Vec<ListError>,
    /// Rules loaded that cover a whole top-level domain, to be reported.
    pub whole_tld: Vec<WholeTldRule>,
    /// Lines in the file, comments and blanks included.
    pub lines: u32,
    /// SHA-256 of the file's bytes, for the audit log.
    pub sha256: [u8; 32],
}

/// Whether list file bytes hold nothing at all: only whitespace, after a byte order mark.
/// (A comment is something: a list emptied on purpose says so.)
pub fn is_blank(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Skipped lines shown after [`ListError::NoValidRule`].
const SHOWN_WITH_NO_VALID_RULE: usize = 5;

/// Reads and compiles a list file.
///
/// The file is read whole in one call: lists are at most tens of MB, and one read is both
/// the fastest path and what the hash needs anyway.
pub fn load_file(path: &Path, on_invalid: OnInvalid) -> Result<LoadedList, LoadError> {
    let bytes = crate::files::read_regular(path).map_err(|source| LoadError {
        path: path.to_owned(),
        errors: vec![ListError::Io {
            path: path.to_owned(),
            source,
        }],
    })?;
    load_bytes(path, &bytes, on_invalid)
}

/// Compiles list text; `path_for_messages` only labels the errors.
pub fn load_str(
    path_for_messages: &Path,
    text: &str,
    on_invalid: OnInvalid,
) -> Result<LoadedList, LoadError> {
    load_bytes(path_for_messages, text.as_bytes(), on_invalid)
}

/// Compiles list bytes as read from `path` (which only labels the errors). Callers that need
/// the exact bytes afterwards (the served-state snapshot) read the file themselves.
pub fn load_bytes(
    path: &Path,
    bytes: &[u8],
    on_invalid: OnInvalid,
) -> Result<LoadedList, LoadError> {
    let sha256: [u8; 32] = Sha256::digest(bytes).into();
    let estimated_rules = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut builder = DomainMatcherBuilder::with_capacity(estimated_rules);
    let mut errors = Vec::new();
    let mut whole_tld = Vec::new();
    let mut lines: u32 = 0;
    let refuse = |errors| LoadError {
        path: path.to_owned(),
        errors,
    };

    // `split_inclusive` yields no empty piece after a final newline, so `lines`
    // matches what `wc -l` and editors show.
    for raw in bytes.split_inclusive(|&b| b == b'\n') {
        let Some(line) = lines.checked_add(1) else {
            errors.push(ListError::TooLarge {
                path: path.to_owned(),
                line: lines,
                reason: CapacityError::TooManyRules,
            });
            return Err(refuse(errors));
        };
        lines = line;
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let parsed = match std::str::from_utf8(raw) {
            Ok(text) => {
                let mut capacity = Ok(());
                let outcome = parse_line(text, |rule| {
                    if capacity.is_ok() {
                        capacity = builder.insert_rule(&rule, line);
                    }
                    // `parse_line` refuses a one-label `*.` rule, so only a plain name is left.
                    if !rule.name.contains('.') {
                        whole_tld.push(WholeTldRule {
                            path: path.to_owned(),
                            line,
                            name: rule.name.clone(),
                        });
                    }
                });
                if let Err(reason) = capacity {
                    errors.push(ListError::TooLarge {
                        path: path.to_owned(),
                        line,
                        reason,
                    });
                    return Err(refuse(errors));
                }
                outcome
            }
            Err(err) => Err(SyntaxReason::NotUtf8 {
                offset: err.valid_up_to(),
            }),
        };
        if let Err(reason) = parsed {
            errors.push(ListError::Syntax {
                path: path.to_owned(),
                line,
                text: String::from_utf8_lossy(raw).trim().to_owned(),
                reason,
            });
        }
    }

    match on_invalid {
        OnInvalid::Fail if !errors.is_empty() => Err(refuse(errors)),
        OnInvalid::Skip if builder.is_empty() && !errors.is_empty() => {
            let summary = ListError::NoValidRule {
                path: path.to_owned(),
                skipped: errors.len(),
            };
            // The first few lines show what the file is; all of them would be noise.
            errors.truncate(SHOWN_WITH_NO_VALID_RULE);
            errors.insert(0, summary);
            Err(refuse(errors))
        }
        _ => Ok(LoadedList {
            matcher: builder.build(),
            skipped: errors,
            whole_tld,
            lines,
            sha256,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const MIXED: &str = "\
# header
example.com
  ||ads.example.net^   # adguard
0.0.0.0 tracker.org localhost
*.wild.example.org
bad..name
||a.com^$third-party

Example.COM.
";

    fn path() -> PathBuf {
        PathBuf::from("lists/x.txt")
    }

    #[test]
    fn fail_reports_every_bad_line_with_path_and_line() {
        let err = load_str(&path(), MIXED, OnInvalid::Fail).unwrap_err();
        assert_eq!(err.path, path());
        let messages: Vec<String> = err.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "lists/x.txt:6: invalid domain name \"bad..name\": empty label \
                 (two dots in a row, or a leading dot): `bad..name`",
                "lists/x.txt:7: unsupported adblock syntax: \"$\" modifiers are not \
                 supported (only plain \"||name^\" rules): `||a.com^$third-party`",
            ]
        );
        assert_eq!(err.to_string(), "lists/x.txt: list not loaded: 2 error(s)");
    }

    #[test]
    fn skip_loads_the_rest_and_returns_warnings() {
        let list = load_str(&path(), MIXED, OnInvalid::Skip).unwrap();
        assert_eq!(list.lines, 9);
        assert_eq!(list.matcher.len(), 4);
        assert_eq!(list.skipped.len(), 2);
        assert!(matches!(
            list.skipped[0],
            ListError::Syntax { line: 6, ref text, .. } if text == "bad..name"
        ));
        let m = &list.matcher;
        // The duplicate on line 9 keeps line 2.
        assert_eq!(m.lookup("www.example.com").unwrap().line, 2);
        assert_eq!(m.lookup("ads.example.net").unwrap().line, 3);
        assert_eq!(m.lookup("tracker.org").unwrap().line, 4);
        assert!(m.lookup("localhost").is_none());
        assert!(m.lookup("wild.example.org").is_none());
        let hit = m.lookup("a.wild.example.org").unwrap();
        assert_eq!(hit.line, 5);
        assert_eq!(m.rule_text(hit.rule).to_string(), "*.wild.example.org");
    }

    #[test]
    fn rules_covering_a_whole_tld_load_and_are_reported_with_their_line() {
        let text = "0.0.0.0 co ads.example.com\nzip\n||ads.example.net^\n127.0.0.1 localhost\n";
        let list = load_str(&path(), text, OnInvalid::Fail).unwrap();
        assert_eq!(list.matcher.lookup("shop.co").unwrap().line, 1);
        let reported: Vec<String> = list.whole_tld.iter().map(ToString::to_string).collect();
        assert_eq!(
            reported,
            [
                "lists/x.txt:1: rule \"co\" covers a whole top-level domain (every name under it)",
                "lists/x.txt:2: rule \"zip\" covers a whole top-level domain (every name under it)",
            ]
        );
    }

    #[test]
    fn clean_list_loads_under_fail() {
        let list = load_str(&path(), "a.com\r\nb.com", OnInvalid::Fail).unwrap();
        assert_eq!(list.lines, 2);
        assert_eq!(list.matcher.len(), 2);
        assert!(list.skipped.is_empty());
        let empty = load_str(&path(), "", OnInvalid::Fail).unwrap();
        assert_eq!((empty.lines, empty.matcher.len()), (0, 0));
    }

    #[test]
    fn a_file_without_any_rule_is_refused_even_under_skip() {
        let page = "<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n";
        let err = load_str(&path(), page, OnInvalid::Skip).unwrap_err();
        assert!(
            matches!(err.errors[0], ListError::NoValidRule { skipped: 2, .. }),
            "{err:?}"
        );
        assert!(err.errors[0].to_string().contains("no line is a rule"));
        assert_eq!(err.errors.len(), 3, "the summary, then the lines");
        // Comments and blanks only, or nothing: an empty list, as before.
        let quiet = load_str(&path(), "# nothing yet\n\n", OnInvalid::Skip).unwrap();
        assert_eq!(quiet.matcher.len(), 0);
        // One good line among bad ones is a list with bad lines.
        let one = load_str(&path(), "<html>\na.com\n", OnInvalid::Skip).unwrap();
        assert_eq!((one.matcher.len(), one.skipped.len()), (1, 1));
    }

    #[test]
    fn a_bad_name_on_a_hosts_line_costs_only_itself_under_skip() {
        let list = load_str(
            &path(),
            "0.0.0.0 -a.test ok.test\n0.0.0.0 b.test a..test c.test\n",
            OnInvalid::Skip,
        )
        .unwrap();
        for name in ["ok.test", "b.test", "c.test"] {
            assert!(list.matcher.lookup(name).is_some(), "{name}");
        }
        assert_eq!(list.matcher.len(), 3);
        assert_eq!(list.skipped.len(), 2);
        assert!(list.skipped[0].to_string().contains("\"-a.test\""));
        // Under fail the list is refused, as before.
        assert!(load_str(&path(), "0.0.0.0 -a.test ok.test\n", OnInvalid::Fail).is_err());
    }

    #[test]
    fn lines_in_messages_are_escaped_and_cut() {
        let line = format!("esc\u{1b}[31mRED.test{}", "x".repeat(500));
        let err = load_str(&path(), &line, OnInvalid::Fail).unwrap_err();
        let message = err.errors[0].to_string();
        assert!(!message.contains('\u{1b}'), "{message}");
        assert!(message.contains("esc\\u{1b}[31mRED.test"), "{message}");
        assert!(message.contains("(396 more characters)"), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn hash_is_sha256_of_the_bytes() {
        let list = load_str(&path(), "abc", OnInvalid::Skip).unwrap();
        let hex: String = list.sha256.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn invalid_utf8_is_a_line_error() {
        let dir = std::env::temp_dir().join(format!("dnsward-lists-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("latin1.txt");
        std::fs::write(&file, b"ok.com\nb\xfccher.de\n").unwrap();
        let err = load_file(&file, OnInvalid::Fail).unwrap_err();
        assert!(matches!(
            err.errors[..],
            [ListError::Syntax {
                line: 2,
                reason: SyntaxReason::NotUtf8 { offset: 1 },
                ..
            }]
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let missing = Path::new("/nonexistent/dnsward/list.txt");
        let err = load_file(missing, OnInvalid::Skip).unwrap_err();
        let message = err.errors[0].to_string();
        assert!(
            message.starts_with("/nonexistent/dnsward/list.txt: cannot read list: "),
            "{message}"
        );
    }

    #[test]
    fn on_invalid_deserializes_lowercase() {
        #[derive(serde::Deserialize)]
        struct Config {
            on_invalid: OnInvalid,
        }
        let from = |v: &str| -> OnInvalid {
            let config: Config =
                serde::de::Deserialize::deserialize(serde::de::value::MapDeserializer::<
                    _,
                    serde::de::value::Error,
                >::new(
                    [("on_invalid", v)].into_iter()
                ))
                .unwrap();
            config.on_invalid
        };
        assert_eq!(from("fail"), OnInvalid::Fail);
        assert_eq!(from("skip"), OnInvalid::Skip);
        assert_eq!(OnInvalid::default(), OnInvalid::Fail);
    }

    const REAL: &str = "/work/shared/reference/real-lists";

    /// Counts from the README beside the lists; `entries` is what the header promises.
    fn load_real(file: &str) -> LoadedList {
        let path = Path::new(REAL).join(file);
        load_file(&path, OnInvalid::Fail)
            .unwrap_or_else(|err| panic!("{err}: {:?}", err.errors.first()))
    }

    #[test]
    fn real_lists_load_with_every_entry() {
        for (file, lines, entries) in [
            ("blocklistproject-crypto.hosts", 1_278, 1_274),
            ("blocklistproject-crypto-ags.adguard", 1_285, 1_272),
            ("blocklistproject-crypto-nl.domains", 1_285, 1_272),
            ("blocklistproject-redirect.hosts", 108_698, 108_685),
        ] {
            let list = load_real(file);
            assert_eq!(list.lines, lines, "{file}");
            assert_eq!(list.matcher.len(), entries, "{file}");
            assert!(list.skipped.is_empty());
        }
        let redirect = load_real("blocklistproject-redirect.hosts");
        for name in [
            "amir_mountains.persianblog.ir",
            "falling_from_brlow.info",
            "kral_oyun_kraloyun.sitemynet.com",
            "0----0.info",
        ] {
            assert!(redirect.matcher.lookup(name).is_some(), "{name}");
        }
        let hex: String = redirect.sha256.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "799a5a8282f3b6980c508c917bf1b3f802c5c67a6bb419f90b55fe58869aa07e"
        );
    }
}
