//! What instances put on the bus: a message stamped with its publisher and a sequence number,
//! and the heartbeat by which instances know each other and each publisher's last number.
//!
//! Wire forms (binary, fixed header, the payload untouched after it):
//! - message: `\0SGM1` · publisher id (16 bytes) · sequence (u64, big-endian) · payload
//! - heartbeat: `\0SGH1` · publisher id (16 bytes) · last sequence sent (u64) · state (1 byte:
//!   1 alive, 0 leaving)
//!
//! Anything else on a topic's channel is a message published straight onto the bus by the
//! application: delivered as it is, without sequence checks.

use bytes::{BufMut, Bytes, BytesMut};

const MESSAGE: &[u8; 5] = b"\0SGM1";
const HEARTBEAT: &[u8; 5] = b"\0SGH1";
const HEAD: usize = 5 + 16 + 8;

/// An instance's identity on the bus (random, new for every bus connection set).
pub(crate) type PeerId = u128;

/// What arrived on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A message from a gateway: who sent it, its number, the payload.
    Stamped {
        /// The publishing instance.
        from: PeerId,
        /// Its sequence number (1, 2, … per publisher, across all topics).
        seq: u64,
        /// The message itself.
        payload: Bytes,
    },
    /// A message published onto the bus by someone else.
    Raw(Bytes),
    /// A heartbeat.
    Heartbeat {
        /// The instance.
        from: PeerId,
        /// The last sequence number it has sent (0: none yet).
        last_seq: u64,
        /// False when it is leaving the bus.
        alive: bool,
    },
}

/// A message's wire form.
pub(crate) fn message(from: PeerId, seq: u64, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEAD + payload.len());
    b.put_slice(MESSAGE);
    b.put_u128(from);
    b.put_u64(seq);
    b.put_slice(payload);
    b.freeze()
}

/// A heartbeat's wire form.
pub(crate) fn heartbeat(from: PeerId, last_seq: u64, alive: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(HEAD + 1);
    b.put_slice(HEARTBEAT);
    b.put_u128(from);
    b.put_u64(last_seq);
    b.put_u8(u8::from(alive));
    b.freeze()
}

/// Reads what arrived.
pub(crate) fn parse(b: Bytes) -> Frame {
    let stamped = |b: &Bytes| -> Option<(PeerId, u64)> {
        let from = u128::from_be_bytes(b.get(5..21)?.try_into().ok()?);
        let seq = u64::from_be_bytes(b.get(21..HEAD)?.try_into().ok()?);
        Some((from, seq))
    };
    if b.starts_with(MESSAGE)
        && let Some((from, seq)) = stamped(&b)
    {
        return Frame::Stamped {
            from,
            seq,
            payload: b.slice(HEAD..),
        };
    }
    if b.starts_with(HEARTBEAT)
        && b.len() == HEAD + 1
        && let Some((from, last_seq)) = stamped(&b)
    {
        return Frame::Heartbeat {
            from,
            last_seq,
            alive: b[HEAD] == 1,
        };
    }
    Frame::Raw(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_their_wire_form_and_other_bytes_are_raw() {
        let id = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        assert_eq!(
            parse(message(id, 42, b"hello")),
            Frame::Stamped {
                from: id,
                seq: 42,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(
            parse(heartbeat(id, 7, false)),
            Frame::Heartbeat {
                from: id,
                last_seq: 7,
                alive: false
            }
        );
        for raw in [&b"hello"[..], b"", b"\0SGM1short", b"\0SGH1"] {
            assert_eq!(
                parse(Bytes::copy_from_slice(raw)),
                Frame::Raw(Bytes::copy_from_slice(raw))
            );
        }
    }
}
