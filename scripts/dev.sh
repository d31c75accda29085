#!/usr/bin/env bash
# `make dev`: Keybrake on http://127.0.0.1:8787 with local D1 and Durable Objects.
# A vendor whose secret in .dev.vars is a simulator placeholder (or missing) is played by the
# local simulator (Stripe :12111, Twilio :12112, Resend :12113), so the README walk-through
# works offline. Put real secrets in .dev.vars to use the real vendors.
set -euo pipefail
cd "$(dirname "$0")/.."

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

wrangler d1 migrations apply DB --local >/dev/null

if [ ${#simulated[@]} -gt 0 ]; then
  node tests/fakes/simulator.mjs &
  sim=$!
  trap 'kill $sim 2>/dev/null || true' EXIT
fi

cat <<MSG

  Keybrake dev server: http://127.0.0.1:8787
  Simulated vendors:   ${simulated[*]:-none}
  Admin key (from .dev.vars):
    export KEYBRAKE_API_KEY=$(value KEYBRAKE_API_KEY)

MSG
# Quick alarm retries, so the Twilio walk-through shows real prices at once.
wrangler dev --ip 127.0.0.1 --port 8787 --show-interactive-dev-session=false \
  --var ALARM_BACKOFF_MS:1000 "${vars[@]}"
