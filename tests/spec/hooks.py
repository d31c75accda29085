"""Schemathesis hooks for tests/spec/run.sh.

- Credentials per route: the admin key on `/vault/*`, the vault key of the route's vendor on
  the proxy routes (as the Basic-auth password for Twilio, as twilio-node sends it).
- Real Stripe paths and the pinned connected account mixed into the Stripe routes, whose
  generated values would otherwise almost never get past the allowlist.
- Seeded keys mixed into generated requests. A generated key id is well-formed but never
  minted by the runtime, so on its own it only reaches the 404 branch. Half of the cases use
  a key that serve.mjs seeded instead (active, revoked, with audit rows, a reconciled Twilio
  estimate, a cap hit), so 200 and 409 answers and real audit rows are checked too.
"""

import base64
import json
import os
import re

import schemathesis
from hypothesis import strategies as st

SEED = json.loads(os.environ.get("KEYBRAKE_SPEC_SEED_JSON", "{}"))
ADMIN_KEY = SEED.get("admin_key", "")
SEED_KEY_IDS = SEED.get("key_ids", [])
SEED_LABEL = SEED.get("label", "")
VAULT_KEYS = SEED.get("vault_keys", {})


def _path(context):
    return context.operation.path if context.operation is not None else ""


def _authorization(path):
    if path.startswith("/vault/"):
        return f"Bearer {ADMIN_KEY}"
    if path.startswith("/twilio/"):
        basic = base64.b64encode(f"ACanything:{VAULT_KEYS.get('twilio', '')}".encode()).decode()
        return f"Basic {basic}"
    if path.startswith("/resend/"):
        return f"Bearer {VAULT_KEYS.get('resend', '')}"
    if path.startswith(("/stripe/", "/v1/")):
        return f"Bearer {VAULT_KEYS.get('stripe', '')}"
    return None


@schemathesis.auth(refresh_interval=None, retry_on=[])
class KeybrakeAuth:
    def get(self, case, context):
        return _authorization(context.operation.path)

    def set(self, case, data, context):
        if data is not None:
            case.headers = {**(case.headers or {}), "Authorization": data}


# Stripe path segments that the Stripe vault key of serve.mjs may call, and some it may not.
STRIPE_SEGMENTS = {
    "resource": ["payment_intents", "customers", "charges"],
    "id": ["pi_spec", "cus_spec"],
    "action": ["cancel", "capture"],
}
STRIPE_ROUTE = re.compile(r"^(/stripe)?/v1/\{resource\}")
STRIPE_ACCOUNT = "acct_1SpecSeed"


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    if not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    if STRIPE_ROUTE.match(_path(context)):
        real = st.fixed_dictionaries(
            {name: st.sampled_from(STRIPE_SEGMENTS[name]) for name in path_parameters if name in STRIPE_SEGMENTS}
        ).map(lambda chosen: {**path_parameters, **chosen})
        return st.one_of(st.just(path_parameters), real)
    if SEED_KEY_IDS and "key_id" in path_parameters:
        seeded = st.sampled_from(SEED_KEY_IDS).map(lambda key_id: {**path_parameters, "key_id": key_id})
        return st.one_of(st.just(path_parameters), seeded)
    return st.just(path_parameters)


@schemathesis.hook
def flatmap_headers(context, headers):
    if not STRIPE_ROUTE.match(_path(context)) or not isinstance(headers, dict):
        return st.just(headers)
    plain = {k: v for k, v in headers.items() if k.lower() not in ("stripe-account", "stripe-context")}
    return st.sampled_from([headers, plain, {**plain, "Stripe-Account": STRIPE_ACCOUNT}])


@schemathesis.hook
def flatmap_query(context, query):
    if _path(context) != "/vault/audit" or not SEED_KEY_IDS or not isinstance(query, dict):
        return st.just(query)
    limit = {"limit": query["limit"]} if "limit" in query else {}
    choices = [st.just(query), st.sampled_from(SEED_KEY_IDS).map(lambda key_id: {"key_id": key_id, **limit})]
    if SEED_LABEL:
        choices.append(st.just({"agent_run_label": SEED_LABEL, **limit}))
    return st.one_of(*choices)
