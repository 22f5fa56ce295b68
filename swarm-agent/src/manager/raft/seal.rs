//! Encryption at rest for the Raft store: every log entry and the snapshot's
//! state are sealed with the manager's data encryption key (DEK, 32 random
//! bytes kept beside the node's TLS key, never in the Raft directory, as
//! swarmkit keeps its `raft-dek` with `swarm-node.key`). The store files
//! therefore never hold a secret's value, or the CA key, in plain text.
//!
//! ```text
//! sealed = 0xEC "1" nonce(12) ChaCha20-Poly1305(plain) tag(16)
//! ```
//!
//! Values that do not start with the marker are plain JSON written before
//! the store was sealed; they are read as they are.

use std::io;

use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};

const MARK: [u8; 2] = [0xEC, b'1'];

/// Length of a DEK in bytes.
pub const DEK_LEN: usize = 32;

/// A manager's data encryption key.
pub struct Dek {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek(..)")
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("raft store: {what}"))
}

impl Dek {
    /// # Errors
    /// A key of the wrong length.
    pub fn new(key: &[u8]) -> io::Result<Dek> {
        let k = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| bad("data key of the wrong length"))?;
        Ok(Dek { key: LessSafeKey::new(k), rng: SystemRandom::new() })
    }

    /// A fresh random key's bytes.
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn generate() -> io::Result<[u8; DEK_LEN]> {
        let mut k = [0u8; DEK_LEN];
        SystemRandom::new().fill(&mut k).map_err(|_| io::Error::other("no random bytes"))?;
        Ok(k)
    }

    pub fn seal(&self, plain: &[u8]) -> io::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| io::Error::other("no random bytes"))?;
        let mut out = Vec::with_capacity(MARK.len() + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&MARK);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&MARK), &mut body)
            .map_err(|_| bad("sealing failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plain bytes of `stored` (sealed, or plain from before sealing).
    ///
    /// # Errors
    /// A sealed value that does not open with this key (another key, or
    /// the bytes were changed).
    pub fn open<'a>(&self, stored: &'a [u8]) -> io::Result<std::borrow::Cow<'a, [u8]>> {
        let Some(rest) = stored.strip_prefix(&MARK) else {
            return Ok(std::borrow::Cow::Borrowed(stored));
        };
        if rest.len() < NONCE_LEN {
            return Err(bad("truncated sealed value"));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("bad nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(&MARK), &mut body)
            .map_err(|_| bad("a sealed value does not open with this manager's data key"))?;
        let n = plain.len();
        body.truncate(n);
        Ok(std::borrow::Cow::Owned(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_another_key_or_changed_bytes() {
        let d = Dek::new(&Dek::generate().unwrap()).unwrap();
        let s = d.seal(br#"{"secret":"hunter2"}"#).unwrap();
        assert!(!s.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(&*d.open(&s).unwrap(), br#"{"secret":"hunter2"}"#);
        // Plain JSON from before sealing reads as it is.
        assert_eq!(&*d.open(b"{}").unwrap(), b"{}");
        let other = Dek::new(&Dek::generate().unwrap()).unwrap();
        assert!(other.open(&s).is_err());
        let mut changed = s.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(d.open(&changed).is_err());
        assert!(d.open(&s[..10]).is_err());
        assert!(Dek::new(&[0; 5]).is_err());
    }
}
