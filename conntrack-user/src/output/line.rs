//! Where the line writers put bytes: straight into the output `Vec`, or a
//! [`Line`] that gathers an event's line on the stack and appends it to the
//! output in one copy.
//!
//! Why a line buffer: an event line is some 20 to 60 small pieces (names,
//! digits, punctuation), and each `Vec` append loads the vector's length
//! and capacity, compares, and stores the length back (and `truncate` again
//! after a copy of fixed size), while an append to the stack buffer is a
//! compare, a store of fixed size and an add. Safe code only: the buffer is
//! zeroed first (never left uninitialised), and a full buffer moves to the
//! output and starts again, so no write can fall off its end. (Writing into
//! a zeroed tail of the output vector instead, which saves the final copy,
//! cost more: the vector's fields did not stay in registers.)
use std::io::Write as _;

/// A piece of text of up to `N` bytes, stored in `N` so that it is
/// appended with a copy of fixed size ([`Sink::put_padded`]).
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

/// Something the line writers append bytes to.
pub(crate) trait Sink {
    /// Appends a piece of fixed size (a literal).
    fn put<const N: usize>(&mut self, bytes: &[u8; N]);
    /// Appends bytes of any length.
    fn put_slice(&mut self, bytes: &[u8]);
    /// Appends one byte.
    fn push(&mut self, byte: u8);
    /// Appends the first `n` bytes of a piece of fixed size (with a copy of
    /// the whole piece where it fits, then a cut: no copy of variable size).
    fn put_prefix<const N: usize>(&mut self, bytes: &[u8; N], n: usize);
    /// Runs `write` on the output vector, with everything appended so far:
    /// for writers that need one (`write!`, serde_json) and rare fields.
    fn with_vec(&mut self, write: impl FnOnce(&mut Vec<u8>));
    /// Removes the last byte appended, if it is `byte`.
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

    /// Appends formatted text (through the output vector).
    fn fmt(&mut self, args: std::fmt::Arguments<'_>) {
        // Writing into a Vec cannot fail.
        self.with_vec(|out| drop(out.write_fmt(args)));
    }
}

impl Sink for Vec<u8> {
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: &[u8; N]) {
        self.extend_from_slice(bytes);
    }

    #[inline(always)]
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline(always)]
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    #[inline(always)]
    fn put_prefix<const N: usize>(&mut self, bytes: &[u8; N], n: usize) {
        let len = self.len();
        self.extend_from_slice(bytes);
        self.truncate(len + n.min(N));
    }

    fn with_vec(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(self);
    }

    fn trim(&mut self, byte: u8) {
        if self.last() == Some(&byte) {
            self.pop();
        }
    }
}

/// An event's line gathered on the stack (`CAP` bytes, which a line of
/// the common kind fits in), appended to the output vector when full, when
/// the vector itself is needed, and when dropped. Its writers are inlined
/// into one function, so that the line's end can stay in a register: a rare
/// field goes through [`Sink::with_vec`].
pub(crate) struct Line<'a, const CAP: usize> {
    out: &'a mut Vec<u8>,
    buf: [u8; CAP],
    len: usize,
}

impl<'a, const CAP: usize> Line<'a, CAP> {
    /// A line to be appended to `out`.
    #[inline(always)]
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            buf: [0; CAP],
            len: 0,
        }
    }

    /// Makes sure `n` (at most `CAP`) more bytes fit.
    #[inline(always)]
    fn room(&mut self, n: usize) {
        if self.len > CAP - n {
            self.spill();
        }
    }

    /// Moves what the line holds to the output.
    #[inline(always)]
    fn spill(&mut self) {
        append(self.out, &self.buf[..self.len]);
        self.len = 0;
    }
}

/// A line's bytes to the output. Out of line, and given the bytes rather
/// than the [`Line`], so that the line's end can stay in a register.
#[inline(never)]
fn append(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
}

impl<const CAP: usize> Sink for Line<'_, CAP> {
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: &[u8; N]) {
        if N > CAP {
            self.with_vec(|out| out.extend_from_slice(bytes));
            return;
        }
        self.room(N);
        self.buf[self.len..self.len + N].copy_from_slice(bytes);
        self.len += N;
    }

    #[inline(always)]
    fn put_slice(&mut self, bytes: &[u8]) {
        if bytes.len() > CAP - self.len {
            self.with_vec(|out| out.extend_from_slice(bytes));
            return;
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    #[inline(always)]
    fn push(&mut self, byte: u8) {
        self.room(1);
        self.buf[self.len] = byte;
        self.len += 1;
    }

    #[inline(always)]
    fn put_prefix<const N: usize>(&mut self, bytes: &[u8; N], n: usize) {
        if N > CAP {
            self.with_vec(|out| out.put_prefix(bytes, n));
            return;
        }
        self.room(N);
        self.buf[self.len..self.len + N].copy_from_slice(bytes);
        self.len += n.min(N);
    }

    #[inline(always)]
    fn with_vec(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.spill();
        write(self.out);
    }

    #[inline(always)]
    fn trim(&mut self, byte: u8) {
        match self.len.checked_sub(1) {
            Some(last) if self.buf[last] == byte => self.len = last,
            Some(_) => {}
            None => self.out.trim(byte),
        }
    }
}

impl<const CAP: usize> Drop for Line<'_, CAP> {
    #[inline(always)]
    fn drop(&mut self) {
        self.spill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One append of each kind.
    enum Op {
        Lit,
        Slice(Vec<u8>),
        Push(u8),
        Word(u64, usize),
        Fmt(usize),
        Trim,
    }

    fn apply(op: &Op, out: &mut impl Sink) {
        match op {
            Op::Lit => out.put(b"lit="),
            Op::Slice(s) => out.put_slice(s),
            Op::Push(b) => out.push(*b),
            Op::Word(w, n) => out.put_word(*w, *n),
            Op::Fmt(v) => out.fmt(format_args!("<{v:x}>")),
            Op::Trim => out.trim(b' '),
        }
    }

    #[test]
    fn a_line_appends_what_the_vec_would_across_spills() {
        // Enough to fill the line buffer many times, with every kind of
        // piece at every offset, slices longer than the buffer, and trims
        // right after a spill (formatted text spills).
        let mut ops = vec![Op::Trim];
        for i in 0..3_000usize {
            ops.push(match i % 7 {
                0 => Op::Lit,
                1 | 5 => Op::Push(b' '),
                2 => Op::Trim,
                3 => Op::Word(u64::from_le_bytes(*b"12345678"), i % 9),
                4 => Op::Slice(vec![b'a' + (i % 26) as u8; i % 300]),
                _ => Op::Fmt(i),
            });
        }
        ops.push(Op::Trim);
        let mut direct = b"before ".to_vec();
        for op in &ops {
            apply(op, &mut direct);
        }
        let mut lined = b"before ".to_vec();
        {
            let mut line = Line::<256>::new(&mut lined);
            for op in &ops {
                apply(op, &mut line);
            }
        }
        assert!(direct.len() > 20 * 256);
        assert!(direct == lined, "the line's output differs");
        // A line that ends at once on a space trims the output's.
        let mut out = b"x ".to_vec();
        Line::<64>::new(&mut out).trim(b' ');
        assert_eq!(out, b"x");
    }
}
