//! Key → hash slot, exactly as Redis Cluster computes it: CRC16/XMODEM of the
//! key's hash tag (first `{`, first `}` after it, non-empty between) or of the
//! whole key, masked to 14 bits.

use serde::{Deserialize, Serialize};

/// Number of hash slots in a Redis cluster.
pub const SLOTS: u16 = 16384;

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16_TABLE: [u16; 256] = crc16_table();

/// CRC16/XMODEM (poly 0x1021, init 0, no reflection), as in Redis's `crc16.c`.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| (crc << 8) ^ CRC16_TABLE[(((crc >> 8) as u8) ^ b) as usize])
}

/// The part of `key` that is hashed: the first non-empty `{tag}`, else the key.
pub fn hash_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&c| c == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&c| c == b'}') {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// The hash slot of `key`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_part(key)) & (SLOTS - 1)
}

/// An inclusive range of slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
}

impl SlotRange {
    pub fn new(start: u16, end: u16) -> Self {
        debug_assert!(start <= end && end < SLOTS);
        Self { start, end }
    }

    pub fn contains(&self, slot: u16) -> bool {
        self.start <= slot && slot <= self.end
    }

    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Splits `0..SLOTS` into `n` contiguous ranges of near-equal size, as
    /// `redis-cli --cluster create` does.
    pub fn split_even(n: usize) -> Vec<SlotRange> {
        assert!(n > 0 && n <= usize::from(SLOTS));
        let per = f64::from(SLOTS) / n as f64;
        (0..n)
            .map(|i| {
                let start = (i as f64 * per).round() as u16;
                let end = (((i + 1) as f64 * per).round() as u16).saturating_sub(1);
                SlotRange::new(start, if i + 1 == n { SLOTS - 1 } else { end })
            })
            .collect()
    }

    /// Parses `a-b` or a single slot `a`.
    pub fn parse(s: &str) -> Option<SlotRange> {
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let a = s.parse().ok()?;
                (a, a)
            }
        };
        (a <= b && b < SLOTS).then_some(SlotRange { start: a, end: b })
    }
}

/// A set of slot ranges, used to scope keyspace-wide commands to the slots of
/// one advertised node. An empty scope means "every slot".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotScope(pub Vec<SlotRange>);

impl SlotScope {
    pub fn all() -> Self {
        Self(Vec::new())
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, slot: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r.contains(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector of spec/keyslot-vectors.md and spec/redis-cluster.md §1.2.
    #[test]
    fn keyslot_vectors_match_redis() {
        let vectors: &[(&[u8], u16)] = &[
            (b"", 0),
            (b"foo", 12182),
            (b"bar", 5061),
            (b"hello", 866),
            (b"123456789", 12739),
            (b"key", 12539),
            (b"somekey", 11058),
            (b"user:1000", 1649),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
            (b"user1000", 3443),
            (b"foo{}{bar}", 8363),
            (b"{}", 15257),
            (b"{}foo", 9500),
            (b"foo{{bar}}zap", 4015),
            (b"{{bar}}", 4015),
            (b"foo{bar}{zap}", 5061),
            (b"{bar", 4015),
            (b"bar}", 6624),
            (b"}{bar}", 5061),
            (b"{bar}}", 5061),
            (b"a{b}c", 3300),
            (b"{a}", 15495),
            (b"a", 15495),
            (b"\x00", 0),
            (b"\xff\xfe\x00\x01", 9169),
            (b"\r\n", 5910),
            (b"key with spaces", 13638),
            ("你好".as_bytes(), 14231),
            (b"{\x00}x", 0),
            (b"{{}}", 4092),
            (b"{}}{a}", 16105),
            (b"x{", 3596),
            (b"}", 12090),
            (b"{", 4092),
            (b"mykey{tag}", 8338),
            (b"{tag}", 8338),
            (b"tag", 8338),
            (b"key5", 9057),
            (b"mytensor", 13014),
            (b"{t}a", 15891),
        ];
        for (key, slot) in vectors {
            assert_eq!(key_slot(key), *slot, "slot of {:?}", String::from_utf8_lossy(key));
        }
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn split_even_covers_every_slot_once() {
        for n in [1, 2, 3, 5, 7, 16] {
            let ranges = SlotRange::split_even(n);
            assert_eq!(ranges.len(), n);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[n - 1].end, SLOTS - 1);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end + 1, w[1].start);
            }
        }
        assert_eq!(SlotRange::split_even(3)[0], SlotRange::new(0, 5460));
    }
}
