//! Time as plain integers. The core never reads a clock: callers pass `now` in milliseconds
//! since the Unix epoch, so daily resets and expiry are deterministic under test.

pub const MS_PER_SEC: u64 = 1_000;
pub const SECS_PER_DAY: u64 = 86_400;
pub const MS_PER_DAY: u64 = SECS_PER_DAY * MS_PER_SEC;

/// Default and maximum lifetime of a vault key.
pub const DEFAULT_TTL_SECS: u64 = 3_600;
pub const MAX_TTL_SECS: u64 = 30 * SECS_PER_DAY;

/// The UTC day number (days since 1970-01-01) that `now_ms` falls in. Caps reset when it changes.
pub fn utc_day(now_ms: u64) -> u64 {
    now_ms / MS_PER_DAY
}

/// Whole seconds until the next 00:00 UTC, rounded up, at least 1: the `Retry-After` of a cap hit.
pub fn secs_until_next_utc_day(now_ms: u64) -> u64 {
    let left_ms = MS_PER_DAY - now_ms % MS_PER_DAY;
    left_ms.div_ceil(MS_PER_SEC).max(1)
}

/// Formats as RFC 3339 in UTC with milliseconds: `2026-11-28T04:06:07.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / MS_PER_SEC;
    let (y, m, d) = civil_from_days((secs / SECS_PER_DAY) as i64);
    let rem = secs % SECS_PER_DAY;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % MS_PER_SEC)
}

/// Days since the epoch to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses a key lifetime: `"30s"`, `"15m"`, `"2h"`, `"7d"`, or a whole number of seconds
/// (as a JSON number or a string of digits). Must be between 1 s and 30 d.
pub fn parse_ttl(value: &serde_json::Value) -> Result<u64, &'static str> {
    const SHAPE: &str = "must be a number of seconds or a duration like \"30s\", \"15m\", \"2h\", \"7d\"";
    let secs = match value {
        serde_json::Value::Number(n) => n.as_u64().ok_or(SHAPE)?,
        serde_json::Value::String(s) => {
            let (digits, unit) = match s.as_bytes().last() {
                Some(b's') => (&s[..s.len() - 1], 1),
                Some(b'm') => (&s[..s.len() - 1], 60),
                Some(b'h') => (&s[..s.len() - 1], 3_600),
                Some(b'd') => (&s[..s.len() - 1], SECS_PER_DAY),
                _ => (s.as_str(), 1),
            };
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SHAPE);
            }
            digits.parse::<u64>().map_err(|_| SHAPE)?.saturating_mul(unit)
        }
        _ => return Err(SHAPE),
    };
    if secs == 0 {
        return Err("must be at least 1 second");
    }
    if secs > MAX_TTL_SECS {
        return Err("must be at most 30 days");
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_838_767_123), "2026-11-28T04:06:07.123Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn day_boundaries_are_utc_midnight() {
        let midnight = 1_795_824_000_000; // 2026-11-28T00:00:00Z
        assert_eq!(rfc3339(midnight), "2026-11-28T00:00:00.000Z");
        assert_eq!(utc_day(midnight - 1) + 1, utc_day(midnight));
        assert_eq!(utc_day(midnight + MS_PER_DAY - 1), utc_day(midnight));
        assert_eq!(secs_until_next_utc_day(midnight), SECS_PER_DAY);
        assert_eq!(secs_until_next_utc_day(midnight - 1), 1);
        assert_eq!(secs_until_next_utc_day(midnight - 1_500), 2);
        assert_eq!(secs_until_next_utc_day(midnight + 3_600_000), SECS_PER_DAY - 3_600);
    }

    #[test]
    fn parses_ttls() {
        assert_eq!(parse_ttl(&json!("30s")), Ok(30));
        assert_eq!(parse_ttl(&json!("15m")), Ok(900));
        assert_eq!(parse_ttl(&json!("2h")), Ok(7_200));
        assert_eq!(parse_ttl(&json!("7d")), Ok(604_800));
        assert_eq!(parse_ttl(&json!("30d")), Ok(MAX_TTL_SECS));
        assert_eq!(parse_ttl(&json!(90)), Ok(90));
        assert_eq!(parse_ttl(&json!("90")), Ok(90));
    }

    #[test]
    fn rejects_bad_ttls() {
        for bad in [
            json!("31d"),
            json!(0),
            json!("0s"),
            json!(-5),
            json!(1.5),
            json!("2w"),
            json!("h"),
            json!(" 2h"),
            json!("-2h"),
            json!(null),
            json!(true),
            json!("9999999999d"),
            json!(2_592_001),
        ] {
            assert!(parse_ttl(&bad).is_err(), "{bad} should be rejected");
        }
    }
}
