// Generated from wit/plugin.wit by plugin-sdk/js/generate-types.mjs. Do not edit.
declare module 'kairos:plugin/scheduler@0.1.0' {
  /**
   * Returns the task id (the existing one when the uniqueness key was taken).
   */
  export function schedule(task: FollowUp): string;
  export type When = WhenDelayMs | WhenAtMs;
  /**
   * Run this many milliseconds from now.
   */
  export interface WhenDelayMs {
    tag: 'delay-ms',
    val: bigint,
  }
  /**
   * Run at this Unix epoch millisecond.
   */
  export interface WhenAtMs {
    tag: 'at-ms',
    val: bigint,
  }
  export interface FollowUp {
    plugin: string,
    key: string,
    when: When,
    /**
     * JSON document.
     */
    payload: string,
    /**
     * Enqueueing the same uniqueness key twice yields one task.
     */
    uniquenessKey?: string,
  }
}
