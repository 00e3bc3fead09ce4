// Generated from wit/plugin.wit by plugin-sdk/js/generate-types.mjs. Do not edit.
declare module 'kairos:plugin/kv@0.1.0' {
  export function get(key: string): Uint8Array | undefined;
  export function set(key: string, value: Uint8Array): void;
  /**
   * Returns whether the key existed.
   */
  export { _delete as delete };
  function _delete(key: string): boolean;
  /**
   * Entries whose key starts with `prefix`, in key order (at most `limit`).
   */
  export function listEntries(prefix: string, limit: number): Array<EntryMeta>;
  export interface EntryMeta {
    key: string,
    /**
     * Last write, Unix epoch milliseconds.
     */
    updatedAtMs: bigint,
    size: bigint,
  }
}
