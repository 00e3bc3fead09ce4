// The {name} plugin: one Kairos task per call of `run`.
//
// Build it with `kairos plugin build .` and copy `{name}.wasm` into the plugins directory of a
// running `kairos serve` (it is hot-loaded). Try it locally with
// `kairos plugin run {name} --plugins . --payload '{{"name": "Ada"}}'`.
import { Permanent, config, kv, log, task } from '@kairos/plugin';

export const run = task((t) => {
  const name = t.payload && t.payload.name;
  if (!name) {
    // Retrying would not help: the task is dead at once.
    throw new Permanent('the payload needs a name');
  }
  const greeting = config.get('greeting', 'Hello');
  const runs = kv.getJson('runs', 0) + 1;
  kv.setJson('runs', runs);
  log.info('greeted', { name, attempt: t.attempt, runs });
  // Anything JSON-serialisable becomes the task's output; any other exception than Permanent
  // is retried with backoff.
  return { message: `${{greeting}}, ${{name}}!`, runs };
});
