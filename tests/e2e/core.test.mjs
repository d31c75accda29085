// End-to-end tests of the core contract: the built Worker in workerd, real Durable Objects and
// D1, Stripe played by a recording fake, and the official stripe-node SDK as the client.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { useKeybrake, stripeClient, ADMIN_KEY, STRIPE_SECRET } from "./harness.mjs";

const kb = useKeybrake();

const label = (name) => `inngest/billing/subscription.process/${name}-${Date.now()}`;

test("the admin API rejects missing and wrong tokens", async () => {
  const key = await kb.issueKey();
  const attempts = [
    ["POST", "/vault/keys", null],
    ["POST", "/vault/keys", "wrong"],
    ["POST", "/vault/keys", key.vault_key],
    ["GET", `/vault/keys/${key.key_id}`, null],
    ["GET", `/vault/keys/${key.key_id}`, ADMIN_KEY + "x"],
    ["DELETE", `/vault/keys/${key.key_id}`, key.vault_key],
    ["GET", `/vault/audit?key_id=${key.key_id}`, STRIPE_SECRET],
  ];
  for (const [method, path, token] of attempts) {
    const res = await kb.call(method, path, { token, body: method === "POST" ? { vendor: "stripe" } : undefined });
    assert.equal(res.status, 401, `${method} ${path} with ${token ? "a wrong" : "no"} token`);
    assert.equal(res.json.error.type, "unauthorized");
    assert.equal(res.headers.get("x-keybrake-error"), "unauthorized");
  }
  const still = await kb.call("GET", `/vault/keys/${key.key_id}`);
  assert.equal(still.json.status, "active", "the DELETE made with a vault key did nothing");
});

test("issuing a key returns the documented fields, and bad bodies name the field", async () => {
  const runLabel = label("issue");
  const res = await kb.call("POST", "/vault/keys", {
    body: {
      vendor: "stripe",
      daily_usd_cap: 300,
      max_usd_per_call: 0.0083,
      allowed_endpoints: ["POST /v1/payment_intents", "POST /v1/payment_intents/{id}/capture"],
      expires_in: "2h",
      agent_run_label: runLabel,
    },
  });
  assert.equal(res.status, 201, res.text);
  const k = res.json;
  assert.match(k.key_id, /^[0-9a-f]{64}$/);
  assert.ok(k.vault_key.startsWith(`kb_stripe_${k.key_id}_`));
  assert.equal(k.vendor, "stripe");
  assert.equal(k.daily_usd_cap, 300);
  assert.equal(k.max_usd_per_call, 0.0083);
  assert.deepEqual(k.allowed_endpoints, ["POST /v1/payment_intents", "POST /v1/payment_intents/{id}/capture"]);
  assert.equal(k.agent_run_label, runLabel);
  const ttl = Date.parse(k.expires_at) - Date.now();
  assert.ok(ttl > 7_100_000 && ttl <= 7_200_000, `expires_at is 2h out, got ${ttl} ms`);
  assert.match(k.expires_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

  const got = await kb.call("GET", `/vault/keys/${k.key_id}`);
  assert.equal(got.status, 200);
  assert.equal(got.json.status, "active");
  assert.equal(got.json.spent_usd, 0);
  assert.equal(got.json.remaining_usd, 300);
  assert.equal(got.json.revoked_at, null);
  assert.ok(!JSON.stringify(got.json).includes(k.vault_key.slice(-43)), "the secret is never shown again");

  const registry = await kb.db.prepare("SELECT * FROM vault_keys WHERE key_id = ?").bind(k.key_id).first();
  assert.equal(registry.agent_run_label, runLabel);
  assert.equal(registry.daily_cap_micros, 300_000_000);
  assert.ok(!JSON.stringify(registry).includes(k.vault_key), "the registry holds no token");

  const bad = [
    [{ vendor: "paypal", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/charges"] }, "vendor"],
    [{ vendor: "stripe", daily_usd_cap: -1, allowed_endpoints: ["POST /v1/charges"] }, "daily_usd_cap"],
    [{ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST v1/charges"] }, "allowed_endpoints"],
    [{ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/charges"], expires_in: "31d" }, "expires_in"],
    [{ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/charges"], agent_run_label: "x".repeat(257) }, "agent_run_label"],
  ];
  const before = (await kb.db.prepare("SELECT COUNT(*) AS n FROM vault_keys").first()).n;
  for (const [body, field] of bad) {
    const r = await kb.call("POST", "/vault/keys", { body });
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.json.error.type, "invalid_request");
    assert.ok(r.json.error.message.includes(field), `${r.json.error.message} names ${field}`);
  }
  const afterCount = (await kb.db.prepare("SELECT COUNT(*) AS n FROM vault_keys").first()).n;
  assert.equal(afterCount, before, "a refused issue writes nothing");
});

test("unknown key ids get 404", async () => {
  for (const id of ["nope", "0".repeat(64), "f".repeat(64)]) {
    for (const method of ["GET", "DELETE"]) {
      const res = await kb.call(method, `/vault/keys/${id}`);
      assert.equal(res.status, 404, `${method} ${id}`);
      assert.equal(res.json.error.type, "not_found");
    }
  }
});

test("300 concurrent $1.50 intents against a $300 cap: exactly 200 reach Stripe", async () => {
  const runLabel = label("burst");
  const key = await kb.issueKey({ daily_usd_cap: 300, agent_run_label: runLabel });
  const stripe = await stripeClient(kb, key.vault_key, { maxNetworkRetries: 0 });
  const started = performance.now();
  const results = await Promise.allSettled(
    Array.from({ length: 300 }, (_, i) =>
      stripe.paymentIntents.create({ amount: 150, currency: "usd", customer: `cus_${i}` }),
    ),
  );
  const elapsed = performance.now() - started;
  console.log(`# 300 concurrent calls through one key: ${elapsed.toFixed(0)} ms`);

  const ok = results.filter((r) => r.status === "fulfilled");
  const refused = results.filter((r) => r.status === "rejected");
  assert.equal(ok.length, 200);
  assert.equal(refused.length, 100);
  for (const r of refused) {
    assert.equal(r.reason.statusCode, 429);
    assert.equal(r.reason.type, "StripeRateLimitError");
    assert.equal(r.reason.headers["x-keybrake-cap-hit"], "true");
    assert.equal(r.reason.headers["stripe-should-retry"], "false");
    assert.ok(Number(r.reason.headers["retry-after"]) > 0);
    assert.equal(r.reason.raw.type, "cap_exhausted");
  }
  for (const r of ok) assert.match(r.value.id, /^pi_fake\d+$/);
  assert.equal(kb.stripe.requests.length, 200, "exactly 200 creates reached Stripe");
  assert.equal(kb.stripe.charges.reduce((s, c) => s + c.amount, 0), 30_000);

  const state = await kb.settled(key);
  assert.equal(state.spent_usd, 300);
  assert.equal(state.remaining_usd, 0);

  const audit = await kb.auditUntil({ agent_run_label: runLabel, limit: 1000 }, (p) => p.count === 300);
  assert.equal(audit.total_usd, 300);
  assert.equal(audit.calls.filter((c) => c.decision === "forwarded" && c.outcome === "settled").length, 200);
  assert.equal(audit.calls.filter((c) => c.decision === "cap_exhausted" && c.outcome === "denied").length, 100);
  assert.ok(audit.calls.every((c) => c.agent_run_label === runLabel));
});

test("the vendor sees the real secret and never the vault key; the client sees Keybrake headers", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  const res = await kb.call("POST", "/v1/payment_intents", {
    token: key.vault_key,
    body: "amount=250&currency=usd&customer=cus_1",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      cookie: "session=abc",
      "x-forwarded-for": "198.51.100.7",
      "idempotency-key": "idem-1",
      "stripe-version": "2025-01-27.acacia",
    },
  });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.amount, 250);
  assert.equal(res.headers.get("x-keybrake-key-id"), key.key_id);
  assert.equal(res.headers.get("x-keybrake-remaining-usd"), "7.5");
  assert.equal(kb.stripe.requests.length, 1);
  const seen = kb.stripe.requests[0];
  assert.equal(seen.headers.authorization, `Bearer ${STRIPE_SECRET}`);
  assert.equal(seen.headers["idempotency-key"], "idem-1");
  assert.equal(seen.headers["stripe-version"], "2025-01-27.acacia");
  assert.equal(seen.headers.cookie, undefined);
  assert.equal(seen.headers["x-forwarded-for"], undefined);
  assert.equal(seen.url, "/v1/payment_intents");
  assert.equal(seen.body, "amount=250&currency=usd&customer=cus_1");
  const secretPart = key.vault_key.slice(-43);
  assert.ok(!JSON.stringify(seen).includes(secretPart), "the vault key never reaches the vendor");
  assert.ok(!res.text.includes(STRIPE_SECRET) && ![...res.headers.values()].some((v) => v.includes(STRIPE_SECRET)));

  // The /{vendor}/ prefix reaches the same place, query string included.
  const prefixed = await kb.call("GET", "/stripe/v1/payment_intents/pi_1?expand=x", { token: key.vault_key });
  assert.equal(prefixed.status, 403, "GET is not in this key's allowlist");
  const key2 = await kb.issueKey({ allowed_endpoints: ["GET /v1/payment_intents/{id}"] });
  const get = await kb.call("GET", "/stripe/v1/payment_intents/pi_42?limit=3", { token: key2.vault_key });
  assert.equal(get.status, 200, get.text);
  assert.equal(kb.stripe.requests.at(-1).url, "/v1/payment_intents/pi_42?limit=3");
});

test("an endpoint outside the allowlist, an unpriceable call or a foreign currency never reaches Stripe", async () => {
  const key = await kb.issueKey({
    daily_usd_cap: 100,
    max_usd_per_call: 5,
    allowed_endpoints: ["POST /v1/payment_intents", "POST /v1/payment_intents/{id}/capture", "POST /v1/refunds"],
  });
  const form = { "content-type": "application/x-www-form-urlencoded" };
  const cases = [
    ["POST", "/v1/payouts", "amount=100&currency=usd", 403, "endpoint_not_allowed"],
    ["POST", "/v1/Payment_Intents", "amount=100&currency=usd", 403, "endpoint_not_allowed"],
    ["GET", "/v1/payment_intents", undefined, 403, "endpoint_not_allowed"],
    ["POST", "/v1/payment_intents/pi_1/capture", "", 422, "cost_unknown"],
    ["POST", "/v1/refunds", "charge=ch_1", 422, "cost_unknown"],
    ["POST", "/v1/payment_intents", "amount=100&currency=eur", 422, "currency_not_allowed"],
    ["POST", "/v1/payment_intents", "amount=501&currency=usd", 403, "per_call_limit"],
    ["POST", "/v1/payment_intents", "amount=1&amount=1000&currency=usd", 400, "invalid_request"],
    ["POST", "/v1/../v1/payouts", "amount=100&currency=usd", null, null],
  ];
  for (const [method, path, body, status, type] of cases) {
    const res = await kb.call(method, path, { token: key.vault_key, body, headers: form });
    if (status === null) {
      assert.notEqual(res.status, 200, `${path} must not succeed`);
    } else {
      assert.equal(res.status, status, `${method} ${path} ${body}: ${res.text}`);
      assert.equal(res.json.error.type, type);
      assert.equal(res.headers.get("x-keybrake-error"), type);
    }
  }
  assert.equal(kb.stripe.requests.length, 0, "nothing reached Stripe");
  const state = (await kb.call("GET", `/vault/keys/${key.key_id}`)).json;
  assert.equal(state.spent_usd + state.reserved_usd, 0);
});

test("after revoke no call reaches Stripe, and revoke is idempotent", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 100 });
  const stripe = await stripeClient(kb, key.vault_key, { maxNetworkRetries: 0 });
  await stripe.paymentIntents.create({ amount: 100, currency: "usd" });
  assert.equal(kb.stripe.requests.length, 1);

  // Revoke while a burst is in flight: whatever was admitted before the revoke finishes, and
  // once DELETE has answered nothing more reaches Stripe.
  const burst = Array.from({ length: 50 }, () => stripe.paymentIntents.create({ amount: 100, currency: "usd" }).catch((e) => e));
  const revoked = await kb.call("DELETE", `/vault/keys/${key.key_id}`);
  const countAtRevoke = kb.stripe.requests.length;
  assert.equal(revoked.status, 200);
  assert.equal(revoked.json.status, "revoked");
  assert.ok(revoked.json.revoked_at);
  await Promise.all(burst);
  assert.equal(kb.stripe.requests.length, countAtRevoke, "nothing reached Stripe after DELETE answered");

  const again = await kb.call("DELETE", `/vault/keys/${key.key_id}`);
  assert.equal(again.status, 200);
  assert.equal(again.json.revoked_at, revoked.json.revoked_at, "a second revoke keeps the first time");

  const err = await stripe.paymentIntents.create({ amount: 100, currency: "usd" }).catch((e) => e);
  assert.equal(err.statusCode, 401);
  assert.equal(err.raw.type, "key_revoked");
  assert.equal(kb.stripe.requests.length, countAtRevoke);
  const state = (await kb.call("GET", `/vault/keys/${key.key_id}`)).json;
  assert.equal(state.status, "revoked");
  const registry = await kb.db.prepare("SELECT revoked_at_ms FROM vault_keys WHERE key_id = ?").bind(key.key_id).first();
  assert.equal(new Date(registry.revoked_at_ms).toISOString(), revoked.json.revoked_at);
});

test("an expired key is refused", async () => {
  const key = await kb.issueKey({ expires_in: "1s" });
  await new Promise((r) => setTimeout(r, 1_100));
  const res = await kb.call("POST", "/v1/payment_intents", {
    token: key.vault_key,
    body: "amount=100&currency=usd",
    headers: { "content-type": "application/x-www-form-urlencoded" },
  });
  assert.equal(res.status, 401);
  assert.equal(res.json.error.type, "key_expired");
  assert.equal(kb.stripe.requests.length, 0);
  assert.equal((await kb.call("GET", `/vault/keys/${key.key_id}`)).json.status, "expired");
});

test("malformed and forged tokens get 401 and create no Durable Object or D1 state", async () => {
  const key = await kb.issueKey();
  const objectsBefore = countObjectFiles(kb.persistDir);
  const secret = key.vault_key.slice(-43);
  const flipped = secret.slice(0, -1) + (secret.endsWith("A") ? "B" : "A");
  const forgedId = "a".repeat(64);
  const tokens = [
    null,
    "",
    "sk_live_123",
    key.vault_key.slice(0, -1),
    key.vault_key + "A",
    key.vault_key.replace(secret, flipped),
    `kb_stripe_${forgedId}_${secret}`,
    ADMIN_KEY,
  ];
  for (const token of tokens) {
    const res = await kb.call("POST", "/v1/payment_intents", {
      token,
      body: "amount=100&currency=usd",
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    assert.equal(res.status, 401, `token ${token}`);
    assert.equal(res.json.error.type, "invalid_key");
  }
  assert.equal(kb.stripe.requests.length, 0);
  await new Promise((r) => setTimeout(r, 500)); // longer than the outbox flush delay
  const rows = await kb.db
    .prepare("SELECT COUNT(*) AS n FROM audit WHERE key_id IN (?, ?)")
    .bind(key.key_id, forgedId)
    .first();
  assert.equal(rows.n, 0, "failed authentication is not audited");
  const state = (await kb.call("GET", `/vault/keys/${key.key_id}`)).json;
  assert.equal(state.audit_pending, 0);
  assert.equal(countObjectFiles(kb.persistDir), objectsBefore, "no Durable Object was created");
});

test("a vendor decline releases the hold, and its own error passes through", async () => {
  const runLabel = label("outcomes");
  const key = await kb.issueKey({ daily_usd_cap: 10, agent_run_label: runLabel });
  const post = () =>
    kb.call("POST", "/v1/payment_intents", {
      token: key.vault_key,
      body: "amount=200&currency=usd",
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
  kb.stripe.misbehave(402);
  const declined = await post();
  assert.equal(declined.status, 402);
  assert.equal(declined.json.error.code, "card_declined");
  const state = await kb.settled(key);
  assert.equal(state.spent_usd, 0);

  const ok = await post();
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("x-keybrake-remaining-usd"), "8");

  const audit = await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 2);
  assert.deepEqual(audit.calls.map((c) => [c.status, c.outcome]), [[402, "released"], [200, "settled"]]);
  assert.equal(audit.total_usd, 2);
  const settled = audit.calls[1];
  assert.match(settled.vendor_object_id, /^pi_fake/);
  assert.deepEqual([settled.cost_usd, settled.reserved_usd, settled.method, settled.path], [2, 2, "POST", "/v1/payment_intents"]);
  assert.ok(settled.latency_ms >= 0);
  assert.equal(settled.idempotency_key, ok.headers.get("x-keybrake-idempotency-key"));
  for (const row of audit.calls) {
    assert.equal(row.agent_run_label, runLabel);
    assert.ok(!JSON.stringify(row).includes(key.vault_key.slice(-43)), "no secret in audit rows");
    assert.ok(!JSON.stringify(row).includes(STRIPE_SECRET));
  }
});

test("audit by key and by label, oldest first, with denied calls", async () => {
  const runLabel = label("audit");
  const key = await kb.issueKey({ daily_usd_cap: 1, agent_run_label: runLabel });
  const stripe = await stripeClient(kb, key.vault_key, { maxNetworkRetries: 0 });
  await stripe.paymentIntents.create({ amount: 60, currency: "usd" });
  await stripe.paymentIntents.create({ amount: 60, currency: "usd" }).catch(() => {});
  await stripe.charges.create({ amount: 10, currency: "usd", source: "tok_visa" }).catch(() => {});
  const byKey = await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 3);
  const byLabel = await kb.auditUntil({ agent_run_label: runLabel }, (p) => p.count === 3);
  assert.deepEqual(byKey, byLabel);
  assert.deepEqual(byKey.calls.map((c) => c.decision), ["forwarded", "cap_exhausted", "endpoint_not_allowed"]);
  assert.deepEqual(byKey.calls.map((c) => c.outcome), ["settled", "denied", "denied"]);
  assert.equal(byKey.total_usd, 0.6);
  const ts = byKey.calls.map((c) => Date.parse(c.ts));
  assert.deepEqual(ts, [...ts].sort((a, b) => a - b));
  const limited = await kb.call("GET", `/vault/audit?key_id=${key.key_id}&limit=1`);
  assert.equal(limited.json.count, 3, "count covers every matching row");
  assert.equal(limited.json.calls.length, 1);
  const bad = await kb.call("GET", "/vault/audit");
  assert.equal(bad.status, 400);
});

function countObjectFiles(dir) {
  const root = join(dir, "do");
  if (!existsSync(root)) return 0;
  let n = 0;
  const walk = (d) => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      if (entry.isDirectory()) walk(join(d, entry.name));
      else if (entry.name.endsWith(".sqlite")) n++;
    }
  };
  walk(root);
  return n;
}
