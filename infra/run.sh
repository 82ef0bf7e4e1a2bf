#!/usr/bin/env bash
# `make run`: the whole system on this machine. RabbitMQ and Redis (started if stopped), the
# topology, localfaas on template.yaml, and the worker fleet (its defaults, docs/worker_fleet.md,
# unless WORKERS or CONCURRENCY is set); Ctrl-C stops everything and exits 0.
# LOGS=full shows every function log line on the console (default quiet: cold starts, errors and
# a summary every 10 s; the full logs are in .localfaas/logs/<function>.log either way).
set -euo pipefail
cd "$(dirname "$0")/.."

set -a
# shellcheck disable=SC1091
. infra/local.env
set +a

infra/services.sh
.venv/bin/python infra/provision.py
.venv/bin/python infra/declare_topology.py

mkdir -p .localfaas
rm -f .localfaas/state.json
.venv/bin/localfaas start template.yaml --env-file infra/local.env --run-dir .localfaas \
  --console "${LOGS:-quiet}" &
faas=$!
# worker_fleet's own defaults are the fleet's size and concurrency; only what is set is passed.
fleet_args=()
if [ -n "${WORKERS:-}" ]; then fleet_args+=(--workers "$WORKERS"); fi
if [ -n "${CONCURRENCY:-}" ]; then fleet_args+=(--concurrency "$CONCURRENCY"); fi
.venv/bin/python -m worker_fleet ${fleet_args[@]+"${fleet_args[@]}"} > .localfaas/fleet.log 2>&1 &
fleet=$!

stop() {
  trap - INT TERM EXIT
  echo "run: stopping"
  kill -TERM "$fleet" "$faas" 2>/dev/null || true
  wait "$fleet" "$faas" 2>/dev/null || true
}
# Ctrl-C is how `make run` is meant to end: stop everything and exit 0, so that make does not
# report "Error 130". Anything else that ends the script still stops everything (EXIT).
on_signal() {
  stop
  echo "run: stopped"
  exit 0
}
trap on_signal INT TERM
trap stop EXIT

for _ in $(seq 1 100); do
  [ -f .localfaas/state.json ] && break
  kill -0 "$faas" 2>/dev/null || break
  sleep 0.1
done
if [ ! -f .localfaas/state.json ]; then
  echo "run: localfaas did not start (its message is above)" >&2
  exit 1
fi
producer=$(.venv/bin/python -c "import json; print(json.load(open('.localfaas/state.json'))['urls']['Producer'])")
supervisor=$(.venv/bin/python -c "import json; print(json.load(open('.localfaas/state.json'))['urls']['Supervisor'])")
cat <<MSG

run: the system is up (worker log: .localfaas/fleet.log, function logs: .localfaas/logs/)
  producer    $producer
  supervisor  $supervisor
Try:
  curl -s -X POST ${producer}produce -H 'content-type: application/json' \\
       -d '{"type": "primes", "payload": {"n": 50000}, "complexity": 3}'
The supervisor's URL takes SigV4-signed calls only (AuthType AWS_IAM); curl signs them:
  sign=(--aws-sigv4 "aws:amz:\${AWS_REGION}:lambda" --user "\${AWS_ACCESS_KEY_ID}:\${AWS_SECRET_ACCESS_KEY}")
  curl -s "\${sign[@]}" '${supervisor}results/<task_id>?wait=10'
  curl -s "\${sign[@]}" ${supervisor}workers ; curl -s "\${sign[@]}" ${supervisor}stats
  (the key pair is infra/local.env's: set -a; . infra/local.env; set +a)
  curl signs the path as written, SigV4 for Lambda encodes it once more: a path with a
  %-escape or a ':' (task ids may hold one) gets 403 from curl; use taskfaas or botocore.
The command-line client signs for you (README, Command-line client):
  .venv/bin/taskfaas submit primes --payload '{"n": 50000}' --wait 30
  .venv/bin/taskfaas workers ; .venv/bin/taskfaas stats ; .venv/bin/taskfaas tail
localfaas's own commands (in .venv/bin, like every command the project installs):
  .venv/bin/localfaas status       # functions, environments, the results queue's mapping
  .venv/bin/localfaas invoke Producer --payload @docs/examples/produce-event.json
The console shows cold starts, errors and a summary every 10 s (make run LOGS=full: every line).
Ctrl-C stops everything.
MSG
wait "$faas"
