//! Every way the pooler itself refuses a client or ends its connection, and the one place each
//! gets its SQLSTATE (the pooler's outcome table, as the gateway's `ProxyError::outcome`). A
//! client always gets one of these as an ErrorResponse before the pooler closes its socket.

use bytes::{Bytes, BytesMut};

use crate::pool::AcquireError;
use crate::proto::{self, FrameError, Severity};

/// A refusal or an end the pooler answers itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The client broke the protocol (08P01).
    #[error("invalid message: {0}")]
    Protocol(String),
    /// A connection broke or timed out: the client's during login, or the server's (08006,
    /// which clients retry).
    #[error("{0}")]
    ConnectionLost(String),
    /// The pooler is shutting down (57P01, which clients retry elsewhere).
    #[error("terminating connection due to administrator command: scalegate is shutting down")]
    Shutdown,
    /// A limit is reached: max_client_conn, or no server connection within wait_timeout
    /// (53300).
    #[error("{0}")]
    TooMany(String),
    /// No server can take the work now: no primary during a failover (57P03).
    #[error("{0}")]
    NotAvailable(String),
    /// What transaction pooling or sharding cannot do (0A000).
    #[error("{0}")]
    NotSupported(String),
    /// The login was refused (28000, or 28P01 for a wrong password).
    #[error("{1}")]
    Auth(&'static str, String),
    /// The database does not exist here (3D000).
    #[error("{0}")]
    NoDatabase(String),
    /// A transaction idled past postgres.idle_transaction_timeout (25P03).
    #[error(
        "terminating connection due to idle-in-transaction timeout (postgres.idle_transaction_timeout)"
    )]
    IdleInTransaction,
    /// A server's refusal, passed on with its own SQLSTATE.
    #[error("{message}")]
    Server {
        /// The server's SQLSTATE.
        code: String,
        /// Its message.
        message: String,
    },
    /// A batch split over shards committed on some and not others (40003: the client cannot
    /// know whether its statement completed).
    #[error("{0}")]
    CompletionUnknown(String),
    /// The pooler's own bug or missing state (XX000).
    #[error("{0}")]
    Internal(String),
}

impl Failure {
    /// The SQLSTATE reported.
    pub fn sqlstate(&self) -> &str {
        match self {
            Failure::Protocol(_) => "08P01",
            Failure::ConnectionLost(_) => "08006",
            Failure::Shutdown => "57P01",
            Failure::TooMany(_) => "53300",
            Failure::NotAvailable(_) => "57P03",
            Failure::NotSupported(_) => "0A000",
            Failure::Auth(code, _) => code,
            Failure::NoDatabase(_) => "3D000",
            Failure::IdleInTransaction => "25P03",
            Failure::Server { code, .. } => code,
            Failure::CompletionUnknown(_) => "40003",
            Failure::Internal(_) => "XX000",
        }
    }

    /// Appends it as an ErrorResponse of `severity`.
    pub fn write(&self, out: &mut BytesMut, severity: Severity) {
        proto::error(out, severity, self.sqlstate(), &self.to_string());
    }

    /// Appends it as an ErrorResponse of `severity` with a hint (what to do instead).
    pub fn write_with_hint(&self, out: &mut BytesMut, severity: Severity, hint: &str) {
        proto::error_hint(out, severity, self.sqlstate(), &self.to_string(), hint);
    }

    /// It as a FATAL ErrorResponse, the last thing a client gets before its socket closes.
    pub fn fatal(&self) -> Bytes {
        proto::error_bytes(Severity::Fatal, self.sqlstate(), &self.to_string())
    }
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Failure {
        Failure::Protocol(e.to_string())
    }
}

impl From<&AcquireError> for Failure {
    fn from(e: &AcquireError) -> Failure {
        match e {
            AcquireError::Timeout(..) => Failure::TooMany(e.to_string()),
            AcquireError::NoPrimary(_) => Failure::NotAvailable(e.to_string()),
            AcquireError::ClientGone => Failure::ConnectionLost(e.to_string()),
            AcquireError::Retired => Failure::NotAvailable(e.to_string()),
            AcquireError::Cancelled | AcquireError::Settings { .. } => Failure::Server {
                code: e.sqlstate().to_string(),
                message: e.to_string(),
            },
            AcquireError::Server(s) => Failure::Server {
                code: s.sqlstate().to_string(),
                message: s.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_a_five_character_sqlstate_and_a_message() {
        let all = [
            Failure::Protocol("x".into()),
            Failure::ConnectionLost("x".into()),
            Failure::Shutdown,
            Failure::TooMany("x".into()),
            Failure::NotAvailable("x".into()),
            Failure::NotSupported("x".into()),
            Failure::Auth("28P01", "x".into()),
            Failure::NoDatabase("x".into()),
            Failure::IdleInTransaction,
            Failure::Server {
                code: "57P01".into(),
                message: "x".into(),
            },
            Failure::CompletionUnknown("x".into()),
            Failure::Internal("x".into()),
        ];
        for f in all {
            assert_eq!(f.sqlstate().len(), 5, "{f:?}");
            assert!(!f.to_string().is_empty());
            assert_eq!(f.fatal()[0], b'E');
        }
    }
}
