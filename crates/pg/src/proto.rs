//! Wire-protocol framing (PostgreSQL v3): splitting a byte buffer into messages and writing
//! the backend messages the pooler produces itself. Frontend messages to servers are written
//! with `postgres_protocol::message::frontend`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version 3.0 in a startup packet.
pub const PROTOCOL_3: i32 = 196_608;
/// The SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// The GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// The CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// Why a buffer does not hold a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below the minimum (4).
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// The message is larger than the configured limit.
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
}

/// Length of the first complete tagged message (`tag` + `len` + body) in `buf`, if any.
pub fn tagged_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge(total, max));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Whether `tag` starts a message a client may send once logged in (PostgreSQL answers any
/// other with FATAL 08P01 "invalid frontend message type").
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C' | b'c' | b'd' | b'D' | b'E' | b'f' | b'F' | b'H' | b'P' | b'Q' | b'S' | b'X'
    )
}

/// Length of a complete untagged startup-phase packet (`len` + body) in `buf`, if any.
pub fn startup_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::BadLength(len));
    }
    if len as usize > max {
        return Err(FrameError::TooLarge(len as usize, max));
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

/// Reads a NUL-terminated string from the front of `b`, advancing past it.
pub fn cstr(b: &mut &[u8]) -> Option<String> {
    cbytes(b).map(|s| String::from_utf8_lossy(s).into_owned())
}

/// Reads a NUL-terminated byte string from the front of `b`, advancing past it.
pub fn cbytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    // Most strings here are empty (unnamed statements and portals): those skip the search.
    let end = if b.first() == Some(&0) {
        0
    } else {
        memchr::memchr(0, b)?
    };
    let s = &b[..end];
    *b = &b[end + 1..];
    Some(s)
}

/// Writes one tagged message whose body `f` fills; the length is patched in afterwards.
pub fn message(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Severity of an ErrorResponse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// An ErrorResponse with SQLSTATE `code`.
pub fn error(out: &mut BytesMut, severity: Severity, code: &str, msg: &str) {
    error_hint(out, severity, code, msg, "");
}

/// An ErrorResponse with SQLSTATE `code` and a hint (none when empty).
pub fn error_hint(out: &mut BytesMut, severity: Severity, code: &str, msg: &str, hint: &str) {
    let sev: &[u8] = match severity {
        Severity::Error => b"ERROR",
        Severity::Fatal => b"FATAL",
    };
    message(out, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, sev);
        b.put_u8(b'V');
        put_cstr(b, sev);
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, msg.as_bytes());
        if !hint.is_empty() {
            b.put_u8(b'H');
            put_cstr(b, hint.as_bytes());
        }
        b.put_u8(0);
    });
}

/// An ErrorResponse as its own buffer.
pub fn error_bytes(severity: Severity, code: &str, msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    error(&mut b, severity, code, msg);
    b.freeze()
}

/// A ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// ReadyForQuery with transaction status `status` (b'I', b'T' or b'E').
pub fn ready(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
}

/// An Authentication message with `code` and `extra` payload.
pub fn auth(out: &mut BytesMut, code: i32, extra: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(extra);
    });
}

/// BackendKeyData.
pub fn backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// A RowDescription of text columns.
pub fn row_description(out: &mut BytesMut, cols: &[&str]) {
    message(out, b'T', |b| {
        b.put_i16(cols.len() as i16);
        for c in cols {
            put_cstr(b, c.as_bytes());
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0); // text format
        }
    });
}

/// A DataRow of text values.
pub fn data_row(out: &mut BytesMut, vals: &[String]) {
    message(out, b'D', |b| {
        b.put_i16(vals.len() as i16);
        for v in vals {
            b.put_i32(v.len() as i32);
            b.put_slice(v.as_bytes());
        }
    });
}

/// CommandComplete with `tag`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag.as_bytes()));
}

/// A startup packet's parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Startup {
    /// `user`.
    pub user: String,
    /// `database` (defaults to the user name).
    pub database: String,
    /// Every other parameter, in order.
    pub params: Vec<(String, String)>,
    /// The protocol's minor version asked for (3.0 is what the pooler speaks).
    pub minor: u16,
    /// Protocol options asked for (`_pq_.` parameters), none of which the pooler knows.
    pub options: Vec<String>,
}

impl Startup {
    /// NegotiateProtocolVersion, when the client asked for more than protocol 3.0 offers: a
    /// later minor version or protocol options. PostgreSQL answers so (since 9.3) and goes on
    /// in 3.0, so a client asking for 3.2 (libpq 18's `max_protocol_version=latest`) falls
    /// back instead of being refused.
    pub fn negotiation(&self) -> Option<BytesMut> {
        if self.minor == 0 && self.options.is_empty() {
            return None;
        }
        let mut out = BytesMut::new();
        message(&mut out, b'v', |b| {
            b.put_i32(PROTOCOL_3);
            b.put_i32(self.options.len() as i32);
            for o in &self.options {
                put_cstr(b, o.as_bytes());
            }
        });
        Some(out)
    }
}

/// What the first packet of a connection asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstPacket {
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest for a backend key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
    /// A v3 StartupMessage.
    Startup(Startup),
    /// Anything else: an unsupported protocol version.
    Unsupported(i32),
    /// A v3 startup without a user.
    NoUser,
    /// A v3 startup whose last byte is not the list's terminator.
    BadLayout,
}

/// Parses a complete startup-phase packet (length included).
pub fn parse_first(packet: &[u8]) -> FirstPacket {
    let mut b = &packet[4..];
    if b.len() < 4 {
        return FirstPacket::Unsupported(0);
    }
    let code = b.get_i32();
    match code {
        SSL_REQUEST => FirstPacket::Ssl,
        GSSENC_REQUEST => FirstPacket::GssEnc,
        CANCEL_REQUEST if b.len() >= 8 => {
            let pid = b.get_i32();
            let secret = b.get_i32();
            FirstPacket::Cancel { pid, secret }
        }
        // Any 3.x: a later minor version is negotiated down to 3.0.
        code if code >> 16 == PROTOCOL_3 >> 16 => {
            let mut s = Startup {
                minor: (code & 0xffff) as u16,
                ..Startup::default()
            };
            // The list ends with an empty name, the packet's last byte.
            let mut terminated = false;
            while let Some(k) = cstr(&mut b) {
                if k.is_empty() {
                    terminated = b.is_empty();
                    break;
                }
                let Some(v) = cstr(&mut b) else { break };
                match k.as_str() {
                    "user" => s.user = v,
                    "database" => s.database = v,
                    _ if k.starts_with("_pq_.") => s.options.push(k),
                    _ => s.params.push((k, v)),
                }
            }
            if !terminated {
                return FirstPacket::BadLayout;
            }
            if s.user.is_empty() {
                return FirstPacket::NoUser;
            }
            if s.database.is_empty() {
                s.database = s.user.clone();
            }
            FirstPacket::Startup(s)
        }
        other => FirstPacket::Unsupported(other),
    }
}

/// Iterates over the complete tagged messages at the front of `buf`: `(tag, whole message)`.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let total = (len.max(4) as usize) + 1;
        if rest.len() < total {
            return None;
        }
        let (m, r) = rest.split_at(total);
        rest = r;
        Some((m[0], m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i32(PROTOCOL_3);
        for s in ["user", "app", "application_name", "x", ""] {
            put_cstr(&mut b, s.as_bytes());
        }
        let n = b.len() as i32;
        b[0..4].copy_from_slice(&n.to_be_bytes());
        assert_eq!(startup_len(&b, 1 << 20), Ok(Some(b.len())));
        let FirstPacket::Startup(s) = parse_first(&b) else {
            panic!("not a startup")
        };
        assert_eq!(s.user, "app");
        assert_eq!(s.database, "app");
        assert_eq!(s.params, vec![("application_name".into(), "x".into())]);
    }

    #[test]
    fn lengths_are_checked() {
        assert_eq!(
            tagged_len(b"Q\0\0\0\x02", 100),
            Err(FrameError::BadLength(2))
        );
        assert_eq!(
            tagged_len(b"Q\0\x10\0\0", 100),
            Err(FrameError::TooLarge(0x100001, 100))
        );
        assert_eq!(tagged_len(b"Q\0\0\0\x05", 100), Ok(None));
        assert_eq!(tagged_len(b"Q\0\0\0\x05x", 100), Ok(Some(6)));
        assert_eq!(
            startup_len(b"\0\0\0\x03", 100),
            Err(FrameError::BadLength(3))
        );
    }

    proptest::proptest! {
        #[test]
        fn framing_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = tagged_len(&data, 1 << 20);
            let _ = startup_len(&data, 1 << 20);
            if data.len() >= 8 {
                let _ = parse_first(&data);
            }
            let _ = messages(&data).count();
        }
    }
}
