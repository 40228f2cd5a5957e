#!/usr/bin/env python3
"""Where a single-client put spends its time, from the scheduler's wake-ups.

Run a 1-client `wraft bench --processes`, and while it measures:

    perf sched record -o sched.data -- sleep 1
    perf sched timehist -i sched.data -w > sched.txt
    ./put-chain.py sched.txt BENCH_PID NODE_PID NODE_PID NODE_PID

For every put it follows the chain client -> leader -> follower -> follower's storage thread
-> follower -> leader -> machine thread -> leader -> client, by which thread wakes which, and
prints the median time between consecutive links (wake-up to wake-up).
"""
import re
import statistics
import sys
from collections import Counter

if len(sys.argv) < 4:
    sys.exit(__doc__)
bench = int(sys.argv[2])
nodes = {int(p) for p in sys.argv[3:]}
known = nodes | {bench}
line = re.compile(r'^\s*([\d.]+)\s+\[\d+\]\s+(\S+?)\[(\d+)(?:/(\d+))?\]\s+awakened:\s+(\S+?)\[(\d+)(?:/(\d+))?\]')


def who(comm, tid, pid):
    kind = 'store' if comm.startswith('wraft-storage') else 'machine' if comm.startswith('wraft-machine') else 'rt'
    return int(pid) if pid else int(tid), kind


events = []
for text in open(sys.argv[1]):
    m = line.match(text)
    if not m:
        continue
    waker, wakee = who(*m.group(2, 3, 4)), who(*m.group(5, 6, 7))
    if waker[0] in known and wakee[0] in known:
        events.append((float(m.group(1)) * 1e6, waker, wakee))
leader = Counter(b[0] for _, a, b in events if a[0] == bench and b[0] != bench).most_common(1)[0][0]

steps = ['request', 'append', 'to_storage', 'durable', 'ack', 'to_machine', 'applied', 'response']
done, cur = [], None
for t, a, b in events:
    if a[0] == bench and b[0] == leader:
        cur = cur or {'request': t}
        continue
    if cur is None:
        continue
    f = cur.get('follower')
    if 'append' not in cur:
        if a == (leader, 'rt') and b[0] in nodes - {leader}:
            cur.update(append=t, follower=b[0])
    elif 'to_storage' not in cur:
        if a == (f, 'rt') and b == (f, 'store'):
            cur['to_storage'] = t
    elif 'durable' not in cur:
        if a == (f, 'store') and b == (f, 'rt'):
            cur['durable'] = t
    elif 'ack' not in cur:
        if a[0] in nodes - {leader} and b[0] == leader:
            cur['ack'] = t
    elif 'to_machine' not in cur:
        if a[0] == leader and b == (leader, 'machine'):
            cur['to_machine'] = t
    elif 'applied' not in cur:
        if a == (leader, 'machine') and b[0] == leader:
            cur['applied'] = t
    elif a[0] == leader and b[0] == bench:
        cur['response'] = t
        done.append(cur)
        cur = None
if not done:
    sys.exit('no complete put found: is the first pid the bench client, the others its nodes?')
print(f'leader {leader}, {len(done)} puts followed')
for x, y in zip(steps, steps[1:]):
    print(f'{x:>10} -> {y:<10} p50 {statistics.median(o[y] - o[x] for o in done):7.1f} us')
print(f'{"request":>10} -> {"response":<10} p50 {statistics.median(o["response"] - o["request"] for o in done):7.1f} us')
gaps = [b['request'] - a['response'] for a, b in zip(done, done[1:]) if b['request'] - a['response'] < 5000]
if gaps:
    print(f'{"response":>10} -> next request p50 {statistics.median(gaps):7.1f} us')
