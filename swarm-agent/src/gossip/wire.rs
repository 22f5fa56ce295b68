//! Gossip packets on 7946: versioned, authenticated and encrypted.
//!
//! ```text
//! "SWG" version(1) | key id (u32 BE) | nonce (12) | AES-256-GCM(postcard(Packet)) + tag (16)
//! ```
//!
//! The first 8 bytes are the additional authenticated data. Keys come from
//! the managers ([`crate::rpc::messages::GossipKey`]), newest first. The
//! second newest encrypts (the newest only once it is the only key): a new
//! key reaches every node one rotation period before anyone encrypts with
//! it, and any kept key decrypts, so rotation never cuts a node off.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::gossip::table::{Entry, TableMsg};
use crate::rpc::messages::GossipKey;

pub const MAGIC: [u8; 3] = *b"SWG";
pub const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

/// Everything gossip sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Packet {
    /// Membership protocol (SWIM, via foca).
    Swim(Vec<u8>),
    /// Table updates and network announcements.
    Table(TableMsg),
    /// TCP bulk sync: all entries of a network, please.
    SyncRequest {
        network: String,
    },
    SyncResponse {
        network: String,
        entries: Vec<Entry>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a gossip packet")]
    NotOurs,
    #[error("unsupported gossip version {0}")]
    Version(u8),
    #[error("no key {0}")]
    UnknownKey(u32),
    #[error("authentication failed")]
    Auth,
    #[error("bad payload: {0}")]
    Decode(String),
    #[error("no gossip key yet")]
    NoKey,
}

/// The keys in use, newest first.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<(u32, LessSafeKey)>,
}

impl Keyring {
    /// A keyring from the managers' keys (invalid ones are skipped).
    pub fn new(keys: &[GossipKey]) -> Keyring {
        let keys = keys
            .iter()
            .filter_map(|k| {
                let bytes = k.bytes()?;
                Some((k.id, LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).ok()?)))
            })
            .collect();
        Keyring { keys }
    }

    /// The key packets are encrypted with: see the module documentation.
    fn sealing(&self) -> Option<&(u32, LessSafeKey)> {
        self.keys.get(1).or_else(|| self.keys.first())
    }

    pub fn primary(&self) -> Option<u32> {
        self.sealing().map(|(id, _)| *id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Encrypts a packet with the sealing key.
    pub fn seal(&self, packet: &Packet) -> Result<Vec<u8>, WireError> {
        let (id, key) = self.sealing().ok_or(WireError::NoKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + 64);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = postcard::to_allocvec(packet).map_err(|e| WireError::Decode(e.to_string()))?;
        let aad: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().expect("header");
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| WireError::Auth)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Checks and decrypts a packet.
    pub fn open(&self, data: &[u8]) -> Result<Packet, WireError> {
        if data.len() < HEADER_LEN + NONCE_LEN + 16 || data[..3] != MAGIC {
            return Err(WireError::NotOurs);
        }
        if data[3] != VERSION {
            return Err(WireError::Version(data[3]));
        }
        let id = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
        let key =
            self.keys.iter().find(|(k, _)| *k == id).map(|(_, k)| k).ok_or(WireError::UnknownKey(id))?;
        let nonce = Nonce::try_assume_unique_for_key(&data[HEADER_LEN..HEADER_LEN + NONCE_LEN])
            .map_err(|_| WireError::Auth)?;
        let aad: [u8; HEADER_LEN] = data[..HEADER_LEN].try_into().expect("header");
        let mut body = data[HEADER_LEN + NONCE_LEN..].to_vec();
        let plain = key.open_in_place(nonce, Aad::from(aad), &mut body).map_err(|_| WireError::Auth)?;
        postcard::from_bytes(plain).map_err(|e| WireError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[u32]) -> (Keyring, Vec<GossipKey>) {
        let keys: Vec<GossipKey> = ids.iter().map(|i| GossipKey::generate(*i)).collect();
        (Keyring::new(&keys), keys)
    }

    #[test]
    fn sealed_packets_open_and_hide_their_content() {
        let (r, _) = ring(&[1]);
        let p = Packet::SyncRequest { network: "secret-network-name".into() };
        let wire = r.seal(&p).unwrap();
        assert_eq!(&wire[..4], b"SWG\x01");
        assert!(!wire.windows(6).any(|w| w == b"secret"), "payload is encrypted");
        assert_eq!(r.open(&wire).unwrap(), p);
    }

    #[test]
    fn tampering_wrong_keys_and_garbage_are_refused() {
        let (r, _) = ring(&[1]);
        let wire = r.seal(&Packet::Swim(vec![1, 2, 3])).unwrap();
        let mut flipped = wire.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(r.open(&flipped), Err(WireError::Auth));
        let mut header = wire.clone();
        header[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(r.open(&header), Err(WireError::UnknownKey(9)));
        let (other, _) = ring(&[1]);
        assert_eq!(other.open(&wire), Err(WireError::Auth), "same id, different key");
        assert_eq!(r.open(b"hello"), Err(WireError::NotOurs));
        assert_eq!(r.open(&[0u8; 100]), Err(WireError::NotOurs));
        let mut v2 = wire;
        v2[3] = 2;
        assert_eq!(r.open(&v2), Err(WireError::Version(2)));
        assert_eq!(Keyring::new(&[]).seal(&Packet::Swim(vec![])), Err(WireError::NoKey));
    }

    #[test]
    fn a_new_key_is_only_used_once_everyone_has_it() {
        let k: Vec<GossipKey> = (1..=3).map(GossipKey::generate).collect();
        let only_first = Keyring::new(&[k[0].clone()]);
        // The leader just rotated: [2, 1]. A node that has it still encrypts
        // with 1, so a node that has not heard of 2 yet understands it.
        let rotated = Keyring::new(&[k[1].clone(), k[0].clone()]);
        assert_eq!(rotated.primary(), Some(1));
        let wire = rotated.seal(&Packet::Swim(vec![7])).unwrap();
        assert_eq!(only_first.open(&wire).unwrap(), Packet::Swim(vec![7]));
        assert_eq!(
            rotated.open(&only_first.seal(&Packet::Swim(vec![8])).unwrap()).unwrap(),
            Packet::Swim(vec![8])
        );
        // Next rotation: [3, 2, 1] encrypts with 2, which every node got a period ago.
        let again = Keyring::new(&[k[2].clone(), k[1].clone(), k[0].clone()]);
        assert_eq!(again.primary(), Some(2));
        assert_eq!(
            rotated.open(&again.seal(&Packet::Swim(vec![9])).unwrap()).unwrap(),
            Packet::Swim(vec![9])
        );
        // A dropped key no longer opens anything.
        let dropped = Keyring::new(&[k[2].clone(), k[1].clone()]);
        let old = only_first.seal(&Packet::Swim(vec![1])).unwrap();
        assert_eq!(dropped.open(&old), Err(WireError::UnknownKey(1)));
    }
}

/// Fuzzing packet decoding: nothing unauthenticated opens, nothing panics.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn ring() -> Keyring {
        Keyring::new(&[GossipKey::generate(1)])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_open(data in proptest::collection::vec(any::<u8>(), 0..600), versioned in any::<bool>()) {
            let mut data = data;
            if versioned && data.len() >= 8 {
                // Our header and key id 1: only the tag can refuse it.
                data[..4].copy_from_slice(b"SWG\x01");
                data[4..8].copy_from_slice(&1u32.to_be_bytes());
            }
            prop_assert!(ring().open(&data).is_err());
        }

        #[test]
        fn sealed_packets_open_and_any_flipped_bit_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            bit in any::<usize>(),
        ) {
            let r = ring();
            let p = Packet::Swim(payload);
            let mut wire = r.seal(&p).unwrap();
            prop_assert_eq!(r.open(&wire).unwrap(), p);
            let at = bit % (wire.len() * 8);
            wire[at / 8] ^= 1 << (at % 8);
            prop_assert!(r.open(&wire).is_err());
        }

        #[test]
        fn authenticated_garbage_payloads_are_refused_cleanly(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            // A peer with the key sending bytes that are not a packet.
            let (id, key) = (1u32, GossipKey::generate(1));
            let r = Keyring::new(std::slice::from_ref(&key));
            let sealer = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.bytes().unwrap()).unwrap());
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC);
            out.push(VERSION);
            out.extend_from_slice(&id.to_be_bytes());
            let nonce = [7u8; NONCE_LEN];
            out.extend_from_slice(&nonce);
            let mut b = body;
            let aad: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().unwrap();
            sealer.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut b).unwrap();
            out.extend_from_slice(&b);
            // Opens or not, never panics.
            let _ = r.open(&out);
        }
    }
}
