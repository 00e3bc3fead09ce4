// A local test of the plugin: builds it and runs it in the Kairos sandbox.
import { execFileSync, spawnSync } from 'node:child_process';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = dirname(fileURLToPath(import.meta.url));
const kairos = process.env.KAIROS || 'kairos';

function run(payload) {
  // Exits 1 when the task fails: read the outcome line.
  const out = spawnSync(kairos, ['plugin', 'run', '{name}', '--plugins', here, '--payload', JSON.stringify(payload)], { encoding: 'utf8' }).stdout;
  const line = out.split('\n').find((l) => l.startsWith('outcome:'));
  return JSON.parse(line.slice('outcome:'.length));
}

execFileSync(kairos, ['plugin', 'build', here], { stdio: 'inherit' });
const ok = run({ name: 'Ada' });
assert.equal(ok.outcome, 'success', JSON.stringify(ok));
assert.equal(JSON.parse(ok.output).message, 'Hello, Ada!');
assert.equal(run({}).outcome, 'permanent');
console.log('ok');
