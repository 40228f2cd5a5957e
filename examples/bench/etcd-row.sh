#!/bin/bash
# One etcd row on a fresh 3-member cluster (the kit from shared/bench/etcd, copied and built at
# $KIT, default /tmp/etcd-kit; see runtime/BENCH_NOTES.md "Commands"): 2 s warm-up, 10 s
# measured, printing ops/s, p50, p99 and the whole machine's busy CPU per operation.
# Environment: CLIENTS (256), CONNS (16), KIT.
cd "${KIT:-/tmp/etcd-kit}" && rm -rf /tmp/etcd-data && ./etcd-cluster.sh start /tmp/etcd-data >/dev/null 2>&1; sleep 3
L=""; for p in 23791 23792 23793; do r=$(curl -s -X POST http://127.0.0.1:$p/v3/maintenance/status -d '{}'); python3 -c "import sys,json; d=json.loads(sys.argv[1]); sys.exit(0 if d['header']['member_id']==d['leader'] else 1)" "$r" && L=$p; done
E=target/release/etcd-loadgen
$E --endpoints 127.0.0.1:$L --clients ${CLIENTS:-256} --conns ${CONNS:-16} --secs 2 --value-bytes 256 >/dev/null
read -r _ u n s i io irq sirq st _ < <(head -1 /proc/stat)
out=$($E --endpoints 127.0.0.1:$L --clients ${CLIENTS:-256} --conns ${CONNS:-16} --secs 10 --value-bytes 256)
read -r _ u2 n2 s2 i2 io2 irq2 sirq2 st2 _ < <(head -1 /proc/stat)
./etcd-cluster.sh stop /tmp/etcd-data >/dev/null 2>&1
echo "$out" | python3 -c "
import sys,json; d=json.load(sys.stdin)
busy=(($u2+$n2+$s2+$irq2+$sirq2)-($u+$n+$s+$irq+$sirq))*10000
print(f\"etcd ops/s {d['ops_per_s']} p50 {d['p50_ms']} p99 {d['p99_ms']} cpu_us/op {busy/d['ops']:.1f}\")"
