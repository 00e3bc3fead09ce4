// Generated from wit/plugin.wit by plugin-sdk/js/generate-types.mjs. Do not edit.
declare module 'kairos:plugin/log@0.1.0' {
  /**
   * `fields` are structured key/value pairs attached to the line.
   */
  export function log(level: Level, message: string, fields: Array<[string, string]>): void;
  /**
   * # Variants
   * 
   * ## `"trace"`
   * 
   * ## `"debug"`
   * 
   * ## `"info"`
   * 
   * ## `"warn"`
   * 
   * ## `"error"`
   */
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
}
