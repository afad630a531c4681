#!/usr/bin/env bash
# What a SQLite commit writes: durable publishes to one topic under `wrk -t1 -c64`
# (the load of bench/publish-nginx.sh), then the server is killed (SIGKILL, so the WAL
# is not checkpointed away at shutdown) and its WAL's frames are counted by the B-tree
# each page belongs to (SQLite's `dbstat` table, through Python's sqlite3 on a copy).
#
#   bench/sqlite-wal-frames.sh [path/to/release/herald]
#
# The WAL holds the frames written since its last restart, so this is a sample of the
# run's last commits, not all of them. Prints the store's operations per commit over
# the whole run (`herald_store_commit_batch_size`) and, for the sampled commits, the
# frames per commit by B-tree and page type. Needs wrk (Debian: `apt-get install wrk`).
set -euo pipefail
herald=${1:-target/release/herald}
SECS=${SECS:-5}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
port=${PORT:-18610}
# shellcheck source=bench/lib-herald-wrk.sh
source "$(dirname "$0")/lib-herald-wrk.sh"
# SIGKILL at exit too: a clean stop would checkpoint the WAL this script reads.
bench_setup KILL
herald_start "$herald" "$port" "$SERVER_CPU"
taskset -c "$LOADGEN_CPU" wrk -t1 -c64 -d"${SECS}s" -s "$work/post.lua" \
    "http://127.0.0.1:$port/bench" | grep -E "requests in|Requests/sec"
curl -fs "http://127.0.0.1:$port/metrics" |
    awk '/^herald_store_commit_batch_size_sum/{s=$2} /^herald_store_commit_batch_size_count/{c=$2}
         END{if (c > 0) printf "operations per commit over the run: %.1f (%d commits)\n", s / c, c}'
{ kill -9 "$pid"; wait "$pid"; } 2>/dev/null || true
pid=""
cp "$work/data/messages.db" "$work/copy.db"
cp "$work/data/messages.db-wal" "$work/copy.db-wal"

python3 - "$work/copy.db" <<'PY'
import collections, sqlite3, struct, sys

db = sys.argv[1]
wal = open(db + "-wal", "rb").read()
# The WAL header and frame headers: https://www.sqlite.org/fileformat2.html#walformat
page_size = struct.unpack(">I", wal[8:12])[0]
salts = wal[16:24]
pages, commits, at = [], 0, 32
while at + 24 + page_size <= len(wal) and wal[at + 8:at + 16] == salts:
    page, db_size_after_commit = struct.unpack(">II", wal[at:at + 8])
    pages.append(page)
    commits += db_size_after_commit != 0
    at += 24 + page_size
# Opening the copy replays the WAL into it, so dbstat maps every page to its B-tree.
owner = {page: (name, kind) for name, page, kind in
         sqlite3.connect(db).execute("SELECT name, pageno, pagetype FROM dbstat")}
print(f"sampled: {len(pages)} frames of {page_size} B in {commits} commits, "
      f"{len(pages) / max(commits, 1):.1f} frames per commit")
for (name, kind), n in collections.Counter(owner.get(p, ("?", "?")) for p in pages).most_common():
    print(f"  {name:32} {kind:9} {n / max(commits, 1):5.2f} per commit")
PY
