"""The {name} plugin: one Kairos task per call of `run`.

Build it with `kairos plugin build .` and copy `{name}.wasm` into the plugins directory of a
running `kairos serve` (it is hot-loaded). Try it locally with
`kairos plugin run {name} --plugins . --payload '{{"name": "Ada"}}'`.
"""

from kairos_plugin import Permanent, config, kv, log, task


@task
def run(t):
    name = t.payload.get("name") if isinstance(t.payload, dict) else None
    if not name:
        # Retrying would not help: the task is dead at once.
        raise Permanent("the payload needs a name")
    greeting = config.get("greeting", "Hello")
    runs = kv.get_json("runs", 0) + 1
    kv.set_json("runs", runs)
    log.info("greeted", name=name, attempt=t.attempt, runs=runs)
    # Anything JSON-serialisable becomes the task's output; an exception other than
    # Permanent is retried with backoff.
    return {{"message": f"{{greeting}}, {{name}}!", "runs": runs}}
