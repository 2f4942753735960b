//! Bench data: the same pseudo-random bytes in every run (xorshift64), which no transport or
//! disk compresses.

/// `len` pseudo-random bytes.
pub(crate) fn pseudo_random(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    data
}
