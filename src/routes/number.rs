//! What `/isprime` accepts as `number`, from a query string or a JSON body, and what it says
//! about everything else.
//!
//! Accepted: decimal digits, with surrounding whitespace, one leading `+` and leading zeros;
//! the cap (`--max-digits`) counts significant digits. Every refusal names the one thing that
//! is wrong, and only what is true of the input: a "negative number" is a `-` followed by
//! digits that are not all zeros (a lone `-` has no digits, and `-0` is zero with a sign), a
//! fraction or an exponent form is only called one when the whole input is one, and a position
//! counts the characters of the value as sent (after percent- or JSON-decoding), from 0,
//! leading whitespace included.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::QueryText;
use crate::error::{ErrorCode, HttpError};

/// What is wrong with a submitted number.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Neither the query nor the body has `number`, or it is JSON `null`.
    #[error("missing `number` (or null): use /isprime?number=N or POST {{\"number\": \"N\"}}")]
    Missing,
    /// `number` is empty or whitespace only.
    #[error("`number` is empty or only whitespace")]
    Empty,
    /// `number` is only a sign (the value: `+` or `-`).
    #[error("`number` is a lone `{0}` with no digits")]
    NoDigits(char),
    /// `number` has a minus sign and digits that are not all zero.
    #[error("`number` is negative; only non-negative integers are tested")]
    Negative,
    /// `number` is zero written with a minus sign (`-0`, `-000`).
    #[error("`number` is zero with a minus sign; send it without the sign")]
    MinusZero,
    /// `number` has a decimal point (`7.0`, `7.5`), or is a JSON number with a fraction.
    #[error("`number` has a fractional part; only integers are tested")]
    Fractional,
    /// `number` is in exponent form (`1e9`, `2E3`).
    #[error("`number` is in exponent form; write out every digit")]
    Exponent,
    /// `number` is hexadecimal (`0x1F`).
    #[error("`number` is hexadecimal; use decimal digits")]
    Hex,
    /// `number` has a character that is not a decimal digit (other than the cases above).
    #[error(
        "`number` has an invalid character {ch:?} at position {position} (counting from 0); \
         use decimal digits only"
    )]
    InvalidCharacter {
        /// The first character that is not a digit.
        ch: char,
        /// Its position in the value, in characters from 0.
        position: usize,
    },
    /// `number`, from a query string, has a space that the query spelled `+` (which the URL rules
    /// turn into a space): the client most likely meant a plus sign.
    #[error(
        "`number` has a space at position {position} (counting from 0) where the query has a \
         `+`: in a query string `+` means a space; write a plus sign as %2B"
    )]
    PlusInQuery {
        /// The space's position in the decoded value, in characters from 0.
        position: usize,
    },
    /// `number`, a JSON string in a body, has a `\u` escape of a lone UTF-16 surrogate (the
    /// value), which is no character.
    #[error(
        "`number` has the escape `{0}`, half of a UTF-16 surrogate pair without its other half: \
         it stands for no character"
    )]
    InvalidEscape(String),
    /// `number` has more significant digits (leading zeros not counted) than `--max-digits`.
    #[error("`number` has {digits} digits; the limit is {max}")]
    TooLong {
        /// Its significant digits.
        digits: usize,
        /// `--max-digits`.
        max: usize,
    },
    /// The POST body is not a JSON object whose `number` is a string or an integer; the value
    /// is serde's error.
    #[error("the body must be JSON like {{\"number\": \"N\"}}: {0}")]
    BadBody(String),
}

impl HttpError for NumberError {
    fn code(&self) -> ErrorCode {
        match self {
            NumberError::Missing => ErrorCode::NumberMissing,
            NumberError::Empty => ErrorCode::NumberEmpty,
            NumberError::NoDigits(_) => ErrorCode::NumberNoDigits,
            NumberError::Negative => ErrorCode::NumberNegative,
            NumberError::MinusZero => ErrorCode::NumberMinusZero,
            NumberError::Fractional => ErrorCode::NumberFractional,
            NumberError::Exponent => ErrorCode::NumberExponent,
            NumberError::Hex => ErrorCode::NumberHex,
            NumberError::InvalidCharacter { .. } | NumberError::PlusInQuery { .. } => {
                ErrorCode::NumberInvalidCharacter
            }
            NumberError::InvalidEscape(_) => ErrorCode::NumberInvalidEscape,
            NumberError::TooLong { .. } => ErrorCode::NumberTooLong,
            NumberError::BadBody(_) => ErrorCode::BodyInvalid,
        }
    }
}

/// Checks a submitted number and returns it in canonical form (no sign, no leading zeros).
pub fn canonical_number(raw: &str, max_digits: usize) -> Result<String, NumberError> {
    let text = raw.trim();
    let (sign, digits) = match text.chars().next() {
        None => return Err(NumberError::Empty),
        Some(sign @ ('+' | '-')) => (Some(sign), &text[1..]),
        Some(_) => (None, text),
    };
    if digits.is_empty() {
        return Err(NumberError::NoDigits(sign.unwrap_or_default()));
    }
    if let Some(at) = digits.find(|c: char| !c.is_ascii_digit()) {
        // Characters of `raw` before `digits`: leading whitespace and the sign.
        let start = raw.len() - raw.trim_start().len() + sign.map_or(0, char::len_utf8);
        let before = raw[..start].chars().count();
        return Err(misfit(digits, at, before));
    }
    let significant = digits.trim_start_matches('0');
    match sign {
        Some('-') if significant.is_empty() => return Err(NumberError::MinusZero),
        Some('-') => return Err(NumberError::Negative),
        _ => {}
    }
    if significant.len() > max_digits {
        return Err(NumberError::TooLong {
            digits: significant.len(),
            max: max_digits,
        });
    }
    Ok(match significant.is_empty() {
        true => "0".to_owned(),
        false => significant.to_owned(),
    })
}

/// Why `digits` (the input after its sign) is not all digits: the form it has, when the
/// whole of it has one, else its first non-digit (at byte `at`), counted from the start of
/// the input (`before` characters precede `digits` there).
fn misfit(digits: &str, at: usize, before: usize) -> NumberError {
    if is_decimal(digits) {
        return NumberError::Fractional;
    }
    let exponent = digits.split_once(['e', 'E']).is_some_and(|(mantissa, power)| {
        let power = power.strip_prefix(['+', '-']).unwrap_or(power);
        (is_digits(mantissa) || is_decimal(mantissa)) && is_digits(power)
    });
    if exponent {
        return NumberError::Exponent;
    }
    let hex = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X"));
    if hex.is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())) {
        return NumberError::Hex;
    }
    NumberError::InvalidCharacter {
        ch: digits[at..].chars().next().unwrap_or_default(),
        position: before + digits[..at].chars().count(),
    }
}

/// One or more ASCII digits.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Digits with one decimal point, and a digit on at least one side of it (`1.5`, `1.`, `.5`).
fn is_decimal(text: &str) -> bool {
    text.split_once('.').is_some_and(|(whole, part)| {
        let side = |s: &str| s.is_empty() || is_digits(s);
        side(whole) && side(part) && !(whole.is_empty() && part.is_empty())
    })
}

/// The canonical number in a query value: [`canonical_number`], with a space that was a `+`
/// in the query (the URL rules make it one) named as such.
pub fn number_from_query(value: &QueryText, max_digits: usize) -> Result<String, NumberError> {
    canonical_number(&value.text, max_digits).map_err(|e| match e {
        NumberError::InvalidCharacter { ch: ' ', position }
            if value.plus_spaces.contains(&position) =>
        {
            NumberError::PlusInQuery { position }
        }
        other => other,
    })
}

/// A POST body. `number` is kept as raw JSON, so that a long integer keeps every digit
/// instead of going through a float. serde's derive decodes escaped keys (`"num\u0062er"`) and
/// refuses a duplicate `number`: with two, which one to test would be a guess.
#[derive(Deserialize)]
struct NumberBody<'a> {
    #[serde(borrow)]
    number: Option<&'a RawValue>,
}

/// The text of `number` in a JSON body: a string's content (for [`canonical_number`]), or
/// the digits of a bare JSON number's value (`json_number_value`).
pub fn number_from_json(body: &[u8], max_digits: usize) -> Result<String, NumberError> {
    // serde also accepts a struct written as an array (`[7]`); a body must be an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(NumberError::BadBody("expected a JSON object".to_owned()));
    }
    let body: NumberBody =
        serde_json::from_slice(body).map_err(|e| NumberError::BadBody(e.to_string()))?;
    let raw = body.number.ok_or(NumberError::Missing)?.get();
    match raw.as_bytes()[0] {
        // The literal passed the body's parse, so only its escapes can still fail to decode.
        b'"' => serde_json::from_str(raw).map_err(|_| match lone_surrogate(raw) {
            Some(escape) => NumberError::InvalidEscape(escape.to_owned()),
            None => NumberError::BadBody("`number` is not a valid JSON string".to_owned()),
        }),
        b'-' | b'0'..=b'9' => json_number_value(raw, max_digits),
        _ => Err(NumberError::BadBody(format!(
            "`number` must be a string or an integer, not {raw:.20}"
        ))),
    }
}

/// The digits of the value of `literal`, a JSON number as written, when it is a whole number
/// of at most `max_digits` digits: a JSON number is its value, as JSON Schema's `integer`
/// says, so `100`, `1e2`, `100.0` and `1.00e2` are all 100, and `-0` (or `-0.0`) is 0. A
/// value that is not whole is [`NumberError::Fractional`], a negative one
/// [`NumberError::Negative`]. The digits are only written out when they fit `max_digits`: an
/// exponent is never trusted with memory.
fn json_number_value(literal: &str, max_digits: usize) -> Result<String, NumberError> {
    // The body's parse checked the grammar: -?digits(.digits)?([eE][+-]?digits)?
    let (negative, unsigned) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = unsigned.split_once(['e', 'E']).unwrap_or((unsigned, "0"));
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // An exponent too large for an i64 is too large for any bound anyway.
    let exponent: i64 = exponent.parse().unwrap_or(match exponent.starts_with('-') {
        true => i64::MIN,
        false => i64::MAX,
    });
    // The value is `digits` times ten to the `shift`.
    let shift = exponent.saturating_sub(fraction.len() as i64);
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok("0".to_owned());
    }
    if negative {
        return Err(NumberError::Negative);
    }
    if shift < 0 {
        let cut = shift.unsigned_abs();
        let kept = (digits.len() as u64).saturating_sub(cut) as usize;
        let (value, dropped) = digits.split_at(kept);
        if value.is_empty() || dropped.bytes().any(|b| b != b'0') {
            return Err(NumberError::Fractional);
        }
        return Ok(value.to_owned());
    }
    let length = (digits.len() as u64).saturating_add(shift as u64);
    if length > max_digits as u64 {
        return Err(NumberError::TooLong {
            digits: usize::try_from(length).unwrap_or(usize::MAX),
            max: max_digits,
        });
    }
    Ok(format!("{digits}{}", "0".repeat(shift as usize)))
}

/// The first `\uXXXX` escape in `literal` (a JSON string as written, quotes included) that is
/// half of a UTF-16 surrogate pair without its other half.
fn lone_surrogate(literal: &str) -> Option<&str> {
    let bytes = literal.as_bytes();
    let unit = |at: usize| {
        let hex = literal.get(at + 2..at + 6)?;
        (bytes.get(at + 1) == Some(&b'u')).then(|| u16::from_str_radix(hex, 16).ok())?
    };
    // Where the high half waiting for its low half starts, if one is.
    let mut high: Option<usize> = None;
    let mut at = 0;
    while at < bytes.len() {
        let escape = (bytes[at] == b'\\').then(|| unit(at));
        let here = escape.flatten();
        match (high, here) {
            (Some(_), Some(0xDC00..=0xDFFF)) => high = None,
            (Some(start), _) => return literal.get(start..start + 6),
            (None, Some(0xD800..=0xDBFF)) => high = Some(at),
            (None, Some(0xDC00..=0xDFFF)) => return literal.get(at..at + 6),
            (None, _) => {}
        }
        at += match escape {
            Some(Some(_)) => 6,
            Some(None) => 2,
            None => 1,
        };
    }
    high.and_then(|start| literal.get(start..start + 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_number(" +007 ", 10).unwrap(), "7");
        assert_eq!(canonical_number("000", 10).unwrap(), "0");
        assert_eq!(canonical_number("0012345", 5).unwrap(), "12345");
        assert_eq!(canonical_number("+0", 5).unwrap(), "0");
    }

    #[test]
    fn each_bad_form_says_what_is_wrong() {
        let invalid = |ch, position| NumberError::InvalidCharacter { ch, position };
        let cases = [
            ("", NumberError::Empty),
            ("  ", NumberError::Empty),
            ("+", NumberError::NoDigits('+')),
            ("-", NumberError::NoDigits('-')),
            (" - ", NumberError::NoDigits('-')),
            ("-7", NumberError::Negative),
            ("-0", NumberError::MinusZero),
            ("-000", NumberError::MinusZero),
            ("7.5", NumberError::Fractional),
            ("7.", NumberError::Fractional),
            (".5", NumberError::Fractional),
            ("-7.5", NumberError::Fractional),
            ("1e9", NumberError::Exponent),
            ("1.5E+3", NumberError::Exponent),
            ("0x1f", NumberError::Hex),
            ("12a", invalid('a', 2)),
            ("+-7", invalid('-', 1)),
            ("1 2", invalid(' ', 1)),
            ("١٢", invalid('١', 0)),
            ("1١a", invalid('١', 1)),
            (".", invalid('.', 0)),
            ("1.2.3", invalid('.', 1)),
            ("1e", invalid('e', 1)),
            ("0x", invalid('x', 1)),
            ("- 7", invalid(' ', 1)),
            ("123456", NumberError::TooLong { digits: 6, max: 5 }),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonical_number(raw, 5), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn positions_count_characters_of_the_value_as_sent() {
        let invalid = |ch, position| NumberError::InvalidCharacter { ch, position };
        assert_eq!(canonical_number("  12a", 9), Err(invalid('a', 4)));
        assert_eq!(canonical_number(" +1x", 9), Err(invalid('x', 3)));
        assert_eq!(canonical_number("\u{a0}éa", 9), Err(invalid('é', 1)));
        assert_eq!(canonical_number("é* ", 9), Err(invalid('é', 0)), "trailing whitespace");
        let message = canonical_number(" 12a", 9).unwrap_err().to_string();
        assert!(message.contains("'a' at position 3 (counting from 0)"), "{message}");
    }

    #[test]
    fn messages_never_call_a_sign_without_digits_or_minus_zero_negative() {
        for raw in ["-", "-0", "-00", " - ", "-.", "-x"] {
            let message = canonical_number(raw, 9).unwrap_err().to_string();
            assert!(!message.contains("negative"), "{raw:?}: {message}");
        }
    }

    #[test]
    fn a_space_that_was_a_plus_in_the_query_is_named_as_one() {
        let value = |text: &str, plus_spaces: Vec<usize>| QueryText {
            text: text.to_owned(),
            plus_spaces,
        };
        // `?number=1+2`: the URL rules make the `+` a space.
        let e = number_from_query(&value("1 2", vec![1]), 9).unwrap_err();
        assert_eq!(e, NumberError::PlusInQuery { position: 1 });
        assert!(e.to_string().contains("%2B"), "{e}");
        // `?number=1%202`: a space the client wrote as one.
        let e = number_from_query(&value("1 2", vec![]), 9).unwrap_err();
        assert_eq!(e, NumberError::InvalidCharacter { ch: ' ', position: 1 });
        // `?number=+7`: a leading space is whitespace, and the number is 7.
        assert_eq!(number_from_query(&value(" 7", vec![0]), 9).unwrap(), "7");
    }

    #[test]
    fn json_numbers_keep_every_digit() {
        let big = "123456789012345678901234567890123456789";
        let body = format!("{{\"number\": {big}}}");
        assert_eq!(number_from_json(body.as_bytes(), 100).unwrap(), big);
        assert_eq!(number_from_json(br#"{"number": "42"}"#, 100).unwrap(), "42");
        assert_eq!(number_from_json(br#"{"number": -0}"#, 100).unwrap(), "0");
        assert_eq!(number_from_json(br#"{}"#, 100), Err(NumberError::Missing));
        assert!(matches!(
            number_from_json(b"[7]", 100),
            Err(NumberError::BadBody(_))
        ));
        assert!(matches!(
            number_from_json(b"{", 100),
            Err(NumberError::BadBody(_))
        ));
        assert_eq!(number_from_json(br#"{"num\u0062er": "7"}"#, 100).unwrap(), "7");
        assert!(matches!(
            number_from_json(br#"{"number": "7", "number": "8"}"#, 100),
            Err(NumberError::BadBody(_))
        ));
        assert_eq!(number_from_json(br#"{"number": null}"#, 100), Err(NumberError::Missing));
        for other in ["true", "[7]", "{\"n\": 7}"] {
            let body = format!("{{\"number\": {other}}}");
            let e = number_from_json(body.as_bytes(), 100).unwrap_err();
            assert!(e.to_string().contains("must be a string or an integer"), "{other}: {e}");
        }
    }

    #[test]
    fn bare_json_numbers_are_read_by_their_value() {
        let value = |literal: &str| json_number_value(literal, 5);
        for (literal, digits) in [
            ("7", "7"),
            ("0.0", "0"),
            ("-0", "0"),
            ("-0.0e-5", "0"),
            ("0e99999999999999999999999", "0"),
            ("1e2", "100"),
            ("100.0", "100"),
            ("1.00E+2", "100"),
            ("12500e-2", "125"),
            ("0012.5e1", "125"),
            ("9.9999e4", "99999"),
        ] {
            assert_eq!(value(literal).as_deref(), Ok(digits), "{literal}");
        }
        for literal in ["1.5", "1e-1", "0.5", "125e-3", "1e-99999999999999999999999"] {
            assert_eq!(value(literal), Err(NumberError::Fractional), "{literal}");
        }
        for literal in ["-1", "-1e2", "-0.5"] {
            assert_eq!(value(literal), Err(NumberError::Negative), "{literal}");
        }
        assert_eq!(value("1e5"), Err(NumberError::TooLong { digits: 6, max: 5 }));
        assert!(matches!(value("1e99999999999999999999"), Err(NumberError::TooLong { .. })));
        assert_eq!(number_from_json(br#"{"number": 0.0}"#, 5).unwrap(), "0");
        assert_eq!(number_from_json(br#"{"number": 1.5}"#, 5), Err(NumberError::Fractional));
    }

    #[test]
    fn a_lone_surrogate_escape_is_named() {
        let escape = |s: &str| NumberError::InvalidEscape(s.to_owned());
        let cases = [
            (r#"{"number": "\ud800"}"#, escape(r"\ud800")),
            (r#"{"number": "7\uDC00"}"#, escape(r"\uDC00")),
            (r#"{"number": "\ud800\u0037"}"#, escape(r"\ud800")),
            (r#"{"number": "\ud800x"}"#, escape(r"\ud800")),
            (r#"{"number": "\n\ud83d"}"#, escape(r"\ud83d")),
        ];
        for (body, expected) in cases {
            assert_eq!(number_from_json(body.as_bytes(), 100), Err(expected), "{body}");
        }
        // A whole pair is a character (not a digit, so refused for that).
        let pair = number_from_json(br#"{"number": "\ud83d\ude00"}"#, 100).unwrap();
        assert_eq!(pair, "\u{1F600}");
        assert_eq!(lone_surrogate(r#""\\ud800""#), None, "an escaped backslash");
    }
}
