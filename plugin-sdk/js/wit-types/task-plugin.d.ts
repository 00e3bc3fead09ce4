// Generated from wit/plugin.wit by plugin-sdk/js/generate-types.mjs. Do not edit.
/// <reference path="./interfaces/kairos-plugin-config.d.ts" />
/// <reference path="./interfaces/kairos-plugin-kv.d.ts" />
/// <reference path="./interfaces/kairos-plugin-log.d.ts" />
/// <reference path="./interfaces/kairos-plugin-scheduler.d.ts" />
/// <reference path="./interfaces/kairos-plugin-types.d.ts" />
declare module 'kairos:plugin/task-plugin@0.1.0' {
  export type Task = import('kairos:plugin/types@0.1.0').Task;
  export type Outcome = import('kairos:plugin/types@0.1.0').Outcome;
  export type TaskError = import('kairos:plugin/types@0.1.0').TaskError;
  export type * as KairosPluginConfig010 from 'kairos:plugin/config@0.1.0'; // import kairos:plugin/config@0.1.0
  export type * as KairosPluginKv010 from 'kairos:plugin/kv@0.1.0'; // import kairos:plugin/kv@0.1.0
  export type * as KairosPluginLog010 from 'kairos:plugin/log@0.1.0'; // import kairos:plugin/log@0.1.0
  export type * as KairosPluginScheduler010 from 'kairos:plugin/scheduler@0.1.0'; // import kairos:plugin/scheduler@0.1.0
  export type * as KairosPluginTypes010 from 'kairos:plugin/types@0.1.0'; // import kairos:plugin/types@0.1.0
  export function run(task: Task): Outcome;
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
