// Generated from wit/plugin.wit by plugin-sdk/js/generate-types.mjs. Do not edit.
declare module 'kairos:plugin/types@0.1.0' {
  /**
   * One attempt of one task, as handed to `run`.
   */
  export interface Task {
    /**
     * Stable across attempts: use it (with `attempt`) as an idempotency key.
     */
    id: string,
    /**
     * The ordering key: tasks with the same key run one at a time, in order.
     */
    key: string,
    /**
     * This plugin's name.
     */
    plugin: string,
    /**
     * 1-based attempt number.
     */
    attempt: number,
    /**
     * When the task was due, Unix epoch milliseconds.
     */
    dueAtMs: bigint,
    /**
     * The task's payload, a JSON document.
     */
    payload: string,
  }
  /**
   * A successful run, with an optional output kept in the task's record.
   */
  export interface Outcome {
    output?: string,
  }
  export interface Retryable {
    message: string,
    /**
     * Ask for at least this delay before the next attempt (otherwise backoff decides).
     */
    retryAfterMs?: bigint,
  }
  export type TaskError = TaskErrorRetryable | TaskErrorPermanent;
  /**
   * Try again later (counts against the task's maximum attempts).
   */
  export interface TaskErrorRetryable {
    tag: 'retryable',
    val: Retryable,
  }
  /**
   * Retrying is pointless: the task is dead at once.
   */
  export interface TaskErrorPermanent {
    tag: 'permanent',
    val: string,
  }
}
