#!/usr/bin/env python3
"""One `wraft bench --processes` row, plus the whole machine's busy CPU per operation over the
measured window only (read from /proc/stat 0.3 s after the warm-up ends until 0.3 s before the
end). Usage: wraft-row.py LABEL [extra bench args]. Environment: W (the wraft binary, default
/work/target-bench/release/wraft), MODULE (kv component, default /tmp/kv.wasm), CLIENTS (256),
CONNS (16), SECS (10). Linux only."""
import sys, os, subprocess, time, json, threading
label=sys.argv[1]; extra=sys.argv[2:]
W=os.environ.get('W','/work/target-bench/release/wraft')
secs=int(os.environ.get('SECS','10'))
def stat():
    f=open('/proc/stat').readline().split()[1:]
    v=list(map(int,f)); busy=v[0]+v[1]+v[2]+v[5]+v[6]; idle=v[3]+v[4]; steal=v[7]
    return busy, idle, steal
p=subprocess.Popen([W,'bench','--processes','--clients',os.environ.get('CLIENTS','256'),'--conns',os.environ.get('CONNS','16'),'--secs',str(secs),'--module',os.environ.get('MODULE','/tmp/kv.wasm')]+extra,stdout=subprocess.PIPE,stderr=subprocess.STDOUT,text=True)
samples={}
def timer():
    time.sleep(2.3); samples['a']=stat(); time.sleep(secs-0.6); samples['b']=stat()
last=None
for line in p.stdout:
    if 'warm-up' in line and 't' not in samples:
        samples['t']=1; threading.Thread(target=timer,daemon=True).start()
    last=line
p.wait()
d=json.loads(last)
a,b=samples['a'],samples['b']
busy=(b[0]-a[0])*10000; idle=(b[1]-a[1]); steal=b[2]-a[2]; tot=(b[0]-a[0])+idle+steal
win=secs-0.6
print(f"{label} ops/s {d['ops_per_s']:.0f} p50 {d['p50_ms']} p99 {d['p99_ms']} cpu_us/op {busy/(d['ops_per_s']*win):.1f} idle {100*idle/tot:.1f}% steal {100*steal/tot:.1f}% load {d.get('load1_before')}")
print(f"{label} floors (p50 ms): fdatasync append {d['fsync_append_p50_ms']} overwrite {d['fsync_overwrite_p50_ms']}"
      f" append x{d['fsync_concurrent_threads']} {d['fsync_concurrent_p50_ms']}"
      f" overwrite x{d['fsync_concurrent_threads']} {d.get('fsync_concurrent_overwrite_p50_ms')}"
      f" udp rtt {d['udp_rtt_p50_ms']} status rtt {d['request_rtt_p50_ms']}"
      f" hand-off rtt {d.get('handoff_rtt_p50_ms')}"
      f" paced: status rtt {d.get('request_rtt_paced_p50_ms')} hand-off rtt {d.get('handoff_rtt_paced_p50_ms')}"
      f" client workers {d.get('client_worker_threads')}")
