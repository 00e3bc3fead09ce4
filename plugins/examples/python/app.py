"""Incident notifier, the Python edition of plugins/examples (rust, python, js do the same).

Payload: {"incident": "42", "url": "http://hooks.example/incident", "message": "disk full",
"remind_in_ms": 60000 (optional)}. Posts the message to `url` (which must be in the plugin's
`allowed_hosts`) with the task id as idempotency key, counts the notices per incident in kv,
and schedules one reminder of itself after `remind_in_ms`. Config: `channel` (default "ops").
"""

from kairos_plugin import Permanent, Retry, config, http, kv, log, schedule, task


@task
def run(t):
    p = t.payload if isinstance(t.payload, dict) else {}
    incident, url = p.get("incident"), p.get("url")
    if not incident or not url:
        raise Permanent("the payload needs an incident and a url")
    reminder = bool(p.get("reminder"))
    log.info("notifying", incident=incident, attempt=t.attempt, reminder=reminder)
    count = kv.get_json(f"sent/{incident}", 0) + 1
    body = {
        "incident": incident,
        "message": p.get("message", ""),
        "channel": config.get("channel", "ops"),
        "count": count,
        "reminder": reminder,
        "task": t.id,
        "lang": "python",
    }
    r = http.post_json(url, body, headers={"idempotency-key": t.id}, timeout_ms=5_000)
    if 400 <= r.status < 500:
        raise Permanent(f"the hook refused the notice: HTTP {r.status}")
    if not r.ok:
        raise Retry(f"the hook answered HTTP {r.status}")
    kv.set_json(f"sent/{incident}", count)
    follow_up = None
    if p.get("remind_in_ms") and not reminder:
        again = dict(p, reminder=True)
        again.pop("remind_in_ms")
        follow_up = schedule(
            t.plugin, t.key, again, delay_ms=int(p["remind_in_ms"]), uniqueness_key=f"remind:{t.id}"
        )
    return {"status": r.status, "count": count, "follow_up": follow_up}
