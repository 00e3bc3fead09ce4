use std::fmt;

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request: its host (or an address it resolves to) is not allowed
    /// by this plugin's `allowed_hosts`.
    Denied {
        /// The host name (without port) that was refused.
        host: String,
    },
    /// No connection could be made or it broke (DNS, refused, reset, TLS).
    Connection(String),
    /// Connecting, sending or waiting for the response took too long.
    Timeout(String),
    /// The URL cannot be requested (not `http`/`https`, no host, credentials in it).
    InvalidUrl(String),
    /// Anything else (a protocol error, an oversized response, a header the host forbids).
    Other(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied { host } => write!(
                f,
                "outbound HTTP to {host} denied: not allowed by this plugin's allowed_hosts \
                 (by name or by address; the task log says why)"
            ),
            HttpError::Connection(m)
            | HttpError::Timeout(m)
            | HttpError::InvalidUrl(m)
            | HttpError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HttpError {}

/// Denied and invalid URLs are permanent; connection errors, timeouts and the rest retryable.
impl From<HttpError> for crate::TaskError {
    fn from(error: HttpError) -> Self {
        match error {
            HttpError::Denied { .. } | HttpError::InvalidUrl(_) => {
                crate::TaskError::permanent(error.to_string())
            }
            HttpError::Connection(_) | HttpError::Timeout(_) | HttpError::Other(_) => {
                crate::TaskError::retryable(error.to_string())
            }
        }
    }
}
