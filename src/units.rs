//! Parsers for the units people write on a command line or in a config file: durations
//! (`250ms`, `10s`, `1m30s`) and byte sizes (`64KiB`, `1GiB`, `500MB`). Pure functions; each
//! error message says which forms are accepted, and clap shows it next to the flag.

use std::time::Duration;

/// What a duration may look like, for error messages.
const DURATION_FORMS: &str = "a number and a unit (ms, s, m or h: `500ms`, `10s`, `2m`), \
     several from the largest unit down (`1m30s`, `1h 15m`), or a number alone for seconds \
     (`1.5`)";

/// The longest duration any setting takes, the pool's own bound (one constant for both).
/// Every timeout becomes a deadline, `Instant::now()` plus the setting, and an `Instant` that
/// far out overflows: with `u64` seconds allowed, a `--job-timeout` of 2^63 s made every
/// `/isprime` a 500 (the handler panicked adding it), and a `--worker-release-after` or
/// `--worker-idle-timeout` that long panicked a pool driver after every batch.
pub use crate::pool::LONGEST_DURATION;

/// Parses a duration: a number and a unit (`250ms`, `10s`, `2m`, `1h`, fractions allowed:
/// `1.5s`), several of them from the largest unit down, each unit at most once (`1m30s`,
/// `1h 15m`, `2m 0.5s`), or a plain number of seconds (`1.5`). At most [`LONGEST_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_any_duration(text)?;
    match duration <= LONGEST_DURATION {
        true => Ok(duration),
        false => Err(format!(
            "`{}` is longer than 100 years, the longest duration a setting takes",
            text.trim()
        )),
    }
}

/// [`parse_duration`] without the upper bound.
fn parse_any_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = |why: &str| format!("`{text}` {why}; a duration is {DURATION_FORMS}");
    if text.is_empty() {
        return Err(invalid("is empty"));
    }
    let number_end = |s: &str| {
        s.find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len())
    };
    if number_end(text) == text.len() {
        return seconds(text, 1.0).ok_or_else(|| invalid("is not a number"));
    }
    let mut total = Duration::ZERO;
    // The rank of the previous unit: each next one must be smaller.
    let mut previous = usize::MAX;
    let mut rest = text;
    while !rest.is_empty() {
        let split = number_end(rest);
        let (number, after) = rest.split_at(split);
        if number.is_empty() {
            return Err(invalid("does not start with a number"));
        }
        let after = after.trim_start();
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        // Units from the largest down; the rank orders them.
        let (rank, scale) = match unit {
            "h" => (3, 3600.0),
            "m" => (2, 60.0),
            "s" => (1, 1.0),
            "ms" => (0, 0.001),
            "" => return Err(invalid(&format!("has `{number}` without a unit"))),
            other => return Err(invalid(&format!("has the unknown unit `{other}`"))),
        };
        if rank >= previous {
            return Err(invalid(&format!("has `{unit}` after a unit no larger")));
        }
        previous = rank;
        let part = seconds(number, scale).ok_or_else(|| invalid("is not a valid duration"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| invalid("is too long"))?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// `number` (digits, one optional `.`) times `scale` seconds; `None` if it is not a number or
/// too large for a [`Duration`].
fn seconds(number: &str, scale: f64) -> Option<Duration> {
    if number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    Duration::try_from_secs_f64(value * scale).ok()
}

/// A duration that is not zero, for timeouts where zero would not mean "no limit" but fail
/// everything at once (a job, a listing, a request head): there is no value for "no limit".
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "`{}` is zero, and this limit must be more than zero (there is no value for \
             \"no limit\": give a long one, such as `1h`)",
            text.trim()
        )),
        duration => Ok(duration),
    }
}

/// What a size may look like, for error messages.
const SIZE_FORMS: &str = "a number of bytes (`4096`), or a number and a unit: KiB, MiB, GiB or \
     TiB for powers of 1024 (`512MiB`), kB, MB, GB or TB for powers of 1000 (`500MB`)";

/// Parses a byte size: a whole number of bytes (`4096`, also `4096B`), or a number (fractions
/// allowed, rounded down to whole bytes) and a unit with its standard meaning: IEC `KiB`,
/// `MiB`, `GiB`, `TiB` (powers of 1024) or SI `kB`, `MB`, `GB`, `TB` (powers of 1000). Letter
/// case does not matter (`mib`, `KB`). `K`, `M`, `G`, `T` alone are refused: they are read
/// both ways, so the message asks for one of the two.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        prefix @ ("k" | "m" | "g" | "t") => {
            let power = match prefix {
                "k" => 1,
                "m" => 2,
                "g" => 3,
                _ => 4,
            };
            let (iec, si) = [("KiB", "kB"), ("MiB", "MB"), ("GiB", "GB"), ("TiB", "TB")][power - 1];
            return Err(format!(
                "`{text}`: `{unit}` alone is ambiguous; write `{number}{iec}` for powers of 1024 \
                 (1{iec} = {} bytes) or `{number}{si}` for powers of 1000 (1{si} = {} bytes)",
                1u64 << (10 * power),
                1000u64.pow(power as u32),
            ));
        }
        _ => return Err(format!("`{text}` is not a size; a size is {SIZE_FORMS}")),
    };
    let not_a_number = || format!("`{text}` is not a size; a size is {SIZE_FORMS}");
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) if multiplier > 1 && !fraction.is_empty() => (whole, fraction),
        Some(_) => return Err(not_a_number()),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') {
        return Err(not_a_number());
    }
    let too_large = || format!("`{text}` is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Exactly, in integers: 0.fraction * multiplier, rounded down.
        let digits = fraction.len().min(18) as u32;
        let numerator: u128 = fraction[..digits as usize].parse().map_err(|_| not_a_number())?;
        let part = numerator * u128::from(multiplier) / 10u128.pow(digits);
        bytes = bytes
            .checked_add(part as u64)
            .ok_or_else(too_large)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration(".5s").is_err());
        assert!(parse_duration("1e3").is_err());
    }

    #[test]
    fn a_duration_past_a_century_is_refused_before_it_can_overflow_a_deadline() {
        assert_eq!(parse_duration("876000h"), Ok(LONGEST_DURATION));
        for too_long in ["876000h 1s", "18000000000000000000", "9223372036854775808s"] {
            let e = parse_duration(too_long).unwrap_err();
            assert!(e.contains("longer than 100 years"), "{too_long}: {e}");
        }
        // The longest is still a deadline the clock can hold.
        assert!(std::time::Instant::now().checked_add(LONGEST_DURATION).is_some());
    }

    #[test]
    fn compound_durations_go_from_the_largest_unit_down() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 15m"), Ok(Duration::from_secs(4500)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("2m 0.5s"), Ok(Duration::from_millis(120_500)));
        assert_eq!(parse_duration("1 m 30 s"), Ok(Duration::from_secs(90)));
        // A unit twice, or out of order, is most likely a typo.
        for wrong in ["30s1m", "1m1m", "1s500ms1s", "1m30", "m30s", "1m 30 s x"] {
            let e = parse_duration(wrong).unwrap_err();
            assert!(e.contains("`1m30s`"), "{wrong}: {e}");
        }
        let e = parse_duration("1m30").unwrap_err();
        assert!(e.contains("`30` without a unit"), "{e}");
        let e = parse_duration("5 parsecs").unwrap_err();
        assert!(e.contains("unknown unit `parsecs`"), "{e}");
    }

    #[test]
    fn the_positive_durations_refuse_zero_and_say_there_is_no_unlimited_value() {
        for zero in ["0", "0s", "0ms", "0m0s"] {
            let e = parse_positive_duration(zero).unwrap_err();
            assert!(e.contains("must be more than zero"), "{e}");
            assert!(e.contains("no value for \"no limit\""), "{e}");
        }
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn sizes_take_iec_and_si_units_with_their_real_meaning() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1kB"), Ok(1_000));
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("512 mib"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1.5KB"), Ok(1500));
        assert_eq!(parse_size("0.3KiB"), Ok(307));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn ambiguous_and_bad_sizes_are_refused_with_a_hint() {
        let e = parse_size("1M").unwrap_err();
        assert!(e.contains("ambiguous") && e.contains("1MiB") && e.contains("1MB"), "{e}");
        assert!(e.contains("1048576 bytes") && e.contains("1000000 bytes"), "{e}");
        let e = parse_size("64k").unwrap_err();
        assert!(e.contains("64KiB") && e.contains("64kB"), "{e}");
        for bad in ["-1", "1PiB", "1.5", "1.5B", "MiB", "1..5MiB", "1.MiB", "x"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("KiB, MiB, GiB or TiB"), "{bad}: {e}");
        }
        assert!(parse_size("20000000TiB").unwrap_err().contains("too large"));
    }
}
