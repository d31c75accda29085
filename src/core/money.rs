//! Money is integer micro-dollars (1 USD = 1,000,000). Floats never touch it:
//! JSON dollar amounts are parsed from their decimal text and written back the same way.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// An amount of US dollars in integer micro-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub u64);

/// Micro-dollars per dollar.
pub const PER_USD: u64 = 1_000_000;
/// Micro-dollars per US cent, Stripe's minor unit for USD.
pub const PER_CENT: u64 = 10_000;
/// The largest amount any cap or price may hold. Bounded far below `u64::MAX` so that sums
/// of many amounts cannot overflow.
pub const MAX: Micros = Micros(1_000_000_000 * PER_USD);

impl Micros {
    pub const ZERO: Micros = Micros(0);

    pub fn from_cents(cents: u64) -> Option<Micros> {
        cents.checked_mul(PER_CENT).filter(|m| *m <= MAX.0).map(Micros)
    }

    pub fn checked_add(self, other: Micros) -> Option<Micros> {
        self.0.checked_add(other.0).map(Micros)
    }

    pub fn saturating_sub(self, other: Micros) -> Micros {
        Micros(self.0.saturating_sub(other.0))
    }

    /// Parses a non-negative decimal dollar amount such as `300`, `1.5` or `0.0083`.
    /// At most six fractional digits (one micro-dollar); no sign, exponent or spaces.
    pub fn parse_usd(text: &str) -> Result<Micros, &'static str> {
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (text.contains('.') && !digits(frac)) {
            return Err("must be a non-negative decimal number of US dollars");
        }
        if frac.len() > 6 {
            return Err("has more than 6 decimal places (1 micro-dollar)");
        }
        if whole.len() > 10 {
            return Err("is too large");
        }
        let whole: u64 = whole.parse().map_err(|_| "is too large")?;
        let mut frac_micros: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
        }
        let micros = whole
            .checked_mul(PER_USD)
            .and_then(|w| w.checked_add(frac_micros))
            .filter(|m| *m <= MAX.0)
            .ok_or("is too large")?;
        Ok(Micros(micros))
    }

    /// Formats as the shortest exact decimal dollar amount: `300`, `1.5`, `0.0083`.
    pub fn to_usd_string(self) -> String {
        let whole = self.0 / PER_USD;
        let frac = self.0 % PER_USD;
        if frac == 0 {
            return whole.to_string();
        }
        let frac = format!("{frac:06}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// Serde adapter for public JSON: a `Micros` travels as a plain JSON number of dollars.
/// Use with `#[serde(with = "crate::core::money::usd")]`.
pub mod usd {
    use super::*;

    pub fn serialize<S: Serializer>(m: &Micros, s: S) -> Result<S::Ok, S::Error> {
        // A RawValue is written verbatim by serde_json, so the number keeps its exact digits.
        let raw = RawValue::from_string(m.to_usd_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Micros, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(d)?;
        Micros::parse_usd(raw.get()).map_err(serde::de::Error::custom)
    }
}

/// Like [`usd`], for optional amounts (`null` or absent means none).
pub mod usd_opt {
    use super::*;

    pub fn serialize<S: Serializer>(m: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => usd::serialize(m, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Micros>, D::Error> {
        let raw: Option<&RawValue> = Deserialize::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(r) if r.get() == "null" => Ok(None),
            Some(r) => Micros::parse_usd(r.get()).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dollar_text_exactly() {
        assert_eq!(Micros::parse_usd("300"), Ok(Micros(300_000_000)));
        assert_eq!(Micros::parse_usd("1.5"), Ok(Micros(1_500_000)));
        assert_eq!(Micros::parse_usd("0.0083"), Ok(Micros(8_300)));
        assert_eq!(Micros::parse_usd("0.000001"), Ok(Micros(1)));
        assert_eq!(Micros::parse_usd("0.30"), Ok(Micros(300_000)));
        assert_eq!(Micros::parse_usd("0"), Ok(Micros(0)));
    }

    #[test]
    fn rejects_what_is_not_a_plain_dollar_amount() {
        for bad in ["", "-1", "1e3", "1.", ".5", " 1", "1.0000001", "0x10", "NaN", "1,5", "\"1\""] {
            assert!(Micros::parse_usd(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Micros::parse_usd("1000000001").is_err());
        assert!(Micros::parse_usd("99999999999999999999").is_err());
    }

    #[test]
    fn formats_shortest_exact_decimal() {
        assert_eq!(Micros(300_000_000).to_usd_string(), "300");
        assert_eq!(Micros(1_500_000).to_usd_string(), "1.5");
        assert_eq!(Micros(8_300).to_usd_string(), "0.0083");
        assert_eq!(Micros(1).to_usd_string(), "0.000001");
        assert_eq!(Micros(0).to_usd_string(), "0");
    }

    #[test]
    fn three_ten_cent_charges_fill_a_thirty_cent_cap_exactly() {
        // The classic float trap: 0.1 + 0.1 + 0.1 != 0.3 in binary floating point.
        let cap = Micros::parse_usd("0.30").unwrap();
        let charge = Micros::parse_usd("0.10").unwrap();
        let total = charge.checked_add(charge).and_then(|t| t.checked_add(charge)).unwrap();
        assert_eq!(total, cap);
    }

    #[test]
    fn cents_convert_to_micros() {
        assert_eq!(Micros::from_cents(150), Some(Micros(1_500_000)));
        assert_eq!(Micros::from_cents(u64::MAX), None);
    }

    #[test]
    fn json_round_trip_keeps_digits() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Cap {
            #[serde(with = "usd")]
            cap: Micros,
            #[serde(with = "usd_opt", default)]
            per_call: Option<Micros>,
        }
        let c: Cap = serde_json::from_str(r#"{"cap": 0.0083, "per_call": null}"#).unwrap();
        assert_eq!(c, Cap { cap: Micros(8_300), per_call: None });
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"cap":0.0083,"per_call":null}"#);
        assert!(serde_json::from_str::<Cap>(r#"{"cap": "3"}"#).is_err());
        assert!(serde_json::from_str::<Cap>(r#"{"cap": -3}"#).is_err());
    }
}
