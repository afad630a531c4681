#!/usr/bin/env bash
# Old/new dist binaries with docs/BENCHMARKS.md's hot-path commands ("Binary size",
# "Under 10 MiB"): OLD=... NEW=... OUT=dir hot.sh; writes ROUND-NAME-KIND.json to OUT.
set -u
: "${OLD:?}" "${NEW:?}" "${OUT:?}"
for round in 1 2; do
for name in old new; do
  if [ $name = old ]; then BIN=$OLD; else BIN=$NEW; fi
  for kind in publish fanout; do
    D=$(mktemp -d)
    taskset -c 0 $BIN serve --listen-http 127.0.0.1:18911 --data-dir $D --log-level warn \
      --visitor-subscription-limit 1000000 --global-topic-limit 1000000 \
      --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 \
      --visitor-topic-creation-limit-burst 0 > /dev/null 2>&1 &
    PID=$!
    for i in $(seq 50); do curl -fs http://127.0.0.1:18911/v1/health >/dev/null && break; sleep 0.1; done
    G="taskset -c 1 $OLD bench --url http://127.0.0.1:18911 --src-ips 16 --server-pid $PID"
    echo "=== round $round $name $kind (load $(cut -d' ' -f1 /proc/loadavg))"
    if [ $kind = publish ]; then
      $G --subscribers 1000 --topics 1000 --publishers 16 --rate 0 --duration 10 > $OUT/$round-$name-$kind.json 2>/dev/null
    else
      $G --subscribers 1000 --rate 100 --duration 10 > $OUT/$round-$name-$kind.json 2>/dev/null
    fi
    kill -TERM $PID; wait $PID; rm -rf $D
  done
done
done
