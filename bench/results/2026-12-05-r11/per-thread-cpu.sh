#!/bin/bash
# Per-thread CPU time and context switches per request over 6 s of wrk -t1 -c64 (one topic,
# server on CPU 0, wrk on CPU 1).  usage: per-thread-cpu.sh BIN LABEL [serve args]; LOG=info for the access log
bin=$1; label=$2; shift 2
d=$(mktemp -d)
taskset -c 0 $bin serve --listen-http 127.0.0.1:18711 --data-dir $d --log-level ${LOG:-warn} --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 "$@" > $d/log 2>&1 & pid=$!
for _ in $(seq 50); do curl -fs http://127.0.0.1:18711/healthz >/dev/null && break; sleep 0.1; done
snap() { for t in /proc/$pid/task/*; do echo "$(cat $t/comm | tr -d ' ') $(awk '{print $14+$15}' $t/stat) $(awk '/voluntary_ctxt/{s+=$2} END{print s}' $t/status)"; done | sort; }
snap > $d/s0
out=$(taskset -c 1 wrk -t1 -c64 -d6s -s "$(dirname "$0")/../2026-12-05-r10/post.lua" http://127.0.0.1:18711/bench)
snap > $d/s1
n=$(echo "$out" | awk '/requests in/{print $1}')
echo "$label: $n requests"
join <(awk '{print $1"_"NR, $2, $3}' $d/s0) <(awk '{print $1"_"NR, $2, $3}' $d/s1) | awk -v n=$n '{cpu=($4-$2)/100/n*1e6; cs=($5-$3)/n; if (cpu>0.01||cs>0.001) printf "  %s cpu %.2f us/req, switches %.3f /req\n", $1, cpu, cs}'
kill -INT $pid; wait $pid; rm -rf $d
