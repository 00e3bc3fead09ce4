// Generated from wit/plugin.wit by plugin-sdk/js/generate-types.mjs. Do not edit.
declare module 'kairos:plugin/config@0.1.0' {
  export function get(name: string): string | undefined;
  export function all(): Array<[string, string]>;
}
