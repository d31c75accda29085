//! The vault-key token format.
//!
//! `kb_<vendor>_<key_id>_<secret>`:
//! - `vendor` names the upstream (`stripe`), so a bare path like `/v1/payment_intents` can be
//!   priced before the Durable Object is asked anything;
//! - `key_id` names the key's Durable Object: its 64-hex id, alone for the key that object
//!   was made for, or followed by `-<n>` for the n-th key minted later inside it (a child key,
//!   or a key an issuer made). The runtime only accepts object ids it minted itself, so a
//!   forged id is refused before any object exists;
//! - `secret` is 32 random bytes, base64url without padding. Only its SHA-256 is stored,
//!   and it is compared in constant time.
//!
//! Issuer tokens are `kbi_<issuer_id>_<secret>`, where `issuer_id` is the 64-hex id of the
//! issuer's object.

use crate::core::encoding::{base64_decode, base64url, hex};
use crate::core::vendor::Vendor;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "kb_";
pub const ISSUER_PREFIX: &str = "kbi_";
/// The length of an object id, and of the key id of the key an object was made for.
pub const KEY_ID_LEN: usize = 64;
/// The most keys minted inside one object: keeps member numbers to 9 digits.
pub const MAX_MEMBER: u64 = 999_999_999;
pub const SECRET_BYTES: usize = 32;
const SECRET_LEN: usize = 43; // base64url of 32 bytes, unpadded

/// A parsed, well-formed vault-key token. Well-formed is not authentic: the Durable Object
/// decides that by comparing the secret's hash.
#[derive(Debug, PartialEq, Eq)]
pub struct VaultToken<'a> {
    pub vendor: Vendor,
    pub key_id: &'a str,
    secret: &'a str,
}

impl<'a> VaultToken<'a> {
    pub fn parse(token: &'a str) -> Option<VaultToken<'a>> {
        let rest = token.strip_prefix(PREFIX)?;
        let (vendor, rest) = rest.split_once('_')?;
        let vendor = Vendor::from_name(vendor)?;
        let (key_id, secret) = split_secret(rest)?;
        is_key_id(key_id).then_some(VaultToken { vendor, key_id, secret })
    }

    /// The SHA-256 of the secret part, as stored by the key's Durable Object.
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::of(self.secret.as_bytes())
    }
}

/// Splits `<id>_<secret>`. The secret's alphabet includes '_', so it is cut at its fixed
/// width from the end, not at a '_'.
fn split_secret(rest: &str) -> Option<(&str, &str)> {
    let at = rest.len().checked_sub(SECRET_LEN + 1)?;
    if !rest.is_char_boundary(at) || rest.as_bytes()[at] != b'_' {
        return None;
    }
    let (id, secret) = (&rest[..at], &rest[at + 1..]);
    secret.bytes().all(is_base64url).then_some((id, secret))
}

/// A parsed, well-formed issuer token (`kbi_…`).
#[derive(Debug, PartialEq, Eq)]
pub struct IssuerToken<'a> {
    pub issuer_id: &'a str,
    secret: &'a str,
}

impl<'a> IssuerToken<'a> {
    pub fn parse(token: &'a str) -> Option<IssuerToken<'a>> {
        let (issuer_id, secret) = split_secret(token.strip_prefix(ISSUER_PREFIX)?)?;
        is_object_id(issuer_id).then_some(IssuerToken { issuer_id, secret })
    }

    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::of(self.secret.as_bytes())
    }
}

/// Builds a new issuer token from fresh random bytes: the token (shown once) and its hash.
pub fn issue_issuer(issuer_id: &str, random: &[u8; SECRET_BYTES]) -> (String, SecretHash) {
    let secret = base64url(random);
    let hash = SecretHash::of(secret.as_bytes());
    (format!("{ISSUER_PREFIX}{issuer_id}_{secret}"), hash)
}

/// The hash stored for a secret made from `random`, before the key id it will go with is known.
pub fn hash_of_secret(random: &[u8; SECRET_BYTES]) -> SecretHash {
    SecretHash::of(base64url(random).as_bytes())
}

/// Builds a new token for `key_id` from fresh random bytes. Returns the token (shown to the
/// caller once) and the hash to store.
pub fn issue(vendor: Vendor, key_id: &str, random: &[u8; SECRET_BYTES]) -> (String, SecretHash) {
    let secret = base64url(random);
    let hash = SecretHash::of(secret.as_bytes());
    (format!("{PREFIX}{}_{key_id}_{secret}", vendor.name()), hash)
}

/// True for a Durable Object id as the runtime prints it: 64 lowercase hex digits.
pub fn is_object_id(s: &str) -> bool {
    s.len() == KEY_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True for a key id: an object id, optionally followed by `-<n>` (1 to [`MAX_MEMBER`], no
/// leading zero), so that every key id has exactly one spelling.
pub fn is_key_id(s: &str) -> bool {
    let (object, member) = match s.split_at_checked(KEY_ID_LEN) {
        Some((object, "")) => (object, None),
        Some((object, rest)) => match rest.strip_prefix('-') {
            Some(member) => (object, Some(member)),
            None => return false,
        },
        None => return false,
    };
    let member_ok = member
        .is_none_or(|m| (1..=9).contains(&m.len()) && !m.starts_with('0') && m.bytes().all(|b| b.is_ascii_digit()));
    is_object_id(object) && member_ok
}

/// The id of the object that holds `key_id` (a well-formed key id).
pub fn object_of(key_id: &str) -> &str {
    key_id.get(..KEY_ID_LEN).unwrap_or(key_id)
}

/// The id of the `n`-th key minted inside the object `object_id`.
pub fn member_key_id(object_id: &str, n: u64) -> String {
    format!("{object_id}-{n}")
}

/// A SHA-256 digest, carried as 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretHash(pub String);

impl SecretHash {
    pub fn of(bytes: &[u8]) -> SecretHash {
        SecretHash(hex(&Sha256::digest(bytes)))
    }

    pub fn matches(&self, other: &SecretHash) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Compares a presented bearer token with the expected one without leaking, by timing,
/// how long a prefix matched or how long the expected token is.
pub fn bearer_matches(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    constant_time_eq(&a, &b) && !expected.is_empty()
}

/// The password of an HTTP Basic credential (`base64(user:password)`), as twilio-node sends
/// its auth token. The username is ignored: the vault key alone identifies the key.
fn basic_password(encoded: &str) -> Option<String> {
    let decoded = base64_decode(encoded.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// The credential an `Authorization` header carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization {
    Bearer(String),
    /// HTTP Basic's password; the username is ignored.
    Basic(String),
}

impl Authorization {
    pub fn parse(value: &str) -> Option<Authorization> {
        let (scheme, credential) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            Some(Authorization::Bearer(credential.trim().to_string()))
        } else if scheme.eq_ignore_ascii_case("basic") {
            basic_password(credential).map(Authorization::Basic)
        } else {
            None
        }
    }

    /// A vault key may come either way: twilio-node sends it as the Basic password.
    pub fn vault_key(self) -> String {
        match self {
            Authorization::Bearer(token) | Authorization::Basic(token) => token,
        }
    }

    /// The admin token comes only as a bearer token.
    pub fn bearer(self) -> Option<String> {
        match self {
            Authorization::Bearer(token) => Some(token),
            Authorization::Basic(_) => None,
        }
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn issued_tokens_parse_back_and_hash_to_the_stored_hash() {
        let (token, stored) = issue(Vendor::Stripe, ID, &[7u8; SECRET_BYTES]);
        assert!(token.starts_with("kb_stripe_0123"));
        let parsed = VaultToken::parse(&token).expect("parses");
        assert_eq!(parsed.vendor, Vendor::Stripe);
        assert_eq!(parsed.key_id, ID);
        assert!(parsed.secret_hash().matches(&stored));
        assert!(!token.contains(&stored.0), "the token must not carry its own hash");
    }

    #[test]
    fn different_secrets_give_different_hashes() {
        let (_, a) = issue(Vendor::Stripe, ID, &[1u8; SECRET_BYTES]);
        let (_, b) = issue(Vendor::Stripe, ID, &[2u8; SECRET_BYTES]);
        assert!(!a.matches(&b));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let (good, _) = issue(Vendor::Stripe, ID, &[9u8; SECRET_BYTES]);
        let mut bad = vec![
            String::new(),
            "kb_".into(),
            good[..good.len() - 1].to_string(),
            format!("{good}A"),
            good.replace("kb_stripe_", "kb_paypal_"),
            good.replace("kb_stripe_", "kb_Stripe_"),
            good.replace("kb_", "sk_"),
            good.replacen(ID, &ID.to_uppercase(), 1),
            good.replacen(&ID[..2], "g0", 1),
            format!(" {good}"),
        ];
        // A byte outside base64url in the secret part.
        let mut chars: Vec<char> = good.chars().collect();
        let last = chars.len() - 1;
        chars[last] = '+';
        bad.push(chars.into_iter().collect());
        for t in &bad {
            assert!(VaultToken::parse(t).is_none(), "{t:?} should not parse");
        }
    }

    #[test]
    fn a_bit_flipped_secret_parses_but_does_not_match() {
        let (good, stored) = issue(Vendor::Stripe, ID, &[9u8; SECRET_BYTES]);
        let mut bytes = good.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        let parsed = VaultToken::parse(&flipped).expect("still well-formed");
        assert!(!parsed.secret_hash().matches(&stored));
    }

    #[test]
    fn secrets_encode_to_the_fixed_length() {
        assert_eq!(base64url(&[0u8; 32]).len(), SECRET_LEN);
    }

    #[test]
    fn bearer_comparison() {
        assert!(bearer_matches("admin-token", "admin-token"));
        assert!(!bearer_matches("admin-toke", "admin-token"));
        assert!(!bearer_matches("", ""), "an unset admin key admits nobody");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(Authorization::parse("Bearer  kb_x "), Some(Authorization::Bearer("kb_x".into())));
        assert_eq!(Authorization::parse("bearer kb_x").and_then(Authorization::bearer).as_deref(), Some("kb_x"));
        let basic = Authorization::parse("Basic QUNhbnk6a2Jfc3RyaXBlX3g=").unwrap();
        assert_eq!(basic, Authorization::Basic("kb_stripe_x".into()));
        assert_eq!(basic.bearer(), None, "the admin token is never taken from Basic");
        assert_eq!(Authorization::parse("Basic QUNhbnk6a2Jfc3RyaXBlX3g=").unwrap().vault_key(), "kb_stripe_x");
        assert_eq!(Authorization::parse("Digest x"), None);
        assert_eq!(Authorization::parse("Bearer"), None);
    }

    #[test]
    fn basic_credentials_yield_their_password() {
        // base64("ACany:kb_stripe_x") and RFC 4648 vectors.
        assert_eq!(basic_password("QUNhbnk6a2Jfc3RyaXBlX3g=").as_deref(), Some("kb_stripe_x"));
        assert_eq!(basic_password("bm9jb2xvbg=="), None, "no ':'");
        assert_eq!(basic_password("not base64!"), None);
    }

    #[test]
    fn key_ids_are_an_object_id_and_an_optional_member_number() {
        assert!(is_key_id(ID));
        assert!(!is_key_id(&ID[1..]));
        assert!(!is_key_id(&ID.to_uppercase()));
        assert!(is_key_id(&member_key_id(ID, 1)));
        assert!(is_key_id(&member_key_id(ID, MAX_MEMBER)));
        for bad in ["-0", "-01", "-", "-1000000000", "-1a", "_1", "1"] {
            assert!(!is_key_id(&format!("{ID}{bad}")), "{bad}");
        }
        assert_eq!(object_of(&member_key_id(ID, 7)), ID);
    }

    #[test]
    fn member_keys_and_issuer_tokens_parse_back() {
        let child = member_key_id(ID, 12);
        let (token, stored) = issue(Vendor::Twilio, &child, &[3u8; SECRET_BYTES]);
        let parsed = VaultToken::parse(&token).expect("parses");
        assert_eq!(parsed.key_id, child);
        assert!(parsed.secret_hash().matches(&stored));

        let (token, stored) = issue_issuer(ID, &[4u8; SECRET_BYTES]);
        assert!(token.starts_with("kbi_0123"));
        let parsed = IssuerToken::parse(&token).expect("parses");
        assert_eq!(parsed.issuer_id, ID);
        assert!(parsed.secret_hash().matches(&stored));
        assert!(IssuerToken::parse(&token.replace("kbi_", "kb_")).is_none());
        assert!(VaultToken::parse(&token).is_none(), "an issuer token is no vault key");
        assert!(IssuerToken::parse(&format!("kbi_{child}_{}", &token[token.len() - 43..])).is_none());
    }
}
