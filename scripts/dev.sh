#!/usr/bin/env bash
# `make dev [PORT=8787]`: Keybrake on http://127.0.0.1:$PORT with local D1 and Durable Objects.
# A vendor whose secret in .dev.vars is a simulator placeholder (or missing) is played by the
# local simulator (Stripe :12111, Twilio :12112, Resend :12113), so the README walk-through
# works offline. Put real secrets in .dev.vars to use the real vendors.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8787}
URL=http://127.0.0.1:$PORT

# Whether nothing listens on 127.0.0.1:$1: bind it and let go. Checked before building, so a
# taken port fails in a second instead of after the build, with workerd's exception.
port_free() {
  node -e 'const s = require("net").createServer();
    s.once("error", () => process.exit(1));
    s.listen({ port: Number(process.argv[1]), host: "127.0.0.1", exclusive: true }, () => s.close(() => process.exit(0)));' "$1"
}
if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
  echo "make dev: PORT=$PORT is not a port number; choose one with: make dev PORT=8788" >&2
  exit 2
fi
if ! port_free "$PORT"; then
  echo "make dev: port $PORT on 127.0.0.1 is already in use; choose another with: make dev PORT=8788" >&2
  exit 1
fi

if [ ! -f .dev.vars ]; then
  admin="kb_admin_dev_$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat > .dev.vars <<VARS
KEYBRAKE_API_KEY=$admin
STRIPE_SECRET_KEY=sk_test_local_simulator
TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000
TWILIO_AUTH_TOKEN=local_simulator_token
RESEND_API_KEY=re_local_simulator
VARS
  chmod 600 .dev.vars
fi
value() { sed -n "s/^$1=//p" .dev.vars; }

vars=()
simulated=()
simulate() { # vendor origin-var port
  vars+=(--var "$2:http://127.0.0.1:$3")
  simulated+=("$1")
}
case "$(value STRIPE_SECRET_KEY)" in sk_test_local_simulator | sk_test_replace_me | "") simulate Stripe STRIPE_API_BASE 12111 ;; esac
case "$(value TWILIO_AUTH_TOKEN)" in local_simulator_token | "") simulate Twilio TWILIO_API_BASE 12112 ;; esac
case "$(value RESEND_API_KEY)" in re_local_simulator | "") simulate Resend RESEND_API_BASE 12113 ;; esac

# The simulator listens on all three ports whichever vendors it plays.
if [ ${#simulated[@]} -gt 0 ]; then
  for port in 12111 12112 12113; do
    if ! port_free "$port"; then
      echo "make dev: port $port (the local vendor simulator) is already in use; stop what holds it (another make dev?)" >&2
      exit 1
    fi
  done
fi

# A no-op when nothing changed. Built here, not only by wrangler, so a compile error ends
# `make dev` instead of leaving a server up with the previous build.
"${MAKE:-make}" --no-print-directory build

wrangler d1 migrations apply DB --local >/dev/null

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

if [ ${#simulated[@]} -gt 0 ]; then
  node tests/fakes/simulator.mjs &
  pids+=($!)
fi

# Quick alarm retries, so the Twilio walk-through shows real prices at once.
wrangler dev --ip 127.0.0.1 --port "$PORT" --show-interactive-dev-session=false \
  --var ALARM_BACKOFF_MS:1000 "${vars[@]}" &
wrangler=$!
pids+=("$wrangler")

# The banner once the server answers, so that whatever it says works when it is read.
until curl -s -o /dev/null --max-time 2 "$URL/"; do
  kill -0 "$wrangler" 2>/dev/null || { wait "$wrangler" || exit $?; exit 1; }
  sleep 0.2
done
cat <<MSG

  Keybrake is up:     $URL   (OpenAPI document: $URL/openapi.json)
  Console:            $URL/console   (sign in with the admin key below)
  Simulated vendors:  ${simulated[*]:-none}
  In another shell (the admin key is from .dev.vars):

    export KB=$URL
    export KEYBRAKE_API_KEY=$(value KEYBRAKE_API_KEY)

MSG
wait "$wrangler"
