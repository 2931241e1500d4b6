//! One connection from the pooler to a PostgreSQL server: connect, start up, authenticate
//! (SCRAM-SHA-256, md5, cleartext or trust), and remember what a pooled connection must know
//! about itself (server parameters, backend key, prepared statements, applied settings).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::Coarse;
use crate::spec::{ServerSpec, SslMode};
use crate::stream::ServerStream;

/// Why a server connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TCP or I/O failure.
    #[error("server {0}: {1}")]
    Io(String, io::Error),
    /// The server refused the login or the startup (its message and SQLSTATE).
    #[error("server {addr} refused the login: {message}")]
    Refused {
        /// The server.
        addr: String,
        /// SQLSTATE from the server.
        code: String,
        /// Its message.
        message: String,
    },
    /// The server asked for something the pooler cannot do.
    #[error("server {0}: {1}")]
    Unsupported(String, String),
    /// Connecting took longer than the connect timeout.
    #[error("server {0}: connect timed out")]
    Timeout(String),
}

impl ServerError {
    /// The SQLSTATE to report to a client.
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Refused { code, .. } => code,
            _ => "08006",
        }
    }

    /// Whether trying again shortly may succeed: the server is unreachable, starting up,
    /// shutting down or out of connection slots (not a refused password or a missing database).
    pub fn is_transient(&self) -> bool {
        match self {
            ServerError::Io(..) | ServerError::Timeout(_) => true,
            ServerError::Refused { code, .. } => {
                matches!(
                    code.as_str(),
                    "57P01" | "57P02" | "57P03" | "53300" | "08006"
                )
            }
            ServerError::Unsupported(..) => false,
        }
    }
}

/// The backend key of a server connection, for cancel requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerKey {
    /// The server's address.
    pub addr: SocketAddr,
    /// Backend process id.
    pub pid: i32,
    /// Secret.
    pub secret: i32,
}

/// An authenticated, idle server connection.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket.
    pub stream: ServerStream,
    /// Bytes read but not yet consumed.
    pub buf: BytesMut,
    /// For cancel requests.
    pub key: ServerKey,
    /// ParameterStatus values reported at startup.
    pub params: Vec<(String, String)>,
    /// Ids of statements prepared here (as `__sg_<id>`), bounded.
    pub prepared: crate::stmt::Prepared,
    /// Fingerprint of the session settings applied (0: server defaults; `u64::MAX`: unknown).
    pub settings: u64,
    /// When the connection was made.
    pub born: Coarse,
    /// When it was last handed back.
    pub last_used: Coarse,
    /// Unique id within the process, for SHOW SERVERS.
    pub id: u64,
    /// Its place in a pool's open count (none for connections outside a pool).
    pub counted: Option<crate::held::Opened>,
}

/// Fingerprint for "settings unknown": the next user resets them.
pub const SETTINGS_UNKNOWN: u64 = u64::MAX;

/// A server connection's read buffer as it starts, and as an idle one is kept.
const READ_BUF: usize = 8192;

/// A read buffer larger than this (grown by one large message: a 200 MB row) is not kept by an
/// idle connection: a pool would otherwise hold about its size times the largest row it ever
/// carried, until the connections' lifetime ends.
const KEEP_BUF_UP_TO: usize = 256 * 1024;

impl ServerConn {
    /// Gives back the memory a large message grew the read buffer to, once it is empty.
    pub fn shrink_idle_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUF_UP_TO {
            self.buf = BytesMut::with_capacity(READ_BUF);
        }
    }

    /// Connects and logs in as `user` to `spec`'s database.
    pub async fn connect(
        spec: &ServerSpec,
        user: &str,
        timeout: Duration,
        id: u64,
    ) -> Result<ServerConn, ServerError> {
        let name = format!("{}:{}", spec.host, spec.port);
        tokio::time::timeout(timeout, Self::login(spec, user, &name, id))
            .await
            .map_err(|_| ServerError::Timeout(name.clone()))?
    }

    async fn login(
        spec: &ServerSpec,
        user: &str,
        name: &str,
        id: u64,
    ) -> Result<ServerConn, ServerError> {
        let io_err = |e: io::Error| ServerError::Io(name.to_string(), e);
        let tcp = TcpStream::connect((spec.host.as_str(), spec.port))
            .await
            .map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let addr = tcp.peer_addr().map_err(io_err)?;
        let mut stream = ServerStream::Plain(tcp);
        start_tls(spec, &mut stream, name).await?;
        let mut conn = ServerConn {
            stream,
            buf: BytesMut::with_capacity(READ_BUF),
            key: ServerKey {
                addr,
                pid: 0,
                secret: 0,
            },
            params: Vec::new(),
            prepared: crate::stmt::Prepared::default(),
            settings: 0,
            born: Coarse::now(),
            last_used: Coarse::now(),
            id,
            counted: None,
        };
        let mut out = BytesMut::new();
        let params = [
            ("user", user),
            ("database", spec.dbname.as_str()),
            ("application_name", "scalegate"),
        ];
        frontend::startup_message(params.iter().copied(), &mut out).map_err(io_err)?;
        conn.stream.write_all(&out).await.map_err(io_err)?;
        let password = spec.password.as_deref().unwrap_or("").as_bytes();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = conn.next_message().await.map_err(io_err)?;
            out.clear();
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password, &mut out).map_err(io_err)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out).map_err(io_err)?;
                }
                Message::AuthenticationSasl(_) => {
                    let s = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                        .map_err(io_err)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ServerError::Unsupported(name.into(), "unexpected SASL continue".into())
                    })?;
                    s.update(body.data()).map_err(io_err)?;
                    frontend::sasl_response(s.message(), &mut out).map_err(io_err)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    if let Some(s) = scram.as_mut() {
                        s.finish(body.data()).map_err(io_err)?;
                    }
                }
                Message::ParameterStatus(body) => {
                    let n = body.name().map_err(io_err)?.to_string();
                    let v = body.value().map_err(io_err)?.to_string();
                    conn.params.push((n, v));
                }
                Message::BackendKeyData(body) => {
                    conn.key.pid = body.process_id();
                    conn.key.secret = body.secret_key();
                }
                Message::ReadyForQuery(_) => return Ok(conn),
                Message::ErrorResponse(body) => {
                    let (code, message) = error_fields(body.fields());
                    return Err(ServerError::Refused {
                        addr: name.into(),
                        code,
                        message,
                    });
                }
                Message::NoticeResponse(_) => {}
                _ => {
                    return Err(ServerError::Unsupported(
                        name.into(),
                        "unsupported authentication method (use scram-sha-256, md5, password or trust)"
                            .into(),
                    ));
                }
            }
            if !out.is_empty() {
                conn.stream.write_all(&out).await.map_err(io_err)?;
            }
        }
    }

    /// Reads the next whole backend message.
    pub async fn next_message(&mut self) -> io::Result<Message> {
        loop {
            if let Some(m) = Message::parse(&mut self.buf)? {
                return Ok(m);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends `sql` as a simple query and waits for ReadyForQuery, discarding results; the
    /// first error's message is returned as an error.
    pub async fn run(&mut self, sql: &str) -> io::Result<()> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        let mut failure = None;
        loop {
            match self.next_message().await? {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    let (code, message) = error_fields(body.fields());
                    failure.get_or_insert(Refusal { code, message });
                }
                _ => {}
            }
        }
        match failure {
            Some(r) => Err(io::Error::other(r)),
            None => Ok(()),
        }
    }

    /// Runs `sql` and returns the first row it gives, as text values. An error the server
    /// answers is of kind `Other`, and leaves the connection in step.
    pub async fn query_row(&mut self, sql: &str) -> io::Result<Vec<Option<String>>> {
        use fallible_iterator::FallibleIterator;
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        let mut row = None;
        let mut failure = None;
        loop {
            match self.next_message().await? {
                Message::ReadyForQuery(_) => break,
                Message::DataRow(body) if row.is_none() => {
                    let buf = body.buffer();
                    let vals: Vec<Option<String>> = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect()?;
                    row = Some(vals);
                }
                Message::ErrorResponse(body) => {
                    failure.get_or_insert(error_fields(body.fields()).1);
                }
                _ => {}
            }
        }
        match (failure, row) {
            (Some(m), _) => Err(io::Error::other(m)),
            (None, Some(r)) => Ok(r),
            (None, None) => Err(io::Error::other("no row")),
        }
    }

    /// Whether the server has closed (or spoken on) this idle connection: an administrator's
    /// pg_terminate_backend, a restart or an idle timeout on the server. Answered from the
    /// reactor's readiness without a syscall in the common case.
    pub fn looks_closed(&mut self) -> bool {
        let Some(tcp) = self.stream.tcp() else {
            return true;
        };
        // Anything at all (end of stream, an error, a FATAL before closing, a TLS alert) means
        // stale; only a read that would block means the connection is as it was left. tokio
        // answers that from the reactor's readiness, without a syscall or a waiter.
        let mut probe = [0u8; 1];
        !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// A cheap liveness check: Sync → ReadyForQuery with the connection idle.
    pub async fn ping(&mut self, timeout: Duration) -> bool {
        let check = async {
            let mut out = BytesMut::new();
            frontend::sync(&mut out);
            self.stream.write_all(&out).await?;
            loop {
                if let Message::ReadyForQuery(b) = self.next_message().await? {
                    return Ok::<bool, io::Error>(b.status() == b'I');
                }
            }
        };
        matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(true)))
    }

    /// Says goodbye politely (best effort).
    pub async fn terminate(mut self) {
        // Counted out now: what remains is a goodbye on a socket nothing will use.
        drop(self.counted.take());
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(100), self.stream.write_all(&out)).await;
    }
}

/// Asks the server for TLS (SSLRequest) as `spec.sslmode` says and starts it when accepted.
async fn start_tls(
    spec: &ServerSpec,
    stream: &mut ServerStream,
    name: &str,
) -> Result<(), ServerError> {
    let io_err = |e: io::Error| ServerError::Io(name.to_string(), e);
    let Some((connector, server_name)) =
        crate::server_tls::connector(spec).map_err(|e| ServerError::Unsupported(name.into(), e))?
    else {
        return Ok(());
    };
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    stream.write_all(&out).await.map_err(io_err)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(io_err)?;
    match (answer[0], spec.sslmode) {
        (b'S', _) => stream
            .start_tls(&connector, server_name)
            .await
            .map_err(|e| tls_refused(name, e).unwrap_or_else(io_err)),
        (b'N', SslMode::Prefer) => Ok(()),
        (b'N', _) => Err(ServerError::Unsupported(
            name.into(),
            "the server does not offer TLS but sslmode requires it".into(),
        )),
        _ => Err(ServerError::Unsupported(
            name.into(),
            "unexpected answer to SSLRequest".into(),
        )),
    }
}

/// A TLS handshake the pooler's own checks refused (a certificate that does not verify, a
/// protocol the server cannot speak): not transient, so waiting clients get it at once instead
/// of after `wait_timeout` of retries that cannot succeed.
fn tls_refused(name: &str, e: io::Error) -> Result<ServerError, io::Error> {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => Ok(ServerError::Unsupported(
            name.into(),
            format!("TLS handshake failed: {tls}"),
        )),
        None => Err(e),
    }
}

/// SQLSTATE and message of an ErrorResponse's fields.
/// A server's ErrorResponse to a statement the pooler ran itself ([`ServerConn::run`]), in the
/// `io::Error` it returns (kind `Other`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The SQLSTATE.
    pub code: String,
    /// The message.
    pub message: String,
}

impl Refusal {
    /// The refusal an `io::Error` from [`ServerConn::run`] carries, if it is one.
    pub fn of(e: &io::Error) -> Option<&Refusal> {
        e.get_ref()?.downcast_ref::<Refusal>()
    }
}

fn error_fields(
    mut fields: postgres_protocol::message::backend::ErrorFields<'_>,
) -> (String, String) {
    use fallible_iterator::FallibleIterator;
    let (mut code, mut message) = (String::from("XX000"), String::new());
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// Sends a CancelRequest for `key` on a new connection.
pub async fn cancel(key: ServerKey) -> io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(key.pid, key.secret, &mut out);
    let mut s = TcpStream::connect(key.addr).await?;
    s.write_all(&out).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut sink)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(_)) => Err(io::Error::other("the server answered a cancel request")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the server did not confirm the cancel within 1 s",
        )),
    }
}
