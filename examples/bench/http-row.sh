#!/bin/bash
# HTTP API vs native client vs etcd's JSON gateway (BENCHMARKS.md): durable 256-byte puts,
# closed loop, at 1, 16 and 256 concurrent connections, one row per system and concurrency:
#   wraft-http  wrk (Debian's /usr/bin/wrk) with http-put.lua against the leader's HTTPS API,
#               keep-alive connections, a bearer token (role write), on a fresh 3-node cluster
#               per row of `wraft node` processes laid out as `wraft bench` lays them out;
#   native      `wraft bench --processes --clients N --conns M` (M = min(N, 16)), the QUIC client;
#   etcd        the same wrk script against etcd's JSON gateway (POST /v3/kv/put, base64), on a
#               fresh 3-member cluster per row (Debian's etcd-server), at the leader's client port.
# Each row: ops/s, p50/p99 ms, answers not 2xx, and the whole machine's busy CPU per put over
# the measured window (clients included). wrk gets a WARM-second warm-up at the same concurrency.
# Usage: http-row.sh [wraft|native|etcd]...   (default: wraft native etcd; repeat to alternate)
# Environment: W (wraft binary), MODULE (kv component), CONCS ("1 16 256"), SECS (10), WARM (2),
# ROOT (work dir, /tmp/wraft-http-bench), PORT (27100: wraft uses PORT+1..3 (QUIC) and
# PORT+81..83 (HTTPS), etcd PORT+191..193 (client) and PORT+181..183 (peer)).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
W=${W:-${CARGO_TARGET_DIR:-target}/release/wraft}
MODULE=${MODULE:-target/wasm32-unknown-unknown/guest/wraft_example_kv.component.wasm}
CONCS=${CONCS:-1 16 256}; SECS=${SECS:-10}; WARM=${WARM:-2}
ROOT=${ROOT:-/tmp/wraft-http-bench}; PORT=${PORT:-27100}
LUA=$HERE/http-put.lua
PIDS=()

busy() { head -1 /proc/stat | awk '{print $2+$3+$4+$7+$8}'; }
threads_for() { if [ "$1" -le 1 ]; then echo 1; else echo 2; fi; }
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done; PIDS=(); }
trap stop_all EXIT

# wrk's output → "ops/s p50 p99 non2xx" (latencies in ms).
wrk_row() {
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
    /Requests\/sec/ { rps = $2 } /Non-2xx/ { bad = $5 } /requests in/ { n = $1 }
    /checked:/ { chk = $4 }
    END { printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, bad + 0, n }'
}

# run_wrk LABEL URL ARGS... : warm-up, then the measured run, one row per concurrency.
run_wrk() {
  local label=$1 url=$2; shift 2
  for c in $CONCS; do
    local t; t=$(threads_for "$c")
    wrk -t"$t" -c"$c" -d"${WARM}s" -s "$LUA" "$url" -- "$@" >/dev/null 2>&1
    local b0 b1 out; b0=$(busy)
    out=$(wrk -t"$t" -c"$c" -d"${SECS}s" --latency -s "$LUA" "$url" -- "$@" 2>&1)
    b1=$(busy)
    echo "$out" >>"$ROOT/wrk.log"
    read -r rps p50 p99 bad n < <(echo "$out" | wrk_row)
    local cpu; cpu=$(awk -v b=$((b1 - b0)) -v n="$n" 'BEGIN { printf "%.0f", n ? b * 10000 / n : 0 }')
    printf "%-11s conns %3d (wrk -t%d)  ops/s %6d  p50 %7.3f ms  p99 %7.3f ms  not-2xx %d  cpu_us/op %s\n" \
      "$label" "$c" "$t" "$rps" "$p50" "$p99" "$bad" "$cpu"
    [ "$bad" -gt 0 ] && echo "$out" | grep -iE 'non-2xx|first non-200|checked' >&2
  done
}

wraft_http_cluster() {
  local d=$ROOT/wraft; rm -rf "$d"; mkdir -p "$d"
  "$W" cert --dir "$d/certs" --nodes 1,2,3 --clients admin >/dev/null 2>&1 || { echo "wraft cert failed" >&2; return 1; }
  local token; token=$("$W" token create --certs "$d/certs" --name bench --role write 2>/dev/null)
  for i in 1 2 3; do
    # As `wraft bench` lays out a local cluster: one async worker per node (CPUs ÷ nodes on 2 cores).
    cat >"$d/node-$i.toml" <<TOML
[node]
id = $i
data_dir = "$d/node-$i"
listen = "127.0.0.1:$((PORT + i))"
worker_threads = $(( $(nproc) / 3 > 0 ? $(nproc) / 3 : 1 ))

[cluster]
members = { 1 = "127.0.0.1:$((PORT + 1))", 2 = "127.0.0.1:$((PORT + 2))", 3 = "127.0.0.1:$((PORT + 3))" }

[tls]
dir = "$d/certs"

[http]
listen = "127.0.0.1:$((PORT + 80 + i))"
TOML
    RUST_LOG=warn "$W" node --config "$d/node-$i.toml" 2>"$d/node-$i.log" &
    PIDS+=($!)
  done
  local eps="127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2)),127.0.0.1:$((PORT + 3))"
  "$W" deploy kv "$MODULE" --endpoints "$eps" --certs "$d/certs" >/dev/null 2>"$d/deploy.log" || { cat "$d/deploy.log" >&2; stop_all; return 1; }
  local leader=0
  for _ in $(seq 50); do
    leader=$(curl -sk -H "Authorization: Bearer $token" "https://127.0.0.1:$((PORT + 81))/v1/status" |
      python3 -c 'import sys,json; print(json.load(sys.stdin).get("leader") or 0)' 2>/dev/null)
    [ "${leader:-0}" != 0 ] && break; sleep 0.2
  done
  local url="https://127.0.0.1:$((PORT + 80 + leader))"
  # One put by hand: the route, the token and the body must give 200, or the run is worthless.
  local code; code=$(curl -sk -o "$d/check.json" -w '%{http_code}' -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"op":"put","key":"check","value":"1","prev_kv":false}' "$url/v1/machines/kv/propose")
  [ "$code" = 200 ] || { echo "check put: HTTP $code $(cat "$d/check.json")" >&2; stop_all; return 1; }
  echo "# wraft-http: leader node $leader at $url; load1 $(cut -d' ' -f1 /proc/loadavg)"
  run_wrk wraft-http "$url" wraft "$token"
  stop_all
}

native() {
  for c in $CONCS; do
    local m=$(( c < 16 ? c : 16 )) b0 b1 out
    b0=$(busy)
    out=$("$W" bench --processes --clients "$c" --conns "$m" --secs "$SECS" --warmup-secs "$WARM" --module "$MODULE" --dir "$ROOT" 2>"$ROOT/native.err")
    b1=$(busy)
    echo "$out" >>"$ROOT/native.log"
    echo "$out" | python3 -c "
import sys, json; d = json.loads(sys.stdin.read().strip().splitlines()[-1])
# busy CPU is over the whole run (disk probes and cluster start included), so only indicative
print(f\"native      conns {$c:3d} (quic x$m)   ops/s {d['ops_per_s']:6.0f}  p50 {d['p50_ms']:7.3f} ms  p99 {d['p99_ms']:7.3f} ms  errors {d.get('errors', 0)}\")
print(f\"#   fdatasync p50 ms: append {d['fsync_append_p50_ms']} overwrite {d['fsync_overwrite_p50_ms']} overwrite x{d['fsync_concurrent_threads']} {d.get('fsync_concurrent_overwrite_p50_ms')}; load1 before {d.get('load1_before')}\")" \
      || { tail -5 "$ROOT/native.err" >&2; }
  done
}

etcd_gw_cluster() {
  local d=$ROOT/etcd; rm -rf "$d"; mkdir -p "$d"
  local cluster="e1=http://127.0.0.1:$((PORT + 181)),e2=http://127.0.0.1:$((PORT + 182)),e3=http://127.0.0.1:$((PORT + 183))"
  for i in 1 2 3; do
    etcd --name e$i --data-dir "$d/e$i" \
      --listen-client-urls http://127.0.0.1:$((PORT + 190 + i)) --advertise-client-urls http://127.0.0.1:$((PORT + 190 + i)) \
      --listen-peer-urls http://127.0.0.1:$((PORT + 180 + i)) --initial-advertise-peer-urls http://127.0.0.1:$((PORT + 180 + i)) \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
      --logger zap --log-level error >"$d/etcd$i.log" 2>&1 &
    PIDS+=($!)
  done
  local leader=""
  for _ in $(seq 50); do
    for i in 1 2 3; do
      r=$(curl -s -X POST "http://127.0.0.1:$((PORT + 190 + i))/v3/maintenance/status" -d '{}')
      python3 -c "import sys,json; d=json.loads(sys.argv[1]); sys.exit(0 if d['header']['member_id']==d['leader'] else 1)" "$r" 2>/dev/null && leader=$((PORT + 190 + i))
    done
    [ -n "$leader" ] && break; sleep 0.2
  done
  [ -n "$leader" ] || { echo "etcd: no leader" >&2; stop_all; return 1; }
  echo "# etcd: leader at 127.0.0.1:$leader; load1 $(cut -d' ' -f1 /proc/loadavg)"
  run_wrk etcd "http://127.0.0.1:$leader" etcd
  stop_all
}

# A fresh cluster per row, as `wraft bench` gives the native client: a row must not inherit
# the entries, snapshots and compactions of the rows before it.
wraft_http() { local all=$CONCS c; for c in $all; do CONCS=$c wraft_http_cluster; done; CONCS=$all; }
etcd_gw() { local all=$CONCS c; for c in $all; do CONCS=$c etcd_gw_cluster; done; CONCS=$all; }

mkdir -p "$ROOT"
[ $# -eq 0 ] && set -- wraft native etcd
for s in "$@"; do
  case $s in
    wraft) wraft_http ;; native) native ;; etcd) etcd_gw ;;
    *) echo "unknown system $s (wraft, native, etcd)" >&2; exit 2 ;;
  esac
done
