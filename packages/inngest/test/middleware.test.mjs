// keybrakeMiddleware with the real inngest SDK, stripe-node and the built Worker in workerd.
import { test, before, beforeEach, after } from "node:test";
import assert from "node:assert/strict";
import { Inngest, NonRetriableError } from "inngest";
import { Keybrake } from "keybrake";
import { keybrakeMiddleware } from "@keybrake/inngest";
import { startKeybrake, ADMIN_KEY } from "../../../tests/e2e/harness.mjs";
import { runWithRetries } from "./run.mjs";

let kb;
let keybrake;
let logged = [];

before(async () => {
  kb = await startKeybrake();
  keybrake = new Keybrake({ baseUrl: kb.url, token: ADMIN_KEY });
});

/** An Inngest app whose functions get a key from `key(ctx)`. */
function app(key) {
  const inngest = new Inngest({ id: "keybrake-middleware-test", middleware: [keybrakeMiddleware({ keybrake: () => keybrake, key })] });
  // Inngest logs each failed step; the failures here are provoked and asserted instead.
  inngest.logger.error = (fields, message) => logged.push(`${message}: ${fields?.err?.type ?? fields?.err?.name}`);
  return inngest;
}
beforeEach(() => {
  kb.resetVendors();
  logged = [];
});

/** A billing function: one charge step per customer, through ctx.keybrake.stripe. */
function billing(id, { fails, flaky } = {}) {
  const inngest = app((ctx) => ({
    vendor: "stripe",
    daily_usd_cap: ctx.event.data.budget_usd,
    allowed_endpoints: ["POST /v1/payment_intents"],
    expires_in: "1h",
  }));
  return inngest.createFunction(
    { id, retries: 2, triggers: [{ event: "billing/run" }] },
    async ({ event, step, runId, attempt, keybrake: kbTools }) => {
      const charges = [];
      for (const [i, cents] of event.data.amounts.entries()) {
        charges.push(
          await step.run(`charge-${i}`, async () => {
            const intent = await kbTools.stripe.paymentIntents.create(
              { amount: cents, currency: "usd" },
              { idempotencyKey: `${runId}-${i}` },
            );
            return intent.id;
          }),
        );
      }
      // A failure that the first attempt hits and a retry does not.
      if (flaky) await step.run("flaky", async () => {
        if (attempt === 0) throw new Error("transient");
      });
      if (fails) throw new Error(fails);
      return { charges, keyId: kbTools.key.key_id, label: kbTools.label };
    },
  );
}

const event = (amounts, budget_usd = 10) => ({ name: "billing/run", data: { amounts, budget_usd } });
const runId = (name) => `01J${name.toUpperCase()}${Date.now()}`;

async function keysOf(label) {
  const rows = await kb.db.prepare("SELECT key_id FROM vault_keys WHERE agent_run_label = ?").bind(label).all();
  return rows.results.map((r) => r.key_id);
}

test("a run gets one key, labelled with its run id, and it is revoked when the run succeeds", async () => {
  const id = runId("ok");
  const out = await runWithRetries(billing("ok"), event([150, 250], 5), { runId: id });
  assert.equal(out.error, undefined, JSON.stringify(out.error));
  assert.equal(out.result.charges.length, 2);
  assert.equal(out.result.label, id);
  assert.deepEqual(await keysOf(id), [out.result.keyId]);
  const state = await keybrake.keys.get(out.result.keyId);
  assert.equal(state.status, "revoked");
  assert.equal(state.daily_usd_cap, 5, "the key came from the event");
  assert.equal(state.spent_usd, 4);
  assert.ok(out.steps.includes("keybrake/vault-key"));
});

test("a retried run keeps its key across attempts, and revokes it when the run succeeds", async () => {
  const id = runId("retry");
  const statuses = [];
  const out = await runWithRetries(billing("retry", { flaky: true }), event([150, 250]), {
    runId: id,
    afterAttempt: async () => statuses.push((await keybrake.keys.get((await keysOf(id))[0])).status),
  });
  assert.equal(out.error, undefined, JSON.stringify(out.error));
  assert.equal(out.attempts, 2);
  assert.deepEqual(statuses, ["active", "revoked"], "kept for the retry, revoked at the end");
  assert.equal((await keysOf(id)).length, 1, "one key for every attempt");
  assert.equal(kb.stripe.charges.length, 2, "each charge made once");
  const state = await kb.settled({ key_id: out.result.keyId });
  assert.equal(state.spent_usd, 4);
  assert.ok(logged.includes("Inngest step error: Error"), logged.join("\n"));
});

test("a cap hit ends the run with NonRetriableError after one attempt, and revokes the key", async () => {
  const id = runId("cap");
  const out = await runWithRetries(billing("cap"), event([200, 200, 200], 5), { runId: id });
  assert.equal(out.error?.name, "NonRetriableError", JSON.stringify(out.error));
  assert.match(out.error.message, /spent its daily cap/);
  assert.equal(out.attempts, 1, "no retry into the cap");
  const [keyId] = await keysOf(id);
  const state = await kb.settled({ key_id: keyId });
  assert.equal(state.status, "revoked");
  assert.equal(state.spent_usd, 4);
  const audit = await kb.auditUntil({ key_id: keyId }, (p) => p.outcomes.denied >= 1);
  assert.equal(audit.calls.filter((c) => c.decision === "cap_exhausted").length, 1, "one refused call, not a retry storm");
});

test("a run that fails for good revokes its key on its last attempt", async () => {
  const id = runId("fail");
  const statuses = [];
  const out = await runWithRetries(billing("fail", { fails: "the agent gave up" }), event([100]), {
    runId: id,
    maxAttempts: 3,
    pauseMs: 50,
    afterAttempt: async () => statuses.push((await keybrake.keys.get((await keysOf(id))[0])).status),
  });
  assert.equal(out.error?.message, "the agent gave up");
  assert.equal(out.attempts, 3);
  assert.deepEqual(statuses, ["active", "active", "revoked"]);
  assert.equal((await keysOf(id)).length, 1);
  assert.equal(kb.stripe.charges.length, 1, "the charge step ran once, then came from memo");
});

test("a cap hit outside any step ends the run too", async () => {
  const inngest = app(() => ({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] }));
  const fn = inngest.createFunction(
    { id: "outside", retries: 2, triggers: [{ event: "billing/run" }] },
    async ({ keybrake: kbTools }) => {
      await kbTools.stripe.paymentIntents.create({ amount: 200, currency: "usd" });
    },
  );
  const out = await runWithRetries(fn, event([]), { runId: runId("outside") });
  assert.equal(out.error?.name, "NonRetriableError");
  assert.ok(out.error instanceof NonRetriableError || out.error.name === "NonRetriableError");
});

test("a key Keybrake refuses ends the run at once; a function without a key is told so", async () => {
  const refused = app(() => ({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"], expires_in: "99d" }));
  const fn = refused.createFunction({ id: "refused", retries: 2, triggers: [{ event: "billing/run" }] }, async () => "never");
  const out = await runWithRetries(fn, event([]), { runId: runId("refused") });
  assert.equal(out.error?.name, "NonRetriableError");
  assert.match(out.error.message, /could not issue the run's vault key: .*400 invalid_request/);
  assert.equal(out.attempts, 1);

  const none = app(() => null);
  const keyless = none.createFunction({ id: "keyless", triggers: [{ event: "billing/run" }] }, async ({ keybrake: kbTools }) => kbTools.stripe);
  const bare = await runWithRetries(keyless, event([]), { runId: runId("keyless"), maxAttempts: 1 });
  assert.match(bare.error?.message ?? "", /this function has no vault key/);
});

after(async () => {
  await kb?.close();
  const unexpected = logged.filter((l) => !/^Inngest (step|function) error: (Error|NonRetriableError)$/.test(l));
  assert.deepEqual(unexpected, []);
});
