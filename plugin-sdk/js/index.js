// Kairos task plugins in JavaScript: one function wrapped by `task`.
//
//   import { task, log, kv, config, schedule, Permanent } from '@kairos/plugin';
//   export const run = task((t) => {
//     if (!t.payload.name) throw new Permanent('the payload needs a name');
//     log.info('greeting', { name: t.payload.name });
//     return { message: `${config.get('greeting', 'Hello')}, ${t.payload.name}!` };
//   });
//
// `kairos plugin build` inlines this module into the plugin's source and compiles it with
// componentize-js against the `kairos:plugin/task-plugin-sdk` world (task-plugin plus
// wasi:http, plugin-sdk/wit/sdk.wit).
import { log as hostLog } from 'kairos:plugin/log@0.1.0';
import * as hostKv from 'kairos:plugin/kv@0.1.0';
import { schedule as hostSchedule } from 'kairos:plugin/scheduler@0.1.0';
import * as hostConfig from 'kairos:plugin/config@0.1.0';
import { handle as httpHandle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, IncomingBody, OutgoingBody, OutgoingRequest, RequestOptions } from 'wasi:http/types@0.2.12';

/** Retrying is pointless: the task is dead at once. */
export class Permanent extends Error {}

/** Try the task again later (at least after `retryAfterMs`). */
export class Retry extends Error {
  constructor(message, { retryAfterMs } = {}) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

/** A host call (kv, schedule) was refused; the message says why. */
export class KairosError extends Error {}

function hostCall(f) {
  try {
    return f();
  } catch (e) {
    throw new KairosError(String(e && e.payload !== undefined ? e.payload : e));
  }
}

function output(value) {
  if (value === undefined || value === null) return { output: undefined };
  if (typeof value === 'string') return { output: value };
  return { output: JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v)) };
}

function retryable(message, after) {
  return { tag: 'retryable', val: { message, retryAfterMs: after === undefined ? undefined : BigInt(after) } };
}

/** Wraps the function that runs each attempt; export the result as `run`. */
export function task(fn) {
  return function run(t) {
    let payload;
    try {
      payload = t.payload ? JSON.parse(t.payload) : null;
    } catch (e) {
      throw { tag: 'permanent', val: `the payload is not JSON: ${e.message}` };
    }
    const info = {
      id: t.id, key: t.key, plugin: t.plugin, attempt: t.attempt,
      dueAtMs: Number(t.dueAtMs), payload, rawPayload: t.payload,
    };
    try {
      return output(fn(info));
    } catch (e) {
      if (e instanceof Permanent) throw { tag: 'permanent', val: e.message };
      if (e instanceof Retry) throw retryable(e.message, e.retryAfterMs);
      const name = e && e.name ? e.name : 'Error';
      const message = e && e.message !== undefined ? e.message : String(e);
      log.error('uncaught exception', { error: `${name}: ${message}`, stack: (e && e.stack) || '' });
      throw retryable(`${name}: ${message}`);
    }
  };
}

function emit(level) {
  return (message, fields = {}) =>
    hostLog(level, String(message), Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

/** Structured logging into the task's log: `log.info('sent', { url, status })`. */
export const log = {
  trace: emit('trace'), debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error'),
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Durable key-value state private to this plugin. */
export const kv = {
  /** The value's bytes, or undefined. */
  get(key) {
    const v = hostCall(() => hostKv.get(key));
    return v === undefined || v === null ? undefined : v;
  },
  getString(key) {
    const v = kv.get(key);
    return v === undefined ? undefined : decoder.decode(v);
  },
  getJson(key, fallback = undefined) {
    const v = kv.getString(key);
    return v === undefined ? fallback : JSON.parse(v);
  },
  /** Stores bytes (a string is stored as UTF-8). */
  set(key, value) {
    const bytes = typeof value === 'string' ? encoder.encode(value) : new Uint8Array(value);
    hostCall(() => hostKv.set(key, bytes));
  },
  setJson(key, value) {
    kv.set(key, JSON.stringify(value));
  },
  delete(key) {
    return hostCall(() => hostKv.delete(key));
  },
  /** `[{ key, updatedAtMs, size }]` in key order. */
  list(prefix = '', limit = 100) {
    return hostCall(() => hostKv.listEntries(prefix, limit)).map((e) => ({
      key: e.key, updatedAtMs: Number(e.updatedAtMs), size: Number(e.size),
    }));
  },
};

/** This plugin's configuration values (operator config and manifest; secrets too). */
export const config = {
  get(name, fallback = undefined) {
    const v = hostConfig.get(name);
    return v === undefined || v === null ? fallback : v;
  },
  all() {
    return Object.fromEntries(hostConfig.all());
  },
};

/**
 * Enqueues a follow-up task (`delayMs` from now, or at `atMs`; default now) and returns its id
 * (the existing one when `uniquenessKey` was taken).
 */
export function schedule(plugin, key, payload = {}, { delayMs, atMs, uniquenessKey } = {}) {
  if (delayMs !== undefined && atMs !== undefined) throw new Error('give delayMs or atMs, not both');
  const when = atMs !== undefined ? { tag: 'at-ms', val: BigInt(atMs) } : { tag: 'delay-ms', val: BigInt(delayMs || 0) };
  return hostCall(() => hostSchedule({ plugin, key, when, payload: JSON.stringify(payload), uniquenessKey }));
}

/** The request failed on the way (connection, timeout, protocol): retryable. */
export class HttpError extends Error {
  constructor(message) {
    super(message);
    this.name = 'HttpError';
  }
}

const METHODS = ['get', 'head', 'post', 'put', 'delete', 'options', 'patch'];
const WRITE_CHUNK = 4096;
/** Longest response body read (bytes); a longer one throws `HttpError`. */
const MAX_RESPONSE_BODY = 4 * 1024 * 1024;

function drop(resource) {
  if (resource && typeof resource[Symbol.dispose] === 'function') resource[Symbol.dispose]();
}

function httpFailed(code, what) {
  const tag = code && code.tag ? code.tag : String(code);
  if (tag === 'HTTP-request-denied') return new Permanent(`${what}: the host is not in this plugin's allowed_hosts`);
  if (tag === 'HTTP-request-URI-invalid' || tag === 'destination-IP-prohibited') return new Permanent(`${what}: ${tag}`);
  const detail = code && code.val !== undefined && code.val !== null ? ` (${JSON.stringify(code.val, (_, v) => (typeof v === 'bigint' ? v.toString() : v))})` : '';
  return new HttpError(`${what}: ${tag}${detail}`);
}

function errPayload(e) {
  return e && e.payload !== undefined ? e.payload : e;
}

/**
 * Outbound HTTP over wasi:http, only to the hosts in the plugin's `allowed_hosts`: a host
 * outside them (or a URL that is not http(s)://) throws `Permanent`; a connection error or
 * timeout throws `HttpError` (retryable). Any status is returned: `{ status, ok, headers, body,
 * text(), json() }`.
 */
export const http = {
  request(method, url, { body, headers = {}, timeoutMs } = {}) {
    const m = String(method).toUpperCase();
    const what = `${m} ${url}`;
    let u;
    try {
      u = new URL(url);
    } catch (e) {
      throw new Permanent(`${what}: not a URL`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Permanent(`${what}: not an http:// or https:// URL`);
    const data = body === undefined || body === null ? new Uint8Array(0)
      : typeof body === 'string' ? encoder.encode(body) : new Uint8Array(body);
    const entries = Object.entries(headers).map(([k, v]) => [k.toLowerCase(), encoder.encode(String(v))]);
    if ((data.length > 0 || ['POST', 'PUT', 'PATCH'].includes(m)) && !entries.some(([k]) => k === 'content-length')) {
      entries.push(['content-length', encoder.encode(String(data.length))]);
    }
    let fields;
    try {
      fields = Fields.fromList(entries);
    } catch (e) {
      throw new Permanent(`${what}: invalid request header (${JSON.stringify(errPayload(e))})`);
    }
    const req = new OutgoingRequest(fields);
    const lower = m.toLowerCase();
    try {
      req.setMethod(METHODS.includes(lower) ? { tag: lower } : { tag: 'other', val: m });
      req.setScheme({ tag: u.protocol === 'https:' ? 'HTTPS' : 'HTTP' });
      req.setAuthority(u.host);
      req.setPathWithQuery(`${u.pathname || '/'}${u.search}`);
    } catch (e) {
      throw new Permanent(`${what}: the host rejected the method, authority or path`);
    }
    const outBody = req.body();
    let options;
    if (timeoutMs !== undefined) {
      options = new RequestOptions();
      const nanos = BigInt(timeoutMs) * 1000000n;
      options.setConnectTimeout(nanos);
      options.setFirstByteTimeout(nanos);
      options.setBetweenBytesTimeout(nanos);
    }
    let pending;
    try {
      pending = httpHandle(req, options);
    } catch (e) {
      throw httpFailed(errPayload(e), what);
    }
    // The body's errors come second: a refused or failed request also breaks its body.
    let written;
    const stream = outBody.write();
    try {
      for (let i = 0; i < data.length; i += WRITE_CHUNK) stream.blockingWriteAndFlush(data.subarray(i, i + WRITE_CHUNK));
    } catch (e) {
      written = new HttpError(`${what}: sending the request body failed`);
    }
    drop(stream);
    try {
      OutgoingBody.finish(outBody, undefined);
    } catch (e) {
      written = written || httpFailed(errPayload(e), what);
    }
    const ready = pending.subscribe();
    ready.block();
    drop(ready);
    const got = pending.get();
    drop(pending);
    if (!got || got.tag !== 'ok') throw written || new HttpError(`${what}: the response was not available`);
    if (got.val.tag !== 'ok') throw httpFailed(got.val.val, what);
    return readResponse(got.val.val, what);
  },
  /** POSTs `value` as JSON. */
  postJson(url, value, { headers = {}, timeoutMs } = {}) {
    return http.request('POST', url, {
      body: JSON.stringify(value), headers: { 'content-type': 'application/json', ...headers }, timeoutMs,
    });
  },
  get(url, { headers = {}, timeoutMs } = {}) {
    return http.request('GET', url, { headers, timeoutMs });
  },
};

function readResponse(resp, what) {
  const status = resp.status();
  const hf = resp.headers();
  const headers = Object.fromEntries(hf.entries().map(([k, v]) => [k, decoder.decode(v)]));
  drop(hf);
  const incoming = resp.consume();
  const stream = incoming.stream();
  const chunks = [];
  let size = 0;
  let failure;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(65536n);
    } catch (e) {
      const p = errPayload(e);
      if (!(p && p.tag === 'closed')) failure = new HttpError(`${what}: reading the response body failed`);
      break;
    }
    size += chunk.length;
    if (size > MAX_RESPONSE_BODY) {
      failure = new HttpError(`${what}: response body exceeds ${MAX_RESPONSE_BODY} bytes`);
      break;
    }
    chunks.push(chunk);
  }
  drop(stream);
  drop(IncomingBody.finish(incoming));
  drop(resp);
  if (failure) throw failure;
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return {
    status, ok: status >= 200 && status < 300, headers, body: bytes,
    text() { return decoder.decode(bytes); },
    json() { return JSON.parse(decoder.decode(bytes)); },
  };
}
