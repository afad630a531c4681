#!/usr/bin/env bash
# Builds the shipped herald binary: statically linked (glibc, +crt-static), `dist`
# profile (fat LTO, opt-level "s" except the hot-path crates, stripped), then checks
# it and runs it in an empty root. `.ci/run` runs it as is: CI checks what ships.
#
#   scripts/build-static.sh            build, verify, chroot smoke test
#   NO_BUILD=1 scripts/build-static.sh re-run the checks on the last built binary
#   NO_CHROOT=1 scripts/build-static.sh build and verify only (no root needed)
#   STATIC_PROFILE=static-check scripts/build-static.sh   quicker local build (no LTO),
#                                      same checks; not the binary that ships
#
# What it checks (exit status non-zero on the first failure):
#   * `ldd` finds no dynamic dependencies, `file` says static(-pie) linked
#   * the binary is at most MAX_BYTES (default 10 MiB)
#   * no OpenSSL in the dependency graph (`cargo tree -i openssl-sys`/`native-tls`)
#   * in a temp dir holding only /herald, etc/hosts, etc/resolv.conf, dev/null,
#     dev/urandom and an empty data/ (a stand-in for the FROM scratch image), run as
#     uid/gid 65534 like the image: /v1/health answers, `herald healthcheck` against
#     /healthz exits 0, a message published is polled back, SIGTERM exits 0, and the
#     message is still there after a restart (the store lives in /data).
#
# The chroot part needs root (chroot, mknod). Takes several minutes on 2 cores (fat
# LTO); run it with `nice -n 10` on a shared machine. CARGO_TARGET_DIR is honoured.
# The build flags are the same as the Dockerfile's builder stage; keep them in sync.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET=x86_64-unknown-linux-gnu
# STATIC_PROFILE=static-check builds the same static binary without LTO, in less time;
# the shipped binary (and the one .ci/run checks) uses `dist`.
PROFILE="${STATIC_PROFILE:-dist}"
MAX_BYTES="${MAX_BYTES:-$((10 * 1024 * 1024))}"
RUN_UID=65534
RUN_GID=65534
START=$SECONDS

step() { printf '\n==> %s\n' "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() { echo "ok: $*"; }

# --- build ------------------------------------------------------------------------

target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[[ -n "$target_dir" ]] || fail "cannot find cargo's target directory"
BIN="$target_dir/$TARGET/$PROFILE/herald"

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    step "cargo build --profile $PROFILE --target $TARGET (+crt-static)"
    t=$SECONDS
    # --target must be explicit: without it RUSTFLAGS also reach proc-macros and
    # build scripts, which cannot be static (docs/OPERATIONS.md).
    # The SQLite options (LIBSQLITE3_FLAGS) are .cargo/config.toml's, as for every build.
    # crates/herald/build.rs adds `-z pack-relative-relocs` to the link of a +crt-static
    # build (0.5 MB less of relocations).
    # SQLite at -O2 (Cargo.toml) adds 0.26 MB; it fits because the C code (SQLite's, and
    # ring's few C files beside its assembly) is built without unwind tables (no Rust
    # unwinds through it, and `dist` aborts on a panic) and without inlining functions
    # not marked inline: -0.18 MB, for ~230 instructions a durable publish
    # (docs/BENCHMARKS.md, round 13). (cc reads CFLAGS_<target>; TARGET_CFLAGS is
    # ignored when the target is the host.)
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        CFLAGS_x86_64_unknown_linux_gnu="${CFLAGS_x86_64_unknown_linux_gnu:-} -fno-asynchronous-unwind-tables -fno-unwind-tables -fno-inline-functions" \
        cargo build --locked --profile "$PROFILE" --target "$TARGET" -p herald --bin herald --no-default-features --features s3
    echo "    built in $((SECONDS - t))s"
fi
[[ -x "$BIN" ]] || fail "no binary at $BIN (build first, or unset NO_BUILD)"

# --- static checks ----------------------------------------------------------------

step "binary"
size=$(stat -c %s "$BIN")
echo "path: $BIN"
printf 'size: %s bytes (%s MiB)\n' "$size" "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')"
"$BIN" --version

step "linkage"
ldd_out="$(ldd "$BIN" 2>&1 || true)"
echo "ldd:  $ldd_out"
if ! grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
    fail "ldd lists dynamic dependencies"
fi
file_out="$(file -b "$BIN")"
echo "file: $file_out"
grep -qE 'static-pie linked|statically linked' <<<"$file_out" || fail "file does not report a static binary"
ok "statically linked"

step "size limit"
((size <= MAX_BYTES)) || fail "binary is $size bytes, over the limit of $MAX_BYTES"
ok "$size <= $MAX_BYTES bytes"

step "no OpenSSL in the dependency graph"
for pkg in openssl-sys native-tls; do
    set +e
    tree_out="$(cargo tree --locked -e normal --target all -i "$pkg" 2>&1)"
    rc=$?
    set -e
    # Absent: either "did not match any packages" (not in the lock file at all) or
    # an empty tree (only reachable through dev/build dependencies).
    if [[ $rc -ne 0 ]] && grep -q 'did not match any packages' <<<"$tree_out"; then
        ok "$pkg: not in the dependency graph"
    elif [[ $rc -eq 0 ]] && ! grep -q "^$pkg " <<<"$tree_out"; then
        ok "$pkg: not a normal dependency"
    else
        echo "$tree_out" >&2
        fail "$pkg is in herald's dependency graph (or cargo tree failed, exit $rc)"
    fi
done

if [[ "${NO_CHROOT:-0}" == 1 ]]; then
    printf '\nstatic checks passed in %ss (chroot test skipped: NO_CHROOT=1)\n' "$((SECONDS - START))"
    exit 0
fi

# --- empty-root smoke test --------------------------------------------------------

step "empty-root run (chroot, uid $RUN_UID)"
[[ $(id -u) -eq 0 ]] || fail "the chroot test needs root (chroot, mknod); NO_CHROOT=1 skips it"
for tool in chroot mknod curl; do
    command -v "$tool" >/dev/null || fail "$tool not found"
done
CHROOT="$(command -v chroot)"

JAIL="$(mktemp -d /tmp/herald-static.XXXXXX)"
LOG="$JAIL.log"
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$JAIL" "$LOG"
}
trap cleanup EXIT

chmod 755 "$JAIL"
mkdir -p "$JAIL/etc" "$JAIL/dev" "$JAIL/data"
install -m 755 "$BIN" "$JAIL/herald"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$JAIL/etc/hosts"
printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$JAIL/etc/resolv.conf"
mknod -m 666 "$JAIL/dev/null" c 1 3
mknod -m 444 "$JAIL/dev/urandom" c 1 9
chown "$RUN_UID:$RUN_GID" "$JAIL/data"
echo "root: $JAIL"
(cd "$JAIL" && find . -mindepth 1 | sort | sed 's/^/    /')

# Runs a command inside the jail as the image's user, with an empty environment.
# env execs chroot, which execs the command: one process, one PID.
JAIL_CMD=(env -i "$CHROOT" --userspec="$RUN_UID:$RUN_GID" --groups="$RUN_GID" "$JAIL")

# Starts `herald serve` on a free loopback port; sets PID and BASE.
start_server() {
    : >"$LOG"
    # Not through a shell function: `func &` forks a subshell, and SIGTERM would hit
    # that subshell instead of herald.
    "${JAIL_CMD[@]}" /herald serve --listen-http 127.0.0.1:0 --data-dir /data >>"$LOG" 2>&1 &
    PID=$!
    local addr=""
    for _ in $(seq 1 100); do
        addr="$(sed -n 's/.*herald listening on http:\/\/\([0-9.]*:[0-9]*\).*/\1/p' "$LOG" | head -n 1)"
        [[ -n "$addr" ]] && break
        if ! kill -0 "$PID" 2>/dev/null; then
            cat "$LOG" >&2
            fail "herald exited during startup"
        fi
        sleep 0.1
    done
    [[ -n "$addr" ]] || {
        cat "$LOG" >&2
        fail "herald did not log its listening address within 10s"
    }
    BASE="http://$addr"
    for _ in $(seq 1 100); do
        curl -fsS -m 2 "$BASE/v1/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$LOG" >&2
    fail "$BASE/v1/health did not answer within 10s"
}

# Sends SIGTERM and requires exit status 0 within 40s (shutdown-timeout is 25s).
stop_server() {
    local t0=$SECONDS rc
    kill -TERM "$PID"
    for _ in $(seq 1 400); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then
        cat "$LOG" >&2
        fail "herald still running 40s after SIGTERM"
    fi
    set +e
    wait "$PID"
    rc=$?
    set -e
    PID=""
    if [[ $rc -ne 0 ]]; then
        cat "$LOG" >&2
        fail "herald exited with status $rc after SIGTERM"
    fi
    ok "SIGTERM: exit status 0 after $((SECONDS - t0))s"
}

start_server
ok "listening on $BASE; /v1/health: $(curl -fsS "$BASE/v1/health")"

"${JAIL_CMD[@]}" /herald healthcheck --url "$BASE/healthz" ||
    fail "'herald healthcheck --url $BASE/healthz' failed inside the jail"
ok "herald healthcheck $BASE/healthz: exit 0"
ready_code="$(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz" || true)"
[[ "$ready_code" == 200 ]] || fail "/readyz answered $ready_code"
ok "/readyz: 200"

text="static smoke $$-$RANDOM"
published="$(curl -fsS -m 5 -d "$text" "$BASE/static_smoke")" || fail "publish failed"
id="$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$published")"
[[ -n "$id" ]] || fail "publish answer has no id: $published"
ok "published $id"
polled="$(curl -fsS -m 5 "$BASE/static_smoke/json?poll=1")" || fail "poll failed"
grep -F "\"id\":\"$id\"" <<<"$polled" | grep -qF "\"message\":\"$text\"" ||
    fail "poll did not return the message: $polled"
ok "polled it back"

stop_server
grep -q 'herald stopped' "$LOG" || fail "no 'herald stopped' line in the log"
[[ -f "$JAIL/data/messages.db" ]] || fail "no /data/messages.db after shutdown"
ok "store: $(find "$JAIL/data" -mindepth 1 -printf '%f ' | sort)"

step "restart: the message survives in /data"
start_server
polled="$(curl -fsS -m 5 "$BASE/static_smoke/json?poll=1")" || fail "poll after restart failed"
grep -qF "\"id\":\"$id\"" <<<"$polled" || fail "message $id lost across the restart: $polled"
ok "message $id still there"
stop_server

printf '\nstatic build verified in %ss: %s (%s bytes)\n' "$((SECONDS - START))" "$BIN" "$size"
