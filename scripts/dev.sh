#!/usr/bin/env bash
# `make dev`: Keybrake on http://127.0.0.1:8787 with local D1 and Durable Objects.
# Without a .dev.vars holding a real STRIPE_SECRET_KEY, a local Stripe simulator on
# 127.0.0.1:12111 plays Stripe, so the README walk-through works offline.
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SECRET=sk_test_local_simulator
SIM_PORT=12111
if [ ! -f .dev.vars ]; then
  admin="kb_admin_dev_$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf 'KEYBRAKE_API_KEY=%s\nSTRIPE_SECRET_KEY=%s\n' "$admin" "$SIM_SECRET" > .dev.vars
  chmod 600 .dev.vars
fi
admin=$(sed -n 's/^KEYBRAKE_API_KEY=//p' .dev.vars)
stripe_key=$(sed -n 's/^STRIPE_SECRET_KEY=//p' .dev.vars)

wrangler d1 migrations apply DB --local >/dev/null

vars=()
case "$stripe_key" in
  "$SIM_SECRET" | sk_test_replace_me | "")
    node tests/fakes/stripe.mjs --port "$SIM_PORT" &
    sim=$!
    trap 'kill $sim 2>/dev/null || true' EXIT
    vars=(--var "STRIPE_API_BASE:http://127.0.0.1:$SIM_PORT")
    upstream="the local Stripe simulator on 127.0.0.1:$SIM_PORT"
    ;;
  *) upstream="api.stripe.com with the STRIPE_SECRET_KEY from .dev.vars" ;;
esac

cat <<MSG

  Keybrake dev server: http://127.0.0.1:8787 -> $upstream
  Admin key (from .dev.vars):
    export KEYBRAKE_API_KEY=$admin

MSG
wrangler dev --ip 127.0.0.1 --port 8787 --show-interactive-dev-session=false "${vars[@]}"
