#!/usr/bin/env python3
"""wraft and etcd taking turns on one machine: both 3-node clusters stay up the whole time and
the two load generators alternate, ROUNDS measured windows each, so that every wraft window has
an etcd window within seconds of it. On a shared VM whose speed swings by a third from one
minute to the next (BENCHMARKS.md series p), pairs of whole runs a minute apart measure the
swing as much as the systems; turns seconds apart do not.

Each round has two turns, wraft first in odd rounds and etcd first in even ones; each turn
starts once the machine is idle (under IDLE_MAX busy over a second, or after 20 s) and is
WARMUP seconds of load then SECS measured. The whole machine's busy CPU per operation is read
from /proc/stat: for wraft over its measured window (0.3 s in from each end), as wraft-row.py
does; for etcd around the measured load generator's whole run, divided by the puts it
counted, as etcd-row.sh does. After each etcd turn its history is compacted (etcd-row.sh
starts every run on an empty cluster; a cluster that stays up would otherwise carry every
revision of every earlier turn).

With W_BASE set (an earlier wraft binary), a third cluster runs that build and takes turns
too: a change is then measured against the build before it and against etcd in the same
minutes. The turns of a round rotate, so each system goes first, second and last equally.

Usage: interleave.py [extra wraft bench args]. Environment: W (the wraft binary), W_BASE
(optional, the build to compare with), MODULE (kv component), KIT (the etcd kit, built;
default /tmp/etcd-kit), CLIENTS (256), CONNS (16), SECS (10), WARMUP (2), ROUNDS (6),
IDLE_MAX (0.15). Linux only; needs etcd on the PATH. Prints a line per round and a summary (the
median and the pooled ratio: all of a system's puts over all of etcd's); ends every cluster."""
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

W = os.environ.get('W', '/work/target-bench/release/wraft')
W_BASE = os.environ.get('W_BASE')
KIT = os.environ.get('KIT', '/tmp/etcd-kit')
CLIENTS = os.environ.get('CLIENTS', '256')
CONNS = os.environ.get('CONNS', '16')
SECS = int(os.environ.get('SECS', '10'))
WARMUP = int(os.environ.get('WARMUP', '2'))
ROUNDS = int(os.environ.get('ROUNDS', '6'))
IDLE_MAX = float(os.environ.get('IDLE_MAX', '0.15'))
ETCD_DATA = '/tmp/etcd-data'
LOADGEN = os.path.join(KIT, 'target/release/etcd-loadgen')


def stat():
    """(busy, idle, steal) jiffies of the whole machine."""
    v = list(map(int, open('/proc/stat').readline().split()[1:]))
    return v[0] + v[1] + v[2] + v[5] + v[6], v[3] + v[4], v[7]


def busy_between(a, b):
    busy, idle, steal = (b[i] - a[i] for i in range(3))
    return busy, busy + idle + steal, steal


def wait_idle():
    """Seconds waited until one second with the machine under IDLE_MAX busy (at most 20)."""
    t0 = time.time()
    while time.time() - t0 < 20:
        a = stat()
        time.sleep(1)
        busy, total, _ = busy_between(a, stat())
        if total and busy / total < IDLE_MAX:
            break
    return time.time() - t0


def windowed(start_load):
    """Start the load (a callable), sample /proc/stat over the measured window; returns the
    callable's result and the window's (busy jiffies, total jiffies, steal jiffies)."""
    samples = {}

    def timer():
        time.sleep(WARMUP + 0.3)
        samples['a'] = stat()
        time.sleep(SECS - 0.6)
        samples['b'] = stat()

    t = threading.Thread(target=timer)
    t.start()
    result = start_load()
    t.join()
    return result, busy_between(samples['a'], samples['b'])


def cpu_us_per_op(window, ops_per_s):
    busy, _, _ = window
    return busy * 10000 / (ops_per_s * (SECS - 0.6)) if ops_per_s else float('nan')


def etcd_post(port, path, body):
    out = subprocess.run(['curl', '-s', '-X', 'POST', f'http://127.0.0.1:{port}{path}', '-d',
                          json.dumps(body)], capture_output=True, text=True).stdout
    try:
        return json.loads(out)
    except ValueError:
        return {}


def etcd_leader_port():
    for port in (23791, 23792, 23793):
        d = etcd_post(port, '/v3/maintenance/status', {})
        if 'leader' in d and d.get('header', {}).get('member_id') == d['leader']:
            return port
    return None


def etcd_turn(port):
    """WARMUP s of etcd load, then SECS measured, CPU read around the measured run (as
    etcd-row.sh does); then compact the history the turn wrote."""
    base = [LOADGEN, '--endpoints', f'127.0.0.1:{port}', '--clients', CLIENTS,
            '--conns', CONNS, '--value-bytes', '256']
    subprocess.run(base + ['--secs', str(WARMUP)], capture_output=True, check=True)
    a = stat()
    out = subprocess.run(base + ['--secs', str(SECS)], capture_output=True, text=True,
                         check=True).stdout
    window = busy_between(a, stat())
    result = json.loads(out)
    revision = etcd_post(port, '/v3/maintenance/status', {}).get('header', {}).get('revision')
    if revision:
        etcd_post(port, '/v3/kv/compaction', {'revision': revision, 'physical': True})
    return result, window


def cpu_us_per_etcd_op(window, result):
    busy, _, _ = window
    return busy * 10000 / result['ops'] if result.get('ops') else float('nan')


def wait_for_text(path, text, count, proc, timeout=300):
    """Wait until `path` holds `text` at least `count` times (the bench's log)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if open(path).read().count(text) >= count:
            return
        if proc.poll() is not None:
            sys.exit(f'wraft bench ended early; see {path}')
        time.sleep(0.2)
    sys.exit(f'wraft bench not ready after {timeout} s; see {path}')


class WraftBench:
    """One `wraft bench --rounds-on-stdin` cluster, its turns started by a line on stdin."""

    def __init__(self, binary, log_path):
        self.log_path = log_path
        self.turns = 0
        # A session of its own: on any failure, the bench and the node processes it started
        # are killed together (a killed bench cannot stop its nodes itself).
        self.proc = subprocess.Popen(
            [binary, 'bench', '--processes', '--clients', CLIENTS, '--conns', CONNS,
             '--secs', str(SECS), '--warmup-secs', str(WARMUP), '--rounds', str(ROUNDS),
             '--rounds-on-stdin', '--module', os.environ.get('MODULE', '/tmp/kv.wasm')]
            + sys.argv[1:],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log_path, 'w'),
            text=True, bufsize=1, start_new_session=True)

    def turn(self):
        self.turns += 1
        # The bench says when it waits for the round's line: after its probes, the cluster's
        # start and the deploy (whose compiles are seconds of CPU) for the first.
        wait_for_text(self.log_path, 'waiting for a line', self.turns, self.proc)
        waited = wait_idle()

        def load():
            self.proc.stdin.write('go\n')
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                sys.exit(f'wraft bench ended early; see {self.log_path}')
            return json.loads(line)
        return windowed(load) + (waited,)

    def finish(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=120)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main():
    subprocess.run(['rm', '-rf', ETCD_DATA], check=True)
    benches = {}
    try:
        subprocess.run([os.path.join(KIT, 'etcd-cluster.sh'), 'start', ETCD_DATA],
                       capture_output=True, check=True)
        port, t0 = None, time.time()
        while port is None and time.time() - t0 < 30:
            time.sleep(0.5)
            port = etcd_leader_port()
        if port is None:
            sys.exit('etcd elected no leader within 30 s')
        benches['wraft'] = WraftBench(W, '/tmp/interleave-wraft.log')
        systems = ['wraft', 'etcd']
        if W_BASE:
            benches['base'] = WraftBench(W_BASE, '/tmp/interleave-base.log')
            systems = ['wraft', 'base', 'etcd']
        rows = []
        for r in range(1, ROUNDS + 1):
            turns = {}
            # Round 1 in the listed order, each next round rotated by one.
            shift = (r - 1) % len(systems)
            order = systems[shift:] + systems[:shift]
            for system in order:
                if system == 'etcd':
                    waited = wait_idle()
                    turns[system] = etcd_turn(port) + (waited,)
                else:
                    turns[system] = benches[system].turn()
            (w, ww, wwait), (e, ew, ewait) = turns['wraft'], turns['etcd']
            row = {
                'round': r, 'order': order,
                'wraft_ops_per_s': w['ops_per_s'], 'etcd_ops_per_s': e['ops_per_s'],
                'ratio': w['ops_per_s'] / e['ops_per_s'],
                'wraft_p99_ms': w['p99_ms'], 'etcd_p99_ms': e['p99_ms'],
                'p99_ratio': w['p99_ms'] / e['p99_ms'],
                'wraft_cpu_us_per_op': cpu_us_per_op(ww, w['ops_per_s']),
                'etcd_cpu_us_per_op': cpu_us_per_etcd_op(ew, e),
                'steal_pct': 100 * (ww[2] + ew[2]) / max(1, ww[1] + ew[1]),
                'idle_wait_s': round(wwait + ewait, 1),
                'wraft_errors': w.get('errors', 0),
            }
            line = (f"round {r} ({' '.join(order)}): wraft {w['ops_per_s']:.0f} ops/s "
                    f"p99 {w['p99_ms']} ms {row['wraft_cpu_us_per_op']:.1f} µs/op")
            if 'base' in turns:
                b, bw, _ = turns['base']
                row.update({
                    'base_ops_per_s': b['ops_per_s'], 'base_p99_ms': b['p99_ms'],
                    'base_cpu_us_per_op': cpu_us_per_op(bw, b['ops_per_s']),
                    'base_ratio': b['ops_per_s'] / e['ops_per_s'],
                    'vs_base': w['ops_per_s'] / b['ops_per_s'],
                    'base_errors': b.get('errors', 0),
                })
                line += (f" | base {b['ops_per_s']:.0f} ops/s p99 {b['p99_ms']} ms "
                         f"{row['base_cpu_us_per_op']:.1f} µs/op ({row['vs_base']:.2f}x)")
            rows.append(row)
            print(f"{line} | etcd {e['ops_per_s']:.0f} ops/s p99 {e['p99_ms']} ms "
                  f"{row['etcd_cpu_us_per_op']:.1f} µs/op | {row['ratio']:.2f}x, p99 "
                  f"{row['p99_ratio']:.2f} | steal {row['steal_pct']:.1f}% | waited "
                  f"{row['idle_wait_s']} s for idle", flush=True)
        for bench in benches.values():
            bench.finish()

        def spread(key):
            v = [x[key] for x in rows]
            return f"min {min(v):.2f} median {statistics.median(v):.2f} max {max(v):.2f}"

        def pooled(system):
            """All of `system`'s puts over all of etcd's, in the same rounds."""
            return (sum(x[f'{system}_ops_per_s'] for x in rows)
                    / sum(x['etcd_ops_per_s'] for x in rows))
        summary = (f"summary: {len(rows)} rounds, ratio {spread('ratio')}, pooled "
                   f"{pooled('wraft'):.2f}; p99 ratio {spread('p99_ratio')}")
        if W_BASE:
            summary += (f"; base ratio {spread('base_ratio')}, pooled {pooled('base'):.2f}; "
                        f"wraft/base {spread('vs_base')}")
        print(summary)
        print(json.dumps({'rounds': rows}))
    finally:
        for bench in benches.values():
            bench.kill()
        subprocess.run([os.path.join(KIT, 'etcd-cluster.sh'), 'stop', ETCD_DATA],
                       capture_output=True)


if __name__ == '__main__':
    main()
