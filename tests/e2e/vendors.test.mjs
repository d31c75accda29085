// Twilio and Resend behind vault keys, with their official SDKs as clients and recording fakes
// as the vendors.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  startKeybrake,
  useKeybrake,
  until,
  twilioClient,
  resendClient,
  TWILIO_ACCOUNT_SID,
  TWILIO_AUTH_TOKEN,
  RESEND_API_KEY,
} from "./harness.mjs";

const kb = useKeybrake();

const MESSAGES = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json";
const CALLS = "POST /2010-04-01/Accounts/{AccountSid}/Calls.json";
const label = (name) => `vendors/${name}-${Date.now()}`;

test("Twilio: parallel sends stop exactly at the cap, then reconcile to Twilio's real price", async () => {
  const runLabel = label("sms");
  // Each message to +1 holds 1 segment × $0.0133 + the $0.001 failure fee = $0.0143.
  // $0.10 admits 6 ($0.0858); a 7th would make $0.1001.
  const key = await kb.issueKey({ vendor: "twilio", daily_usd_cap: 0.1, allowed_endpoints: [MESSAGES], agent_run_label: runLabel });
  assert.ok(key.vault_key.startsWith("kb_twilio_"));
  const client = await twilioClient(kb, key.vault_key, "ACsomeoneelse00000000000000000000");
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, (_, i) => client.messages.create({ to: "+14155550100", from: "+15005550006", body: `hi ${i}` })),
  );
  const sent = results.filter((r) => r.status === "fulfilled");
  const refused = results.filter((r) => r.status === "rejected");
  assert.equal(sent.length, 6);
  assert.equal(kb.twilio.created("Messages").length, 6, "exactly what the cap allows reached Twilio");
  for (const r of refused) {
    assert.equal(r.reason.status, 429, String(r.reason));
    assert.equal(r.reason.code, 429);
    assert.match(r.reason.message, /cap/);
  }
  for (const r of sent) assert.match(r.value.sid, /^SM/);

  // Every request reached the configured account with the real credential.
  const creates = kb.twilio.requests.filter((r) => r.method === "POST");
  for (const r of creates) {
    assert.equal(r.path, `/2010-04-01/Accounts/${TWILIO_ACCOUNT_SID}/Messages.json`);
    const [user, password] = Buffer.from(r.headers.authorization.slice(6), "base64").toString().split(":");
    assert.deepEqual([user, password], [TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN]);
    assert.ok(!JSON.stringify(r).includes(key.vault_key.slice(-43)));
  }

  // The alarm polls each message: price null first, then Twilio's figure.
  const state = await until("reconciliation", async () => {
    const s = await kb.key(key);
    return s.reserved_usd === 0 && s.reconciling === 0 && s.audit_pending === 0 ? s : null;
  });
  assert.equal(state.spent_usd, 0.0474, "6 × $0.0079, Twilio's real price");
  assert.equal(state.over_cap_usd, 0);
  for (const { sid } of sent.map((r) => r.value)) {
    assert.ok(kb.twilio.objects.get(sid).polls >= 2, "polled until the price appeared");
  }

  const audit = await kb.auditUntil({ agent_run_label: runLabel }, (p) => p.count === 20 && p.calls.every((c) => c.outcome !== "settled" || c.reconciled_at));
  const settled = audit.calls.filter((c) => c.outcome === "settled");
  assert.equal(settled.length, 6);
  for (const row of settled) {
    assert.match(row.vendor_object_id, /^SM/);
    assert.equal(row.estimated_usd, 0.0143);
    assert.equal(row.cost_usd, 0.0079);
    assert.ok(Date.parse(row.reconciled_at) >= Date.parse(row.ts));
    assert.equal(row.path, `/2010-04-01/Accounts/${TWILIO_ACCOUNT_SID}/Messages.json`);
  }
  assert.deepEqual(new Set(settled.map((r) => r.vendor_object_id)), new Set(sent.map((r) => r.value.sid)));
  assert.equal(audit.total_usd, 0.0474);
  assert.equal(audit.calls.filter((c) => c.decision === "cap_exhausted").length, 14);
});

test("Twilio: a key is pinned to the configured account and to .json resources", async () => {
  const key = await kb.issueKey({ vendor: "twilio", daily_usd_cap: 1, allowed_endpoints: [MESSAGES] });
  const form = { "content-type": "application/x-www-form-urlencoded" };
  const body = "To=%2B14155550100&From=%2B15005550006&Body=hi";
  const direct = await kb.call("POST", "/twilio/2010-04-01/Accounts/ACsubaccount000000000000000000000/Messages.json", {
    token: key.vault_key,
    body,
    headers: form,
  });
  assert.equal(direct.status, 201, direct.text);
  assert.equal(kb.twilio.requests.at(-1).path, `/2010-04-01/Accounts/${TWILIO_ACCOUNT_SID}/Messages.json`);

  const refusals = [
    ["/twilio/2010-04-01/Accounts/AC1/Messages.xml", 400, "invalid_request"],
    ["/twilio/2010-04-01/Accounts/AC1/Messages", 400, "invalid_request"],
    ["/twilio/2010-04-01/Accounts/AC1/Calls.json", 403, "endpoint_not_allowed"],
    ["/twilio/v1/Services", 400, "invalid_request"],
  ];
  const before = kb.twilio.requests.length;
  for (const [path, status, type] of refusals) {
    const res = await kb.call("POST", path, { token: key.vault_key, body, headers: form });
    assert.equal(res.status, status, `${path}: ${res.text}`);
    assert.equal(res.headers.get("x-keybrake-error"), type);
    assert.equal(res.json.status, status, "Twilio's error shape");
    assert.equal(typeof res.json.message, "string");
  }
  const unpriced = await kb.call("POST", "/twilio/2010-04-01/Accounts/AC1/Messages.json", {
    token: key.vault_key,
    body: "To=%2B99912345678&Body=hi",
    headers: form,
  });
  assert.equal(unpriced.status, 422);
  assert.equal(unpriced.headers.get("x-keybrake-error"), "cost_unknown");
  assert.equal(kb.twilio.requests.length, before, "nothing reached Twilio");
});

test("Twilio: a call without TimeLimit is bounded to the minutes the budget allows", async () => {
  const key = await kb.issueKey({ vendor: "twilio", daily_usd_cap: 0.1, allowed_endpoints: [CALLS] });
  const client = await twilioClient(kb, key.vault_key);
  const twiml = "<Response><Say>Your order has shipped.</Say></Response>";
  const call = await client.calls.create({ to: "+14155550100", from: "+15005550006", twiml });
  assert.match(call.sid, /^CA/);
  const seen = new URLSearchParams(kb.twilio.requests.find((r) => r.method === "POST").body);
  assert.equal(seen.get("TimeLimit"), "420", "7 whole minutes at $0.014 fit in $0.10");
  const first = await kb.key(key);
  assert.equal(first.spent_usd + first.reserved_usd, 0.098, "the estimate is held, then debited");

  const reconciled = await until("call reconciliation", async () => {
    const s = await kb.key(key);
    return s.reserved_usd === 0 && s.reconciling === 0 ? s : null;
  });
  assert.equal(reconciled.spent_usd, 0.013, "then Twilio's real price for the call");
  const second = await client.calls.create({ to: "+14155550100", from: "+15005550006", twiml, timeLimit: 60 });
  assert.match(second.sid, /^CA/);
  const secondSeen = new URLSearchParams(kb.twilio.requests.filter((r) => r.method === "POST").at(-1).body);
  assert.equal(secondSeen.get("TimeLimit"), "60", "a client's own TimeLimit is kept");
});

test("Resend: parallel sends stop exactly at the cap; batches count every email", async () => {
  const runLabel = label("email");
  // $0.0009 per address; $0.0045 admits 5 single-recipient emails.
  const key = await kb.issueKey({
    vendor: "resend",
    daily_usd_cap: 0.0045,
    allowed_endpoints: ["POST /emails", "POST /emails/batch"],
    agent_run_label: runLabel,
  });
  const resend = await resendClient(kb, key.vault_key);
  const results = await Promise.all(
    Array.from({ length: 12 }, (_, i) =>
      resend.emails.send({ from: "agent@example.test", to: `user${i}@example.test`, subject: "hi", html: "<p>hi</p>" }),
    ),
  );
  const ok = results.filter((r) => r.data?.id);
  const refused = results.filter((r) => r.error);
  assert.equal(ok.length, 5);
  assert.equal(kb.resend.sent.length, 5);
  for (const r of refused) {
    assert.equal(r.error.name, "cap_exhausted");
    assert.equal(r.error.statusCode, 429);
  }
  for (const r of kb.resend.requests) assert.equal(r.headers.authorization, `Bearer ${RESEND_API_KEY}`);
  assert.equal((await kb.settled(key)).spent_usd, 0.0045);

  const batchKey = await kb.issueKey({ vendor: "resend", daily_usd_cap: 0.01, allowed_endpoints: ["POST /emails/batch"], agent_run_label: runLabel });
  const batch = await (await resendClient(kb, batchKey.vault_key)).batch.send([
    { from: "agent@example.test", to: "a@example.test", subject: "1", html: "x" },
    { from: "agent@example.test", to: ["b@example.test", "c@example.test"], subject: "2", html: "x" },
    { from: "agent@example.test", to: "d@example.test", cc: "e@example.test", subject: "3", html: "x" },
  ]);
  assert.equal(batch.data.data.length, 3, JSON.stringify(batch));
  assert.equal((await kb.settled(batchKey)).spent_usd, 0.0045, "5 addresses × $0.0009");

  const audit = await kb.auditUntil({ agent_run_label: runLabel }, (p) => p.count === 13);
  const settled = audit.calls.filter((c) => c.outcome === "settled");
  assert.equal(settled.length, 6);
  const ids = new Set(ok.map((r) => r.data.id));
  assert.equal(settled.filter((c) => ids.has(c.vendor_object_id)).length, 5);
  const batchRow = settled.find((c) => c.path === "/emails/batch");
  assert.deepEqual(batchRow.vendor_object_id.split(","), batch.data.data.map((d) => d.id));
  assert.equal(audit.total_usd, 0.009);
});

test("Resend: errors come in Resend's shape and unpriceable sends never leave", async () => {
  const key = await kb.issueKey({ vendor: "resend", daily_usd_cap: 1, allowed_endpoints: ["POST /emails"] });
  const resend = await resendClient(kb, key.vault_key);
  const noTo = await resend.emails.send({ from: "agent@example.test", subject: "x", html: "x" });
  assert.equal(noTo.error.name, "cost_unknown");
  const wrongType = await kb.call("POST", "/resend/emails", { token: key.vault_key, body: "to=a", headers: { "content-type": "text/plain" } });
  assert.equal(wrongType.status, 415);
  assert.equal(wrongType.json.name, "unsupported_media_type");
  const batch = await kb.call("POST", "/resend/emails/batch", { token: key.vault_key, body: [{ to: "a@example.test" }] });
  assert.equal(batch.status, 403);
  assert.equal(kb.resend.requests.length, 0);
});

test("a vendor without its secret answers 503 and holds nothing", async () => {
  const bare = await startKeybrake({ vars: { RESEND_API_KEY: "" } });
  try {
    const key = await bare.issueKey({ vendor: "resend", daily_usd_cap: 1, allowed_endpoints: ["POST /emails"] });
    const res = await bare.call("POST", "/resend/emails", { token: key.vault_key, body: { to: "a@example.test" } });
    assert.equal(res.status, 503);
    assert.equal(res.json.name, "vendor_not_configured");
    assert.equal(bare.resend.requests.length, 0);
    const state = await bare.settled(key);
    assert.equal(state.spent_usd, 0);
  } finally {
    await bare.close();
  }
});
