"""Outbound HTTP over ``wasi:http`` (the host's ``allowed_hosts`` decide where to)::

    from kairos_plugin import http

    r = http.post_json("https://hooks.example/incident", {"id": 42}, headers={"idempotency-key": t.id})
    if not r.ok:
        raise Retry(f"hook answered {r.status}")

A host outside the plugin's ``allowed_hosts``, or a URL that is not ``http(s)://``, raises
``Permanent`` (retrying cannot help); a connection error or timeout raises ``HttpError``
(retryable, like any other exception). Any status is returned, 4xx and 5xx included.
"""

import json as _json
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import outgoing_handler as _handler
from wit_world.imports import streams as _streams
from wit_world.imports import wasi_http_types as _h

__all__ = ["request", "post_json", "get", "Response", "HttpError"]

_WRITE_CHUNK = 4096
_READ_CHUNK = 64 * 1024
MAX_RESPONSE_BODY = 4 * 1024 * 1024
"""Longest response body read (bytes); a longer one raises ``HttpError``."""


class HttpError(Exception):
    """The request failed on the way (connection, timeout, protocol): retryable."""


class Response:
    """A response: ``status``, ``headers`` (lowercase names), ``body`` (bytes)."""

    def __init__(self, status: int, headers: Dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"Response(status={self.status}, {len(self.body)} bytes)"


_METHODS = {
    "GET": _h.Method_Get,
    "HEAD": _h.Method_Head,
    "POST": _h.Method_Post,
    "PUT": _h.Method_Put,
    "DELETE": _h.Method_Delete,
    "OPTIONS": _h.Method_Options,
    "PATCH": _h.Method_Patch,
}


def _permanent(message: str) -> Exception:
    from . import Permanent  # the package imports this module first

    return Permanent(message)


def _failed(code: Any, what: str) -> Exception:
    if isinstance(code, _h.ErrorCode_HttpRequestDenied):
        return _permanent(f"{what}: the host is not in this plugin's allowed_hosts")
    if isinstance(code, (_h.ErrorCode_HttpRequestUriInvalid, _h.ErrorCode_DestinationIpProhibited)):
        return _permanent(f"{what}: {type(code).__name__.removeprefix('ErrorCode_')}")
    name = type(code).__name__.removeprefix("ErrorCode_")
    detail = getattr(code, "value", None)
    return HttpError(f"{what}: {name}" + (f" ({detail})" if detail not in (None, "") else ""))


def _drop(resource: Any) -> None:
    resource.__exit__(None, None, None)


def request(
    method: str,
    url: str,
    body: Union[bytes, str, None] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout_ms: Optional[int] = None,
) -> Response:
    """Sends one request and reads the whole response."""
    what = f"{method.upper()} {url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _permanent(f"{what}: not an http:// or https:// URL")
    method_cls = _METHODS.get(method.upper())
    data = body.encode() if isinstance(body, str) else (body or b"")
    fields: List[Tuple[str, bytes]] = [
        (k.lower(), v.encode() if isinstance(v, str) else bytes(v)) for k, v in (headers or {}).items()
    ]
    if (data or method.upper() in ("POST", "PUT", "PATCH")) and not any(k == "content-length" for k, _ in fields):
        fields.append(("content-length", str(len(data)).encode()))
    try:
        header_fields = _h.Fields.from_list(fields)
    except Err as e:
        raise _permanent(f"{what}: invalid request header ({type(e.value).__name__})") from None
    req = _h.OutgoingRequest(header_fields)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        req.set_method(method_cls() if method_cls else _h.Method_Other(method.upper()))
        req.set_scheme(_h.Scheme_Https() if parts.scheme == "https" else _h.Scheme_Http())
        req.set_authority(parts.netloc)
        req.set_path_with_query(path)
    except Err:
        raise _permanent(f"{what}: the host rejected the method, authority or path") from None
    out_body = req.body()
    options = None
    if timeout_ms is not None:
        options = _h.RequestOptions()
        nanos = int(timeout_ms) * 1_000_000
        options.set_connect_timeout(nanos)
        options.set_first_byte_timeout(nanos)
        options.set_between_bytes_timeout(nanos)
    try:
        pending = _handler.handle(req, options)
    except Err as e:
        raise _failed(e.value, what) from None
    # The body's errors come second: a refused or failed request also breaks its body.
    written: Optional[Exception] = None
    stream = out_body.write()
    try:
        for i in range(0, len(data), _WRITE_CHUNK):
            stream.blocking_write_and_flush(data[i : i + _WRITE_CHUNK])
    except Err:
        written = HttpError(f"{what}: sending the request body failed")
    finally:
        _drop(stream)
    try:
        _h.OutgoingBody.finish(out_body, None)
    except Err as e:
        written = written or _failed(e.value, what)
    ready = pending.subscribe()
    ready.block()
    _drop(ready)
    got = pending.get()
    _drop(pending)
    if not isinstance(got, Ok):
        raise written or HttpError(f"{what}: the response was not available")
    inner = got.value
    if not isinstance(inner, Ok):
        raise _failed(inner.value, what)
    return _read(inner.value, what)


def _read(resp: Any, what: str) -> Response:
    status = resp.status()
    header_fields = resp.headers()
    headers = {k: v.decode("latin-1") for k, v in header_fields.entries()}
    _drop(header_fields)
    incoming = resp.consume()
    stream = incoming.stream()
    chunks: List[bytes] = []
    size = 0
    try:
        while True:
            try:
                chunk = stream.blocking_read(_READ_CHUNK)
            except Err as e:
                if isinstance(e.value, _streams.StreamError_Closed):
                    break
                raise HttpError(f"{what}: reading the response body failed") from None
            size += len(chunk)
            if size > MAX_RESPONSE_BODY:
                raise HttpError(f"{what}: response body exceeds {MAX_RESPONSE_BODY} bytes")
            chunks.append(chunk)
    finally:
        _drop(stream)
        _drop(_h.IncomingBody.finish(incoming))
        _drop(resp)
    return Response(status, headers, b"".join(chunks))


def post_json(url: str, value: Any, headers: Optional[Dict[str, str]] = None, timeout_ms: Optional[int] = None) -> Response:
    """POSTs ``value`` as JSON (``content-type: application/json``)."""
    h = {"content-type": "application/json"}
    h.update(headers or {})
    return request("POST", url, _json.dumps(value, separators=(",", ":"), default=str), h, timeout_ms)


def get(url: str, headers: Optional[Dict[str, str]] = None, timeout_ms: Optional[int] = None) -> Response:
    """GETs ``url``."""
    return request("GET", url, None, headers, timeout_ms)
