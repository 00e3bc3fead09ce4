//! Outbound HTTP over `wasi:http/outgoing-handler`.
//!
//! The host only lets a request through when its host is in this plugin's `allowed_hosts`;
//! otherwise the call fails with [`HttpError::Denied`]. A response with any status, 4xx and 5xx
//! included, is an `Ok` [`HttpResponse`]: the plugin decides what a status means.

mod error;
mod url;
mod wasi;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::HttpError;

/// A response body larger than this fails the request with [`HttpError::Other`].
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// A received response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Response headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HttpError::Other(format!(
                "response body (status {}) is not valid JSON for {}: {e}",
                self.status,
                std::any::type_name::<T>()
            ))
        })
    }
}

/// POSTs `body` as JSON (`content-type: application/json`) to `url` (`http://` or `https://`).
pub fn post_json<B: Serialize + ?Sized>(url: &str, body: &B) -> Result<HttpResponse, HttpError> {
    post_json_with(url, &[], body)
}

/// [`post_json`] with extra request headers, e.g. `[("idempotency-key", task.id.as_str())]`.
pub fn post_json_with<B: Serialize + ?Sized>(
    url: &str,
    extra_headers: &[(&str, &str)],
    body: &B,
) -> Result<HttpResponse, HttpError> {
    let body = serde_json::to_vec(body)
        .map_err(|e| HttpError::Other(format!("cannot serialize the body for {url}: {e}")))?;
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ];
    headers.extend_from_slice(extra_headers);
    request("POST", url, &headers, &body)
}

/// GETs `url`.
pub fn get(url: &str) -> Result<HttpResponse, HttpError> {
    request("GET", url, &[], &[])
}

/// Sends a request with any method, headers and body, and reads the whole response.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, HttpError> {
    let target = url::Target::parse(url)?;
    wasi::send(method, &target, headers, body)
}
