//! The request/response dance of `wasi:http@0.2` (via the `wasip2` crate).
//!
//! Child resources (streams, pollables, header fields) are dropped before their parents:
//! the host traps on a parent dropped with a live child.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

use super::url::Target;
use super::{HttpError, MAX_RESPONSE_BODY};

/// Largest write `blocking-write-and-flush` accepts.
const WRITE_CHUNK: usize = 4096;
const READ_CHUNK: u64 = 64 * 1024;

/// A response as received: header names in lower case, values as bytes.
pub(crate) struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Sends one request; `headers` are (name, value) pairs, names in any case.
pub(crate) fn send(
    method: &str,
    target: &Target,
    headers: Vec<(String, Vec<u8>)>,
    body: &[u8],
) -> Result<RawResponse, HttpError> {
    let ctx = Ctx { method, target };
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect();
    // A known length instead of chunked transfer encoding: some receivers refuse the latter.
    let sends_body = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if sends_body && !fields.iter().any(|(n, _)| n == "content-length") {
        fields.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields = Fields::from_list(&fields)
        .map_err(|e| HttpError::Other(format!("{}: invalid request header: {e:?}", ctx.what())))?;
    let request = OutgoingRequest::new(fields);
    let parts = [
        request.set_method(&wasi_method(method)),
        request.set_scheme(Some(if target.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        })),
        request.set_authority(Some(&target.authority)),
        request.set_path_with_query(Some(&target.path_with_query)),
    ];
    if parts.iter().any(Result::is_err) {
        return Err(HttpError::InvalidUrl(format!(
            "{}: the host rejected the method, authority or path",
            ctx.what()
        )));
    }
    let outgoing_body = request
        .body()
        .map_err(|()| HttpError::Other(format!("{}: request body unavailable", ctx.what())))?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| ctx.error(code))?;

    // A body write fails when the host gave up on the request; its reason is then in the
    // response future, so look there before reporting the write failure itself (and a server
    // that answered early, say with a 413, has answered).
    let written = write_body(outgoing_body, body, &ctx);
    let subscription = pending.subscribe();
    subscription.block();
    drop(subscription);
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(ctx.error(code)),
        Some(Err(())) | None => {
            written?;
            return Err(HttpError::Other(format!(
                "{}: the response was not available",
                ctx.what()
            )));
        }
    };
    drop(pending);
    read_response(response, &ctx)
}

fn write_body(outgoing: OutgoingBody, body: &[u8], ctx: &Ctx<'_>) -> Result<(), HttpError> {
    let stream: OutputStream = outgoing
        .write()
        .map_err(|()| HttpError::Other(format!("{}: request body unavailable", ctx.what())))?;
    for chunk in body.chunks(WRITE_CHUNK) {
        if let Err(e) = stream.blocking_write_and_flush(chunk) {
            drop(stream);
            return Err(ctx.stream_error(e, "sending the request body"));
        }
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).map_err(|code| ctx.error(code))
}

fn read_response(response: IncomingResponse, ctx: &Ctx<'_>) -> Result<RawResponse, HttpError> {
    let status = response.status();
    let header_fields = response.headers();
    let headers = header_fields.entries();
    drop(header_fields);
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Other(format!("{}: response body unavailable", ctx.what())))?;
    let body = match incoming.stream() {
        Ok(stream) => {
            let read = read_all(&stream, ctx);
            drop(stream);
            read
        }
        Err(()) => Err(HttpError::Other(format!(
            "{}: response body unavailable",
            ctx.what()
        ))),
    };
    drop(IncomingBody::finish(incoming));
    drop(response);
    Ok(RawResponse {
        status,
        headers,
        body: body?,
    })
}

fn read_all(stream: &InputStream, ctx: &Ctx<'_>) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                    return Err(HttpError::Other(format!(
                        "{}: response body exceeds {MAX_RESPONSE_BODY} bytes",
                        ctx.what()
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(body),
            Err(e) => return Err(ctx.stream_error(e, "reading the response body")),
        }
    }
}

fn wasi_method(method: &str) -> Method {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    }
}

/// The request being made, for error messages.
struct Ctx<'a> {
    method: &'a str,
    target: &'a Target,
}

impl Ctx<'_> {
    fn what(&self) -> String {
        format!("{} {}", self.method, self.target.url)
    }

    fn stream_error(&self, error: StreamError, doing: &str) -> HttpError {
        match error {
            StreamError::Closed => {
                HttpError::Connection(format!("{}: connection closed while {doing}", self.what()))
            }
            StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
                Some(code) => self.error(code),
                None => HttpError::Other(format!(
                    "{}: {doing} failed: {}",
                    self.what(),
                    e.to_debug_string()
                )),
            },
        }
    }

    fn error(&self, code: ErrorCode) -> HttpError {
        let what = self.what();
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied {
                host: self.target.host.clone(),
            },
            ErrorCode::DnsTimeout
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => {
                HttpError::Timeout(format!("{what}: timed out ({code:?})"))
            }
            ErrorCode::DnsError(_)
            | ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpProhibited
            | ErrorCode::DestinationIpUnroutable
            | ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::ConnectionLimitReached
            | ErrorCode::TlsProtocolError
            | ErrorCode::TlsCertificateError
            | ErrorCode::TlsAlertReceived(_) => {
                HttpError::Connection(format!("{what}: connection failed ({code:?})"))
            }
            ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
                HttpError::InvalidUrl(format!("{what}: rejected ({code:?})"))
            }
            other => HttpError::Other(format!("{what}: failed ({other:?})")),
        }
    }
}
