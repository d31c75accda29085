// The admin client against the built Worker in workerd: every answer is checked against the
// OpenAPI document, and every mistake a user is likely to make gets a message that says so.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Keybrake, KeybrakeError, isCapHit, isRetryable } from "keybrake";
import { useKeybrake, ADMIN_KEY } from "../../../tests/e2e/harness.mjs";
import { generate } from "../scripts/gen-types.mjs";
import { DOC, problems } from "./schema.mjs";

const kb = useKeybrake();
const admin = () => new Keybrake({ baseUrl: kb.url, token: ADMIN_KEY });
const STRIPE_KEY = { vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: ["POST /v1/payment_intents"], expires_in: "1h" };

test("the generated types are the document's, and the build shipped them", () => {
  const generated = generate(DOC);
  assert.equal(readFileSync(new URL("../src/openapi.gen.ts", import.meta.url), "utf8"), generated, "src/openapi.gen.ts is stale: rebuild");
  const shipped = readFileSync(new URL("../dist/esm/openapi.gen.d.ts", import.meta.url), "utf8");
  for (const name of Object.keys(DOC.components.schemas)) assert.match(shipped, new RegExp(`export type ${name} =`), name);
  assert.match(generated, /export type NewKey = \{\n  vendor: Vendor;\n  \/\*\* [^\n]*\*\/\n  daily_usd_cap: UsdInput;/);
});

test("the schema check catches an answer that strays from the document", () => {
  const issued = {
    key_id: "a".repeat(64),
    vault_key: `kb_stripe_${"a".repeat(64)}_${"b".repeat(43)}`,
    vendor: "stripe",
    daily_usd_cap: 5,
    max_usd_per_call: null,
    allowed_endpoints: ["POST /v1/payment_intents"],
    expires_at: "2026-11-28T06:23:58.050Z",
    agent_run_label: null,
    stripe_account: null,
    allow_expand: false,
    issuer_id: null,
    parent_key_id: null,
  };
  assert.deepEqual(problems(issued, "IssuedKey"), []);
  assert.deepEqual(problems({ ...issued, surprise: 1 }, "IssuedKey"), ["$.surprise: not in the document"]);
  assert.deepEqual(problems({ ...issued, vendor: "paypal" }, "IssuedKey").length, 1);
  const { expires_at, ...missing } = issued;
  assert.deepEqual(problems(missing, "IssuedKey"), ["$.expires_at: missing"]);
});

test("issue, get, refresh, revoke and audit round-trip, each answer as the document says", async () => {
  const client = admin();
  const label = `client-test/${Date.now()}`;
  const issued = await client.keys.issue({ ...STRIPE_KEY, agent_run_label: label });
  assert.deepEqual(problems(issued, "IssuedKey"), []);
  assert.equal(issued.agent_run_label, label);

  const stripe = client.stripeFor(issued, { maxNetworkRetries: 0 });
  const intent = await stripe.paymentIntents.create({ amount: 150, currency: "usd" });
  assert.match(intent.id, /^pi_/);

  const state = await kb.settled(issued);
  assert.deepEqual(problems(await client.keys.get(issued.key_id), "KeyState"), []);
  assert.equal(state.spent_usd, 1.5);

  const refreshed = await client.keys.refresh(issued.key_id, { expires_in: "2h" });
  assert.deepEqual(problems(refreshed, "KeyState"), []);
  assert.ok(Date.parse(refreshed.expires_at) > Date.parse(issued.expires_at));

  const revoked = await client.keys.revoke(issued.key_id);
  assert.deepEqual(problems(revoked, "Revoked"), []);
  assert.equal(revoked.status, "revoked");

  await kb.auditUntil({ key_id: issued.key_id }, (p) => p.count >= 1);
  for (const query of [{ keyId: issued.key_id }, { agentRunLabel: label }]) {
    const page = await client.audit.list(query);
    assert.deepEqual(problems(page, "AuditPage"), []);
    assert.equal(page.total_usd, 1.5);
    assert.equal(page.calls[0].agent_run_label, label);
  }
  const rows = [];
  for await (const row of client.audit.all({ keyId: issued.key_id, limit: 1 })) rows.push(row);
  assert.equal(rows.length, 1);
});

test("issuers, child keys and revoke by run: each answer as the document says", async () => {
  const root = admin();
  const run = `client-test/lineage-${Date.now()}`;
  const created = await root.issuers.create({
    name: run,
    daily_usd_budget: 20,
    vendors: ["stripe"],
    allowed_endpoints: ["POST /v1/payment_intents"],
    max_key_usd_cap: 10,
    max_expires_in: "2h",
  });
  assert.deepEqual(problems(created, "IssuedIssuer"), []);
  const asIssuer = new Keybrake({ baseUrl: kb.url, token: created.issuer_token });
  assert.deepEqual(problems(await asIssuer.issuers.get(created.issuer_id), "Issuer"), []);
  const listed = await root.issuers.list();
  assert.deepEqual(problems(listed, "IssuerList"), []);
  assert.ok(listed.issuers.some((i) => i.issuer_id === created.issuer_id));

  const parent = await asIssuer.keys.issue({ ...STRIPE_KEY, agent_run_label: run });
  assert.deepEqual(problems(parent, "IssuedKey"), []);
  assert.equal(parent.issuer_id, created.issuer_id);
  const child = await root.keys.children(parent, { daily_usd_cap: 2 });
  assert.deepEqual(problems(child, "IssuedKey"), []);
  assert.equal(child.parent_key_id, parent.key_id);

  const stripe = root.stripeFor(child, { maxNetworkRetries: 0 });
  await stripe.paymentIntents.create({ amount: 100, currency: "usd" });
  await kb.settled(child);
  const parentState = await asIssuer.keys.get(parent.key_id);
  assert.deepEqual(problems(parentState, "KeyState"), []);
  assert.equal(parentState.descendants_usd, 1);
  assert.deepEqual(problems(await root.keys.get(child.key_id), "KeyState"), []);
  await kb.auditUntil({ key_id: child.key_id }, (p) => p.count >= 1);
  const page = await asIssuer.audit.list({ issuerId: created.issuer_id });
  assert.deepEqual(problems(page, "AuditPage"), []);
  assert.equal(page.calls[0].parent_key_id, parent.key_id);

  const revoked = await asIssuer.keys.revokeRun(run);
  assert.deepEqual(problems(revoked, "RunRevoked"), []);
  assert.deepEqual(revoked.key_ids, [parent.key_id, child.key_id].sort());
  const again = await root.keys.revoke(parent.key_id);
  assert.deepEqual(problems(again, "Revoked"), []);
  const gone = await root.issuers.delete(created.issuer_id);
  assert.deepEqual(problems(gone, "IssuerRevoked"), []);
  assert.equal(gone.status, "revoked");
});

test("the CommonJS build is the same client", async () => {
  const require = createRequire(import.meta.url);
  const cjs = require("keybrake");
  assert.equal(typeof cjs.Keybrake, "function");
  assert.notEqual(cjs.Keybrake, Keybrake, "a separate build, not the ES module");
  const client = new cjs.Keybrake({ baseUrl: kb.url, token: ADMIN_KEY });
  const issued = await client.keys.issue(STRIPE_KEY);
  const stripe = client.stripeFor(issued.vault_key, { maxNetworkRetries: 0 });
  await stripe.paymentIntents.create({ amount: 300, currency: "usd" });
  const err = await stripe.paymentIntents.create({ amount: 300, currency: "usd" }).catch((e) => e);
  assert.equal(cjs.isCapHit(err), true);
  assert.equal(isCapHit(err), true);
});

test("Keybrake's refusals are KeybrakeErrors with the type, and never carry the token", async () => {
  const wrong = new Keybrake({ baseUrl: kb.url, token: "x".repeat(40) });
  const err = await wrong.keys.issue(STRIPE_KEY).catch((e) => e);
  assert.ok(err instanceof KeybrakeError);
  assert.equal(err.status, 401);
  assert.equal(err.type, "unauthorized");
  assert.match(err.message, /KEYBRAKE_API_KEY or an issuer token/);
  assert.ok(!err.message.includes("x".repeat(40)));
  assert.equal(isRetryable(err), false);

  const notFound = await admin().keys.get("0".repeat(64)).catch((e) => e);
  assert.equal(notFound.type, "not_found");
  const bad = await admin().keys.issue({ ...STRIPE_KEY, daily_usd_cap: -1 }).catch((e) => e);
  assert.equal(bad.type, "invalid_request");
  assert.match(bad.message, /daily_usd_cap/);
});

test("a bad base URL is named as such", async () => {
  for (const [baseUrl, says] of [
    [undefined, /baseUrl is missing/],
    ["keybrake.example.workers.dev", /not an absolute URL/],
    ["ftp://keybrake.example", /must use http: or https:/],
    ["https://user:secret@keybrake.example", /must not carry credentials/],
    ["https://keybrake.example/?x=1", /must not have a query/],
  ]) {
    assert.throws(() => new Keybrake({ baseUrl, token: ADMIN_KEY }), says, String(baseUrl));
  }
  // Nothing listens there.
  const closed = await new Promise((resolve) => {
    const s = http.createServer().listen(0, "127.0.0.1", () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
  const unreachable = await new Keybrake({ baseUrl: `http://127.0.0.1:${closed}`, token: ADMIN_KEY }).keys.get("a".repeat(64)).catch((e) => e);
  assert.ok(unreachable instanceof KeybrakeError);
  assert.match(unreachable.message, /could not reach Keybrake at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\); is baseUrl right/);
  assert.equal(isRetryable(unreachable), true);

  // Something answers, but it is not Keybrake.
  const other = http.createServer((req, res) => res.writeHead(404, { "content-type": "text/html" }).end("<h1>Not Found</h1>"));
  await new Promise((r) => other.listen(0, "127.0.0.1", r));
  try {
    const wrongHost = await new Keybrake({ baseUrl: `http://127.0.0.1:${other.address().port}`, token: ADMIN_KEY }).keys.issue(STRIPE_KEY).catch((e) => e);
    assert.match(wrongHost.message, /got HTTP 404 \(text\/html\) that is not Keybrake's answer; is baseUrl \(http:\/\/127\.0\.0\.1:\d+\) Keybrake\?/);
  } finally {
    other.close();
  }
});

test("a vault key where the admin token belongs, and the reverse, are named as such", async () => {
  const issued = await admin().keys.issue(STRIPE_KEY);
  assert.throws(() => new Keybrake({ baseUrl: kb.url, token: issued.vault_key }), (err) => {
    assert.match(err.message, /token is a stripe vault key, not the admin token/);
    assert.ok(!err.message.includes(issued.vault_key), "the key is not echoed");
    return true;
  });
  const client = admin();
  assert.throws(() => client.stripeFor(ADMIN_KEY), /expected a vault key/);
  assert.throws(() => client.twilioFor(issued), /this vault key is for stripe, not twilio; use stripeFor\(\)/);
  assert.throws(() => client.keys.get(issued.vault_key), /pass the key's key_id, not its vault key/);
  // An agent with only a vault key can use the vendor clients, not the admin API.
  const agent = new Keybrake({ baseUrl: kb.url });
  assert.ok(agent.stripeFor(issued));
  await assert.rejects(agent.keys.get(issued.key_id), /is an admin call; pass the admin token/);
  assert.throws(() => agent.audit.list({ keyId: "a", agentRunLabel: "b" }), /exactly one of keyId, agentRunLabel or issuerId/);
});
