//! What the pooler runs with: plain values validated by the config layer.

use std::net::SocketAddr;
use std::time::Duration;

/// The whole pooler.
#[derive(Clone, Debug, PartialEq)]
pub struct PgSpec {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Virtual databases clients can name.
    pub databases: Vec<DatabaseSpec>,
    /// Users checked by the pooler itself; empty means clients are passed through as the
    /// server user named in each database's URL (trust on the server side).
    pub users: Vec<UserSpec>,
    /// Users allowed on the admin console (database `scalegate`); empty means any user
    /// connecting from a loopback address.
    pub admin_users: Vec<String>,
    /// Longest a client waits for a server connection before an error (default 5 s).
    pub wait_timeout: Duration,
    /// Most client connections at once (default 10 000); beyond it new clients get 53300.
    pub max_client_conn: usize,
    /// A server connection older than this is closed when it is next released (default 30 min).
    pub server_lifetime: Duration,
    /// A server connection idle longer than this is closed (default 10 min).
    pub idle_timeout: Duration,
    /// A server connection idle longer than this is pinged before reuse (default 30 s).
    pub check_after_idle: Duration,
    /// A client that leaves a transaction open and sends nothing for this long is disconnected
    /// with SQLSTATE 25P03 and its server connection closed, so it cannot hold a server
    /// forever (None, the default: no limit).
    pub idle_transaction_timeout: Option<Duration>,
    /// Largest message accepted from a client (default 64 MiB).
    pub max_message_bytes: usize,
    /// Threads running the pooler (default 1).
    pub worker_threads: usize,
    /// Named statements kept prepared per server connection in transaction mode (default
    /// 1000); the least recently used is closed beyond that.
    pub max_prepared_statements: usize,
    /// TLS for clients that send SSLRequest (None: they are answered 'N').
    pub tls: Option<PgTls>,
    /// Refuse clients that do not use TLS.
    pub tls_required: bool,
}

/// A rustls server config for client connections; equal when built from the same files.
#[derive(Clone)]
pub struct PgTls {
    /// The rustls config.
    pub config: std::sync::Arc<rustls::ServerConfig>,
    /// Identifies the certificate and key it was built from.
    pub fingerprint: u64,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTls({:016x})", self.fingerprint)
    }
}

impl PartialEq for PgTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

/// One virtual database.
#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseSpec {
    /// The name clients connect to.
    pub name: String,
    /// The primary server.
    pub primary: ServerSpec,
    /// Read replicas: reads are split to them in transaction mode.
    pub replicas: Vec<ServerSpec>,
    /// When a server connection is handed back.
    pub pool_mode: PoolMode,
    /// Server connections per (database, user).
    pub pool_size: usize,
    /// Server connections kept open while idle.
    pub min_idle: usize,
    /// A replica further behind than this many WAL bytes gets no reads (default 16 MiB).
    pub max_lag_bytes: u64,
    /// A replica further behind than this gets no reads (default 5 s).
    pub max_lag: Duration,
    /// How often roles and lag are checked when replicas are configured (default 1 s).
    pub health_interval: Duration,
    /// Shards of a sharded database (then `primary` is the first shard and `replicas` is empty).
    pub shards: Vec<ServerSpec>,
    /// How keys map to shards, when sharded.
    pub sharding: Option<std::sync::Arc<crate::sharding::ShardingSpec>>,
    /// What a transaction-mode client that creates session state gets (sharded databases
    /// always refuse).
    pub on_session_state: OnSessionState,
}

/// What happens when a transaction-mode client creates state that outlives its transaction
/// (LISTEN, a WITH HOLD cursor, a session advisory lock, SQL PREPARE, a TEMP table, an
/// untracked set_config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnSessionState {
    /// The client keeps its server connection until the state is gone or it disconnects
    /// (default: applications keep working; the cost is one server connection per such client).
    #[default]
    Pin,
    /// The statement is refused with SQLSTATE 0A000 and a hint.
    Refuse,
}

/// Where and as whom the pooler connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database name on the server.
    pub dbname: String,
    /// Server user; `None` means the client's user name.
    pub user: Option<String>,
    /// Server password for SCRAM / md5 / cleartext, when the server asks.
    pub password: Option<String>,
    /// TLS to the server (`?sslmode=` in the URL; default disable).
    pub sslmode: SslMode,
    /// CA certificates for `verify-full` (`?sslrootcert=`).
    pub sslrootcert: Option<std::path::PathBuf>,
}

/// TLS to a server, with libpq's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Never.
    #[default]
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS always, without checking the certificate.
    Require,
    /// TLS always; the certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

/// When a client gives its server connection back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects (state reset with DISCARD ALL).
    Session,
    /// At the end of every transaction.
    Transaction,
}

/// A user the pooler authenticates itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    /// User name.
    pub name: String,
    /// Cleartext password (used for SCRAM and md5 checks and for the server login).
    pub password: String,
    /// How clients prove it.
    pub auth: ClientAuth,
}

/// Client authentication method for a configured user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// SCRAM-SHA-256 (default).
    Scram,
    /// md5 (legacy drivers).
    Md5,
    /// No check.
    Trust,
}

impl PgSpec {
    /// A spec with defaults for everything but the address and databases.
    pub fn new(listen: SocketAddr, databases: Vec<DatabaseSpec>) -> PgSpec {
        PgSpec {
            listen,
            databases,
            users: Vec::new(),
            admin_users: Vec::new(),
            wait_timeout: Duration::from_secs(5),
            max_client_conn: 10_000,
            server_lifetime: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(10 * 60),
            check_after_idle: Duration::from_secs(30),
            idle_transaction_timeout: None,
            max_message_bytes: 64 << 20,
            worker_threads: 1,
            max_prepared_statements: 1000,
            tls: None,
            tls_required: false,
        }
    }
}

/// The pool size `auto` stands for: connections = cores × 2 + effective spindles (1), the
/// rule of thumb from the PostgreSQL wiki, with cores those of this machine.
pub fn auto_pool_size() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * 2 + 1
}
