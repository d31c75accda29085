// Child keys, revoking a run, and issuers: the client and the middleware against
// `POST /vault/keys/{id}/children`, `DELETE /vault/keys?agent_run_label=`, `/vault/issuers` and
// `GET /vault/audit?issuer_id=`.
import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Inngest } from "inngest";
import { Keybrake, KeybrakeError, isCapHit, isRetryable } from "keybrake";
import { keybrakeMiddleware } from "@keybrake/inngest";
import { startKeybrake, ADMIN_KEY } from "../../../tests/e2e/harness.mjs";
import { runWithRetries } from "./run.mjs";

const PI = "POST /v1/payment_intents";
let kb;
let root;

before(async () => {
  kb = await startKeybrake();
  root = new Keybrake({ baseUrl: kb.url, token: ADMIN_KEY });
});
after(async () => kb?.close());
beforeEach(() => kb.resetVendors());

const charge = (client, key, cents) => client.stripeFor(key, { maxNetworkRetries: 0 }).paymentIntents.create({ amount: cents, currency: "usd" });

test("a child key spends inside its own cap and its parent's", async () => {
  const parent = await root.keys.issue({ vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: [PI] });
  // An agent holding only the parent's vault key can mint children: no admin token.
  const agent = new Keybrake({ baseUrl: kb.url });
  const child = await agent.keys.children(parent, { daily_usd_cap: 2 });
  assert.match(child.vault_key, /^kb_stripe_[0-9a-f]{64}-[1-9][0-9]*_/);
  assert.equal(child.parent_key_id, parent.key_id);
  assert.notEqual(child.key_id, parent.key_id);
  assert.deepEqual(child.allowed_endpoints, [PI], "the parent's endpoints by default");

  await charge(agent, child, 150);
  const overChild = await charge(agent, child, 100).catch((e) => e);
  assert.equal(isCapHit(overChild), true, "the child's own cap");

  // $1.50 of the parent's $5 went to the child: $3.60 more through the parent passes it.
  const overParent = await charge(agent, parent, 360).catch((e) => e);
  assert.equal(isCapHit(overParent), true, "the child's spend counts against the parent");
  await charge(agent, parent, 340);
  assert.equal(kb.stripe.charges.reduce((s, c) => s + c.amount, 0), 490);

  const state = await root.keys.get(child.key_id);
  assert.equal(state.parent_key_id, parent.key_id);
});

test("a child's endpoints must be among its parent's", async () => {
  const parent = await root.keys.issue({ vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: [PI] });
  const err = await root.keys.children(parent, { daily_usd_cap: 1, allowed_endpoints: ["POST /v1/refunds"] }).catch((e) => e);
  assert.ok(err instanceof KeybrakeError, String(err));
  assert.ok(err.status >= 400 && err.status < 500 && err.type !== "not_found", `refused: ${err.status} ${err.type}`);
  assert.equal(isRetryable(err), false);
  assert.throws(() => root.keys.children(ADMIN_KEY, { daily_usd_cap: 1 }), /expected a vault key/);
});

test("revokeRun revokes every key of a run, children included, and answers with them", async () => {
  const label = `lineage/${Date.now()}`;
  const a = await root.keys.issue({ vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: [PI], agent_run_label: label });
  const b = await root.keys.issue({ vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: [PI], agent_run_label: label });
  const c = await root.keys.children(a, { daily_usd_cap: 1, agent_run_label: label });
  const other = await root.keys.issue({ vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: [PI], agent_run_label: `${label}-other` });

  const revoked = await root.keys.revokeRun(label);
  assert.equal(revoked.revoked, 3);
  assert.deepEqual([...revoked.key_ids].sort(), [a.key_id, b.key_id, c.key_id].sort());
  for (const key of [a, b, c]) assert.equal((await root.keys.get(key.key_id)).status, "revoked");
  assert.equal((await root.keys.get(other.key_id)).status, "active", "another run's key is untouched");

  const refused = await charge(root, c, 10).catch((e) => e);
  assert.equal(refused.raw?.type, "key_revoked");
  assert.equal(isRetryable(refused), false);
  assert.deepEqual(await root.keys.revokeRun(`${label}-none`), { revoked: 0, key_ids: [] });
});

test("an issuer token issues keys within its limits, and sees only its own", async () => {
  const issuer = await root.issuers.create({ name: `team-${Date.now()}`, daily_usd_budget: 10, vendors: ["stripe"], allowed_endpoints: [PI], max_key_usd_cap: 3 });
  assert.match(issuer.issuer_token, /^kbi_/);
  const team = new Keybrake({ baseUrl: kb.url, token: issuer.issuer_token });
  const key = await team.keys.issue({ vendor: "stripe", daily_usd_cap: 3, allowed_endpoints: [PI] });
  const state = await team.keys.get(key.key_id);
  assert.equal(state.issuer_id, issuer.issuer_id);
  const tooBig = await team.keys.issue({ vendor: "stripe", daily_usd_cap: 4, allowed_endpoints: [PI] }).catch((e) => e);
  assert.ok(tooBig instanceof KeybrakeError && tooBig.status >= 400 && tooBig.status < 500, String(tooBig));

  await charge(team, key, 100);
  const page = await kb.auditUntil({ issuer_id: issuer.issuer_id }, (p) => p.count >= 1);
  assert.equal(page.calls[0].issuer_id, issuer.issuer_id);
  const listed = await team.audit.list({ issuerId: issuer.issuer_id });
  assert.equal(listed.total_usd, 1);

  const rootsKey = await root.keys.issue({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: [PI] });
  const hidden = await team.keys.get(rootsKey.key_id).catch((e) => e);
  assert.ok(hidden instanceof KeybrakeError && hidden.status >= 400, "not the issuer's key");

  assert.equal((await root.issuers.get(issuer.issuer_id)).issuer_id, issuer.issuer_id);
  await root.issuers.list();
  await root.issuers.delete(issuer.issuer_id);
});

test("fan-out: the middleware's child keys are revoked with the run", async () => {
  const inngest = new Inngest({
    id: "lineage-test",
    middleware: [keybrakeMiddleware({ keybrake: root, key: () => ({ vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: [PI] }) })],
  });
  const fn = inngest.createFunction({ id: "fan-out", triggers: [{ event: "e" }] }, async ({ step, keybrake }) => {
    const ids = [];
    for (const customer of ["cus_1", "cus_2"]) {
      const child = await keybrake.child(customer, { daily_usd_cap: 1 });
      ids.push(
        await step.run(`charge-${customer}`, async () => {
          const intent = await child.stripe.paymentIntents.create({ amount: 80, currency: "usd" });
          return { intent: intent.id, key: child.key.key_id, parent: child.key.parent_key_id };
        }),
      );
    }
    return { ids, parent: keybrake.key.key_id };
  });
  const runId = `01JFANOUT${Date.now()}`;
  const out = await runWithRetries(fn, { name: "e", data: {} }, { runId });
  assert.equal(out.error, undefined, JSON.stringify(out.error));
  assert.ok(out.steps.includes("keybrake/child/cus_1") && out.steps.includes("keybrake/child/cus_2"), out.steps.join());
  for (const { key, parent } of out.result.ids) {
    assert.equal(parent, out.result.parent);
    assert.equal((await root.keys.get(key)).status, "revoked", "a child is revoked with the run");
  }
  assert.equal((await root.keys.get(out.result.parent)).status, "revoked");
  assert.equal(kb.stripe.charges.length, 2);
});
