//! Outbound HTTP over `wasi:http/outgoing-handler`.
//!
//! The host only lets a request through when its host is in this plugin's `allowed_hosts`;
//! otherwise the call fails with [`HttpError::Denied`]. A response with any status, 4xx and 5xx
//! included, is an `Ok` response: the plugin decides what a status means. Redirects are not
//! followed.
//!
//! [`send`] takes and returns the [`http`](https://docs.rs/http) crate's types, re-exported
//! here ([`Request`], [`Response`], [`StatusCode`], [`header`], ...):
//!
//! ```rust,ignore
//! use kairos_plugin_sdk::http;
//!
//! let request = http::Request::post("https://hooks.example.com/deliveries")
//!     .header(http::header::CONTENT_TYPE, "application/json")
//!     .header("idempotency-key", &task.id)
//!     .body(serde_json::to_vec(&delivery)?)?;
//! let response = http::send(request)?;
//! if response.status() == http::StatusCode::TOO_MANY_REQUESTS { /* ... */ }
//! ```
//!
//! [`post_json`], [`get`] and [`request`] are shortcuts that return an [`HttpResponse`].

mod error;
mod url;
mod wasi;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use ::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
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
    let headers = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect();
    let raw = wasi::send(method, &target, headers, body)?;
    Ok(HttpResponse {
        status: raw.status,
        headers: raw
            .headers
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect(),
        body: raw.body,
    })
}

/// Sends `request` and reads the whole response.
///
/// The URI must be absolute (`http://` or `https://`, a host); the method, headers and body
/// are sent as they are (plus `content-length`), the HTTP version and extensions are ignored.
/// The response carries the status, the headers (names in lower case) and the whole body
/// (at most [`MAX_RESPONSE_BODY`] bytes).
pub fn send<B: Body>(request: Request<B>) -> Result<Response<Vec<u8>>, HttpError> {
    let (parts, body) = request.into_parts();
    let url = parts.uri.to_string();
    let target = url::Target::parse(&url)?;
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let raw = wasi::send(parts.method.as_str(), &target, headers, body.as_bytes())?;
    let invalid =
        |what: String| HttpError::Other(format!("{} {url}: invalid response {what}", parts.method));
    let mut response = Response::new(raw.body);
    *response.status_mut() =
        StatusCode::from_u16(raw.status).map_err(|e| invalid(format!("status: {e}")))?;
    let headers = response.headers_mut();
    for (name, value) in raw.headers {
        let value = HeaderValue::from_bytes(&value)
            .map_err(|e| invalid(format!("value of header `{name}`: {e}")))?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| invalid(format!("header name `{name}`: {e}")))?;
        headers.append(name, value);
    }
    Ok(response)
}

/// A request body [`send`] accepts: bytes or text, owned or borrowed, or `()` for none.
pub trait Body {
    /// The bytes to send.
    fn as_bytes(&self) -> &[u8];
}

impl Body for () {
    fn as_bytes(&self) -> &[u8] {
        &[]
    }
}

impl Body for [u8] {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

impl Body for Vec<u8> {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

impl Body for str {
    fn as_bytes(&self) -> &[u8] {
        str::as_bytes(self)
    }
}

impl Body for String {
    fn as_bytes(&self) -> &[u8] {
        String::as_bytes(self)
    }
}

impl<T: Body + ?Sized> Body for &T {
    fn as_bytes(&self) -> &[u8] {
        (**self).as_bytes()
    }
}
