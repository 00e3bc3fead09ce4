// Types of @kairos/plugin, following wit/plugin.wit (world kairos:plugin/task-plugin).

/** One attempt of one task. */
export interface Task<P = unknown> {
  /** Stable across attempts: with `attempt`, an idempotency key. */
  id: string;
  /** The ordering key: tasks with the same key run one at a time, in order. */
  key: string;
  plugin: string;
  /** 1-based. */
  attempt: number;
  /** When the task was due, Unix epoch milliseconds. */
  dueAtMs: number;
  /** The payload, parsed from JSON. */
  payload: P;
  rawPayload: string;
}

/** What the function returns becomes the task's output: nothing, a string, or JSON. */
export function task<P = unknown>(fn: (t: Task<P>) => unknown): (t: unknown) => { output?: string };

export class Permanent extends Error {}
export class Retry extends Error {
  constructor(message: string, options?: { retryAfterMs?: number });
  retryAfterMs?: number;
}
export class KairosError extends Error {}

type Fields = Record<string, unknown>;
export const log: {
  trace(message: string, fields?: Fields): void;
  debug(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
};

export const kv: {
  get(key: string): Uint8Array | undefined;
  getString(key: string): string | undefined;
  getJson<T = unknown>(key: string, fallback?: T): T;
  set(key: string, value: Uint8Array | string): void;
  setJson(key: string, value: unknown): void;
  delete(key: string): boolean;
  list(prefix?: string, limit?: number): { key: string; updatedAtMs: number; size: number }[];
};

export const config: {
  get(name: string, fallback?: string): string | undefined;
  all(): Record<string, string>;
};

export function schedule(
  plugin: string,
  key: string,
  payload?: unknown,
  options?: { delayMs?: number; atMs?: number; uniquenessKey?: string },
): string;

/** The request failed on the way (connection, timeout, protocol): retryable. */
export class HttpError extends Error {}

export interface HttpResponse {
  status: number;
  /** `status` is 2xx. */
  ok: boolean;
  /** Lowercase names. */
  headers: Record<string, string>;
  body: Uint8Array;
  text(): string;
  json<T = unknown>(): T;
}

export interface HttpOptions {
  headers?: Record<string, string>;
  /** Connect, first-byte and between-bytes timeout. */
  timeoutMs?: number;
}

/**
 * Outbound HTTP (wasi:http) to the hosts in the plugin's `allowed_hosts`. Another host, or a URL
 * that is not http(s)://, throws `Permanent`; a connection error or timeout throws `HttpError`.
 * Any status is returned, 4xx and 5xx included.
 */
export const http: {
  request(method: string, url: string, options?: HttpOptions & { body?: string | Uint8Array }): HttpResponse;
  postJson(url: string, value: unknown, options?: HttpOptions): HttpResponse;
  get(url: string, options?: HttpOptions): HttpResponse;
};
