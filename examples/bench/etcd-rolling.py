#!/usr/bin/env python3
"""Rolling restart of a 3-member etcd 3.4 cluster under a one-client closed-loop put load: the
etcd side of `wraft bench --rolling-restart` (BENCHMARKS.md, "Rolling restart").

Each member in turn (followers first, the leader last) gets SIGTERM, as `systemctl restart`
sends it; once it has exited it is started again with the same flags, and the next member waits
until the restarted one has caught up (its raft index at the leader's). The client puts 256-byte
values (keys `k<n>`) one after the other through etcd's v3 JSON gateway, trying the members in
turn after an error (like etcd's own client balancer), and records when each put completed.

Figures (the same definitions as wraft's):
  longest_gap_ms  longest time between two consecutive acknowledged puts, from the first
                  restart's signal to the last restarted member caught up (+1 s);
  stalled_ms      the sum of the gaps above STALL_MS (100 ms) in that window;
  errors          puts that failed (each is retried on the next member).

Needs `etcd` and `etcdctl` (Debian: etcd-server, etcd-client). Usage:
  ./etcd-rolling.py [DIR]          # prints one JSON line; DIR defaults to a temp dir
"""

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

STALL_MS = 100
CLIENT = [23791, 23792, 23793]
PEER = [23801, 23802, 23803]
VALUE = "v" * 256


def start(i, d):
    cluster = ",".join(f"e{j+1}=http://127.0.0.1:{PEER[j]}" for j in range(3))
    log = open(os.path.join(d, f"etcd{i+1}.log"), "ab")
    state = "existing" if os.path.exists(os.path.join(d, f"e{i+1}")) else "new"
    return subprocess.Popen(
        ["etcd", "--name", f"e{i+1}", "--data-dir", os.path.join(d, f"e{i+1}"),
         "--listen-client-urls", f"http://127.0.0.1:{CLIENT[i]}",
         "--advertise-client-urls", f"http://127.0.0.1:{CLIENT[i]}",
         "--listen-peer-urls", f"http://127.0.0.1:{PEER[i]}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{PEER[i]}",
         "--initial-cluster", cluster, "--initial-cluster-state", state,
         "--initial-cluster-token", "rolling", "--logger", "zap", "--log-level", "error"],
        stdout=log, stderr=log)


def status(port):
    """(member id, leader id, raft index) of the member on `port`, or None."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("POST", "/v3/maintenance/status", "{}")
        s = json.loads(c.getresponse().read())
        return int(s["header"]["member_id"]), int(s["leader"]), int(s.get("raftIndex", 0))
    except Exception:
        return None


class Writer(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.done = []      # monotonic completion times of acknowledged puts
        self.errors = []
        self.stop = False

    def run(self):
        n, ep, conn = 0, 0, None
        while not self.stop:
            key = base64.b64encode(f"k{n}".encode()).decode()
            val = base64.b64encode(VALUE.encode()).decode()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", CLIENT[ep], timeout=5)
                conn.request("POST", "/v3/kv/put", json.dumps({"key": key, "value": val}))
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {body[:120]!r}")
                self.done.append(time.monotonic())
                n += 1
            except Exception as e:  # retry the same put on the next member
                self.errors.append(f"{CLIENT[ep]}: {e}")
                conn = None
                ep = (ep + 1) % 3
                time.sleep(0.01)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="etcd-rolling-")
    os.makedirs(d, exist_ok=True)
    procs = [start(i, d) for i in range(3)]
    try:
        ids = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ss = [status(p) for p in CLIENT]
            if all(ss) and ss[0][1] != 0:
                ids = {s[0]: i for i, s in enumerate(ss)}
                break
            time.sleep(0.1)
        else:
            raise SystemExit("etcd cluster did not start")
        w = Writer()
        w.start()
        time.sleep(3)
        leader = ids[status(CLIENT[0])[1]]
        order = [i for i in range(3) if i != leader] + [leader]
        t0 = time.monotonic()
        exits = []
        starts = []
        for i in order:
            t = time.monotonic()
            starts.append(t)
            procs[i].send_signal(signal.SIGTERM)
            rc = procs[i].wait(timeout=30)
            exits.append({"member": i + 1, "exit": rc, "stop_ms": round((time.monotonic() - t) * 1000)})
            procs[i] = start(i, d)
            while True:
                s = status(CLIENT[i])
                lead = s and s[1] and status(CLIENT[ids[s[1]]])
                if s and lead and s[2] >= lead[2] - 10:
                    break
                time.sleep(0.05)
        t1 = time.monotonic() + 1
        time.sleep(1)
        w.stop = True
        w.join(10)
        done = [t for t in w.done if t0 <= t <= t1]
        marks = [t0] + done + [t1]
        gaps = [(b - a) * 1000 for a, b in zip(marks, marks[1:])]
        for k, e in enumerate(exits):
            lo, hi = starts[k], (starts[k + 1] if k + 1 < len(starts) else t1)
            e["longest_gap_ms"] = round(max([(b - a) * 1000 for a, b in zip(marks, marks[1:]) if lo < b <= hi] or [0]), 1)
        print(json.dumps({
            "system": "etcd", "version": subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
            "window_ms": round((t1 - t0) * 1000), "puts": len(done),
            "longest_gap_ms": round(max(gaps), 1),
            "stalled_ms": round(sum(g for g in gaps if g > STALL_MS), 1),
            "errors": len(w.errors), "first_errors": w.errors[:3], "exits": exits,
            "load1": os.getloadavg()[0],
        }))
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
