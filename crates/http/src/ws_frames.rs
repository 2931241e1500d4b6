//! A WebSocket tunnel closed by the gateway's shutdown is told why: each peer gets a close
//! frame with code 1001 ("going away", RFC 6455 §7.4.1) before the connection ends, so a
//! client library reports a server going away (and reconnects) instead of an abnormal
//! closure (1006). The tunnel copies bytes without reading frames; a close frame may only go
//! between two frames, so [`Frames`] follows the frame boundaries of what was written to a
//! peer (`stall::Watched` feeds it), and a peer caught in the middle of a frame is closed
//! without one.

/// Where the bytes written to one peer stand in the WebSocket framing.
#[derive(Debug, Default)]
pub struct Frames {
    /// The frame header read so far (at most 14 bytes: 2, an 8-byte length, a 4-byte mask).
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
}

impl Frames {
    /// Follows `bytes`, just written to the peer.
    pub fn passed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len() as u64);
                self.remaining -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have >= 2 && self.have == self.head_len() {
                self.remaining = self.payload_len();
                self.have = 0;
            }
        }
    }

    /// Whether the peer has been given whole frames only.
    pub fn between_frames(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    fn head_len(&self) -> usize {
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        let h = &self.head;
        match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        }
    }
}

/// A close frame with code 1001: unmasked to a client, masked (as a client's must be) to the
/// upstream.
pub(crate) fn going_away(masked: bool) -> Vec<u8> {
    const CODE: [u8; 2] = 1001u16.to_be_bytes();
    if !masked {
        return vec![0x88, 0x02, CODE[0], CODE[1]];
    }
    let key: [u8; 4] = rand::random();
    vec![
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        CODE[0] ^ key[0],
        CODE[1] ^ key[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_followed_across_split_writes_and_every_length_form() {
        let mut f = Frames::default();
        assert!(f.between_frames());
        // An unmasked text frame "hi", then a masked one of 300 bytes (16-bit length).
        f.passed(&[0x81, 0x02, b'h']);
        assert!(!f.between_frames());
        f.passed(b"i");
        assert!(f.between_frames());
        let mut masked = vec![0x82, 0x80 | 126, 0x01, 0x2c, 1, 2, 3, 4];
        masked.extend(vec![0u8; 300]);
        for chunk in masked.chunks(7) {
            f.passed(chunk);
        }
        assert!(f.between_frames());
        // A 64-bit length, and an empty frame.
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(vec![0u8; 65_536]);
        f.passed(&long);
        assert!(f.between_frames());
        f.passed(&[0x89, 0x00]);
        assert!(f.between_frames());
        f.passed(&[0x88]);
        assert!(!f.between_frames());
    }

    #[test]
    fn the_close_frames_carry_1001() {
        assert_eq!(going_away(false), [0x88, 0x02, 0x03, 0xe9]);
        let m = going_away(true);
        assert_eq!((m[0], m[1]), (0x88, 0x82));
        assert_eq!([m[6] ^ m[2], m[7] ^ m[3]], [0x03, 0xe9]);
    }
}
