// The listings the console reads: GET /vault/keys (the D1 registry, filtered and paged, JSON
// built by SQLite) and GET /vault/spend (cost per UTC day from the audit rows).
import { test } from "node:test";
import assert from "node:assert/strict";
import { useKeybrake, stripeClient } from "./harness.mjs";

const kb = useKeybrake();

test("keys list newest first, filtered by label, status and vendor, paged with starting_after", async () => {
  const label = `listing/${Date.now()}`;
  const a = await kb.issueKey({ agent_run_label: label, daily_usd_cap: 1.5, max_usd_per_call: 0.0083 });
  const b = await kb.issueKey({ agent_run_label: label, daily_usd_cap: 300 });
  const c = await kb.issueKey({ agent_run_label: label, vendor: "resend", allowed_endpoints: ["POST /emails"], daily_usd_cap: 0.002 });
  await kb.call("DELETE", `/vault/keys/${b.key_id}`);

  const all = await kb.call("GET", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`);
  assert.equal(all.status, 200);
  assert.equal(all.headers.get("content-type"), "application/json");
  assert.deepEqual(all.json.data.map((k) => k.key_id), [c.key_id, b.key_id, a.key_id]);
  assert.equal(all.json.has_more, false);
  const first = all.json.data.find((k) => k.key_id === a.key_id);
  const state = await kb.key(a);
  // Money, times and lists match what the key's own answer says, to the digit.
  assert.deepEqual(
    { cap: first.daily_usd_cap, per: first.max_usd_per_call, created: first.created_at, expires: first.expires_at, eps: first.allowed_endpoints },
    { cap: 1.5, per: 0.0083, created: state.created_at, expires: state.expires_at, eps: state.allowed_endpoints },
  );
  assert.deepEqual(Object.keys(first).sort(), [
    "agent_run_label", "allowed_endpoints", "calls", "created_at", "daily_usd_cap", "expires_at", "issuer_id", "key_id",
    "max_usd_per_call", "parent_key_id", "revoked_at", "status", "total_usd", "vendor",
  ]);
  assert.equal(first.issuer_id, null);
  assert.equal(first.parent_key_id, null);
  assert.equal(all.json.data.find((k) => k.key_id === c.key_id).daily_usd_cap, 0.002);
  const revoked = all.json.data.find((k) => k.key_id === b.key_id);
  assert.equal(revoked.status, "revoked");
  assert.equal(revoked.revoked_at, (await kb.key(b)).revoked_at);

  const q = (params) => kb.call("GET", `/vault/keys?${new URLSearchParams({ agent_run_label: label, ...params })}`);
  assert.deepEqual((await q({ status: "revoked" })).json.data.map((k) => k.key_id), [b.key_id]);
  assert.deepEqual((await q({ status: "active" })).json.data.map((k) => k.key_id), [c.key_id, a.key_id]);
  assert.deepEqual((await q({ status: "expired" })).json.data, []);
  assert.deepEqual((await q({ vendor: "resend" })).json.data.map((k) => k.key_id), [c.key_id]);

  const page1 = (await q({ limit: "2" })).json;
  assert.equal(page1.has_more, true);
  assert.deepEqual(page1.data.map((k) => k.key_id), [c.key_id, b.key_id]);
  const page2 = (await q({ limit: "2", starting_after: b.key_id })).json;
  assert.equal(page2.has_more, false);
  assert.deepEqual(page2.data.map((k) => k.key_id), [a.key_id]);

  for (const bad of ["status=gone", "limit=0", "limit=101", "vendor=paypal", "starting_after=zz", "nope=1", "status=active&status=revoked"]) {
    const res = await kb.call("GET", `/vault/keys?${bad}`);
    assert.equal(res.status, 400, bad);
    assert.equal(res.json.error.type, "invalid_request");
  }
  assert.equal((await kb.call("GET", "/vault/keys", { token: "wrong" })).status, 401);
});

test("a key that expires lists as expired, and totals follow its audit rows", async () => {
  const label = `listing/expiry-${Date.now()}`;
  const key = await kb.issueKey({ agent_run_label: label, expires_in: "1s" });
  const stripe = await stripeClient(kb, key.vault_key);
  await stripe.paymentIntents.create({ amount: 225, currency: "usd" });
  await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 1);
  await new Promise((r) => setTimeout(r, 1100));
  const res = await kb.call("GET", `/vault/keys?agent_run_label=${encodeURIComponent(label)}&status=expired`);
  assert.equal(res.json.data.length, 1);
  assert.equal(res.json.data[0].total_usd, 2.25);
  assert.equal(res.json.data[0].calls, 1);
});

test("spend per UTC day covers the window, zero-filled, and sums a run's keys", async () => {
  const label = `listing/spend-${Date.now()}`;
  const k1 = await kb.issueKey({ agent_run_label: label });
  const k2 = await kb.issueKey({ agent_run_label: label });
  await (await stripeClient(kb, k1.vault_key)).paymentIntents.create({ amount: 150, currency: "usd" });
  await (await stripeClient(kb, k2.vault_key)).paymentIntents.create({ amount: 1, currency: "usd" });
  await kb.auditUntil({ agent_run_label: label }, (p) => p.count === 2);

  const run = await kb.call("GET", `/vault/spend?agent_run_label=${encodeURIComponent(label)}&days=7`);
  assert.equal(run.status, 200);
  assert.equal(run.json.days.length, 7);
  const today = new Date().toISOString().slice(0, 10);
  assert.deepEqual(run.json.days.at(-1), { day: today, cost_usd: 1.51 });
  assert.ok(run.json.days.slice(0, -1).every((d) => d.cost_usd === 0));
  assert.equal(run.json.days[0].day, new Date(Date.now() - 6 * 86_400_000).toISOString().slice(0, 10));

  const one = await kb.call("GET", `/vault/spend?key_id=${k2.key_id}`);
  assert.equal(one.json.days.length, 14);
  assert.equal(one.json.days.at(-1).cost_usd, 0.01);
  for (const bad of ["", "days=3", `key_id=${k1.key_id}&agent_run_label=x`, `key_id=${k1.key_id}&days=0`, `key_id=${k1.key_id}&days=91`]) {
    assert.equal((await kb.call("GET", `/vault/spend?${bad}`)).status, 400, bad);
  }
});

test("/vault/keys takes GET (list), POST (issue) and DELETE (revoke a run), and says so", async () => {
  for (const method of ["PUT", "PATCH"]) {
    const res = await kb.call(method, "/vault/keys", { body: {} });
    assert.equal(res.status, 405, method);
    assert.equal(res.headers.get("allow"), "GET, POST, DELETE");
  }
  const label = `listing/verbs-${Date.now()}`;
  const key = await kb.issueKey({ agent_run_label: label });
  const listed = await kb.call("GET", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`);
  assert.deepEqual(listed.json.data.map((k) => k.key_id), [key.key_id]);
  const revoked = await kb.call("DELETE", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`);
  assert.deepEqual(revoked.json, { revoked: 1, key_ids: [key.key_id] });
  const after = await kb.call("GET", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`);
  assert.equal(after.json.data[0].status, "revoked");
});
