//! Error types of the list module: why a line, a file or a matcher insert was rejected.

use std::path::PathBuf;

/// One problem in one list file, printed by the CLI as `path:line: reason: \`text\``.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{}:{line}: {reason}: `{}`", path.display(), ShownLine(text))]
    Syntax {
        path: PathBuf,
        /// 1-based, as editors count.
        line: u32,
        /// The offending line with surrounding whitespace removed.
        text: String,
        reason: SyntaxReason,
    },
    /// Under `on_invalid = "skip"`, a file of which no line is a rule is not a list that lost
    /// a few lines: a feed replaced by an error page, a wrong file. Loading it would drop
    /// every rule of the list at once, with only per-line warnings to show for it.
    #[error(
        "{}: no line is a rule ({skipped} line(s) skipped, none loaded): not a list? \
         on_invalid = \"skip\" leaves out bad lines of a list, not a whole file",
        path.display()
    )]
    NoValidRule { path: PathBuf, skipped: usize },
    /// A list file that is now empty (nothing but whitespace) while the serving version of
    /// the list has rules: a download or a save cut short (an editor or a fetch that truncates
    /// before it writes) would otherwise drop every rule of the list for as long as it lasts.
    #[error(
        "{}: the file is empty, while the serving version of this list has {serving_rules} \
         rule(s): a download or save cut short? To empty a list on purpose, leave a comment \
         line in it (`# no rules`)",
        path.display()
    )]
    Emptied { path: PathBuf, serving_rules: usize },
    #[error("{}: cannot read list: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Rule offsets and line numbers are `u32` to keep the matcher compact; a list that
    /// overflows them (several GiB) is refused rather than silently truncated.
    #[error("{}:{line}: list too large: {reason}", path.display())]
    TooLarge {
        path: PathBuf,
        line: u32,
        reason: CapacityError,
    },
}

/// A rule that loads but decides a whole top-level domain (`0.0.0.0 co` in a hosts feed):
/// reported, not refused, since blocking a TLD (`zip`) can be meant, but nearly always a
/// feed's mistake that would block every name under it. (`*.co` is refused outright: it says
/// "everything under", which no feed writes by accident.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}:{line}: rule \"{}\" covers a whole top-level domain (every name under it)",
    path.display(),
    ShownLine(name)
)]
pub struct WholeTldRule {
    pub path: PathBuf,
    /// 1-based, as editors count.
    pub line: u32,
    pub name: String,
}

/// Why a single line is not a rule this resolver understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxReason {
    #[error("invalid domain name \"{}\": {why}", ShownLine(name))]
    InvalidName { name: String, why: NameFault },
    #[error("unsupported adblock syntax: {feature}")]
    UnsupportedAdblock { feature: AdblockFeature },
    #[error(
        "wildcard \"*.{}\" is too broad: \"*.\" needs at least 2 labels after it, \
         so that a rule cannot block a whole top-level domain",
        ShownLine(name)
    )]
    WildcardTooBroad { name: String },
    #[error(
        "hosts-file address \"{}\" is not followed by any host name",
        ShownLine(address)
    )]
    AddressWithoutNames { address: String },
    #[error("line is not valid UTF-8 (byte {offset})")]
    NotUtf8 { offset: usize },
}

/// What is wrong with a domain name, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameFault {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long, the limit is 253")]
    TooLong { len: usize },
    #[error("empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("label \"{}\" is {len} bytes long, the limit is 63", ShownLine(label))]
    LabelTooLong { label: String, len: usize },
    #[error("character {ch:?} is not allowed (only a-z, 0-9, '-' and '_')")]
    BadChar { ch: char },
    #[error("label \"{}\" starts or ends with '-'", ShownLine(label))]
    HyphenAtEdge { label: String },
    #[error("'*' is only allowed as the whole first label of a \"*.name\" rule")]
    MisplacedWildcard,
    #[error(
        "contains whitespace (a line with several names must start with an IP address, \
         as in a hosts file)"
    )]
    Whitespace,
    /// No real top-level domain is all digits; such a name is an IP address written
    /// where a name belongs, and rejecting it keeps `1.2.3.4` from being read as a rule.
    #[error(
        "top-level label \"{}\" is all digits (an IP address is not a name)",
        ShownLine(label)
    )]
    NumericTopLevel { label: String },
    #[error("not a valid international name (IDNA conversion to punycode rejects it)")]
    Idna,
}

/// Adblock constructs that a DNS resolver cannot honour or that this parser does not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdblockFeature {
    #[error("\"@@\" exception rules are not supported (use an allow list)")]
    Exception,
    #[error("\"$\" modifiers are not supported (only plain \"||name^\" rules)")]
    Modifiers,
    #[error("\"|\" address anchors are not supported (only \"||name^\")")]
    AddressAnchor,
    #[error("regular-expression rules \"/.../\" are not supported")]
    Regex,
    #[error("rules with a path are not supported (DNS only sees the host name)")]
    Path,
    #[error("cosmetic (element hiding) rules are not supported")]
    Cosmetic,
    #[error("\"||name\" lacks the closing \"^\"")]
    MissingSeparator,
    #[error("text after the closing \"^\" is not supported")]
    TextAfterSeparator,
    #[error("\"^\" separator outside a \"||name^\" rule is not supported")]
    StraySeparator,
}

/// A list line as shown in a message: control characters escaped (a feed must not be able to
/// write terminal escapes into an operator's terminal or log), and cut after
/// [`ShownLine::MAX_CHARS`] characters (a line of 100k characters helps nobody).
pub struct ShownLine<'a>(pub &'a str);

impl ShownLine<'_> {
    const MAX_CHARS: usize = 120;
}

impl std::fmt::Display for ShownLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for (index, c) in self.0.chars().enumerate() {
            if index == Self::MAX_CHARS {
                let rest = self.0.chars().count() - index;
                return write!(f, "... ({rest} more characters)");
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The whole list was refused: every problem found, so the CLI can print all of them.
#[derive(Debug, thiserror::Error)]
#[error("{}: list not loaded: {} error(s)", .path.display(), .errors.len())]
pub struct LoadError {
    pub path: PathBuf,
    pub errors: Vec<ListError>,
}

/// A matcher insert that does not fit the compact layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("name of {len} bytes exceeds 255")]
    NameTooLong { len: usize },
    #[error("name storage exceeds 4 GiB")]
    ArenaFull,
    #[error("more than {} rules or lines", u32::MAX)]
    TooManyRules,
    #[error("the empty name cannot be a rule")]
    EmptyName,
}
