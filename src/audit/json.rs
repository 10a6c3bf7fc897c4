//! JSON text for the writer's hand-written record encoder: strings escaped exactly as
//! `serde_json` escapes them, so a line written by hand and one written through serde are the
//! same bytes (`record` tests hold the two to that).

use std::fmt;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `text` as a JSON string literal.
pub fn string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    escaped(out, text);
    out.push(b'"');
}

/// Appends `value`'s `Display` text as a JSON string literal, without an intermediate `String`.
pub fn display(out: &mut Vec<u8>, value: &impl fmt::Display) {
    out.push(b'"');
    let mut writer = Escaper(out);
    // `Escaper` never fails; a `Display` impl that does leaves what it wrote so far.
    let _ = fmt::write(&mut writer, format_args!("{value}"));
    out.push(b'"');
}

/// Appends `text` as a JSON string without looking for characters to escape: only for text
/// that is ours and plain ASCII (mnemonics, `udp`, addresses), where the scan is wasted work.
pub fn plain_string(out: &mut Vec<u8>, text: &str) {
    debug_assert!(
        text.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
        "{text:?} needs escaping"
    );
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// Appends `ip:port` (`[v6]:port`) as `SocketAddr`'s `Display` writes it, without `fmt` for
/// IPv4 (per record, `fmt` cost a tenth of the writer's time).
pub fn socket_addr_text(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (index, octet) in v4.ip().octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(digits.format(v4.port()).as_bytes());
        }
        std::net::SocketAddr::V6(_) => {
            use std::io::Write as _;
            // Writing into a `Vec` cannot fail.
            let _ = write!(out, "{addr}");
        }
    }
}

pub fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `"key":` (the key must not need escaping; all of ours are plain ASCII words).
pub fn key(out: &mut Vec<u8>, key: &str) {
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends bytes already known to be valid UTF-8 (`str` pieces) as the inside of a JSON string.
pub fn escaped_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Almost every value needs no escape: find that out eight bytes at a time.
    let clean = bytes.len() - bytes.len() % 8;
    let mut first_dirty = clean;
    for (at, chunk) in bytes[..clean].chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if needs_escape(word) {
            first_dirty = at * 8;
            break;
        }
    }
    if first_dirty == clean
        && !bytes[clean..]
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    {
        out.extend_from_slice(bytes);
        return;
    }
    out.extend_from_slice(&bytes[..first_dirty]);
    escape_slow(out, &bytes[first_dirty..]);
}

/// Whether any byte of `word` is a control character, `"` or `\\` (SWAR: the classic
/// has-zero-byte and has-less-than tricks).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    below_space
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

fn escaped(out: &mut Vec<u8>, text: &str) {
    escaped_bytes(out, text.as_bytes());
}

fn escape_slow(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut plain_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..index]);
        out.extend_from_slice(escape);
        plain_from = index + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

struct Escaper<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        escaped(self.0, text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strings_are_escaped_like_serde_json(text in any::<String>()) {
            let mut out = Vec::new();
            super::string(&mut out, &text);
            prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }

    proptest! {
        #[test]
        fn ascii_heavy_strings_are_escaped_like_serde_json(
            text in "[a-z0-9.\\-\"\\\\\\x00-\\x1f\\x7f]{0,40}"
        ) {
            let mut out = Vec::new();
            super::string(&mut out, &text);
            prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }

    #[test]
    fn socket_addresses_as_display_writes_them() {
        for addr in ["192.0.2.1:53", "10.200.0.255:65535", "[2001:db8::1]:5353"] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            super::socket_addr_text(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn control_characters_and_quotes() {
        let text = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é";
        let mut out = Vec::new();
        super::display(&mut out, &text);
        assert_eq!(out, serde_json::to_vec(&text).unwrap());
    }
}
