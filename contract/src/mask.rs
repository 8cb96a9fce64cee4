//! Card numbers out of text: the one masker every Baton output goes through (dead
//! letters and attention items in the operator tools, result details, rejection
//! problems, decode errors, `baton status`), and the one detector request validation
//! uses.
//!
//! It works on plain text, so the shape the number arrives in does not matter: a JSON
//! string, a JSON number, a JSON key, a header value, a log line. What it is not: a
//! parser of any of those formats, nor a guarantee for data that never passes through it
//! (the card number travels in full to the services that need it, by design).
//!
//! # What counts as a card number
//!
//! The scanner finds *digit chains*: runs of ASCII digits, possibly split into groups by
//! one separator each (space, `-`, `.`, or a no-break / thin / narrow no-break space), as
//! in `4242424242424242`, `4242 4242 4242 4242`, `3782-822463-10005`. A chain is cut
//! from its right end into pieces of at most 19 digits, whole groups only, so
//! `1999 4242424242424242` is an amount and a card, not a 20-digit number.
//!
//! - [`mask_card_numbers`] replaces every piece of 12 or more digits, whether or not it
//!   passes the Luhn check, with `****` and the piece's last four digits. A mistyped
//!   card number is still a card number to hide, and honest 12-digit-plus numbers are
//!   rare in the text Baton shows (amounts stay under 12 digits).
//! - [`contains_card_number`] is narrower, because it refuses input: it is true when
//!   some run of consecutive groups holds 12 to 19 digits that pass the Luhn check.
//!
//! Two shapes are taken for identifiers and left whole, because ids must survive
//! masking and a random one often holds a dozen decimal digits in a row: a UUID
//! (`8-4-4-4-12` hexadecimal, whose last group can be all digits), and a word of
//! hexadecimal characters with the length of a common id or digest (16, 24, 32, 40, 64
//! or 128: span and trace ids, hashes, card fingerprints) that neither starts nor ends
//! with 12 or more decimal digits. The price: a card number glued without separators
//! between hexadecimal letters on both sides, in a word of exactly one of those lengths
//! (`ab4242424242424242cdef01`), is not masked; `a378282246310005`, `deadbeef` followed
//! by a card number, or a card number followed by letters, are. About 0.7 % of random
//! trace ids start or end with 12 decimal digits and show partly masked.

use std::borrow::Cow;

/// Fewest digits of a card number (ISO/IEC 7812).
const MIN_DIGITS: usize = 12;
/// Most digits of a card number.
const MAX_DIGITS: usize = 19;
/// What may stand, alone, between two groups of digits of one number.
const SEPARATORS: [char; 6] = [' ', '-', '.', '\u{a0}', '\u{2009}', '\u{202f}'];
/// Lengths of the hexadecimal words taken for identifiers: span ids (16), object ids
/// (24), trace ids and MD5 (32), SHA-1 (40), SHA-256 (64), SHA-512 (128).
const HEX_ID_LENGTHS: [usize; 6] = [16, 24, 32, 40, 64, 128];

/// `text` with every card-number-like digit run (see the module documentation) replaced
/// by `****` and its last four digits; borrowed unchanged when there is none.
pub fn mask_card_numbers(text: &str) -> Cow<'_, str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = String::new();
    // Byte offset up to which `text` has been copied to `out`.
    let mut copied = 0;
    for chain in chains(&chars) {
        for piece in pieces(&chain) {
            if piece.digits < MIN_DIGITS {
                continue;
            }
            let start = chars[chain[piece.first].start].0;
            let end = byte_end(text, &chars, chain[piece.last].end);
            let digits = chain_digits(&chars, &chain[piece.first..=piece.last]);
            out.push_str(&text[copied..start]);
            out.push_str("****");
            out.push_str(&digits[digits.len() - 4..]);
            copied = end;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether `text` holds a card number: 12 to 19 digits in a row, or split into groups
/// by single separators, that pass the Luhn check. UUIDs and hexadecimal identifiers
/// never count.
pub fn contains_card_number(text: &str) -> bool {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    chains(&chars).iter().any(|chain| {
        (0..chain.len()).any(|first| {
            let mut count = 0;
            for last in first..chain.len() {
                count += chain[last].len();
                if count > MAX_DIGITS {
                    break;
                }
                if count >= MIN_DIGITS && luhn_valid(&chain_digits(&chars, &chain[first..=last])) {
                    return true;
                }
            }
            false
        })
    })
}

/// The Luhn (mod 10) check over a string of ASCII digits; false for anything else or
/// for an empty string.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// A client-provided value made fit to show in a detail, a header or a log: masked
/// first (so the cut can never leave a card number's first digits), then cut to
/// `max_chars` characters, with `…` marking the cut.
pub fn bounded(text: &str, max_chars: usize) -> String {
    let masked = mask_card_numbers(text);
    match masked.char_indices().nth(max_chars) {
        None => masked.into_owned(),
        Some((cut, _)) => format!("{}…", &masked[..cut]),
    }
}

/// The first `keep` bytes (at most) of a message body that is too large to keep whole,
/// made fit to store and show: cut at a character boundary, the digit chain the cut
/// would split dropped whole, then masked. A card number cut in two is still a card
/// number — its first dozen digits alone would pass as "too short to mask" — so the
/// part before the cut is never left to stand alone. Undecodable bytes become U+FFFD.
///
/// What it is not: a way to keep a body replayable. The result is text for operators.
pub fn truncated(body: &[u8], keep: usize) -> String {
    let mut cut = keep.min(body.len());
    // Never inside a UTF-8 sequence: back off over continuation bytes.
    while cut > 0 && cut < body.len() && (body[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    let mut kept = String::from_utf8_lossy(&body[..cut]).into_owned();
    let rest = &body[cut..];
    let next = String::from_utf8_lossy(&rest[..rest.len().min(4)])
        .chars()
        .next();
    let in_chain = |c: char| c.is_ascii_digit() || SEPARATORS.contains(&c);
    if next.is_some_and(in_chain) {
        let end = kept.trim_end_matches(in_chain).len();
        kept.truncate(end);
    }
    match mask_card_numbers(&kept) {
        Cow::Borrowed(_) => kept,
        Cow::Owned(masked) => masked,
    }
}

/// Log targets that print message bodies, and the level they are held at. lapin logs
/// the whole of every message the broker returns (an unroutable `mandatory` publish:
/// a request parked towards a deleted retry queue carries a card number) at WARN, and
/// every frame it handles at TRACE. The caps are levels, so `info` also keeps lapin's
/// DEBUG chatter out of a default `info` log.
pub const BODY_LOGGING_TARGETS: [(&str, &str); 3] = [
    ("lapin::returned_messages", "error"),
    ("lapin::channels", "info"),
    ("lapin::frames", "info"),
];

/// The tracing filter directives for a process: `RUST_LOG` when it is set and not
/// blank, else `default`, followed by a cap for each of [`BODY_LOGGING_TARGETS`] that
/// the chosen directives do not name themselves. A more specific target wins in a
/// tracing filter, so `RUST_LOG=trace` or `RUST_LOG=lapin=trace` still keeps message
/// bodies out of the log; naming a target (`RUST_LOG=info,lapin::returned_messages=warn`)
/// is the deliberate way to see them.
pub fn log_filter(rust_log: Option<&str>, default: &str) -> String {
    let mut directives = match rust_log {
        Some(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    };
    for (target, level) in BODY_LOGGING_TARGETS {
        if !directives.contains(target) {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(target);
            directives.push('=');
            directives.push_str(level);
        }
    }
    directives
}

/// One group of digits: char indices `start..end` into the scanned text.
#[derive(Clone, Copy, Debug)]
struct Group {
    start: usize,
    end: usize,
}

impl Group {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Consecutive groups `first..=last` of a chain, with their digit count.
struct Piece {
    first: usize,
    last: usize,
    digits: usize,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn byte_end(text: &str, chars: &[(usize, char)], char_end: usize) -> usize {
    chars.get(char_end).map_or(text.len(), |&(byte, _)| byte)
}

fn chain_digits(chars: &[(usize, char)], groups: &[Group]) -> String {
    groups
        .iter()
        .flat_map(|g| chars[g.start..g.end].iter().map(|&(_, c)| c))
        .collect()
}

/// Every digit chain of the text, outside UUIDs and hexadecimal identifiers.
fn chains(chars: &[(usize, char)]) -> Vec<Vec<Group>> {
    let mut found = Vec::new();
    let digit = |i: usize| chars.get(i).is_some_and(|&(_, c)| c.is_ascii_digit());
    let mut i = 0;
    while i < chars.len() {
        if let Some(len) = identifier_at(chars, i) {
            i += len;
            continue;
        }
        if !digit(i) {
            i += 1;
            continue;
        }
        let mut chain = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while digit(j) {
                j += 1;
            }
            chain.push(Group { start, end: j });
            let joined = chars.get(j).is_some_and(|&(_, c)| SEPARATORS.contains(&c))
                && digit(j + 1)
                && identifier_at(chars, j + 1).is_none();
            if !joined {
                break;
            }
            j += 1;
        }
        found.push(chain);
        i = j;
    }
    found
}

/// The length in chars of a UUID or a hexadecimal identifier word starting at `i`, if
/// one does: it must start and end at word boundaries.
fn identifier_at(chars: &[(usize, char)], i: usize) -> Option<usize> {
    let c = |k: usize| chars.get(k).map(|&(_, c)| c);
    if i > 0 && c(i - 1).is_some_and(is_word) {
        return None;
    }
    let word_end = (i..chars.len())
        .find(|&k| !is_word(chars[k].1))
        .unwrap_or(chars.len());
    let uuid = (0..36).all(|k| match c(i + k) {
        Some(ch) if matches!(k, 8 | 13 | 18 | 23) => ch == '-',
        Some(ch) => ch.is_ascii_hexdigit(),
        None => false,
    }) && !c(i + 36).is_some_and(is_word);
    if uuid {
        return Some(36);
    }
    let word = &chars[i..word_end];
    let decimal = |&&(_, ch): &&(usize, char)| ch.is_ascii_digit();
    let leading = word.iter().take_while(decimal).count();
    let trailing = word.iter().rev().take_while(decimal).count();
    let hex_id = HEX_ID_LENGTHS.contains(&word.len())
        && word.iter().all(|&(_, ch)| ch.is_ascii_hexdigit())
        && leading < MIN_DIGITS
        && trailing < MIN_DIGITS;
    hex_id.then_some(word.len())
}

/// Cuts a chain from its right end into pieces of whole groups holding at most
/// [`MAX_DIGITS`] digits (a single longer group is a piece of its own), left to right.
fn pieces(chain: &[Group]) -> Vec<Piece> {
    let mut found = Vec::new();
    let mut end = chain.len();
    while end > 0 {
        let last = end - 1;
        let mut first = last;
        let mut digits = chain[last].len();
        while first > 0 && digits + chain[first - 1].len() <= MAX_DIGITS {
            first -= 1;
            digits += chain[first].len();
        }
        found.push(Piece {
            first,
            last,
            digits,
        });
        end = first;
    }
    found.reverse();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_in_every_shape_are_masked_to_their_last_four() {
        for (text, masked) in [
            ("4242424242424242", "****4242"),
            (
                r#"{"number":"4242424242424242","minor":1999}"#,
                r#"{"number":"****4242","minor":1999}"#,
            ),
            (r#"{"number": 5555555555554444}"#, r#"{"number": ****4444}"#),
            (r#"{"5555555555554444": true}"#, r#"{"****4444": true}"#),
            ("5105 1051 0510 5100", "****5100"),
            ("4012-8888-8888-1881", "****1881"),
            ("4012.8888.8888.1881", "****1881"),
            ("3782 822463 10005", "****0005"),
            ("4242\u{a0}4242\u{a0}4242\u{a0}4242", "****4242"),
            ("card4242424242424242x", "card****4242x"),
            ("paid 1999 4242424242424242", "paid 1999 ****4242"),
            ("1999 4242 4242 4242 4242", "1999 ****4242"),
            ("4242424242424242 5555555555554444", "****4242 ****4444"),
            ("LongLongInt(5555555555554444)", "LongLongInt(****4444)"),
            ("12345678901234567890123", "****0123"),
            ("a378282246310005", "a****0005"),
            ("deadbeef4242424242424242", "deadbeef****4242"),
            ("4242424242424242deadbeef", "****4242deadbeef"),
        ] {
            assert_eq!(mask_card_numbers(text), masked, "{text}");
        }
    }

    #[test]
    fn numbers_that_fail_luhn_are_masked_too() {
        assert_eq!(mask_card_numbers("4242424242424241"), "****4241");
        assert_eq!(mask_card_numbers("123456789012"), "****9012");
    }

    #[test]
    fn short_numbers_and_identifiers_stay() {
        for text in [
            "id 12345 ok",
            "12345678901",
            "amount 10000000000 EUR",
            "2026-12-03 08:24:19",
            "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
            "6f1c3a52-3b1e-4f4e-9d7a-123456789012",
            "12345678-1234-1234-1234-123456789012",
            "payment 00000000-0000-4000-8000-424242424242: done",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "trace a3ce929d0123456789012345e0e47361",
            "fingerprint 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert_eq!(mask_card_numbers(text), text);
        }
    }

    #[test]
    fn a_number_beside_a_uuid_is_still_masked() {
        let text = "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10 4242424242424242";
        assert_eq!(
            mask_card_numbers(text),
            "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10 ****4242"
        );
        assert_eq!(
            mask_card_numbers("4242424242424242-6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10"),
            "****4242-6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10"
        );
    }

    #[test]
    fn multibyte_text_around_numbers_survives() {
        assert_eq!(
            mask_card_numbers("Kärtchen «4242 4242 4242 4242» – ok"),
            "Kärtchen «****4242» – ok"
        );
    }

    #[test]
    fn the_detector_wants_luhn_valid_card_lengths() {
        assert!(contains_card_number("m-4242424242424242"));
        assert!(contains_card_number("c 4012-8888-8888-1881"));
        assert!(
            contains_card_number("4242 4242 4242 4242 1999"),
            "a card with digits after it"
        );
        assert!(!contains_card_number("4242424242424241"), "fails Luhn");
        assert!(!contains_card_number("m-1001"));
        assert!(!contains_card_number(
            "12345678-1234-1234-1234-123456789012"
        ));
        assert!(!contains_card_number("m-10000000000"), "11 digits");
        assert!(
            contains_card_number("a378282246310005"),
            "glued to a hex letter"
        );
    }

    #[test]
    fn luhn_matches_the_test_cards() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("4100000000000019"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("4242x"));
    }

    #[test]
    fn bounded_masks_before_it_cuts() {
        assert_eq!(bounded("text/plain", 32), "text/plain");
        assert_eq!(bounded("abc4242424242424242", 8), "abc****4…");
        assert_eq!(
            bounded("4242424242424242", 3),
            "***…",
            "never the first digits"
        );
        assert_eq!(bounded("ünïcödé", 3), "ünï…");
    }

    #[test]
    fn body_logging_targets_stay_capped_unless_named() {
        assert_eq!(
            log_filter(None, "info"),
            "info,lapin::returned_messages=error,lapin::channels=info,lapin::frames=info"
        );
        assert_eq!(
            log_filter(Some("  "), "warn"),
            "warn,lapin::returned_messages=error,lapin::channels=info,lapin::frames=info"
        );
        assert_eq!(
            log_filter(Some("lapin=trace"), "info"),
            "lapin=trace,lapin::returned_messages=error,lapin::channels=info,lapin::frames=info"
        );
        assert_eq!(
            log_filter(Some("info,lapin::returned_messages=warn"), "info"),
            "info,lapin::returned_messages=warn,lapin::channels=info,lapin::frames=info"
        );
    }
}
