//! Appends of fixed size to the output vector: what the line writers
//! ([`super::text`], [`super::json`], the numbers of [`super::digits`]) are
//! made of.
//!
//! Why: an event line is some 20 to 60 small pieces (names, digits,
//! punctuation). `extend_from_slice` of a slice whose length is known only
//! at run time is a call to memcpy; of an array, a few moves. A piece of
//! variable length (a number's digits, a name from a table) is appended
//! whole from a word or an array of fixed size, and the vector cut back to
//! its length ([`Append::put_prefix`]). Safe code only: nothing is written
//! past the vector's length. (Gathering the line in a stack buffer first
//! and appending it in one copy cost more in the guests: the buffer's
//! memset and the copy, with SSE2 and no ERMS, outweighed the cheaper
//! appends; measured with examples/replay_events.rs under qemu -icount.)

/// A piece of text of up to `N` bytes, stored in `N` so that it is
/// appended with a copy of fixed size ([`Append::put_padded`]).
pub(crate) struct Padded<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Padded<N> {
    /// `text` (at most `N` bytes: longer does not compile in a constant).
    pub(crate) const fn new(text: &[u8]) -> Self {
        Self::concat(&[text])
    }

    /// `parts` one after the other (at most `N` bytes in all).
    pub(crate) const fn concat(parts: &[&[u8]]) -> Self {
        let mut bytes = [0; N];
        let mut len = 0;
        let mut p = 0;
        while p < parts.len() {
            let mut i = 0;
            while i < parts[p].len() {
                bytes[len] = parts[p][i];
                len += 1;
                i += 1;
            }
            p += 1;
        }
        Self { bytes, len }
    }
}

/// Appends of fixed size, for the output vector.
pub(crate) trait Append {
    /// Appends a piece of fixed size (a literal).
    fn put<const N: usize>(&mut self, bytes: &[u8; N]);
    /// Appends the first `n` bytes of a piece of fixed size: the whole
    /// piece, then a cut (no copy of variable length).
    fn put_prefix<const N: usize>(&mut self, bytes: &[u8; N], n: usize);
    /// Removes the last byte, if it is `byte`.
    fn trim(&mut self, byte: u8);

    /// Appends a [`Padded`] piece.
    #[inline(always)]
    fn put_padded<const N: usize>(&mut self, piece: &Padded<N>) {
        self.put_prefix(&piece.bytes, piece.len);
    }

    /// Appends the first `n` (at most 8) bytes of `word`, low byte first.
    #[inline(always)]
    fn put_word(&mut self, word: u64, n: usize) {
        self.put_prefix(&word.to_le_bytes(), n);
    }
}

impl Append for Vec<u8> {
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: &[u8; N]) {
        self.extend_from_slice(bytes);
    }

    #[inline(always)]
    fn put_prefix<const N: usize>(&mut self, bytes: &[u8; N], n: usize) {
        let len = self.len();
        self.extend_from_slice(bytes);
        self.truncate(len + n.min(N));
    }

    #[inline(always)]
    fn trim(&mut self, byte: u8) {
        if self.last() == Some(&byte) {
            self.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_appended_and_cut_to_their_length() {
        let mut out = b"x".to_vec();
        out.put(b"ab");
        out.put_prefix(b"cdef", 2);
        out.put_prefix(b"gh", 9);
        out.put_word(u64::from_le_bytes(*b"12345678"), 3);
        out.put_word(u64::from_le_bytes(*b"12345678"), 0);
        out.put_padded(&Padded::<8>::concat(&[b"i", b"", b"jk"]));
        out.push(b' ');
        out.trim(b' ');
        out.trim(b' ');
        assert_eq!(out, b"xabcdgh123ijk");
    }
}
