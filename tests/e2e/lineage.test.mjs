// Budgets that nest, end to end: issuers and their tokens, child keys minted with a vault key,
// revoke by run, and every limit exact under parallel calls, against the built Worker in
// workerd with Stripe played by the recording fake and stripe-node as the client.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useKeybrake, stripeClient } from "./harness.mjs";

const kb = useKeybrake();

const ENDPOINT = "POST /v1/payment_intents";
const unique = (name) => `lineage/${name}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;

async function createIssuer(overrides = {}) {
  const res = await kb.call("POST", "/vault/issuers", {
    body: {
      name: unique("issuer"),
      daily_usd_budget: 25,
      vendors: ["stripe"],
      allowed_endpoints: [ENDPOINT, "GET /v1/payment_intents/{id}"],
      max_key_usd_cap: 10,
      max_expires_in: "2h",
      ...overrides,
    },
  });
  assert.equal(res.status, 201, res.text);
  return res.json;
}

async function issueAs(token, overrides = {}) {
  return kb.call("POST", "/vault/keys", {
    token,
    body: { vendor: "stripe", daily_usd_cap: 10, allowed_endpoints: [ENDPOINT], expires_in: "1h", ...overrides },
  });
}

async function mintChild(parent, body, token = parent.vault_key) {
  return kb.call("POST", `/vault/keys/${parent.key_id}/children`, { token, body });
}

/** A $`usd` payment intent through Keybrake, as a raw call so the answer's headers can be read. */
function charge(vaultKey, usd = 1) {
  return kb.call("POST", "/v1/payment_intents", {
    token: vaultKey,
    body: `amount=${usd * 100}&currency=usd`,
    headers: { "content-type": "application/x-www-form-urlencoded" },
  });
}

function chargedAtStripe() {
  return kb.stripe.charges.length;
}

test("an issuer's budget holds exactly across all its keys under a parallel burst", async () => {
  const issuer = await createIssuer();
  assert.match(issuer.issuer_token, /^kbi_[0-9a-f]{64}_[A-Za-z0-9_-]{43}$/);
  assert.equal(issuer.daily_usd_budget, 25);
  const keys = [];
  for (let i = 0; i < 10; i++) {
    const res = await issueAs(issuer.issuer_token);
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.issuer_id, issuer.issuer_id);
    keys.push(res.json);
  }
  // 100 one-dollar calls over 10 keys of $10 each: the $25 budget binds first, exactly.
  const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => charge(keys[i % 10].vault_key)));
  const ok = answers.filter((a) => a.status === 200).length;
  assert.equal(ok, 25);
  assert.equal(chargedAtStripe(), 25, "exactly the budget reached Stripe");
  const refused = answers.filter((a) => a.status !== 200);
  for (const r of refused) {
    assert.equal(r.status, 429);
    assert.equal(r.headers.get("x-keybrake-cap-hit"), "true");
  }
  const budget = refused.filter((r) => r.headers.get("x-keybrake-cap-scope") === "issuer");
  assert.ok(budget.length > 0);
  assert.equal(budget[0].json.error.type, "budget_exhausted");
  assert.equal(budget[0].headers.get("x-keybrake-error"), "budget_exhausted");

  await Promise.all(keys.map((k) => kb.settled(k)));
  const state = await kb.call("GET", `/vault/issuers/${issuer.issuer_id}`, { token: issuer.issuer_token });
  assert.equal(state.status, 200, state.text);
  assert.equal(state.json.spent_today_usd, 25);
  assert.equal(state.json.held_usd, 0);
  assert.equal(state.json.remaining_usd, 0);
  assert.equal(state.json.live_keys, 10);
  assert.equal(state.json.issuer_token, undefined, "the token is shown once only");

  // The audit trail carries the lineage, and can be read by issuer.
  const page = await kb.auditUntil({ issuer_id: issuer.issuer_id }, (p) => p.count === 100);
  assert.equal(page.total_usd, 25);
  assert.ok(page.calls.every((c) => c.issuer_id === issuer.issuer_id && c.parent_key_id === null));
  const own = await kb.call("GET", `/vault/audit?issuer_id=${issuer.issuer_id}`, { token: issuer.issuer_token });
  assert.equal(own.status, 200);
  assert.equal(own.json.count, 100);
});

test("a child burst under a tight parent admits exactly the parent's remaining budget", async () => {
  const parent = await kb.issueKey({ daily_usd_cap: 60, agent_run_label: unique("fan-out") });
  const stripe = await stripeClient(kb, parent.vault_key, { maxNetworkRetries: 0 });
  await stripe.paymentIntents.create({ amount: 1000, currency: "usd" });
  const children = [];
  for (let i = 0; i < 20; i++) {
    const res = await mintChild(parent, { daily_usd_cap: 10, agent_run_label: `${parent.agent_run_label}/child-${i}` });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.parent_key_id, parent.key_id);
    assert.equal(res.json.key_id, `${parent.key_id}-${i + 1}`);
    assert.equal(res.json.expires_at, parent.expires_at, "a child expires with its parent by default");
    children.push(res.json);
  }
  kb.stripe.reset();
  // $50 left on the parent; 20 children of $10 could spend $200; 200 calls of $1 in parallel.
  const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => charge(children[i % 20].vault_key)));
  assert.equal(answers.filter((a) => a.status === 200).length, 50);
  assert.equal(chargedAtStripe(), 50);
  const scopes = new Set(answers.filter((a) => a.status === 429).map((a) => a.headers.get("x-keybrake-cap-scope")));
  assert.ok(scopes.has("parent"), [...scopes].join());
  await Promise.all(children.map((c) => kb.settled(c)));
  const state = (await kb.call("GET", `/vault/keys/${parent.key_id}`)).json;
  assert.equal(state.spent_usd, 10);
  assert.equal(state.descendants_usd, 50);
  assert.equal(state.remaining_usd, 0);
  // The parent's own call is refused too: its cap counts its children.
  const own = await charge(parent.vault_key);
  assert.equal(own.status, 429);
  assert.equal(own.headers.get("x-keybrake-cap-scope"), "key");
  // Audit rows carry the parent.
  const page = await kb.auditUntil({ key_id: children[0].key_id }, (p) => p.count === 10);
  assert.ok(page.calls.every((c) => c.parent_key_id === parent.key_id));
});

test("keys outside an issuer's ceiling, or children wider than their parent, get 400 naming the field", async () => {
  const issuer = await createIssuer();
  const cases = [
    [{ vendor: "resend", allowed_endpoints: ["POST /emails"] }, "vendor"],
    [{ allowed_endpoints: ["POST /v1/refunds"] }, "allowed_endpoints"],
    [{ daily_usd_cap: 10.01 }, "daily_usd_cap"],
    [{ expires_in: "3h" }, "expires_in"],
  ];
  for (const [overrides, field] of cases) {
    const res = await issueAs(issuer.issuer_token, overrides);
    assert.equal(res.status, 400, JSON.stringify(overrides));
    assert.equal(res.json.error.type, "invalid_request");
    assert.match(res.json.error.message, new RegExp(field));
  }
  const parent = await kb.issueKey({ daily_usd_cap: 5, allowed_endpoints: [ENDPOINT], expires_in: "1h" });
  const childCases = [
    [{ daily_usd_cap: 6 }, "daily_usd_cap"],
    [{ daily_usd_cap: 1, allowed_endpoints: ["POST /v1/refunds"] }, "allowed_endpoints"],
    [{ daily_usd_cap: 1, expires_in: "2h" }, "expires_in"],
    [{ daily_usd_cap: 1, vendor: "twilio" }, "vendor"],
  ];
  for (const [body, field] of childCases) {
    const res = await mintChild(parent, body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.match(res.json.error.message, new RegExp(field));
  }
  const registry = await kb.db.prepare("SELECT COUNT(*) AS n FROM vault_keys WHERE parent_key_id = ?").bind(parent.key_id).first();
  assert.equal(registry.n, 0, "a refused request creates nothing");
});

test("an issuer cannot see, audit or revoke another issuer's keys, nor use the root-only routes", async () => {
  const a = await createIssuer();
  const b = await createIssuer();
  const label = unique("shared-label");
  const keyA = (await issueAs(a.issuer_token, { agent_run_label: label })).json;
  const root = await kb.issueKey({ agent_run_label: label });
  assert.equal((await charge(keyA.vault_key)).status, 200);
  for (const [method, path] of [
    ["GET", `/vault/keys/${keyA.key_id}`],
    ["DELETE", `/vault/keys/${keyA.key_id}`],
    ["POST", `/vault/keys/${keyA.key_id}/refresh`],
    ["GET", `/vault/keys/${root.key_id}`],
    ["GET", `/vault/audit?key_id=${keyA.key_id}`],
    ["GET", `/vault/audit?issuer_id=${a.issuer_id}`],
    ["GET", `/vault/issuers/${a.issuer_id}`],
  ]) {
    const res = await kb.call(method, path, { token: b.issuer_token });
    assert.equal(res.status, 404, `${method} ${path}`);
  }
  for (const [method, path] of [
    ["GET", "/vault/issuers"],
    ["POST", "/vault/issuers"],
    ["DELETE", `/vault/issuers/${b.issuer_id}`],
  ]) {
    const res = await kb.call(method, path, { token: b.issuer_token, body: method === "POST" ? {} : undefined });
    assert.equal(res.status, 401, `${method} ${path}`);
  }
  // By label, B sees nothing of A's run, and revokes nothing of it.
  await kb.auditUntil({ key_id: keyA.key_id }, (p) => p.count === 1);
  const audit = await kb.call("GET", `/vault/audit?agent_run_label=${encodeURIComponent(label)}`, { token: b.issuer_token });
  assert.equal(audit.status, 200);
  assert.equal(audit.json.count, 0);
  assert.equal(audit.json.calls.length, 0);
  const run = await kb.call("DELETE", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`, { token: b.issuer_token });
  assert.deepEqual(run.json, { revoked: 0, key_ids: [] });
  assert.equal((await kb.key(keyA)).status, "active");
  assert.equal((await kb.key(root)).status, "active");
  // A sees its own, and only its own, under the shared label.
  const mine = await kb.call("GET", `/vault/audit?agent_run_label=${encodeURIComponent(label)}`, { token: a.issuer_token });
  assert.equal(mine.json.count, 1);
  // Revoked, an issuer's token stops working at once.
  assert.equal((await kb.call("DELETE", `/vault/issuers/${b.issuer_id}`)).status, 200);
  assert.equal((await issueAs(b.issuer_token)).status, 401);
});

/** Starts a burst on `keys`, slowed at Stripe so that calls are in flight at the revoke. */
function burst(keys, n) {
  for (let i = 0; i < 5; i++) kb.stripe.misbehave({ delay: 150 });
  return Promise.all(Array.from({ length: n }, (_, i) => charge(keys[i % keys.length].vault_key)));
}

test("revoking a parent stops all its descendants: nothing reaches Stripe after the answer", async () => {
  const parent = await kb.issueKey({ daily_usd_cap: 300 });
  const child = (await mintChild(parent, { daily_usd_cap: 100 })).json;
  const grandchild = (await mintChild(child, { daily_usd_cap: 50 })).json;
  const idle = (await mintChild(parent, { daily_usd_cap: 5 })).json; // spends nothing
  const sibling = await kb.issueKey({ daily_usd_cap: 300 });
  const calls = burst([child, grandchild], 60);
  await new Promise((r) => setTimeout(r, 20));
  const revoked = await kb.call("DELETE", `/vault/keys/${parent.key_id}`);
  const atAnswer = chargedAtStripe();
  assert.equal(revoked.status, 200);
  assert.deepEqual([...revoked.json.revoked_key_ids].sort(), [parent.key_id, child.key_id, grandchild.key_id, idle.key_id].sort());
  await calls;
  assert.equal(chargedAtStripe(), atAnswer, "nothing reached Stripe after DELETE answered");
  for (const k of [child, grandchild]) {
    const res = await charge(k.vault_key);
    assert.equal(res.status, 401);
    assert.equal(res.json.error.type, "key_revoked");
    assert.equal((await kb.key(k)).status, "revoked");
  }
  assert.equal((await mintChild(child, { daily_usd_cap: 1 })).status, 401, "a revoked key mints nothing");
  // Once the object's alarm has run (it flushes the burst's audit rows), the idle revoked key,
  // which counts for nothing, has left memory: it is read back from storage, still revoked.
  await kb.auditUntil({ key_id: grandchild.key_id }, (p) => p.count > 0 && p.calls.every((c) => c.outcome !== "unknown"));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await kb.key(idle)).status, "revoked");
  assert.equal((await charge(idle.vault_key)).json.error.type, "key_revoked");
  assert.equal((await mintChild(idle, { daily_usd_cap: 1 })).status, 401);
  assert.equal((await charge(sibling.vault_key)).status, 200, "other trees are untouched");
  const registry = await kb.db
    .prepare("SELECT COUNT(*) AS n FROM vault_keys WHERE revoked_at_ms IS NOT NULL AND key_id IN (?, ?, ?)")
    .bind(parent.key_id, child.key_id, grandchild.key_id)
    .first();
  assert.equal(registry.n, 3);
});

test("revoking an issuer stops every key it made and their children", async () => {
  const issuer = await createIssuer({ daily_usd_budget: 1000, max_key_usd_cap: 100 });
  const keys = [];
  for (let i = 0; i < 3; i++) keys.push((await issueAs(issuer.issuer_token, { daily_usd_cap: 100 })).json);
  const child = (await mintChild(keys[0], { daily_usd_cap: 10 })).json;
  assert.equal(child.issuer_id, issuer.issuer_id);
  const all = [...keys, child];
  const calls = burst(all, 60);
  await new Promise((r) => setTimeout(r, 20));
  const revoked = await kb.call("DELETE", `/vault/issuers/${issuer.issuer_id}`);
  const atAnswer = chargedAtStripe();
  assert.equal(revoked.status, 200, revoked.text);
  assert.equal(revoked.json.revoked, 4);
  await calls;
  assert.equal(chargedAtStripe(), atAnswer, "nothing reached Stripe after DELETE answered");
  for (const k of all) assert.equal((await charge(k.vault_key)).json.error.type, "key_revoked");
  const state = await kb.call("GET", `/vault/issuers/${issuer.issuer_id}`);
  assert.equal(state.json.status, "revoked");
  assert.equal(state.json.live_keys, 0);
  const listed = (await kb.call("GET", "/vault/issuers")).json.issuers.find((i) => i.issuer_id === issuer.issuer_id);
  assert.equal(listed.status, "revoked");
  assert.equal(listed.issuer_token, undefined);
});

test("revoke by run revokes every key of the run and their children, and nothing else", async () => {
  const label = unique("run");
  const a = await kb.issueKey({ agent_run_label: label });
  const b = await kb.issueKey({ agent_run_label: label });
  const other = await kb.issueKey({ agent_run_label: unique("other-run") });
  const childOfA = (await mintChild(a, { daily_usd_cap: 1, agent_run_label: unique("child-run") })).json;
  const childOfOther = (await mintChild(other, { daily_usd_cap: 1, agent_run_label: label })).json;
  const res = await kb.call("DELETE", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`);
  assert.equal(res.status, 200, res.text);
  const expected = [a.key_id, b.key_id, childOfA.key_id, childOfOther.key_id].sort();
  assert.deepEqual(res.json, { revoked: 4, key_ids: expected });
  for (const k of [a, b, childOfA, childOfOther]) assert.equal((await charge(k.vault_key)).json.error.type, "key_revoked");
  assert.equal((await charge(other.vault_key)).status, 200);
  for (const bad of ["", "?agent_run_label=", `?agent_run_label=${label}&key_id=x`, "?label=x"]) {
    const r = await kb.call("DELETE", `/vault/keys${bad}`);
    assert.equal(r.status, 400, bad);
  }
});

test("a leaked child key cannot mint beyond its parent, nor reach the admin API", async () => {
  const parent = await kb.issueKey({ daily_usd_cap: 5, allowed_endpoints: [ENDPOINT, "GET /v1/payment_intents/{id}"] });
  const child = (await mintChild(parent, { daily_usd_cap: 5, allowed_endpoints: [ENDPOINT] })).json;
  // Its grandchildren are bounded by it, and so by the parent.
  assert.equal((await mintChild(child, { daily_usd_cap: 6 })).status, 400);
  assert.equal((await mintChild(child, { daily_usd_cap: 1, allowed_endpoints: ["GET /v1/payment_intents/{id}"] })).status, 400);
  const grandchildren = [];
  for (let i = 0; i < 3; i++) grandchildren.push((await mintChild(child, { daily_usd_cap: 5 })).json);
  const answers = await Promise.all(Array.from({ length: 30 }, (_, i) => charge(grandchildren[i % 3].vault_key)));
  assert.equal(answers.filter((a) => a.status === 200).length, 5, "all of them together stay within the parent's $5");
  // The child's key mints only under itself, and is no admin credential.
  assert.equal((await mintChild(parent, { daily_usd_cap: 1 }, child.vault_key)).status, 401);
  assert.equal((await kb.call("POST", "/vault/keys", { token: child.vault_key, body: { vendor: "stripe" } })).status, 401);
  assert.equal((await kb.call("GET", `/vault/keys/${child.key_id}`, { token: child.vault_key })).status, 401);
  assert.equal((await kb.call("DELETE", `/vault/keys/${parent.key_id}`, { token: child.vault_key })).status, 401);
  // Nesting stops at four levels.
  const g = grandchildren[0];
  const great = (await mintChild(g, { daily_usd_cap: 1 })).json;
  const tooDeep = await mintChild(great, { daily_usd_cap: 1 });
  assert.equal(tooDeep.status, 400);
  assert.match(tooDeep.json.error.message, /nest/);
});

test("forged issuer tokens count toward the lockout; the right issuer token and the root key still work", async () => {
  const issuer = await createIssuer();
  const ip = "198.51.100.23";
  const secret = issuer.issuer_token.slice(-43);
  // The issuer's id with a wrong secret, and a well-formed token of an issuer that does not exist.
  const forged = (i) =>
    i % 2 === 0
      ? issuer.issuer_token.replace(secret, `${secret.slice(0, -2)}${String(i % 100).padStart(2, "0")}`)
      : `kbi_${"a".repeat(64)}_${secret}`;
  const answers = [];
  for (let i = 0; i < 22; i++) {
    answers.push(await kb.call("GET", `/vault/issuers/${issuer.issuer_id}`, { token: forged(i), headers: { "cf-connecting-ip": ip } }));
  }
  answers.slice(0, 20).forEach((res, i) => assert.equal(res.status, 401, `forged token ${i + 1}`));
  assert.equal(answers[21].status, 429, "past the limit, further failures are slowed");
  assert.equal(answers[21].json.error.type, "too_many_attempts");
  // The issuer on that address is never refused, and nor is the operator's revoke.
  const own = await kb.call("GET", `/vault/issuers/${issuer.issuer_id}`, { token: issuer.issuer_token, headers: { "cf-connecting-ip": ip } });
  assert.equal(own.status, 200, own.text);
  const key = await issueAs(issuer.issuer_token, {});
  assert.equal(key.status, 201);
  const revoked = await kb.call("DELETE", `/vault/issuers/${issuer.issuer_id}`, { headers: { "cf-connecting-ip": ip } });
  assert.equal(revoked.status, 200, revoked.text);
  assert.equal(revoked.json.revoked, 1);
});
