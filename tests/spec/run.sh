#!/usr/bin/env bash
# Checks the built Worker against openapi/openapi.json with schemathesis: no 5xx, and every
# status, content type, header and body as the document says, for every operation (admin
# API, GET /openapi.json and the proxy routes). See tests/spec/README.md.
#
# Needs `npm ci` and a built Worker in build/. Installs schemathesis (tests/spec/requirements.txt)
# into .venv-spec/ the first time. Exits with schemathesis' exit code.
#
#   SPEC_MAX_EXAMPLES  test cases per operation and phase (default 25; 100 for a deeper run)
#   SPEC_SEED          the generation seed (default 20261128; any integer reproduces a run)
#   SPEC_SCOPE         `admin` for the admin API and GET /openapi.json only (default: all)
#   SPEC_VENV          where the virtualenv lives (default .venv-spec)
#   PYTHON             the interpreter that creates it (default python3; 3.10 or newer)
#   Any further arguments are passed to `schemathesis run`, e.g. `--checks all`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
SPEC=tests/spec
VENV=${SPEC_VENV:-$ROOT/.venv-spec}
MAX_EXAMPLES=${SPEC_MAX_EXAMPLES:-25}
SEED=${SPEC_SEED:-20261128}
STARTED=$(date +%s)

say() { printf 'spec: %s\n' "$*"; }

for f in build/index.js build/index_bg.wasm; do
  [[ -f $f ]] || { say "$f is missing: run 'make build' first"; exit 2; }
done
[[ -d node_modules/miniflare ]] || { say "node_modules is missing: run 'npm ci' first"; exit 2; }

# The virtualenv, (re)installed whenever the pins change.
if ! cmp -s "$SPEC/requirements.txt" "$VENV/.requirements.txt" 2>/dev/null; then
  say "installing schemathesis into $VENV"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$SPEC/requirements.txt"
  cp "$SPEC/requirements.txt" "$VENV/.requirements.txt"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keybrake-spec.XXXXXX")
SERVER_PID=
RUNNER_PID=
stop() {
  if [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
cleanup() {
  stop "$RUNNER_PID"
  stop "$SERVER_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The Worker in Miniflare with the vendor fakes; serve.mjs prints one JSON line when ready.
KEYBRAKE_CAPTURE=0 node "$SPEC/serve.mjs" >"$WORK/serve.json" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 1 600); do
  [[ -s $WORK/serve.json ]] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$WORK/serve.log" >&2
    say "the Worker did not start"
    exit 2
  fi
  sleep 0.1
done
[[ -s $WORK/serve.json ]] || { cat "$WORK/serve.log" >&2; say "the Worker did not start within 60 s"; exit 2; }

# The URL, the admin key, seeded key ids and vault keys, read by hooks.py.
KEYBRAKE_SPEC_SEED_JSON=$(head -n 1 "$WORK/serve.json")
export KEYBRAKE_SPEC_SEED_JSON
URL=$("$VENV/bin/python" -c 'import json,os; print(json.loads(os.environ["KEYBRAKE_SPEC_SEED_JSON"])["url"])')
say "Worker at $URL"

# Prefer the document the Worker serves, when it is this checkout's: a build older than
# openapi/openapi.json serves an older copy, and then the file is tested instead.
LOCATION=openapi/openapi.json
if "$VENV/bin/python" - "$URL/openapi.json" openapi/openapi.json <<'EOF'; then
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        served = json.load(r) if r.status == 200 else None
except Exception:
    served = None
sys.exit(0 if served is not None and served == json.load(open(sys.argv[2])) else 1)
EOF
  LOCATION=$URL/openapi.json
  say "document: $LOCATION (served by the Worker)"
else
  say "document: openapi/openapi.json (GET /openapi.json does not serve this file yet; rebuild the Worker)"
fi

SCOPE=()
[[ ${SPEC_SCOPE:-all} == admin ]] && SCOPE=(--include-path-regex '^/(vault/|openapi\.json$)')

# One worker: the run is bound by the Worker anyway, and Python 3.11 before 3.11.8 can fail
# parsing source in two threads at once ("AST constructor recursion depth mismatch").
(
  cd "$WORK"
  PYTHONDONTWRITEBYTECODE=1 SCHEMATHESIS_HOOKS="$ROOT/$SPEC/hooks.py" exec "$VENV/bin/schemathesis" --config-file "$ROOT/$SPEC/schemathesis.toml" run "$([[ $LOCATION == http* ]] && echo "$LOCATION" || echo "$ROOT/$LOCATION")" \
    --url "$URL" \
    "${SCOPE[@]}" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 10 \
    --generation-database none \
    --generation-with-security-parameters false \
    --output-sanitize false \
    "$@"
) &
# In the background and waited for, so that SIGINT/SIGTERM stop the run at once.
RUNNER_PID=$!
STATUS=0
wait "$RUNNER_PID" || STATUS=$?
RUNNER_PID=

ELAPSED=$(($(date +%s) - STARTED))
if [[ $STATUS -eq 0 ]]; then
  say "PASSED in ${ELAPSED}s (seed $SEED, $MAX_EXAMPLES examples per operation, document $LOCATION)"
else
  say "FAILED in ${ELAPSED}s with schemathesis exit code $STATUS (seed $SEED, $MAX_EXAMPLES examples per operation, document $LOCATION)"
fi
exit $STATUS
