//! What a run of client messages becomes on the server connection.
//!
//! Most messages pass unchanged, and a run of them is already contiguous in the client's read
//! buffer: sending that slice copies nothing and touches no other buffer (at hundreds of clients
//! each client's buffers are cold by its next transaction, so every buffer touched costs cache
//! misses). The first message that is rewritten copies the unchanged ones before it into the send
//! buffer, and from then on the run is built there.

use bytes::{BufMut, BytesMut};

/// Where a rewritten client message goes.
pub trait Out {
    /// Passes on `msg`, the message being handled, unchanged.
    fn verbatim(&mut self, msg: &[u8]);
    /// The buffer to write a rewritten message into.
    fn rewrite(&mut self) -> &mut BytesMut;
}

/// A plain buffer: everything is copied into it.
impl Out for BytesMut {
    fn verbatim(&mut self, msg: &[u8]) {
        self.put_slice(msg);
    }

    fn rewrite(&mut self) -> &mut BytesMut {
        self
    }
}

/// A run of messages read from `src`, copied into `buf` only from its first rewrite on.
#[derive(Debug)]
pub struct Outgoing<'a> {
    buf: &'a mut BytesMut,
    src: &'a [u8],
    /// Where the message being handled starts in `src`.
    at: usize,
    /// `buf` holds the run so far (else `src[..at]` does, unchanged).
    copying: bool,
}

impl<'a> Outgoing<'a> {
    /// A run of the messages in `src`, after what `buf` already holds (if anything, the run is
    /// built in `buf` from the start).
    pub fn new(buf: &'a mut BytesMut, src: &'a [u8]) -> Outgoing<'a> {
        let copying = !buf.is_empty();
        Outgoing {
            buf,
            src,
            at: 0,
            copying,
        }
    }

    /// The next message to handle starts at `at` in `src`; everything before it was handled.
    pub fn at(&mut self, at: usize) {
        self.at = at;
    }

    /// The bytes to send for the messages in `src[..end]`.
    pub fn bytes(&self, end: usize) -> &[u8] {
        if self.copying {
            self.buf
        } else {
            &self.src[..end]
        }
    }
}

impl Out for Outgoing<'_> {
    fn verbatim(&mut self, msg: &[u8]) {
        if self.copying {
            self.buf.put_slice(msg);
        } else {
            debug_assert!(
                self.src[self.at..].starts_with(msg),
                "only the message being handled passes unchanged"
            );
        }
    }

    fn rewrite(&mut self) -> &mut BytesMut {
        if !self.copying {
            if self.buf.capacity() == 0 {
                *self.buf = crate::spare::take();
            }
            self.copying = true;
            self.buf.put_slice(&self.src[..self.at]);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_messages_are_sent_from_the_source_until_one_is_rewritten() {
        let src = b"aaabbbccc";
        let mut buf = BytesMut::new();
        let mut out = Outgoing::new(&mut buf, src);
        out.verbatim(&src[..3]);
        out.at(3);
        out.verbatim(&src[3..6]);
        assert_eq!(out.bytes(6), b"aaabbb");
        out.at(6);
        out.rewrite().put_slice(b"XY");
        out.at(9);
        out.verbatim(b"ddd");
        assert_eq!(out.bytes(12), b"aaabbbXYddd");
    }

    #[test]
    fn a_run_after_bytes_already_queued_is_built_in_the_buffer() {
        let src = b"aaa";
        let mut buf = BytesMut::from(&b"BEGIN"[..]);
        let mut out = Outgoing::new(&mut buf, src);
        out.verbatim(&src[..3]);
        assert_eq!(out.bytes(3), b"BEGINaaa");
    }
}
