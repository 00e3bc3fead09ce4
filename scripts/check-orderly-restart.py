#!/usr/bin/env python3
"""An orderly stop in the middle of a run, a restart, then what became of the tasks.

usage: scripts/check-orderly-restart.py KAIROS_BIN HOSTILE_WASM WORKDIR TASKS KEYS [MAX_ATTEMPTS [term|kill]]
  e.g. scripts/check-orderly-restart.py target/release/kairos target/test-guests/hostile.wasm \
         /tmp/restart-check 2000 1000 1
(target/test-guests/hostile.wasm is built by `cargo test -p kairos`.)

An embedded node (127.0.0.1:7431) gets TASKS tasks over KEYS keys of the `hostile` test guest
in `http` mode, each posting to a local receiver (127.0.0.1:8431) that answers after 200 ms,
so with 64 run slots most due tasks wait claimed for a run slot. 1 s after they fall due the
node gets SIGTERM (or, with `kill`, SIGKILL: a crash); it is started again on the same data
directory and runs until every task finished. After a crash the attempts it left in doubt
(started, not finished) run again, each having used up an attempt. Prints the task counts by state before the stop and at the end, and the tasks by
attempt count. WORKDIR is wiped first.
"""
import json, os, shutil, signal, subprocess, sys, time, urllib.request

if len(sys.argv) < 6:
    raise SystemExit(__doc__)
kairos, guest, work = sys.argv[1], sys.argv[2], sys.argv[3]
n, keys = int(sys.argv[4]), int(sys.argv[5])
max_attempts = int(sys.argv[6]) if len(sys.argv) > 6 else 3
crash = len(sys.argv) > 7 and sys.argv[7] == "kill"
import threading, http.server, socketserver
class Slow(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"] or 0)); time.sleep(0.2)
        try:
            self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node was killed while its call was waiting
    def log_message(self, *a): pass
class TS(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
srv = TS(("127.0.0.1", 8431), Slow)
threading.Thread(target=srv.serve_forever, daemon=True).start()
port = 7431
base = f"http://127.0.0.1:{port}"
shutil.rmtree(work, ignore_errors=True)
os.makedirs(f"{work}/plugins")
shutil.copy(guest, f"{work}/plugins/hostile.wasm")
open(f"{work}/cfg.toml", "w").write('[plugin.hostile]\nallowed_hosts = ["127.0.0.1:8431"]\n')

def start():
    log = open(f"{work}/node.log", "a")
    p = subprocess.Popen([kairos, "serve", "--data", f"{work}/data", "--plugins", f"{work}/plugins",
                          "--listen", f"127.0.0.1:{port}", "--config", f"{work}/cfg.toml"], stdout=log, stderr=log)
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return p
        except Exception:
            time.sleep(0.1)
    raise SystemExit("node did not come up")

def req(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(base + path, data=data, method=method,
                               headers={"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=60) as resp:
        return json.loads(resp.read()), resp.headers

def counts():
    return req("GET", "/v1/stats")[0]["counts"]

p = start()
t0 = time.time()
for i in range(0, n, 1000):
    req("POST", "/v1/tasks/batch", [{"plugin": "hostile", "key": f"k{j % keys}", "delay_ms": 3000,
                                     "max_attempts": max_attempts, "payload": {"mode": "http", "url": "http://127.0.0.1:8431/x"}} for j in range(i, min(n, i + 1000))])
due = t0 + 3.0
time.sleep(max(0, due + 1.0 - time.time()))
c = counts()
p.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
p.wait(timeout=60)
print(f"{'killed' if crash else 'stopped'}: {c}")
t1 = time.time()
p = start()
while True:
    c = counts()
    if c.get("succeeded", 0) + c.get("dead", 0) >= n:
        break
    time.sleep(0.05)
done = time.time() - t1
hist = {}
cursor = None
while True:
    q = "/v1/tasks?limit=1000" + (f"&cursor={cursor}" if cursor else "")
    tasks, h = req("GET", q)
    for t in tasks:
        a = t.get("attempts")
        hist[a] = hist.get(a, 0) + 1
    cursor = h.get("kairos-next-cursor")
    if not cursor:
        break
final = counts()
p.send_signal(signal.SIGTERM)
p.wait(timeout=60)
print(f"after restart: all {n} finished {done:.1f} s after the restart began: {final}; tasks by attempts: {dict(sorted(hist.items()))}")
