// Retries, idempotency and faults: a repeat under the same Idempotency-Key is debited once,
// ambiguous outcomes are resolved by the key's alarm, and audit rows survive a D1 outage.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useKeybrake, stripeClient, until } from "./harness.mjs";

const kb = useKeybrake();

const FORM = { "content-type": "application/x-www-form-urlencoded" };
const charge = (key, { amount = 150, idempotencyKey, signal } = {}) =>
  kb.call("POST", "/v1/payment_intents", {
    token: key.vault_key,
    body: `amount=${amount}&currency=usd`,
    headers: { ...FORM, ...(idempotencyKey ? { "idempotency-key": idempotencyKey } : {}) },
    signal,
  });
const charged = () => kb.stripe.charges.reduce((sum, c) => sum + c.amount, 0) / 100;

const settledState = (key) => kb.settled(key);
/** The key's state once its audit has drained and two reads 300 ms apart agree. */
const quiet = (key) =>
  until("the key's state to settle", async () => {
    const a = await kb.key(key);
    await new Promise((r) => setTimeout(r, 300));
    const b = await kb.key(key);
    return a.audit_pending === 0 && JSON.stringify(a) === JSON.stringify(b) ? b : null;
  });

test("the same Idempotency-Key sent twice in sequence is debited once and replayed by the vendor", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  const stripe = await stripeClient(kb, key.vault_key, { maxNetworkRetries: 0 });
  const first = await stripe.paymentIntents.create({ amount: 150, currency: "usd" }, { idempotencyKey: "order-42" });
  const second = await stripe.paymentIntents.create({ amount: 150, currency: "usd" }, { idempotencyKey: "order-42" });
  assert.equal(second.id, first.id, "the vendor replayed its answer");
  assert.equal(second.lastResponse.headers["idempotent-replayed"], "true");
  assert.equal(kb.stripe.charges.length, 1, "one create");
  assert.equal(kb.stripe.requests.length, 2, "and one replay");
  const state = await settledState(key);
  assert.equal(state.spent_usd, 1.5);

  const audit = await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 2);
  assert.deepEqual(audit.calls.map((c) => [c.decision, c.outcome, c.cost_usd]), [["forwarded", "settled", 1.5], ["forwarded", "replayed", 0]]);
  assert.ok(audit.calls.every((c) => c.idempotency_key === "order-42"));

});

test("the same Idempotency-Key sent concurrently is debited once: one create, the others 409 or a replay", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  const answers = await Promise.all(Array.from({ length: 5 }, () => charge(key, { idempotencyKey: "concurrent-1" })));
  const statuses = answers.map((a) => a.status).sort();
  assert.ok(statuses.includes(200), statuses.join());
  for (const a of answers.filter((a) => a.status !== 200)) {
    assert.equal(a.status, 409);
    assert.equal(a.json.error.type, "idempotency_in_flight");
    assert.equal(a.headers.get("stripe-should-retry"), null, "a 409 in flight may be retried");
  }
  assert.equal(kb.stripe.charges.length, 1);
  assert.equal(kb.stripe.requests.length, answers.filter((a) => a.status === 200).length, "409s never reached Stripe");
  assert.equal((await settledState(key)).spent_usd, 1.5);
});

test("a reused key on another path is refused, and a call without a key gets one it can retry with", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10, allowed_endpoints: ["POST /v1/payment_intents", "POST /v1/charges"] });
  assert.equal((await charge(key, { idempotencyKey: "k-1" })).status, 200);
  const mismatch = await kb.call("POST", "/v1/charges", {
    token: key.vault_key,
    body: "amount=150&currency=usd",
    headers: { ...FORM, "idempotency-key": "k-1" },
  });
  assert.equal(mismatch.status, 422);
  assert.equal(mismatch.json.error.type, "idempotency_mismatch");

  const keyless = await charge(key);
  assert.equal(keyless.status, 200);
  const made = keyless.headers.get("x-keybrake-idempotency-key");
  assert.match(made, new RegExp(`^kb_${key.key_id}_\\d+$`));
  assert.equal(kb.stripe.requests.at(-1).headers["idempotency-key"], made, "sent upstream");
  const retry = await charge(key, { idempotencyKey: made });
  assert.equal(retry.json.id, keyless.json.id);
  assert.equal(kb.stripe.charges.length, 2, "the retry charged nothing");
  assert.equal((await settledState(key)).spent_usd, 3);
});

for (const fault of [500, "hang", "reset", 429]) {
  test(`fault ${fault}: once the alarm has run, spent equals what Stripe charged, and no hold leaks`, async () => {
    const key = await kb.issueKey({ daily_usd_cap: 10 });
    kb.stripe.misbehave(fault);
    const answer = await charge(key);
    const expectStatus = { 500: 500, hang: 502, reset: 502, 429: 429 }[fault];
    assert.equal(answer.status, expectStatus, answer.text);
    const chargedNow = charged();
    assert.equal(chargedNow, fault === 429 ? 0 : 1.5, "the fake's own record");

    // Until it is resolved, the money is never released while Stripe may have charged.
    const early = await kb.key(key);
    assert.equal(early.spent_usd + early.reserved_usd, chargedNow, JSON.stringify(early));

    const state = await settledState(key);
    assert.equal(state.spent_usd, charged());
    assert.equal(charged(), chargedNow, "resolving never charged again");
    const audit = await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 1);
    const row = audit.calls[0];
    if (fault === 429) {
      assert.deepEqual([row.outcome, row.status], ["released", 429]);
    } else {
      assert.deepEqual([row.outcome, row.status, row.cost_usd], ["settled", 200, 1.5]);
      assert.ok(row.reconciled_at, "resolved after the fact");
      assert.match(row.vendor_object_id, /^pi_fake/);
    }
  });
}

test("a client that goes away mid-call leaves a hold that is resolved, never silently released", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  kb.stripe.misbehave("hang");
  const controller = new AbortController();
  const gone = charge(key, { idempotencyKey: "abandoned-1", signal: controller.signal }).catch((e) => e);
  await until("the call to reach Stripe", () => kb.stripe.requests.length === 1);
  controller.abort();
  await gone;
  const held = await kb.key(key);
  assert.equal(held.spent_usd + held.reserved_usd, 1.5, "held while the outcome is unknown");
  // Whether the Worker finished its call or was cut off and swept, the hold ends up settled
  // by the alarm or by the client's retry under the same key: never released.
  const retry = await until("a retry to be answered", async () => {
    const r = await charge(key, { idempotencyKey: "abandoned-1" });
    return r.status === 200 ? r : null;
  });
  assert.match(retry.json.id, /^pi_fake/);
  const state = await settledState(key);
  assert.equal(state.spent_usd, 1.5);
  assert.equal(kb.stripe.charges.length, 1);
});

test("audit rows survive a D1 outage and arrive exactly once", async () => {
  const runLabel = `outage-${Date.now()}`;
  const key = await kb.issueKey({ daily_usd_cap: 100, agent_run_label: runLabel });
  await kb.db.prepare("ALTER TABLE audit RENAME TO audit_offline").run();
  try {
    for (let i = 0; i < 5; i++) assert.equal((await charge(key)).status, 200);
    assert.equal((await charge({ vault_key: key.vault_key }, { amount: 1_000_000 })).status, 429);
    await new Promise((r) => setTimeout(r, 600)); // several failed flushes
    const pending = await kb.key(key);
    assert.equal(pending.audit_pending, 6, "every row is kept in the key's outbox");
    assert.equal(pending.spent_usd, 7.5, "the ledger did not wait for D1");
  } finally {
    await kb.db.prepare("ALTER TABLE audit_offline RENAME TO audit").run();
  }
  await settledState(key);
  const rows = await kb.db.prepare("SELECT id, outcome FROM audit WHERE key_id = ?").bind(key.key_id).all();
  assert.equal(rows.results.length, 6);
  assert.equal(new Set(rows.results.map((r) => r.id)).size, 6, "no row twice");
  const audit = await kb.auditUntil({ agent_run_label: runLabel }, (p) => p.count === 6);
  assert.equal(audit.total_usd, 7.5);
});

test("refresh extends an active key and answers 409 for a revoked one", async () => {
  const key = await kb.issueKey({ expires_in: "10m" });
  const refreshed = await kb.call("POST", `/vault/keys/${key.key_id}/refresh`, { body: { expires_in: "2h" } });
  assert.equal(refreshed.status, 200, refreshed.text);
  const ttl = Date.parse(refreshed.json.expires_at) - Date.now();
  assert.ok(ttl > 7_100_000 && ttl <= 7_200_000, `${ttl}`);
  assert.equal((await kb.key(key)).expires_at, refreshed.json.expires_at);
  const registry = await kb.db.prepare("SELECT expires_at_ms FROM vault_keys WHERE key_id = ?").bind(key.key_id).first();
  assert.equal(new Date(registry.expires_at_ms).toISOString(), refreshed.json.expires_at);
  const tooLong = await kb.call("POST", `/vault/keys/${key.key_id}/refresh`, { body: { expires_in: "31d" } });
  assert.equal(tooLong.status, 400);
  await kb.call("DELETE", `/vault/keys/${key.key_id}`);
  const revoked = await kb.call("POST", `/vault/keys/${key.key_id}/refresh`, { body: { expires_in: "2h" } });
  assert.equal(revoked.status, 409);
  assert.equal(revoked.json.error.type, "conflict");
  const unauthenticated = await kb.call("POST", `/vault/keys/${key.key_id}/refresh`, { body: {}, token: key.vault_key });
  assert.equal(unauthenticated.status, 401);
});

test("randomized: concurrent creates, retries, revokes and faults end with spent equal to Stripe's charges", async () => {
  const seed = Number(process.env.KEYBRAKE_SEED ?? Date.now() % 100_000);
  console.log(`# randomized seed ${seed} (rerun with KEYBRAKE_SEED=${seed})`);
  let state = seed;
  const random = (n) => {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    return state % n;
  };
  const cap = 12;
  const key = await kb.issueKey({ daily_usd_cap: cap });
  const keysUsed = []; // [idempotency key, amount of its first call]
  let revoked = false;
  for (let round = 0; round < 8; round++) {
    const batch = [];
    for (let i = 0; i < 6; i++) {
      const roll = random(10);
      if (roll < 2) kb.stripe.misbehave([500, "reset", 429, "hang"][random(4)]);
      // A retry repeats its call exactly; one with another amount is refused with 422.
      const reuse = roll >= 8 && keysUsed.length > 0;
      const [idempotencyKey, firstAmount] = reuse ? keysUsed[random(keysUsed.length)] : [`r${seed}-${round}-${i}`, 50 + 50 * random(4)];
      if (!reuse) keysUsed.push([idempotencyKey, firstAmount]);
      const amount = roll === 9 ? firstAmount + 1 : firstAmount;
      batch.push(charge(key, { amount, idempotencyKey }));
    }
    if (!revoked && round === 6 && random(2) === 0) {
      revoked = true;
      batch.push(kb.call("DELETE", `/vault/keys/${key.key_id}`));
    }
    const answers = await Promise.all(batch);
    for (const a of answers) assert.ok([200, 401, 409, 422, 429, 500, 502].includes(a.status), `${a.status} ${a.text}`);
    const s = await kb.key(key);
    assert.ok(s.spent_usd + s.reserved_usd <= cap + 1e-9, `cap exceeded: ${JSON.stringify(s)}`);
  }
  // Unknown holds are resolved by replay, unless the key was revoked: then nothing more is sent,
  // and they stay held. Either way Stripe's charges lie between spent and spent + held.
  const final = revoked ? await quiet(key) : await settledState(key);
  const created = charged();
  assert.ok(final.spent_usd <= created + 1e-9 && created <= final.spent_usd + final.reserved_usd + 1e-9, `spent ${final.spent_usd} + held ${final.reserved_usd} vs charged ${created}`);
  if (final.unresolved === 0) assert.equal(final.spent_usd, created);
  assert.ok(created <= cap);
  const perKey = new Map();
  for (const c of kb.stripe.charges) perKey.set(c.idempotencyKey, (perKey.get(c.idempotencyKey) ?? 0) + 1);
  assert.ok([...perKey.values()].every((n) => n === 1), "no idempotency key was charged twice");
  // A key is bound to whichever body reached Keybrake first; no other body follows it to Stripe.
  const bodies = new Map();
  for (const r of kb.stripe.requests) {
    const key = r.headers["idempotency-key"];
    bodies.set(key, (bodies.get(key) ?? new Set()).add(r.body));
  }
  for (const [key, seen] of bodies) assert.equal(seen.size, 1, `${key} reached Stripe with ${[...seen].join(" and ")}`);
});
