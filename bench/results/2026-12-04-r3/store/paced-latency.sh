#!/usr/bin/env bash
# lat.sh BIN OUT.json: durable herald, herald bench paced 500/s, 1 subscriber topic, 8 s
set -euo pipefail
bin=$1; out=$2; work=$(mktemp -d); port=18613
"$bin" serve --listen-http 127.0.0.1:$port --data-dir "$work/data" --log-level warn \
  --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" bench --url http://127.0.0.1:$port --subscribers 4 --topics 4 --publishers 4 --rate 500 --duration 8 --quiet --json "$out" >/dev/null
kill -INT $pid; wait $pid || true; rm -rf "$work"
python3 -c "
import json,sys; d=json.load(open(sys.argv[1])); p=d['publish']; print(sys.argv[1], {k:v for k,v in p.items() if 'p50' in k or 'p99' in k or k in ('published','errors')})" "$out"
