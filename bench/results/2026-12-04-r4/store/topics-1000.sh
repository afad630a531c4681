#!/usr/bin/env bash
# usage: t1000.sh BIN LABEL [publishers rate ...]; PERF=file records the server during the first run
set -u
BIN=$1; L=$2; shift 2; P=${PORT:-18660}; D=$(mktemp -d)
taskset -c 0 $BIN serve --listen-http 127.0.0.1:$P --data-dir $D --log-level warn \
  --visitor-subscription-limit 1000000 --global-topic-limit 1000000 \
  --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 \
  --visitor-topic-creation-limit-burst 0 ${EXTRA:-} >$D/log 2>&1 &
S=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:$P/healthz >/dev/null && break; sleep 0.1; done
runs=${*:-"16 0" "64 0" "16 10000"}
[ $# -eq 0 ] && set -- "16 0" "64 0" "16 10000"
for args in "$@"; do
  set -- $args
  if [ -n "${PERF:-}" ]; then (sleep 3; perf record -g -o $PERF -p $S -- sleep 4 >/dev/null 2>&1) & fi
  taskset -c 1 ${LOADGEN:-/tmp/herald-base} bench --url http://127.0.0.1:$P --subscribers 1000 --topics 1000 --src-ips 16 \
    --duration 10 --publishers $1 --rate $2 --quiet --json $D/run.json --server-pid $S >/dev/null 2>&1
  PERF=
  curl -s http://127.0.0.1:$P/metrics | grep -E "store_commit_batch_size_(sum|count)" | tr '\n' ' '
  python3 - "$D/run.json" "$L" "$1" "$2" <<'PY'
import json,sys
r=json.load(open(sys.argv[1])); p=r['publish']
print(f"{sys.argv[2]} publishers={sys.argv[3]} rate={sys.argv[4]}: {p['per_s']:.0f}/s publish p50/p99 {p['lat_us']['p50']}/{p['lat_us']['p99']} us; server cpu {r['server']['cpu_pct']['publish']}% = {r['server']['cpu_pct']['publish']*1e4/max(p['per_s'],1):.1f} us/publish")
PY
done
kill -INT $S; wait $S; rm -rf $D
