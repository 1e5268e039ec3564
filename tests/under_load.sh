#!/usr/bin/env bash
# The README's test command with a busy loop on every core beside it, RUNS times in a row
# (default 3). Usage: bash tests/under_load.sh [RUNS]. Exit status 0 only if every run is green.
# The busy loops are plain `while True: pass` processes at normal priority, one per core
# (nproc), started before each run and killed after it.
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
py=.venv/bin/python
loops=()
stop_load() { for pid in "${loops[@]}"; do kill "$pid" 2>/dev/null; done; loops=(); }
trap stop_load EXIT
failed=0
for run in $(seq 1 "$runs"); do
  for _ in $(seq 1 "$(nproc)"); do "$py" -c 'while True: pass' & loops+=("$!"); done
  started=$(date +%s)
  if "$py" -m pytest -q -m "not ray" && "$py" -m pytest -q -m ray; then verdict=green; else verdict=RED; failed=1; fi
  stop_load
  echo "under load run $run/$runs: $verdict in $(( $(date +%s) - started )) s with $(nproc) busy loops ($(date -u +%FT%TZ))"
done
exit "$failed"
