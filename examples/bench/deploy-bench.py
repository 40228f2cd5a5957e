#!/usr/bin/env python3
"""What deploying a large WebAssembly component costs a local 3-node cluster.

Each run starts a fresh 3-node cluster of `wraft node` processes the way a new user would
(certificates from `wraft cert`, the minimal config of README.md "Running a cluster", default
election timeouts and every other default, `storage.fsync = "durable"` spelled out), waits for a
leader, and then:

  1. deploys MODULE as machine `m1` and measures the wall time of `wraft deploy` until it
     returns success, then the time until every node has applied it (`wraft status --all --json`
     polled until every node's applied index >= the leader's commit index read after the deploy
     returned, and the machine is listed on every node);
  2. deploys the same module again as machine `m2` (a second machine: the entry is as big, but
     each node's compiled-module cache already holds the code) and measures the same;
  3. takes a snapshot on every node (`wraft snapshot trigger --all`) and reports its file size.

For each deploy it reports the bytes each node's log (`<data_dir>/wal`) grew by (file sizes; a
segment keeps up to `storage.preallocate_bytes`, 1 MiB, zero-filled past its end, so a delta is
exact to within that; also allocated blocks), the term and leader id before and after, the
`role changed` lines the nodes logged meanwhile (elections), the CPU seconds the nodes used and
how busy the whole machine was (/proc; anything above the nodes' share is another process's),
and every node's data directory size afterwards, split into wal/snap/modules.

Output: one JSON object per line per measurement on stdout (`"kind"`: `env`, `run`, `deploy`,
`snapshot`, `error`), then a readable summary (lines starting with `#`). Progress goes to stderr.

Environment:
  W        the wraft binary (default: `wraft` on PATH); any version: the script uses only the CLI
  MODULE   the component to deploy (required)
  RUNS     fresh clusters to measure (default 3)
  WASI     `--wasi` profile for the deploy: `none` (default, flag not passed) or `deterministic`
           (Python guests built with componentize-py)
  IDLE_WAIT      before each run, wait up to this many seconds for a 2 s window in which the
                 machine is less than IDLE_BUSY_MAX busy (default 0: do not wait)
  IDLE_BUSY_MAX  share of all CPUs, 0..1 (default 0.15)
  KEEP     1: keep each run's directory (configs, certificates, node logs, data) and print it
  TMPDIR   where the run directories go (default /tmp; put it on the disk you want to measure)

Example:
  W=/var/tmp/wraft-before MODULE=/var/tmp/deploy-bench/js-kv.wasm ./deploy-bench.py
  W=... MODULE=/var/tmp/deploy-bench/py-counter.wasm WASI=deterministic ./deploy-bench.py

Stdlib only; Linux (reads /proc/loadavg, kills the nodes if this script dies via
PR_SET_PDEATHSIG). Every node is stopped (SIGTERM, then SIGKILL after 10 s) and every run
directory removed at the end of its run, also on error or Ctrl-C.
"""

import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

W = os.environ.get("W") or shutil.which("wraft") or "wraft"
MODULE = os.environ.get("MODULE")
RUNS = int(os.environ.get("RUNS", "3"))
WASI = os.environ.get("WASI", "none")
KEEP = os.environ.get("KEEP") == "1"
IDLE_WAIT_S = float(os.environ.get("IDLE_WAIT", "0"))
IDLE_BUSY_MAX = float(os.environ.get("IDLE_BUSY_MAX", "0.15"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

NODES = (1, 2, 3)
LEADER_TIMEOUT_S = 60
APPLY_TIMEOUT_S = 600
DEPLOY_PROCESS_TIMEOUT_S = 900  # the CLI itself gives up after its --timeout (300 s for deploys)
POLL_S = 0.05
STOP_GRACE_S = 10


def log(*a):
    print("[deploy-bench]", *a, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj, sort_keys=False), flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().strip()


def cpu_ticks():
    """(busy, total) jiffies of the whole machine (/proc/stat), steal counted as not busy."""
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:9]))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal


def busy_fraction(a, b):
    """Share of all CPUs busy between two cpu_ticks() samples."""
    return round((b[0] - a[0]) / max(1, b[1] - a[1]), 3)


def proc_cpu_s(pid):
    """CPU seconds (user + system) process pid has used; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def wait_for_quiet():
    """Up to IDLE_WAIT s for a 2 s window with the machine busy < IDLE_BUSY_MAX; the last share."""
    deadline = time.monotonic() + IDLE_WAIT_S
    while True:
        a = cpu_ticks()
        time.sleep(2)
        frac = busy_fraction(a, cpu_ticks())
        if frac < IDLE_BUSY_MAX or time.monotonic() >= deadline:
            return frac
        log(f"machine {frac:.0%} busy; waiting for < {IDLE_BUSY_MAX:.0%} "
            f"({deadline - time.monotonic():.0f} s left of IDLE_WAIT)")


def now_ms():
    return time.monotonic() * 1000.0


class BenchError(Exception):
    pass


def _set_pdeathsig():
    # The node dies with this script even if the script is SIGKILLed (Linux: PR_SET_PDEATHSIG).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def free_udp_ports(n):
    """n distinct free UDP ports on 127.0.0.1 (QUIC is UDP), held until all are chosen."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tree_bytes(path):
    """(apparent bytes, allocated bytes) of every file under path; (0, 0) if absent."""
    apparent = allocated = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


class Cluster:
    """A fresh 3-node cluster in its own directory; `stop()` kills it and removes the directory."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="deploy-bench-")
        self.certs = os.path.join(self.root, "certs")
        self.procs = {}
        self.logs = {}
        self.data = {i: os.path.join(self.root, f"n{i}") for i in NODES}
        self.endpoints = ""

    # ---- lifecycle ----

    def start(self):
        run([W, "cert", "--dir", self.certs, "--nodes", ",".join(map(str, NODES)),
             "--clients", "admin"], what="wraft cert")
        ports = free_udp_ports(len(NODES))
        addr = {i: f"127.0.0.1:{p}" for i, p in zip(NODES, ports)}
        self.endpoints = ",".join(addr[i] for i in NODES)
        members = ", ".join(f'{i} = "{addr[i]}"' for i in NODES)
        for i in NODES:
            cfg = os.path.join(self.root, f"node-{i}.toml")
            with open(cfg, "w") as f:
                f.write(
                    f'[node]\nid = {i}\ndata_dir = "{self.data[i]}"\nlisten = "{addr[i]}"\n\n'
                    f"[cluster]\nmembers = {{ {members} }}\n\n"
                    f'[tls]\ndir = "{self.certs}"\n\n'
                    f'[storage]\nfsync = "durable"\n'
                )
            self.logs[i] = os.path.join(self.root, f"node-{i}.log")
            with open(self.logs[i], "wb") as out:
                self.procs[i] = subprocess.Popen(
                    [W, "node", "--config", cfg],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    preexec_fn=_set_pdeathsig,
                )

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_S
        for i, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"node {i} (pid {p.pid}) did not stop within {STOP_GRACE_S} s; SIGKILL")
                p.kill()
                p.wait()
        self.procs = {}
        if KEEP:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def check_alive(self):
        for i, p in self.procs.items():
            rc = p.poll()
            if rc is not None:
                raise BenchError(f"node {i} exited early ({rc}); log tail:\n{self.log_tail(i)}")

    def log_tail(self, i, n=30):
        try:
            with open(self.logs[i], errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # ---- talking to it ----

    def client_args(self):
        return ["--endpoints", self.endpoints, "--certs", self.certs, "--client", "admin"]

    def statuses(self):
        """Every node's status (`wraft status --all --json`), or None if one does not answer."""
        r = subprocess.run([W, "status", "--all", "--json", "--timeout", "2s"] + self.client_args(),
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return None
        try:
            data = json.loads(r.stdout)
        except ValueError:
            return None
        if isinstance(data, dict):
            data = data.get("nodes") or [data]
        if len(data) != len(NODES):
            return None
        return {s["id"]: s for s in data}

    def wait_for_leader(self):
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            st = self.statuses()
            if st:
                leaders = [s for s in st.values() if s.get("role") == "leader"]
                if len(leaders) == 1 and all(s.get("leader") == leaders[0]["id"] for s in st.values()):
                    return st
            time.sleep(POLL_S)
        raise BenchError(f"no leader known to every node within {LEADER_TIMEOUT_S} s")

    # ---- what is measured ----

    def disk(self):
        """Per node: wal bytes (apparent, allocated), data dir total and its split."""
        out = {}
        for i in NODES:
            d = self.data[i]
            wal, wal_alloc = tree_bytes(os.path.join(d, "wal"))
            total, total_alloc = tree_bytes(d)
            split = {}
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    p = os.path.join(d, name)
                    if os.path.isdir(p):
                        split[name] = tree_bytes(p)[0]
            out[i] = {"wal": wal, "wal_alloc": wal_alloc, "dir": total, "dir_alloc": total_alloc,
                      "split": split}
        return out

    def cpu(self):
        """CPU seconds each node process has used so far."""
        return {i: proc_cpu_s(p.pid) for i, p in self.procs.items()}

    def log_offsets(self):
        return {i: os.path.getsize(self.logs[i]) for i in NODES}

    def role_changes_since(self, offsets):
        """`role changed` lines each node logged since `offsets` (best effort: text log format)."""
        changes = []
        for i in NODES:
            with open(self.logs[i], "rb") as f:
                f.seek(offsets[i])
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                if "role changed" in line:
                    m = re.search(r"role=(\w+)\s+term=(\d+)", line)
                    changes.append({"node": i, "role": m.group(1) if m else None,
                                    "term": int(m.group(2)) if m else None})
        return changes


def run(cmd, what, timeout=120):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise BenchError(f"{what} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def leader_of(st):
    leaders = [s["id"] for s in st.values() if s.get("role") == "leader"]
    return leaders[0] if len(leaders) == 1 else None


def measure_deploy(c, run_no, ordinal, name):
    c.check_alive()
    before_st = c.wait_for_leader()
    before_disk = c.disk()
    offsets = c.log_offsets()
    cmd = [W, "deploy"] + c.client_args()
    if WASI != "none":
        cmd += ["--wasi", WASI]
    cmd += [name, MODULE]
    load_before = loadavg()
    cpu_before = c.cpu()
    ticks_before = cpu_ticks()
    t0 = now_ms()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=DEPLOY_PROCESS_TIMEOUT_S)
    t_deploy = now_ms() - t0
    rec = {"kind": "deploy", "module": os.path.basename(MODULE), "run": run_no,
           "deploy": ordinal, "name": name, "ok": r.returncode == 0, "rc": r.returncode,
           "deploy_ms": round(t_deploy, 1), "cli_output": (r.stdout.strip() or r.stderr.strip())}
    if r.returncode != 0:
        rec["role_changes"] = c.role_changes_since(offsets)
        emit(rec)
        hint = ""
        if "wasi" in (r.stderr + r.stdout).lower() and WASI == "none":
            hint = " (a component importing WASI needs WASI=deterministic)"
        raise BenchError(f"deploy {name} failed ({r.returncode}){hint}: {rec['cli_output']}")

    # Every node has applied it: applied index >= the leader's commit index after the deploy.
    target = None
    polls = 0
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while True:
        c.check_alive()
        st = c.statuses()
        polls += 1
        if st:
            lid = leader_of(st)
            if target is None and lid is not None:
                target = st[lid]["commit_index"]
            if target is not None and all(
                s.get("applied_index", -1) >= target
                and any(m.get("name") == name for m in s.get("machines", [{"name": name}]))
                for s in st.values()
            ):
                t_applied = now_ms() - t0
                after_st = st
                break
        if time.monotonic() > deadline:
            raise BenchError(f"{name} not applied on every node within {APPLY_TIMEOUT_S} s: {st}")
        time.sleep(POLL_S)
    ticks_after = cpu_ticks()
    cpu_after = c.cpu()
    after_disk = c.disk()
    changes = c.role_changes_since(offsets)
    term_before = max(s["term"] for s in before_st.values())
    term_after = max(s["term"] for s in after_st.values())
    rec.update({
        "all_applied_ms": round(t_applied, 1),
        "applied_after_return_ms": round(t_applied - t_deploy, 1),
        "commit_index_target": target,
        "status_polls": polls,
        "wal_added_bytes": {i: after_disk[i]["wal"] - before_disk[i]["wal"] for i in NODES},
        "wal_added_alloc_bytes": {i: after_disk[i]["wal_alloc"] - before_disk[i]["wal_alloc"]
                                  for i in NODES},
        "term_before": term_before, "term_after": term_after,
        "term_increase": term_after - term_before,
        "leader_before": leader_of(before_st), "leader_after": leader_of(after_st),
        "leader_changed": leader_of(before_st) != leader_of(after_st),
        "elections_logged": sum(1 for ch in changes if ch["role"] == "Leader"),
        "role_changes": changes,
        "dir_bytes": {i: after_disk[i]["dir"] for i in NODES},
        "dir_alloc_bytes": {i: after_disk[i]["dir_alloc"] for i in NODES},
        "dir_split_bytes": {i: after_disk[i]["split"] for i in NODES},
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        # From the deploy's start until every node applied it: CPU the nodes used, and how
        # busy the whole machine was (anything above the nodes' share is someone else's).
        "nodes_cpu_s": {i: round(cpu_after[i] - cpu_before[i], 2) for i in NODES
                        if cpu_after.get(i) is not None and cpu_before.get(i) is not None},
        "machine_busy_frac": busy_fraction(ticks_before, ticks_after),
        "machine_busy_cpu_s": round((ticks_after[0] - ticks_before[0]) / CLK_TCK, 2),
    })
    rec["nodes_cpu_s_total"] = round(sum(rec["nodes_cpu_s"].values()), 2)
    rec["wal_added_bytes_max"] = max(rec["wal_added_bytes"].values())
    emit(rec)
    log(f"run {run_no} deploy {ordinal} ({name}): {t_deploy:.0f} ms, all applied "
        f"{t_applied:.0f} ms, wal +{rec['wal_added_bytes_max']} B, term "
        f"{term_before}->{term_after}, leader {rec['leader_before']}->{rec['leader_after']}")
    return rec


def measure_snapshot(c, run_no):
    c.check_alive()
    c.wait_for_leader()
    t0 = now_ms()
    r = subprocess.run([W, "snapshot", "trigger", "--all"] + c.client_args(),
                       capture_output=True, text=True, timeout=900)
    dt = now_ms() - t0
    rec = {"kind": "snapshot", "module": os.path.basename(MODULE), "run": run_no,
           "ok": r.returncode == 0, "rc": r.returncode, "trigger_all_ms": round(dt, 1),
           "cli_output": (r.stdout.strip() or r.stderr.strip())}
    sizes = {}
    for i in NODES:
        snap_dir = os.path.join(c.data[i], "snap")
        files = sorted(f for f in os.listdir(snap_dir) if f.endswith(".snap")) \
            if os.path.isdir(snap_dir) else []
        sizes[i] = {"file": files[-1], "bytes": os.path.getsize(os.path.join(snap_dir, files[-1]))} \
            if files else None
    disk = c.disk()
    rec.update({"snapshot_files": sizes,
                "snapshot_bytes_max": max((s["bytes"] for s in sizes.values() if s), default=None),
                "dir_bytes": {i: disk[i]["dir"] for i in NODES},
                "dir_split_bytes": {i: disk[i]["split"] for i in NODES}})
    emit(rec)
    log(f"run {run_no} snapshot: {dt:.0f} ms, {rec['snapshot_bytes_max']} B")
    return rec


def one_run(run_no):
    t_wait = time.monotonic()
    busy = wait_for_quiet() if IDLE_WAIT_S > 0 else None
    c = Cluster()
    out = {"deploys": [], "snapshot": None}
    run_rec = {"kind": "run", "module": os.path.basename(MODULE), "run": run_no,
               "loadavg_start": loadavg(), "busy_frac_at_start": busy,
               "idle_wait_s": round(time.monotonic() - t_wait, 1)}
    try:
        c.start()
        t0 = now_ms()
        st = c.wait_for_leader()
        run_rec["first_leader_ms"] = round(now_ms() - t0, 1)
        run_rec["first_leader"] = leader_of(st)
        run_rec["first_term"] = max(s["term"] for s in st.values())
        run_rec["disk_before"] = {i: d["wal"] for i, d in c.disk().items()}
        out["deploys"].append(measure_deploy(c, run_no, 1, "m1"))
        out["deploys"].append(measure_deploy(c, run_no, 2, "m2"))
        out["snapshot"] = measure_snapshot(c, run_no)
        run_rec["ok"] = True
    except (BenchError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        run_rec["ok"] = False
        emit({"kind": "error", "module": os.path.basename(MODULE), "run": run_no, "error": str(e)})
        log(f"run {run_no} failed: {e}")
    finally:
        c.stop()
        run_rec["loadavg_end"] = loadavg()
        emit(run_rec)
        out["run"] = run_rec
    return out


def fmt_ms(xs):
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.0f}"
    return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"


def mib(n):
    return f"{n / (1 << 20):.1f}"


def summary(results, module_bytes):
    print(f"# deploy-bench: {os.path.basename(MODULE)} ({mib(module_bytes)} MiB), "
          f"{W}, {RUNS} run(s); median (min-max) over successful runs")
    for ordinal in (1, 2):
        recs = [r["deploys"][ordinal - 1] for r in results if len(r["deploys"]) >= ordinal]
        if not recs:
            print(f"# deploy {ordinal}: no successful run")
            continue
        print(f"# deploy {ordinal} (machine m{ordinal}, {len(recs)} run(s)):")
        print(f"#   deploy wall ms          {fmt_ms([r['deploy_ms'] for r in recs])}")
        print(f"#   all nodes applied ms    {fmt_ms([r['all_applied_ms'] for r in recs])}")
        print(f"#   wal added MiB (max/node) "
              + ", ".join(mib(r["wal_added_bytes_max"]) for r in recs))
        print(f"#   term before->after      "
              + ", ".join(f"{r['term_before']}->{r['term_after']}" for r in recs))
        print(f"#   leader before->after    "
              + ", ".join(f"{r['leader_before']}->{r['leader_after']}" for r in recs))
        print(f"#   elections logged        " + ", ".join(str(r["elections_logged"]) for r in recs))
        print(f"#   nodes' CPU s (3 nodes)  " + ", ".join(f"{r['nodes_cpu_s_total']:.1f}" for r in recs))
        print(f"#   machine busy (0..1)     " + ", ".join(f"{r['machine_busy_frac']:.2f}" for r in recs))
        print(f"#   data dir MiB (max/node)  "
              + ", ".join(mib(max(r["dir_bytes"].values())) for r in recs))
        split = recs[-1]["dir_split_bytes"]
        print(f"#   data dir split (last run, node 1): "
              + ", ".join(f"{k} {mib(v)} MiB" for k, v in split.get(1, {}).items()))
    snaps = [r["snapshot"] for r in results if r["snapshot"] and r["snapshot"]["ok"]]
    if snaps:
        print(f"# snapshot after both deploys: trigger --all ms {fmt_ms([s['trigger_all_ms'] for s in snaps])}, "
              f"file MiB " + ", ".join(mib(s["snapshot_bytes_max"]) for s in snaps)
              + ", data dir MiB (max/node) "
              + ", ".join(mib(max(s["dir_bytes"].values())) for s in snaps))
    for r in results:
        rr = r["run"]
        print(f"# run {rr['run']}: loadavg start {rr['loadavg_start']} | end {rr['loadavg_end']}"
              + ("" if rr.get("ok") else "  FAILED"))
    failed = RUNS - sum(1 for r in results if r["snapshot"] is not None)
    if failed:
        print(f"# {failed} run(s) failed; see the `error` lines")


def main():
    if not MODULE or not os.path.isfile(MODULE):
        sys.exit("MODULE must name a .wasm component file (see the docstring)")
    if WASI not in ("none", "deterministic"):
        sys.exit("WASI must be `none` or `deterministic`")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    with open(MODULE, "rb") as f:
        module = f.read()
    binary = W if os.path.sep in W else shutil.which(W)
    if not binary or not os.access(binary, os.X_OK):
        sys.exit(f"W={W} is not an executable wraft binary")
    version = subprocess.run([W, "--version"], capture_output=True, text=True).stdout.strip()
    with open(binary, "rb") as f:
        binary_sha = hashlib.sha256(f.read()).hexdigest()[:16]
    emit({"kind": "env", "wraft": W, "wraft_version": version, "wraft_sha256": binary_sha,
          "module": MODULE, "module_bytes": len(module),
          "module_sha256": hashlib.sha256(module).hexdigest(), "wasi": WASI, "runs": RUNS,
          "cpus": os.cpu_count(), "tmpdir": tempfile.gettempdir(), "loadavg": loadavg(),
          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    results = []
    for n in range(1, RUNS + 1):
        log(f"run {n}/{RUNS}: {os.path.basename(MODULE)}")
        results.append(one_run(n))
    summary(results, len(module))
    if any(r["snapshot"] is None for r in results):
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted ({e}); nodes stopped, run directories removed")
