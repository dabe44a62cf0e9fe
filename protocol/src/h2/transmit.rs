//! The bytes a connection has for its client, in order, as a queue of
//! buffers: frame headers and small frames are gathered in one buffer, and a
//! DATA payload joins the queue as the buffer it arrived in, so a driver
//! writes it with a vectored write instead of copying it first.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Payload pieces shorter than this are copied into the gathering buffer: a
/// separate buffer per few bytes would cost more than the copy.
const COPY_BELOW: usize = 512;

#[derive(Debug, Default)]
pub(crate) struct Transmit {
    /// Sealed buffers, oldest first; `gather` comes after all of them.
    sealed: VecDeque<Bytes>,
    /// Where small writes are gathered.
    gather: BytesMut,
    len: usize,
}

impl Transmit {
    /// Appends a copy of `bytes`.
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.gather.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `bytes`, without a copy unless it is short.
    pub fn put_bytes(&mut self, bytes: Bytes) {
        if bytes.len() < COPY_BELOW {
            self.put_slice(&bytes);
            return;
        }
        if !self.gather.is_empty() {
            self.sealed.push_back(self.gather.split().freeze());
        }
        self.len += bytes.len();
        self.sealed.push_back(bytes);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The first buffer (empty when nothing is queued).
    pub fn first(&self) -> &[u8] {
        self.sealed.front().map_or(&self.gather[..], |b| &b[..])
    }

    /// Fills `out` with the queued buffers in order, as many as fit;
    /// returns how many it filled.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let bufs = self.sealed.iter().map(|b| &b[..]).chain(std::iter::once(&self.gather[..]));
        let mut n = 0;
        for (slot, buf) in out.iter_mut().zip(bufs.filter(|b| !b.is_empty())) {
            *slot = IoSlice::new(buf);
            n += 1;
        }
        n
    }

    /// `n` bytes from the front were written. A drained queue frees its
    /// gathering buffer, so an idle connection holds none.
    pub fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.sealed.front_mut() else {
                self.gather.advance(n);
                break;
            };
            let take = front.len().min(n);
            front.advance(take);
            n -= take;
            if front.is_empty() {
                self.sealed.pop_front();
            }
        }
        if self.len == 0 {
            self.sealed.clear();
            self.gather = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_by(t: &mut Transmit, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while t.len() > 0 {
            let mut slots = [IoSlice::new(&[]); 4];
            let k = t.slices(&mut slots);
            let all: Vec<u8> = slots[..k].iter().flat_map(|s| s.iter().copied()).collect();
            let n = step.min(all.len());
            out.extend_from_slice(&all[..n]);
            t.advance(n);
        }
        out
    }

    #[test]
    fn bytes_leave_in_the_order_they_were_queued_whatever_the_write_sizes() {
        for step in [1, 7, 512, 600, 5000, usize::MAX] {
            let mut t = Transmit::default();
            let mut expected = Vec::new();
            for (i, len) in [9usize, 700, 3, 9, 16_384, 0, 511, 512, 9].into_iter().enumerate() {
                let piece: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                expected.extend_from_slice(&piece);
                if i % 2 == 0 {
                    t.put_slice(&piece);
                } else {
                    t.put_bytes(Bytes::from(piece));
                }
            }
            assert_eq!(t.len(), expected.len());
            assert_eq!(drain_by(&mut t, step), expected, "writes of {step} bytes");
            assert_eq!((t.len(), t.gather.capacity(), t.sealed.len()), (0, 0, 0), "nothing held when drained");
        }
    }

    #[test]
    fn a_large_payload_is_queued_as_its_own_buffer() {
        let payload = Bytes::from(vec![5u8; 4096]);
        let mut t = Transmit::default();
        t.put_slice(b"head");
        t.put_bytes(payload.clone());
        t.put_slice(b"tail");
        let mut slots = [IoSlice::new(&[]); 4];
        assert_eq!(t.slices(&mut slots), 3);
        assert_eq!(slots[1].as_ptr(), payload.as_ptr(), "the payload's own memory, not a copy");
        assert_eq!(t.first(), b"head");
    }
}
