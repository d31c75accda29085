// The billing agent run by the real inngest SDK through @inngest/test, against the local
// Keybrake Worker with a recording Stripe fake. Inngest's retries, and its last invocation
// after a step fails for good, are modelled by the packages' runner (see run.mjs there).
import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { billingAgent, billingFanOut, inngest, type BillingEvent } from "./billing-agent";
import { startKeybrake, ADMIN_KEY } from "../../tests/e2e/harness.mjs";
import { runWithRetries } from "../../packages/inngest/test/run.mjs";

type Keybrake = Awaited<ReturnType<typeof startKeybrake>>;
let kb: Keybrake;

before(async () => {
  kb = await startKeybrake();
  process.env.KEYBRAKE_URL = kb.url;
  process.env.KEYBRAKE_API_KEY = ADMIN_KEY;
});
after(async () => {
  await kb?.close();
});
// Inngest logs every failed step with its stack trace. The failures here are provoked on
// purpose, so they are kept and asserted instead of printed. A step still running when its
// attempt fails can log after its test has ended, so each test checks what it must have
// caused, and the file checks that nothing unexpected was logged at all.
const EXPECTED_STEP_ERRORS = new Set([
  "Inngest step error: StripeAPIError", // the lost answer (500), and a retry while it settles (409)
  "Inngest step error: StripeRateLimitError",
  "Inngest step error: NonRetriableError", // the cap hit
  "Inngest function error: NonRetriableError", // ... which ends the run
]);
let logged: string[] = [];
const loggedInFile: string[] = [];
inngest.logger.error = (...args: unknown[]) => {
  const [fields, message] = args as [{ err?: Error & { type?: string } } | undefined, string | undefined];
  // stripe-node's errors are all named Error; their class is in `type`.
  const line = `${message}: ${fields?.err?.type ?? fields?.err?.name}`;
  logged.push(line);
  loggedInFile.push(line);
};
beforeEach(() => {
  kb.resetVendors();
  logged = [];
});
after(() => {
  const unexpected = loggedInFile.filter((line) => !EXPECTED_STEP_ERRORS.has(line));
  assert.deepEqual(unexpected, [], "only the provoked step errors were logged");
});

interface RunOutcome {
  attempts: number;
  result?: { charged: number; keyId: string };
  error?: { name?: string; message?: string };
}

/** Runs the function until it succeeds, fails for good, or uses up its 1 + 3 attempts. */
const run = (data: BillingEvent, runId: string): Promise<RunOutcome> =>
  runWithRetries(billingAgent, { name: "billing/subscription.process", data }, { runId, maxAttempts: 4, pauseMs: 300 });

async function keysIssuedFor(runId: string): Promise<number> {
  const row = await kb.db
    .prepare("SELECT COUNT(*) AS n FROM vault_keys WHERE agent_run_label = ?")
    .bind(runId) // the middleware labels a run's keys with its run id
    .first<{ n: number }>();
  return row?.n ?? 0;
}

const customers = (n: number, cents: number) => Array.from({ length: n }, (_, i) => ({ id: `cus_${i + 1}`, amount_cents: cents }));

test("retries reuse the run's one vault key, and spend stays exact across them", async () => {
  const runId = `01JRETRY${Date.now()}`;
  // The first charge reaches Stripe and is charged, but its answer is lost (a 500); a later
  // one is rate-limited before Stripe acts. Both steps fail and are retried.
  kb.stripe.misbehave(500);
  kb.stripe.misbehave(undefined);
  kb.stripe.misbehave(429);
  const outcome = await run({ plan_id: "pro", budget_usd: 10, customers: customers(4, 150) }, runId);

  assert.equal(outcome.error, undefined, JSON.stringify(outcome.error));
  assert.equal(outcome.result?.charged, 4);
  assert.ok(outcome.attempts >= 2, `the failures were retried (${outcome.attempts} attempts)`);
  assert.equal(await keysIssuedFor(runId), 1, "one vault key for the whole run");

  const state = await kb.settled({ key_id: outcome.result!.keyId });
  const charged = kb.stripe.charges.reduce((sum, c) => sum + c.amount, 0);
  assert.equal(kb.stripe.charges.length, 4, "each customer was charged once");
  assert.equal(state.spent_usd * 100, charged, "spent equals what Stripe charged");
  assert.equal(state.spent_usd, 6);

  const audit = await kb.auditUntil({ key_id: outcome.result!.keyId }, (p: { count: number }) => p.count >= 6);
  assert.ok(audit.calls.every((c: { agent_run_label: string }) => c.agent_run_label === runId), "the run label is on every row");
  assert.equal(state.status, "revoked", "revoked when the run succeeded");
  assert.equal(audit.total_usd, 6);
  assert.ok(logged.includes("Inngest step error: StripeAPIError"), "the lost answer failed a step");
  assert.ok(logged.includes("Inngest step error: StripeRateLimitError"), "the 429 failed a step");
});

test("a cap hit ends the run without retries", async () => {
  const runId = `01JCAP${Date.now()}`;
  const outcome = await run({ plan_id: "pro", budget_usd: 3, customers: customers(5, 100) }, runId);
  assert.equal(outcome.error?.name, "NonRetriableError", JSON.stringify(outcome));
  assert.match(outcome.error?.message ?? "", /spent its daily cap/);
  assert.equal(outcome.attempts, 1, "no retry after the cap hit");
  assert.equal(await keysIssuedFor(runId), 1);
  const charged = kb.stripe.charges.reduce((sum, c) => sum + c.amount, 0);
  assert.ok(charged <= 300, `never past the $3 cap: ${charged}`);
  const keyId = (await kb.db
    .prepare("SELECT key_id FROM vault_keys WHERE agent_run_label = ?")
    .bind(runId)
    .first<{ key_id: string }>())!.key_id;
  const state = await kb.settled({ key_id: keyId });
  assert.equal(state.spent_usd * 100, charged);
  assert.equal(state.status, "revoked", "revoked when the run failed for good");
  assert.ok(logged.includes("Inngest step error: NonRetriableError"), "the cap hit ended the run");
});

test("fan-out: customer runs on child keys stay within the plan run's cap together", async () => {
  const runId = `01JFAN${Date.now()}`;
  // $5 for the plan; three customers may spend up to $2 each: together they could pass it.
  const data = { plan_id: "pro", budget_usd: 5, budget_per_customer_usd: 2, customers: customers(3, 200) };
  const outcome = await runWithRetries(billingFanOut, { name: "billing/plan.fan-out", data }, { runId, maxAttempts: 4, pauseMs: 300 });
  assert.equal(outcome.error, undefined, JSON.stringify(outcome.error));
  assert.deepEqual(outcome.result, { charged: 2, refused: 1 });
  assert.equal(kb.stripe.charges.length, 2, "two $2 charges fit the $5 plan cap; the third does not");
  type Row = { key_id: string; parent_key_id: string | null; revoked_at_ms: number | null };
  const rows = (await kb.db
    .prepare("SELECT key_id, parent_key_id, revoked_at_ms FROM vault_keys WHERE agent_run_label = ? ORDER BY key_id")
    .bind(runId)
    .all()) as { results: Row[] };
  const [plan, ...children] = rows.results;
  assert.equal(children.length, 3);
  assert.ok(children.every((c) => c.parent_key_id === plan.key_id));
  assert.ok(rows.results.every((r) => r.revoked_at_ms !== null), "the plan run's end revoked its key and every child");
});
