//! Join tokens in swarmkit's exact format (ca/config.go):
//! `SWMTKN-1-<SHA-256 of the root CA PEM in base36, 50 chars>-<16-byte secret in base36, 25 chars>`.

use std::fmt;

use rand::RngCore;
use ring::digest;

use crate::util::ids::{base36, parse_base36};

const PREFIX: &str = "SWMTKN";
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;
const SECRET_BYTES: usize = 16;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the root CA certificate bundle (PEM bytes as stored).
    pub ca_digest: [u8; 32],
    /// The secret part, as text (what managers compare).
    pub secret: String,
    token: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "JoinToken(sha256:{})", hex(&self.ca_digest))
    }
}

/// Why a token was refused. Docker says `invalid join token` for all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid join token")]
pub struct InvalidToken;

impl JoinToken {
    /// A fresh token for the CA whose PEM bundle is `ca_pem`.
    pub fn generate(ca_pem: &[u8]) -> JoinToken {
        let mut secret = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        Self::from_parts(ca_digest(ca_pem), &secret)
    }

    fn from_parts(ca_digest: [u8; 32], secret: &[u8]) -> JoinToken {
        let d = format!("{:0>DIGEST_LEN$}", base36(&ca_digest));
        let s = format!("{:0>SECRET_LEN$}", base36(secret));
        JoinToken { ca_digest, token: format!("{PREFIX}-1-{d}-{s}"), secret: s }
    }

    /// Parses a token the way swarmkit's `ParseJoinToken` does.
    pub fn parse(token: &str) -> Result<JoinToken, InvalidToken> {
        let parts: Vec<&str> = token.split('-').collect();
        if parts.first() != Some(&PREFIX) {
            return Err(InvalidToken);
        }
        let (digest, secret) = match parts.as_slice() {
            [_, "1", d, s] => (*d, *s),
            // v2 is FIPS mode; accepted for parsing only.
            [_, "2", "0" | "1", d, s] => (*d, *s),
            _ => return Err(InvalidToken),
        };
        if digest.len() != DIGEST_LEN || secret.len() != SECRET_LEN {
            return Err(InvalidToken);
        }
        let d = parse_base36(digest, 32).ok_or(InvalidToken)?;
        parse_base36(secret, SECRET_BYTES).ok_or(InvalidToken)?;
        let mut ca_digest = [0u8; 32];
        ca_digest.copy_from_slice(&d);
        Ok(JoinToken { ca_digest, secret: secret.to_owned(), token: token.to_owned() })
    }

    /// The token as the user sees it.
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// `sha256:<hex>` of the CA this token trusts, as swarmkit prints it.
    pub fn digest_string(&self) -> String {
        format!("sha256:{}", hex(&self.ca_digest))
    }
}

/// SHA-256 over the CA PEM bundle bytes.
pub fn ca_digest(ca_pem: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, ca_pem);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Constant-time comparison of two tokens (the whole string, as swarmkit does).
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_exact_shape() {
        let t = JoinToken::generate(b"-----BEGIN CERTIFICATE-----\n...");
        let s = t.as_str();
        assert_eq!(s.len(), 85, "{s}");
        assert!(s.starts_with("SWMTKN-1-"));
        let parts: Vec<_> = s.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[2].len(), 50);
        assert_eq!(parts[3].len(), 25);
        assert!(s[9..].bytes().all(|b| b == b'-' || b.is_ascii_digit() || b.is_ascii_lowercase()));
        let back = JoinToken::parse(s).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.ca_digest, ca_digest(b"-----BEGIN CERTIFICATE-----\n..."));
    }

    #[test]
    fn digest_is_left_padded_base36_of_sha256() {
        // SHA-256 of "" = e3b0c442...; a zero digest must pad to 50 zeros.
        let t = JoinToken::from_parts([0; 32], &[0; 16]);
        assert_eq!(t.as_str(), format!("SWMTKN-1-{}-{}", "0".repeat(50), "0".repeat(25)));
        let t = JoinToken::from_parts(ca_digest(b""), &[1; 16]);
        assert_eq!(
            t.digest_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(JoinToken::parse(t.as_str()).unwrap().ca_digest, ca_digest(b""));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::generate(b"ca").as_str().to_owned();
        let (d, s) = (&good[9..59], &good[60..]);
        let cases = [
            String::new(),
            "SWMTKN".into(),
            format!("SWMTKX-1-{d}-{s}"),
            format!("swmtkn-1-{d}-{s}"),
            format!("SWMTKN-3-{d}-{s}"),
            format!("SWMTKN-1-{d}"),
            format!("SWMTKN-1-{d}-{s}-extra"),
            format!("SWMTKN-1-{}-{s}", &d[1..]),
            format!("SWMTKN-1-{d}0-{s}"),
            format!("SWMTKN-1-{d}-{}", &s[1..]),
            format!("SWMTKN-1-{}A-{s}", &d[1..]),
            format!("SWMTKN-1-{d}-{}!", &s[1..]),
            format!("SWMTKN-1-{}-{s}", "z".repeat(50)), // does not fit 256 bits
            format!("SWMTKN-1-{d}-{}", "z".repeat(25)), // does not fit 128 bits
        ];
        for c in cases {
            assert_eq!(JoinToken::parse(&c), Err(InvalidToken), "{c:?}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
    }
}

/// Fuzzing the parser: any input, and valid tokens changed in one place.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn any_string_is_parsed_or_refused_without_panicking(s in "\\PC{0,120}") {
            let _ = JoinToken::parse(&s);
        }

        #[test]
        fn token_shaped_strings_are_parsed_or_refused(
            v in prop_oneof!["1", "2-0", "2-1", "3", ""],
            d in "[0-9a-zA-Z]{0,52}",
            s in "[0-9a-zA-Z-]{0,27}",
        ) {
            let t = format!("SWMTKN-{v}-{d}-{s}");
            if let Ok(p) = JoinToken::parse(&t) {
                prop_assert_eq!(p.as_str(), t.as_str());
            }
        }

        #[test]
        fn a_changed_token_is_never_equal_to_the_real_one(at in 0usize..85, c in any::<char>()) {
            let real = JoinToken::generate(b"ca");
            let mut chars: Vec<char> = real.as_str().chars().collect();
            let at = at % chars.len();
            prop_assume!(chars[at] != c);
            chars[at] = c;
            let changed: String = chars.into_iter().collect();
            prop_assert!(!tokens_equal(&changed, real.as_str()));
            let _ = JoinToken::parse(&changed);
        }
    }
}
