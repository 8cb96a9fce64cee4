//! Errors the HTTP port reports to the binary that starts it.

use std::io;

/// Why the HTTP port could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The listening socket could not be bound. Not transient in practice: the address is
    /// taken, privileged or malformed, and the operator has to pick another one.
    #[error(
        "cannot listen on {addr}: {}; choose another with --http-addr / BATON_HTTP_ADDR",
        describe(cause)
    )]
    Bind {
        /// The address as given (`host:port`).
        addr: String,
        /// What the operating system said (in the message once, in a stable wording; not
        /// a `source`, or `{:#}` would print it a second time).
        cause: io::Error,
    },
    /// The bearer token file cannot be used.
    #[error("--http-token-file {path}: {problem}")]
    Token {
        /// The file as given.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl OpsError {
    /// Whether this is a bind refused because another process listens on the address.
    pub fn is_addr_in_use(&self) -> bool {
        matches!(self, OpsError::Bind { cause, .. } if cause.kind() == io::ErrorKind::AddrInUse)
    }
}

/// A short, stable wording for the bind failures operators meet, instead of the
/// platform's message with its OS error number.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address in use".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
        _ => e.to_string(),
    }
}
