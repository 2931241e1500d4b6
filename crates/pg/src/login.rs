//! The start of a client connection: SSL/GSSENC negotiation (declined with 'N'), cancel
//! requests, protocol version checks, and client authentication (SCRAM-SHA-256, md5, trust,
//! or pass-through when no users are configured).

use std::time::Duration;

use crate::stream::ClientStream;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{ScramSecret, ScramServer, md5_expected};
pub use crate::failure::Failure;
use crate::pooler::Pooler;
use crate::proto::{self, FirstPacket, FrameError, Startup};
use crate::spec::ClientAuth;

/// Longest a client may take to log in.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

impl Failure {
    /// Sends it as a FATAL ErrorResponse and closes the connection (best effort): a login
    /// refused.
    pub async fn send(&self, stream: &mut ClientStream) {
        let _ = stream.write_all(&self.fatal()).await;
        let _ = stream.shutdown().await;
    }
}

/// Reads until the startup message; `Ok(None)` when the connection was only a cancel request
/// or went away.
pub async fn startup(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    pooler: &Pooler,
) -> Result<Option<Startup>, Failure> {
    // A startup packet is small; anything past 10 KB is not one.
    const MAX_STARTUP: usize = 10_000;
    // Each encryption request is answered once (libpq may ask GSSENC, then SSL); one asked
    // again is a protocol violation, as PostgreSQL has it, not a reason to wait for the login
    // timeout.
    let (mut asked_ssl, mut asked_gss) = (false, false);
    loop {
        let Some(n) = fill(stream, buf, |b| proto::startup_len(b, MAX_STARTUP)).await? else {
            return Ok(None);
        };
        let packet = buf.split_to(n);
        match proto::parse_first(&packet) {
            FirstPacket::Ssl | FirstPacket::GssEnc => {
                if !buf.is_empty() {
                    return Err(Failure::Protocol("data after SSLRequest".into()));
                }
                let asked = match first_is_ssl(&packet) {
                    true => &mut asked_ssl,
                    false => &mut asked_gss,
                };
                if std::mem::replace(asked, true) {
                    return Err(Failure::Protocol(
                        "encryption was already negotiated on this connection".into(),
                    ));
                }
                let io = |e: std::io::Error| Failure::ConnectionLost(e.to_string());
                let spec_tls = pooler.spec().tls;
                let tls = match (&spec_tls, first_is_ssl(&packet), stream.is_tls()) {
                    (Some(t), true, false) => Some(t),
                    _ => None,
                };
                match tls {
                    Some(t) => {
                        stream.write_all(b"S").await.map_err(io)?;
                        let acceptor = tokio_rustls::TlsAcceptor::from(t.config.clone());
                        stream.upgrade(&acceptor).await.map_err(io)?;
                    }
                    None => stream.write_all(b"N").await.map_err(io)?,
                }
            }
            FirstPacket::Cancel { pid, secret } => {
                if let Some((key, in_flight)) = pooler.begin_cancel((pid, secret))
                    && let Err(e) = crate::server::cancel(key).await
                {
                    // It may land later: that server connection is not reused.
                    in_flight.unsure();
                    tracing::warn!(error = %e, "forwarding a cancel request failed");
                }
                return Ok(None);
            }
            FirstPacket::Startup(_) if pooler.spec().tls_required && !stream.is_tls() => {
                return Err(Failure::Auth(
                    "28000",
                    "this pooler requires TLS (sslmode=require or stronger)".into(),
                ));
            }
            FirstPacket::Startup(s) => {
                if let Some(v) = s.negotiation() {
                    send(stream, &v).await?;
                }
                return Ok(Some(s));
            }
            FirstPacket::BadLayout => {
                return Err(Failure::Protocol(
                    "invalid startup packet layout: expected terminator as last byte".into(),
                ));
            }
            FirstPacket::NoUser => {
                return Err(Failure::Auth(
                    "28000",
                    "no PostgreSQL user name specified in startup packet".into(),
                ));
            }
            FirstPacket::Unsupported(v) => {
                return Err(Failure::NotSupported(format!(
                    "unsupported frontend protocol {}.{}: scalegate speaks 3.0",
                    v >> 16,
                    v & 0xffff
                )));
            }
        }
    }
}

fn first_is_ssl(packet: &[u8]) -> bool {
    proto::parse_first(packet) == FirstPacket::Ssl
}

/// Reads into `buf` until `complete` reports a whole packet; `Ok(None)` on a clean EOF.
async fn fill(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    complete: impl Fn(&[u8]) -> Result<Option<usize>, FrameError>,
) -> Result<Option<usize>, Failure> {
    loop {
        if let Some(n) = complete(buf)? {
            return Ok(Some(n));
        }
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(Failure::Protocol("truncated message".into())),
            Ok(_) => {}
            Err(e) => return Err(Failure::ConnectionLost(e.to_string())),
        }
    }
}

/// Reads one tagged message during login.
async fn message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, Failure> {
    match fill(stream, buf, |b| proto::tagged_len(b, max)).await? {
        Some(n) => Ok(buf.split_to(n).freeze()),
        None => Err(Failure::ConnectionLost(
            "client went away during login".into(),
        )),
    }
}

/// The client's next message, which must answer the authentication request ('p': a password,
/// SASLInitialResponse or SASLResponse); anything else breaks the protocol (08P01, as PostgreSQL
/// answers), whoever the user is.
async fn password_message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, Failure> {
    let m = message(stream, buf, max).await?;
    if m[0] != b'p' {
        return Err(Failure::Protocol(format!(
            "expected an authentication response, got message type {:?}",
            char::from(m[0])
        )));
    }
    Ok(m)
}

async fn send(stream: &mut ClientStream, out: &BytesMut) -> Result<(), Failure> {
    stream
        .write_all(out)
        .await
        .map_err(|e| Failure::ConnectionLost(e.to_string()))
}

/// Authenticates `user`; on success AuthenticationOk has been sent.
pub async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    pooler: &Pooler,
    user: &str,
) -> Result<(), Failure> {
    let failed = || {
        Failure::Auth(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };
    let mut out = BytesMut::new();
    match pooler.user(user) {
        None if !pooler.has_users() => {}
        // As PostgreSQL does: the exchange of a real user, failing at its end.
        None => {
            scram(stream, buf, &mut out, &ScramSecret::mock(user), failed).await?;
            return Err(failed());
        }
        Some((u, _)) if u.auth == ClientAuth::Trust => {}
        Some((u, _)) if u.auth == ClientAuth::Md5 => {
            let salt: [u8; 4] = rand::random();
            proto::auth(&mut out, 5, &salt);
            send(stream, &out).await?;
            let m = password_message(stream, buf, 1024).await?;
            let mut body = &m[5..];
            let given = proto::cstr(&mut body).unwrap_or_default();
            if given != md5_expected(user, &u.password, salt) {
                return Err(failed());
            }
        }
        Some((_, secret)) => {
            let secret = secret
                .as_ref()
                .ok_or_else(|| Failure::Internal("SCRAM secret unavailable".into()))?;
            scram(stream, buf, &mut out, secret, failed).await?;
        }
    }
    out.clear();
    proto::auth(&mut out, 0, &[]);
    send(stream, &out).await
}

/// One SCRAM-SHA-256 exchange against `secret`, up to the server's final message.
async fn scram(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    secret: &ScramSecret,
    failed: impl Fn() -> Failure,
) -> Result<(), Failure> {
    out.clear();
    proto::auth(out, 10, b"SCRAM-SHA-256\0\0");
    send(stream, out).await?;
    let m = password_message(stream, buf, 4096).await?;
    let mut body = &m[5..];
    let mech = proto::cstr(&mut body).unwrap_or_default();
    if mech != "SCRAM-SHA-256" {
        return Err(Failure::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    // The client's first message, whose length must be exactly what is left (as PostgreSQL
    // checks): a shorter or longer claim is a framing error, not a message to guess at.
    let first = match body.len().checked_sub(4) {
        Some(rest) if body.get_i32() == i32::try_from(rest).unwrap_or(-1) => body,
        _ => return Err(Failure::Protocol("malformed SASLInitialResponse".into())),
    };
    let (exchange, server_first) =
        ScramServer::start(secret, first).map_err(|e| Failure::Auth("28000", e.to_string()))?;
    out.clear();
    proto::auth(out, 11, server_first.as_bytes());
    send(stream, out).await?;
    let m = password_message(stream, buf, 4096).await?;
    let last = exchange.finish(&m[5..]).map_err(|_| failed())?;
    out.clear();
    proto::auth(out, 12, last.as_bytes());
    send(stream, out).await
}

/// ParameterStatus for the client: the server's values with the client's own choices on top.
pub fn parameter_statuses(out: &mut BytesMut, server: &[(String, String)], client: &Startup) {
    for (k, v) in server {
        let mine = client
            .params
            .iter()
            .find(|(ck, _)| ck.eq_ignore_ascii_case(k));
        let v = mine.map_or(v.as_str(), |(_, cv)| cv.as_str());
        proto::parameter_status(out, k, v);
    }
}
