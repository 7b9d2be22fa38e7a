# Helpers shared by bench/ab.sh, bench/rounds.sh and bench/curve.sh (sourced, not run).
# TICK must be set (getconf CLK_TCK) before `us` is called.

# ticks PID: CPU time (user + system) PID has used, in clock ticks; 0 once it is gone.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# pg_ticks: the same summed over every PostgreSQL server process.
pg_ticks() {
    local t=0 p
    for p in $(pgrep -x postgres || true); do t=$((t + $(ticks "$p"))); done
    echo "$t"
}

# us TICKS_BEFORE TICKS_AFTER EVENTS: CPU µs per event.
us() { python3 -c "print(round(($2 - $1) / $TICK * 1e6 / $3))"; }

# field JSON PATH: one number of a bench tool's JSON line, e.g. field "$out" "['p99_ms']".
field() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])$2, 1))" "$1"; }
