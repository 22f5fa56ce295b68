//! Swarm object IDs: 25 characters of lowercase base36, as swarmkit makes them
//! (identity/randomid.go): 17 random bytes with the top bit set, read as a
//! big-endian number, rendered in base 36, first character dropped.

use rand::RngCore;

/// Length of a swarm object ID.
pub const ID_LEN: usize = 25;
/// Length of the short form shown in tables (`stringid.TruncateID`).
pub const SHORT_ID_LEN: usize = 12;

/// A new random object ID.
pub fn new_id() -> String {
    new_id_from(&mut rand::rng())
}

/// A new object ID from the given randomness (for deterministic tests).
pub fn new_id_from(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 17];
    rng.fill_bytes(&mut bytes);
    bytes[0] |= 0x80;
    let s = base36(&bytes);
    // 2^135 <= n < 2^136 has 27 base-36 digits; swarmkit keeps chars [1:26].
    s[1..=ID_LEN].to_owned()
}

/// True if `s` looks like a full object ID.
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// The short (12-character) form of an ID.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(SHORT_ID_LEN)]
}

/// Lowercase base-36 rendering of a big-endian unsigned number (no leading zeros; "0" for zero).
pub fn base36(be_bytes: &[u8]) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n: Vec<u8> = be_bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let mut out = Vec::new();
    while !n.is_empty() {
        // Long division of n by 36.
        let mut rem: u32 = 0;
        let mut q = Vec::with_capacity(n.len());
        for &b in &n {
            let cur = (rem << 8) | u32::from(b);
            let d = cur / 36;
            rem = cur % 36;
            if !(q.is_empty() && d == 0) {
                q.push(u8::try_from(d).expect("quotient digit < 256"));
            }
        }
        out.push(DIGITS[rem as usize]);
        n = q;
    }
    if out.is_empty() {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// Parses lowercase base36 into a big-endian byte string of exactly `len` bytes,
/// or `None` if it has other characters or does not fit.
pub fn parse_base36(s: &str, len: usize) -> Option<Vec<u8>> {
    let mut n = vec![0u8; len];
    for c in s.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        // n = n * 36 + d
        let mut carry = u32::from(d);
        for byte in n.iter_mut().rev() {
            let v = u32::from(*byte) * 36 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_known_values() {
        assert_eq!(base36(&[]), "0");
        assert_eq!(base36(&[0, 0]), "0");
        assert_eq!(base36(&[35]), "z");
        assert_eq!(base36(&[36]), "10");
        assert_eq!(base36(&[0x01, 0x00]), "74"); // 256 = 7*36 + 4
        assert_eq!(base36(&u64::MAX.to_be_bytes()), "3w5e11264sgsf");
    }

    #[test]
    fn base36_round_trips() {
        for bytes in [vec![0u8; 32], vec![0xff; 32], (0..32).collect::<Vec<u8>>()] {
            let s = base36(&bytes);
            assert_eq!(parse_base36(&s, 32).unwrap(), bytes);
        }
        assert_eq!(parse_base36("zz", 1), None, "1295 does not fit a byte");
        assert_eq!(parse_base36("A", 1), None);
    }

    #[test]
    fn ids_have_swarmkit_shape() {
        for _ in 0..200 {
            let id = new_id();
            assert!(is_id(&id), "{id}");
        }
        assert_ne!(new_id(), new_id());
        assert_eq!(short("bvz81updecsj6wjz393c09vti"), "bvz81updecsj");
        assert!(!is_id("bvz81updecsj"));
        assert!(!is_id("BVZ81UPDECSJ6WJZ393C09VTI"));
    }
}
