#!/usr/bin/env bash
# Fuzz envelope parsing (every mode, binary-mode headers) with cargo-fuzz / libFuzzer for a
# bounded time. Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly compiler; on a
# stable-only machine RUSTC_BOOTSTRAP=1 lets stable act as nightly.
#
#   scripts/fuzz.sh            # 60 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh
#
# Exits non-zero when a crash is found; the input is saved under fuzz/artifacts/envelope/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-1}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

# Seed corpus: the README's examples, so the fuzzer starts from bodies that parse.
corpus=fuzz/corpus/envelope
mkdir -p "$corpus"
seed() { printf '%b' "$2" >"$corpus/seed-$1"; }
seed native '\x00{"type":"order.paid","version":"v1","id":"a-1","source":"/s","subject":"x","key":"k","time":"2026-01-01T00:00:00Z","data":{"order_id":"o","amount":1,"currency":"EUR"}}'
seed structured '\x01{"specversion":"1.0","id":"1","source":"/s","type":"order.paid.v1","partitionkey":"k","dataschema":"http://h/v1/schemas/order.paid/v1","data":{}}'
seed batch '\x02[{"specversion":"1.0","id":"1","source":"/s","type":"a.v1","data":1},{"specversion":"1.0","id":"2","source":"/s","type":"a.v2","data":[]}]'
seed array '\x00[{"type":"a","version":"v1","data":1},{"type":"b","version":"v2","data":null,"id":"x"}]'
seed binary '\x80partitionkey=k%20y\nsubject=%E2%9C%93\nid=b-1\x00{"x":1}'

parallel=()
if [ "$jobs" -gt 1 ]; then parallel=(-jobs="$jobs" -workers="$jobs"); fi
cargo "${toolchain[@]}" fuzz run envelope "$corpus" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "${parallel[@]}"
