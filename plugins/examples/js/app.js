// Incident notifier, the JavaScript edition of plugins/examples (rust, python, js do the same).
//
// Payload: {"incident": "42", "url": "http://hooks.example/incident", "message": "disk full",
// "remind_in_ms": 60000 (optional)}. Posts the message to `url` (which must be in the plugin's
// `allowed_hosts`) with the task id as idempotency key, counts the notices per incident in kv,
// and schedules one reminder of itself after `remind_in_ms`. Config: `channel` (default "ops").
import { Permanent, Retry, config, http, kv, log, schedule, task } from '@kairos/plugin';

export const run = task((t) => {
  const p = t.payload && typeof t.payload === 'object' ? t.payload : {};
  if (!p.incident || !p.url) throw new Permanent('the payload needs an incident and a url');
  const reminder = Boolean(p.reminder);
  log.info('notifying', { incident: p.incident, attempt: t.attempt, reminder });
  const count = kv.getJson(`sent/${p.incident}`, 0) + 1;
  const body = {
    incident: p.incident,
    message: p.message || '',
    channel: config.get('channel', 'ops'),
    count,
    reminder,
    task: t.id,
    lang: 'js',
  };
  const r = http.postJson(p.url, body, { headers: { 'idempotency-key': t.id }, timeoutMs: 5000 });
  if (r.status >= 400 && r.status < 500) throw new Permanent(`the hook refused the notice: HTTP ${r.status}`);
  if (!r.ok) throw new Retry(`the hook answered HTTP ${r.status}`);
  kv.setJson(`sent/${p.incident}`, count);
  let followUp = null;
  if (p.remind_in_ms && !reminder) {
    const again = { ...p, reminder: true };
    delete again.remind_in_ms;
    followUp = schedule(t.plugin, t.key, again, { delayMs: Number(p.remind_in_ms), uniquenessKey: `remind:${t.id}` });
  }
  return { status: r.status, count, follow_up: followUp };
});
