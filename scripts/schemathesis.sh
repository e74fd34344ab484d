#!/usr/bin/env bash
# Hostile-input run: starts a hub (memory store, loopback, a free port) and
# points schemathesis at its /openapi.json, once anonymously and once with the
# operator key (which reaches every agent route). Fails if any request gets a
# 5xx, answers a status or body /openapi.json does not document, if the hub
# logs a panic, or if the hub is not healthy afterwards. (The same document
# conformance runs in the test suite: tests/openapi_conformance.rs.)
#
#   scripts/schemathesis.sh                 # 100 examples per operation and pass
#   MAX_EXAMPLES=500 scripts/schemathesis.sh
#
# Needs python3; installs schemathesis from PyPI when `st` is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES="${MAX_EXAMPLES:-100}"
CHECKS="${CHECKS:-not_a_server_error,status_code_conformance,response_schema_conformance}"
SEED="${SEED:-$RANDOM}"
OUT="${OUT:-target/schemathesis}"
mkdir -p "$OUT"

if ! command -v st >/dev/null 2>&1; then
  python3 -m pip install --quiet schemathesis
fi

cargo build --quiet --bin admp
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
MASTER_KEY="schemathesis-master-key-$(date +%s)"

# Limits off: 429s are not failures, but they would hide the routes behind them.
PORT="$PORT" HOST=127.0.0.1 STORAGE_BACKEND=memory MASTER_API_KEY="$MASTER_KEY" \
  RATE_LIMIT_ENABLED=false RUST_LOG=warn LOG_FORMAT=json \
  target/debug/admp serve >"$OUT/hub.log" 2>&1 &
HUB_PID=$!
trap 'kill "$HUB_PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  curl -fsS "$BASE/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$BASE/health" >/dev/null

# Agents for the fuzzer to find: `bob` exists, so paths naming it get past 404.
for id in alice bob; do
  curl -fsS -X POST "$BASE/api/agents/register" -H 'content-type: application/json' \
    -d "{\"agent_id\":\"$id\"}" >/dev/null
done

status=0
run() {
  local name="$1"
  shift
  echo "== schemathesis ($name), seed $SEED, $MAX_EXAMPLES examples per operation"
  st run "$BASE/openapi.json" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 2 \
    --phases examples,coverage,fuzzing \
    --suppress-health-check all \
    --generation-database none \
    --report junit --report-junit-path "$OUT/$name.xml" \
    --no-color "$@" | tee "$OUT/$name.txt" || status=1
}
run anonymous
run master -H "X-API-Key: $MASTER_KEY"

if grep -q '"level":"ERROR"' "$OUT/hub.log"; then
  echo "the hub logged errors (see $OUT/hub.log):"
  grep '"level":"ERROR"' "$OUT/hub.log" | head -20
  status=1
fi
if ! curl -fsS "$BASE/health" >/dev/null; then
  echo "the hub is not healthy after the run"
  status=1
fi
exit "$status"
