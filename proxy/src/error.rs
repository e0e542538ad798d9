//! The proxy's own errors and their one mapping to what a client sees (severity, SQLSTATE,
//! message). Errors PostgreSQL sends are relayed verbatim and never pass through here.

use crate::protocol::messages::{self, Severity};
use bytes::BytesMut;
use tokio_postgres::error::SqlState;

/// An error the proxy reports to a client.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// PostgreSQL could not be reached for a new session.
    #[error("could not connect to the upstream server: {0}")]
    UpstreamConnect(String),
    /// The upstream connection broke in the middle of a session.
    #[error("server closed the connection unexpectedly")]
    UpstreamLost,
    /// A message larger than `max_message_size`.
    #[error("message of {len} bytes exceeds the proxy's max_message_size of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    /// Bytes that are not a valid protocol message.
    #[error("invalid frontend message type {0}")]
    ProtocolViolation(u8),
    /// The connection ended in the middle of a message.
    #[error("incomplete message from client")]
    Truncated,
    /// A startup packet the proxy cannot accept.
    #[error("{0}")]
    BadStartup(String),
    /// A startup packet asking for a protocol version other than 3.
    #[error("{0}")]
    UnsupportedProtocol(String),
    /// `max_client_conn` reached.
    #[error("too many client connections (max_client_conn = {0})")]
    TooManyClients(usize),
    /// A user not in `admin_users` asked for the admin console.
    #[error("user \"{0}\" is not allowed on the admin console")]
    AdminDenied(String),
    /// An admin console command that does not exist.
    #[error("unknown admin command: {0}")]
    UnknownCommand(String),
    /// The session was idle longer than `idle_timeout`.
    #[error("terminating connection due to idle timeout")]
    IdleTimeout,
    /// The read barrier could not ship and apply pending writes in time, inside a
    /// transaction block or mid-group: the session ends (its transaction cannot be failed as
    /// PostgreSQL would fail it).
    #[error("write-behind barrier failed: {0}")]
    Barrier(String),
    /// The same, between transactions: only the statement fails, the session goes on.
    #[error("write-behind barrier failed: {0}")]
    StatementBarrier(String),
    /// The client cancelled a statement while it waited for the read barrier, or for room
    /// in the write-behind queue (the statement did not run), or for an admin `FLUSH`.
    #[error("canceling statement due to user request")]
    BarrierCancelled,
    /// The session's `statement_timeout` passed while the statement waited for the read
    /// barrier or for room in the write-behind queue (the statement did not run).
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
    /// The write-behind queue is at its bound (`overflow = error`, or `block` timed out).
    #[error("{0}")]
    QueueFull(String),
    /// The WAL record of a write could not be written: the disk is full.
    #[error("{0}")]
    WalDiskFull(String),
    /// The WAL record of a write could not be written or fsynced.
    #[error("{0}")]
    WalIo(String),
    /// A write's WAL record would be larger than the WAL holds.
    #[error("{0}")]
    WalRecordTooLarge(String),
    /// The proxy is shutting down and `shutdown_timeout` has passed: the session ends.
    #[error("terminating connection due to administrator command")]
    ShuttingDown,
    /// Admin `FLUSH` while shipping is paused.
    #[error("shipping is paused: RESUME first")]
    ShippingPaused,
    /// Admin `FLUSH` of a table that is not write-behind in any database the proxy serves.
    #[error("no write-behind table {0:?} in the databases this proxy serves")]
    UnknownTable(String),
    /// Admin `RELOAD` found the configuration invalid (the running one stays).
    #[error("the configuration is invalid, nothing changed: {0}")]
    BadConfig(String),
    /// Admin `FLUSH` could not ship and apply in time.
    #[error("flush failed: {0}")]
    FlushFailed(String),
}

impl From<crate::writebehind::runtime::EnqueueError> for ProxyError {
    fn from(e: crate::writebehind::runtime::EnqueueError) -> Self {
        use crate::writebehind::runtime::EnqueueError;
        match e {
            EnqueueError::Overflow { .. } => ProxyError::QueueFull(e.to_string()),
            EnqueueError::Cancelled => ProxyError::BarrierCancelled,
            EnqueueError::StatementTimeout => ProxyError::StatementTimeout,
            EnqueueError::Wal(w) if w.is_too_large() => {
                ProxyError::WalRecordTooLarge(format!("could not acknowledge the write: {w}"))
            }
            EnqueueError::Wal(w) if w.is_disk_full() => {
                ProxyError::WalDiskFull(format!("could not write the write-behind WAL: {w}"))
            }
            EnqueueError::Wal(w) => {
                ProxyError::WalIo(format!("could not write the write-behind WAL: {w}"))
            }
        }
    }
}

impl ProxyError {
    /// The SQLSTATE and severity a client gets for this error.
    pub fn code(&self) -> (&'static SqlState, Severity) {
        match self {
            ProxyError::UpstreamConnect(_) => (&SqlState::CONNECTION_FAILURE, Severity::Fatal),
            ProxyError::UpstreamLost => (&SqlState::CONNECTION_FAILURE, Severity::Fatal),
            ProxyError::MessageTooLarge { .. } => {
                (&SqlState::PROGRAM_LIMIT_EXCEEDED, Severity::Fatal)
            }
            ProxyError::ProtocolViolation(_)
            | ProxyError::Truncated
            | ProxyError::BadStartup(_) => (&SqlState::PROTOCOL_VIOLATION, Severity::Fatal),
            ProxyError::UnsupportedProtocol(_) => {
                (&SqlState::FEATURE_NOT_SUPPORTED, Severity::Fatal)
            }
            ProxyError::TooManyClients(_) => (&SqlState::TOO_MANY_CONNECTIONS, Severity::Fatal),
            ProxyError::AdminDenied(_) => (
                &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                Severity::Fatal,
            ),
            ProxyError::UnknownCommand(_) => (&SqlState::SYNTAX_ERROR, Severity::Error),
            ProxyError::IdleTimeout => (&SqlState::IDLE_SESSION_TIMEOUT, Severity::Fatal),
            ProxyError::ShuttingDown => (&SqlState::ADMIN_SHUTDOWN, Severity::Fatal),
            ProxyError::QueueFull(_) => (&SqlState::CONFIGURATION_LIMIT_EXCEEDED, Severity::Error),
            ProxyError::WalDiskFull(_) => (&SqlState::DISK_FULL, Severity::Error),
            ProxyError::WalIo(_) => (&SqlState::IO_ERROR, Severity::Error),
            ProxyError::WalRecordTooLarge(_) => {
                (&SqlState::PROGRAM_LIMIT_EXCEEDED, Severity::Error)
            }
            ProxyError::Barrier(_) => (&SqlState::CANNOT_CONNECT_NOW, Severity::Fatal),
            ProxyError::StatementBarrier(_) => (&SqlState::CANNOT_CONNECT_NOW, Severity::Error),
            ProxyError::BarrierCancelled | ProxyError::StatementTimeout => {
                (&SqlState::QUERY_CANCELED, Severity::Error)
            }
            ProxyError::ShippingPaused => {
                (&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, Severity::Error)
            }
            ProxyError::UnknownTable(_) => (&SqlState::UNDEFINED_TABLE, Severity::Error),
            ProxyError::FlushFailed(_) => (&SqlState::CANNOT_CONNECT_NOW, Severity::Error),
            ProxyError::BadConfig(_) => (&SqlState::INVALID_PARAMETER_VALUE, Severity::Error),
        }
    }

    /// A statement that makes PostgreSQL itself raise this error (same SQLSTATE and message,
    /// severity ERROR), so that inside a transaction block the transaction fails as it would
    /// had PostgreSQL raised it.
    pub fn raise_sql(&self) -> String {
        let (code, _) = self.code();
        crate::telemetry::count_error(code.code());
        // Dollar-quoted: the message cannot end the quote.
        let message = self.to_string().replace('$', "?");
        format!(
            "DO $wb$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = $m${message}$m$; END $wb$",
            code.code()
        )
    }

    /// Appends the ErrorResponse for this error to `buf`, and counts it for `/metrics`.
    pub fn write_to(&self, buf: &mut BytesMut) {
        let (code, severity) = self.code();
        crate::telemetry::count_error(code.code());
        messages::error(buf, severity, code.code(), &self.to_string(), None);
    }
}
