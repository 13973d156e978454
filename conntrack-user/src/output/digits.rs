//! Decimal numbers and IPv4 addresses appended straight to an output
//! buffer: most of an event line's bytes, in text and in JSON. The one
//! decimal writer of every output (and of `top`'s cells, which `--once`
//! writes for every entry).
//!
//! Hand-written rather than with itoa, and why: itoa formats into a buffer
//! of its own and hands back a string of some length, which the caller then
//! copies (a call to memcpy for each number), and an IPv4 address through
//! std's Display or a digit loop per octet costs about 100 instructions.
//! Here a number's digits are built in one machine word (from a table of
//! digit pairs, or eight at a time with SWAR arithmetic); the whole word is
//! appended (a copy of fixed size, no call) and the vector cut back to the
//! digits. An IPv4 address is four table lookups and one 16-byte word. The
//! tests check every value class against std's formatting.
use std::net::Ipv4Addr;

use super::append::Append;

/// Every byte value's digits and a dot ("7.", "42.", "255."), the first
/// character in the low byte, and in the top byte how many bytes that is.
const DOTTED: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let (mut word, mut len, mut unit) = (0u64, 0, 100);
        while unit > 0 {
            if i >= unit || unit == 1 {
                word |= ((b'0' + (i / unit % 10) as u8) as u64) << (8 * len);
                len += 1;
            }
            unit /= 10;
        }
        t[i] = word | ((b'.' as u64) << (8 * len)) | ((len as u64 + 1) << 56);
        i += 1;
    }
    t
};

/// "00" to "99": two ASCII digits each, the first in the low byte.
const PAIRS: [u16; 100] = {
    let mut t = [0u16; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = (b'0' + (i / 10) as u8) as u16 | (((b'0' + (i % 10) as u8) as u16) << 8);
        i += 1;
    }
    t
};

/// The digits of `v` (below 10^5: ports, most timeouts, protocol numbers)
/// without leading zeros, and how many: two pairs from [`PAIRS`] and a
/// digit, fewer steps than [`eight_digits`].
#[inline(always)]
fn five_significant(v: u32) -> (u64, usize) {
    let (high, low) = (v / 100, v % 100);
    let pair = |x: u32| u64::from(PAIRS[(x % 100) as usize]);
    let digits = u64::from(b'0' + (high / 100 % 10) as u8) | pair(high) << 8 | pair(low) << 24;
    // The leading zeros are the low bytes that are '0' (all but the last
    // when v is 0).
    let zeros = ((digits - 0x30_3030_3030).trailing_zeros() / 8).min(4);
    (digits >> (8 * zeros), 5 - zeros as usize)
}

/// The eight digits of `v` (below 10^8), with leading zeros, as ASCII,
/// the first in the low byte. SWAR: the two halves of four digits in the
/// two 32-bit lanes, split into pairs (x 10486 >> 20 is / 100 below
/// 10,000), the pairs into digits (x 103 >> 10 is / 10 below 100), with
/// the quotient in the lower (earlier) part each time.
#[inline(always)]
fn eight_digits(v: u32) -> u64 {
    let x = u64::from(v / 10_000) | u64::from(v % 10_000) << 32;
    let hundreds = ((x * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let pairs = ((x - hundreds * 100) << 16) | hundreds;
    let tens = ((pairs * 103) >> 10) & 0x000f_000f_000f_000f;
    let digits = ((pairs - tens * 10) << 8) | tens;
    digits | 0x3030_3030_3030_3030
}

/// The digits of a number of 9 to 20 digits: the first part's word and
/// length, then one or two words of eight digits.
#[inline(always)]
fn large_digits(v: u64) -> (u64, usize, Option<u64>, u64) {
    const E8: u64 = 100_000_000;
    let high = v / E8;
    let last = eight_digits((v % E8) as u32);
    let (first, middle) = if high < E8 {
        (high as u32, None)
    } else {
        // At most 1844 (u64::MAX is 1844 6744073709551615).
        ((high / E8) as u32, Some(eight_digits((high % E8) as u32)))
    };
    let (word, n) = significant(first);
    (word, n, middle, last)
}

/// The digits of `v` (below 10^8) without leading zeros, and how many.
#[inline(always)]
fn significant(v: u32) -> (u64, usize) {
    let digits = eight_digits(v);
    // The leading zeros are the low bytes that are '0' (all but the last
    // when v is 0).
    let zeros = ((digits - 0x3030_3030_3030_3030).trailing_zeros() / 8).min(7);
    (digits >> (8 * zeros), 8 - zeros as usize)
}

/// Appends a number in decimal.
#[inline(always)]
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    if v < 100_000 {
        let (word, n) = five_significant(v as u32);
        out.put_word(word, n);
    } else {
        put_wide(out, v);
    }
}

/// Appends a number of 6 to 20 digits.
#[inline(always)]
fn put_wide(out: &mut Vec<u8>, v: u64) {
    if v < 100_000_000 {
        let (word, n) = significant(v as u32);
        out.put_word(word, n);
    } else {
        let (word, n, middle, last) = large_digits(v);
        out.put_word(word, n);
        if let Some(middle) = middle {
            out.put_word(middle, 8);
        }
        out.put_word(last, 8);
    }
}

/// An IPv4 address in dotted-quad form, in the low bytes of a word, and
/// its length: four table lookups.
#[inline(always)]
fn ipv4_text(a: Ipv4Addr) -> (u128, u32) {
    let [w0, w1, w2, w3] = a.octets().map(|o| DOTTED[usize::from(o)]);
    let text = |w: u64| w & 0xffff_ffff;
    let len = |w: u64| (w >> 56) as u32;
    let (l0, l1, l2, l3) = (len(w0), len(w1), len(w2), len(w3));
    let first = text(w0) | text(w1) << (8 * l0);
    let last = text(w2) | text(w3) << (8 * l2);
    let both = u128::from(first) | u128::from(last) << (8 * (l0 + l1));
    // No dot after the last octet.
    (both, l0 + l1 + l2 + l3 - 1)
}

/// Appends an IPv4 address in dotted-quad form.
#[inline(always)]
pub(crate) fn put_ipv4(out: &mut Vec<u8>, a: Ipv4Addr) {
    let (text, n) = ipv4_text(a);
    out.put_prefix(&text.to_le_bytes(), n as usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(v: u64) -> String {
        let mut out = b"x".to_vec();
        put_u64(&mut out, v);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn numbers_are_std_decimal() {
        // Every power of ten and its neighbours (each digit count's edges),
        // every value below 100,000 (all ports, every octet), and a spread
        // of large ones, against std's Display.
        let mut values: Vec<u64> = (0..100_000).collect();
        let mut p = 1u64;
        loop {
            for x in [1, 2, 5, 9].map(|m| p.checked_mul(m)).into_iter().flatten() {
                values.extend([x - 1, x, x.saturating_add(1)]);
            }
            match p.checked_mul(10) {
                Some(next) => p = next,
                None => break,
            }
        }
        values.extend([
            u64::from(u16::MAX),
            u64::from(u32::MAX),
            u64::MAX,
            u64::MAX - 1,
            1_700_000_001_000_000_000,
            1_844_674_407_370_955_161,
        ]);
        // Every value of each four-digit half, with the other half at
        // both ends of its range.
        for n in 0..10_000 {
            values.extend([n * 10_000, n * 10_000 + 9_999, n, 99_990_000 + n]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.extend([x, x >> 11, x >> 29, x >> 40]);
        }
        for v in values {
            assert_eq!(number(v), format!("x{v}"), "{v}");
        }
    }

    #[test]
    fn ipv4_is_the_dotted_quad_of_std() {
        // Every octet value in every position, with neighbours of each
        // length, against std's Display (an independent formatter).
        for o in 0..=255u8 {
            for a in [
                Ipv4Addr::new(o, 0, 9, 255),
                Ipv4Addr::new(10, o, 100, 1),
                Ipv4Addr::new(199, 99, o, 9),
                Ipv4Addr::new(1, 22, 255, o),
                Ipv4Addr::new(o, o, o, o),
                Ipv4Addr::new(255, 255, 255, o),
            ] {
                let mut out = b"src=".to_vec();
                put_ipv4(&mut out, a);
                out.push(b' ');
                assert_eq!(String::from_utf8(out), Ok(format!("src={a} ")));
            }
        }
    }
}
