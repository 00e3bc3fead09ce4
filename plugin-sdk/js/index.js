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
// componentize-js against the `kairos:plugin/task-plugin` world.
import { log as hostLog } from 'kairos:plugin/log@0.1.0';
import * as hostKv from 'kairos:plugin/kv@0.1.0';
import { schedule as hostSchedule } from 'kairos:plugin/scheduler@0.1.0';
import * as hostConfig from 'kairos:plugin/config@0.1.0';

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
