//! Just enough URL parsing to fill a wasi:http request.

use super::HttpError;

/// The parts of an `http(s)://authority/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub url: String,
    pub https: bool,
    /// `host[:port]`, as written.
    pub authority: String,
    /// The host without port (for messages).
    pub host: String,
    /// Starts with `/`; the fragment is dropped.
    pub path_with_query: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, HttpError> {
        let invalid = |why: &str| HttpError::InvalidUrl(format!("invalid URL `{url}`: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected http://host/path or https://host/path"))?;
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err(invalid("only http and https are supported"));
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(invalid(
                "credentials in URLs are not supported; use a header",
            ));
        }
        let host = match authority.strip_prefix('[') {
            Some(v6) => match v6.find(']') {
                Some(close) => &authority[..close + 2],
                None => return Err(invalid("unclosed `[` in the host")),
            },
            None => authority.split(':').next().unwrap_or_default(),
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let path_with_query = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Target {
            url: url.to_owned(),
            https,
            authority: authority.to_owned(),
            host: host.to_owned(),
            path_with_query,
        })
    }
}
