// Types of @kairos/plugin. The WIT's own types (wit/plugin.wit, world
// kairos:plugin/task-plugin) are generated into wit-types/ by generate-types.mjs, and the
// SDK's types below are built on them, so a change to the WIT shows up here as a type error.
/// <reference path="./wit-types/task-plugin.d.ts" />
import type * as Wit from "kairos:plugin/types@0.1.0";
import type { EntryMeta } from "kairos:plugin/kv@0.1.0";
import type { Level } from "kairos:plugin/log@0.1.0";

/** Millisecond fields the WIT carries as 64-bit integers, as numbers here. */
type WithNumbers<T, K extends keyof T> = Omit<T, K> & { [F in K]: number };

/**
 * One attempt of one task: the WIT's `task` with its payload parsed from JSON.
 * `id` is stable across attempts: with `attempt`, an idempotency key. `key` is the ordering
 * key: tasks with the same key run one at a time, in order. `dueAtMs` is when the task was
 * due, Unix epoch milliseconds.
 */
export type Task<P = any> = WithNumbers<Omit<Wit.Task, "payload">, "dueAtMs"> & {
  /** The payload, parsed from JSON. */
  payload: P;
  /** The payload as the host handed it. */
  rawPayload: Wit.Task["payload"];
};

/**
 * Wraps the function that runs each attempt; export the result as `run`. What the function
 * returns becomes the task's output: nothing, a string, or JSON.
 */
export function task<P = any>(fn: (t: Task<P>) => unknown): (t: Wit.Task) => Wit.Outcome;

export class Permanent extends Error {}
export class Retry extends Error {
  constructor(message: string, options?: { retryAfterMs?: number });
  retryAfterMs?: number;
}
export class KairosError extends Error {}

type Fields = Record<string, unknown>;
/** One method per WIT log level. */
export const log: { [L in Level]: (message: string, fields?: Fields) => void };

export const kv: {
  get(key: string): Uint8Array | undefined;
  getString(key: string): string | undefined;
  getJson<T = unknown>(key: string, fallback?: T): T;
  set(key: string, value: Uint8Array | string): void;
  setJson(key: string, value: unknown): void;
  delete(key: string): boolean;
  list(prefix?: string, limit?: number): WithNumbers<EntryMeta, "updatedAtMs" | "size">[];
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
