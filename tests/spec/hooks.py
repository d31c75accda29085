"""Schemathesis hooks for tests/spec/run.sh.

- Credentials per route: the admin key on `/vault/*`, the vault key of the route's vendor on
  the proxy routes (as the Basic-auth password for Twilio, as twilio-node sends it). The
  seeded issuer's own token where it may act: its own keys (`<issuer_id>-<n>`), its own audit
  rows and `GET /vault/issuers/{issuer_id}` of itself. The seeded parent's vault key on
  `POST /vault/keys/{key_id}/children`, which takes no admin credential.
- Real Stripe paths and the pinned connected account mixed into the Stripe routes, whose
  generated values would otherwise almost never get past the allowlist.
- Seeded keys mixed into generated requests. A generated key id is well-formed but never
  minted by the runtime, so on its own it only reaches the 404 branch. Half of the cases use
  a key that serve.mjs seeded instead (active, revoked, with audit rows, a reconciled Twilio
  estimate, a cap hit), so 200 and 409 answers and real audit rows are checked too. Likewise
  the seeded parent's id on the children route, the seeded issuer's id on `GET` of an issuer
  and in audit queries, a spare issuer's on `DELETE` (so the seeded one stays usable), and a
  seeded run's label on `DELETE /vault/keys`.
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
ISSUER_ID = SEED.get("issuer", {}).get("issuer_id", "")
ISSUER_TOKEN = SEED.get("issuer", {}).get("issuer_token", "")
SPARE_ISSUER_ID = SEED.get("spare_issuer_id", "")
PARENT = SEED.get("parent", {})
PARENT_LABEL = PARENT.get("label", "")
RUN_LABEL = SEED.get("run_label", "")
# The seeded key the issuer made: its own token is sent with it (see _issuers_own).
ISSUER_KEY_IDS = [k for k in SEED_KEY_IDS if ISSUER_ID and k.startswith(ISSUER_ID + "-")]
CHILDREN_ROUTE = "/vault/keys/{key_id}/children"
ISSUER_ROUTE = "/vault/issuers/{issuer_id}"


def _path(context):
    return context.operation.path if context.operation is not None else ""


def _method(context):
    return context.operation.method.upper() if context.operation is not None else ""


def _issuers_own(path, method, case):
    """Whether the case is about the seeded issuer's own things, so its token may make it."""
    if not ISSUER_ID:
        return False
    params = case.path_parameters or {}
    query = case.query if isinstance(case.query, dict) else {}
    if path == ISSUER_ROUTE:
        return method == "GET" and params.get("issuer_id") == ISSUER_ID
    if path in ("/vault/keys/{key_id}", "/vault/keys/{key_id}/refresh"):
        return str(params.get("key_id", "")).startswith(ISSUER_ID + "-")
    if path == "/vault/audit":
        return query.get("issuer_id") == ISSUER_ID
    return False


def _authorization(path, method="", case=None):
    if path == CHILDREN_ROUTE:
        return f"Bearer {PARENT.get('vault_key', '')}"
    if path.startswith("/vault/"):
        if case is not None and _issuers_own(path, method, case):
            return f"Bearer {ISSUER_TOKEN}"
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
        return _authorization(context.operation.path, _method(context), case)

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
    if _path(context) == CHILDREN_ROUTE and PARENT.get("key_id"):
        return st.one_of(st.just(path_parameters), st.just({**path_parameters, "key_id": PARENT["key_id"]}))
    if _path(context) == ISSUER_ROUTE and ISSUER_ID:
        if _method(context) == "GET":
            return st.one_of(st.just(path_parameters), st.just({**path_parameters, "issuer_id": ISSUER_ID}))
        # A DELETE never takes the seeded issuer, even when its id was picked up from an
        # answer: its token must keep working for the rest of the run.
        spared = {**path_parameters, "issuer_id": SPARE_ISSUER_ID}
        if path_parameters.get("issuer_id") == ISSUER_ID:
            return st.just(spared)
        return st.one_of(st.just(path_parameters), st.just(spared))
    if _path(context) == "/vault/keys/{key_id}" and _method(context) == "DELETE" and SEED_KEY_IDS:
        # Never the seeded parent, even when its id was picked up from a listing: the children
        # route needs it alive for the rest of the run.
        if path_parameters.get("key_id") == PARENT.get("key_id"):
            return st.sampled_from(SEED_KEY_IDS).map(lambda key_id: {**path_parameters, "key_id": key_id})
    if SEED_KEY_IDS and "key_id" in path_parameters:
        seeded = st.sampled_from(SEED_KEY_IDS).map(lambda key_id: {**path_parameters, "key_id": key_id})
        choices = [st.just(path_parameters), seeded]
        if ISSUER_KEY_IDS:
            choices.append(st.sampled_from(ISSUER_KEY_IDS).map(lambda key_id: {**path_parameters, "key_id": key_id}))
        return st.one_of(*choices)
    return st.just(path_parameters)


@schemathesis.hook
def flatmap_headers(context, headers):
    if not STRIPE_ROUTE.match(_path(context)) or not isinstance(headers, dict):
        return st.just(headers)
    plain = {k: v for k, v in headers.items() if k.lower() not in ("stripe-account", "stripe-context")}
    return st.sampled_from([headers, plain, {**plain, "Stripe-Account": STRIPE_ACCOUNT}])


@schemathesis.hook
def flatmap_query(context, query):
    if _path(context) == "/vault/keys" and _method(context) == "DELETE" and RUN_LABEL and isinstance(query, dict):
        # Never the seeded parent's run (see flatmap_path_parameters).
        if PARENT_LABEL and query.get("agent_run_label") == PARENT_LABEL:
            return st.just({**query, "agent_run_label": RUN_LABEL})
        return st.one_of(st.just(query), st.just({"agent_run_label": RUN_LABEL}))
    if _path(context) != "/vault/audit" or not SEED_KEY_IDS or not isinstance(query, dict):
        return st.just(query)
    limit = {"limit": query["limit"]} if "limit" in query else {}
    choices = [st.just(query), st.sampled_from(SEED_KEY_IDS).map(lambda key_id: {"key_id": key_id, **limit})]
    if SEED_LABEL:
        choices.append(st.just({"agent_run_label": SEED_LABEL, **limit}))
    if ISSUER_ID:
        choices.append(st.just({"issuer_id": ISSUER_ID, **limit}))
    return st.one_of(*choices)


@schemathesis.hook
def flatmap_body(context, body):
    # A child's cap must fit under the seeded parent's $20: offer bodies that do, so that the
    # children route is exercised past validation too, not only refused.
    if _path(context) == CHILDREN_ROUTE and PARENT.get("key_id"):
        valid = st.sampled_from([
            {"daily_usd_cap": 1},
            {"daily_usd_cap": 0.5, "allowed_endpoints": ["POST /v1/payment_intents"], "expires_in": "10m"},
            {"daily_usd_cap": 2, "agent_run_label": "spec/child"},
        ])
        return st.one_of(st.just(body), valid)
    return st.just(body)
