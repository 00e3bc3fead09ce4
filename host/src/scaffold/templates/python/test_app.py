"""A local test of the plugin: builds it and runs it in the Kairos sandbox."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KAIROS = os.environ.get("KAIROS", "kairos")


def run(payload):
    out = subprocess.run(
        [KAIROS, "plugin", "run", "{name}", "--plugins", HERE, "--payload", json.dumps(payload)],
        capture_output=True, text=True,  # exits 1 when the task fails: read the outcome
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("outcome:"))
    return json.loads(line.split(":", 1)[1])


if __name__ == "__main__":
    subprocess.run([KAIROS, "plugin", "build", HERE], check=True)
    ok = run({{"name": "Ada"}})
    assert ok["outcome"] == "success", ok
    assert json.loads(ok["output"])["message"] == "Hello, Ada!", ok
    bad = run({{}})
    assert bad["outcome"] == "permanent", bad
    print("ok")
    sys.exit(0)
