#!/usr/bin/env bash
# Where a query's time goes (bench/PROFILE.md): run one scenario once (by default
# blocked, against sinkhole and dnsmasq) and, during sinkhole's measured run, attach
# py-spy (Python frames, all threads), perf record (user vs kernel) and perf stat
# (system calls).
# Usage: bench/profile.sh OUTDIR [VAR=value ...]   e.g. SINKHOLE_NO_SPEEDUPS=1
# SCENARIO=miss SERVERS=sinkhole,unbound bench/profile.sh OUTDIR profiles the misses.
# Needs py-spy in the venv (pip install py-spy) and perf; run as root (ptrace, perf).
# The server is found by its command line and directory (looked up only, never signalled).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1; shift
mkdir -p "$OUT"
env "$@" .venv/bin/python bench/run.py --only "${SCENARIO:-blocked}" \
    --servers "${SERVERS:-sinkhole,dnsmasq}" --runs 1 \
    --duration 5 --output "$OUT/results.md" > "$OUT/bench.log" 2>&1 &
BENCH=$!
# Ours only: on a shared machine another checkout's bench may be running too. Its
# processes run in its own directory; the bench starts ours (server, dnsperf) in this one.
ours() {
    for p in $(pgrep "$@" || true); do
        if [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$PWD" ]; then echo "$p"; fi
    done
    return 0
}
PID=""
for _ in $(seq 1 900); do
    PID=$(ours -f "resolver serve --config /tmp/sinkhole-bench" | head -1)
    [ -n "$PID" ] && break
    sleep 0.1
done
for _ in $(seq 1 900); do  # the warm-up's dnsperf (1 s), then the measured one
    [ -n "$(ours -x dnsperf)" ] && break
    sleep 0.05
done
sleep 1.8
.venv/bin/py-spy record --nonblocking -r 200 -d 3 -f raw -o "$OUT/pyspy.txt" -p "$PID" \
    > "$OUT/pyspy.log" 2>&1 &
SPY=$!
# The system calls first, while the run is surely on (a miss run may end early).
perf stat -e raw_syscalls:sys_enter,task-clock -p "$PID" -o "$OUT/syscalls.txt" -- sleep 1 > /dev/null 2>&1
perf record -F 499 -g -p "$PID" -o "$OUT/perf.data" -- sleep 2 > "$OUT/perf.log" 2>&1
wait "$SPY"
wait "$BENCH"
echo "server pid $PID; results in $OUT"
