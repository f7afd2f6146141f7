#!/usr/bin/env bash
# Runs the benchmarks at full size, one after another (never two at once), and
# prints their output. Run from anywhere; uses the repository's .venv when present.
#
#   bench/run_all.sh                 # embedded / SQLite only
#   POSTGRES=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \
#   REDIS=redis://127.0.0.1:6379/12 bench/run_all.sh    # also Postgres (+ Redis)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python

echo "== machine: $(nproc) CPUs, $("$PY" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'), load $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "== bench/core_throughput.py"
"$PY" bench/core_throughput.py

echo
echo "== bench/sink_overhead.py"
"$PY" bench/sink_overhead.py ${POSTGRES:+--postgres "$POSTGRES"}

echo
echo "== bench/sweep_workers.py"
"$PY" bench/sweep_workers.py

echo
echo "== bench/sweep_early_termination.py"
"$PY" bench/sweep_early_termination.py

echo
echo "== bench/job_overhead.py"
"$PY" bench/job_overhead.py --threads 1

echo
echo "== bench/poll_load.py (embedded)"
"$PY" bench/poll_load.py

echo
echo "== bench/submit_latency.py (embedded: SQLite + filesystem broker)"
"$PY" bench/submit_latency.py

if [ -n "${POSTGRES:-}" ]; then
  echo
  echo "== bench/submit_latency.py (Postgres${REDIS:+ + Redis})"
  "$PY" bench/submit_latency.py --database-url "$POSTGRES" ${REDIS:+--broker-url "$REDIS"}
  echo
  echo "== bench/poll_load.py (Postgres)"
  "$PY" bench/poll_load.py --database-url "$POSTGRES"
fi
