// Alerts on budgets that nest, end to end: thresholds of many keys in one object (a parent and
// its children), thresholds on an issuer's budget, decided in the issuer's object over all its
// keys, and webhooks an issuer token owns, which hear only of that issuer.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useKeybrake, until } from "./harness.mjs";
import { startWebhookReceiver } from "../fakes/webhook-receiver.mjs";

const kb = useKeybrake();

const ENDPOINT = "POST /v1/payment_intents";
const unique = (name) => `lineage-alerts/${name}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;

async function createIssuer(overrides = {}) {
  const res = await kb.call("POST", "/vault/issuers", {
    body: { name: unique("issuer"), daily_usd_budget: 10, vendors: ["stripe"], allowed_endpoints: [ENDPOINT], ...overrides },
  });
  assert.equal(res.status, 201, res.text);
  return res.json;
}

async function issueAs(token, overrides = {}) {
  const res = await kb.call("POST", "/vault/keys", {
    token,
    body: { vendor: "stripe", daily_usd_cap: 10, allowed_endpoints: [ENDPOINT], expires_in: "1h", ...overrides },
  });
  assert.equal(res.status, 201, res.text);
  return res.json;
}

function charge(vaultKey, usd = 1) {
  return kb.call("POST", "/v1/payment_intents", {
    token: vaultKey,
    body: `amount=${usd * 100}&currency=usd`,
    headers: { "content-type": "application/x-www-form-urlencoded" },
  });
}

/** A receiver with a webhook set by `token` (the root key when absent), deleted when the test ends. */
async function receiver(t, { token, events = ["*"] } = {}) {
  const r = await startWebhookReceiver();
  const res = await kb.call("POST", "/vault/webhooks", { token, body: { url: r.url, events } });
  assert.equal(res.status, 201, res.text);
  r.state.secret = res.json.secret;
  r.hook = res.json;
  t.after(async () => {
    await kb.call("DELETE", `/vault/webhooks/${res.json.id}`);
    await r.close();
  });
  return r;
}

/** Valid deliveries per event id: each event must arrive exactly once at a receiver that answers 2xx. */
function arrivalsById(r, filter) {
  const counts = new Map();
  for (const a of r.state.arrivals) if (a.valid && filter(a.event)) counts.set(a.id, (counts.get(a.id) ?? 0) + 1);
  return counts;
}

test("many keys in one object: each threshold fires once per key, a parent's crossed by its children's spend", async (t) => {
  const r = await receiver(t, { events: ["key.threshold_crossed", "key.cap_hit"] });
  const parent = await kb.issueKey({ daily_usd_cap: 10, agent_run_label: unique("parent"), alert_thresholds: [0.5, 1] });
  const kids = [];
  for (let i = 0; i < 3; i++) {
    const res = await kb.call("POST", `/vault/keys/${parent.key_id}/children`, {
      token: parent.vault_key,
      body: { daily_usd_cap: 2, alert_thresholds: [0.5, 1] },
    });
    assert.equal(res.status, 201, res.text);
    assert.deepEqual((await kb.key(res.json)).alert_thresholds, [0.5, 1]);
    kids.push(res.json);
  }
  // 24 one-dollar calls over 3 children of $2: each admits 2, so $6 is spent under the $10 parent.
  const answers = await Promise.all(Array.from({ length: 24 }, (_, i) => charge(kids[i % 3].vault_key)));
  assert.equal(answers.filter((a) => a.status === 200).length, 6);
  await Promise.all(kids.map((k) => kb.settled(k)));
  const ours = new Set([parent.key_id, ...kids.map((k) => k.key_id)]);
  const crossed = () => r.events((e) => e?.type === "key.threshold_crossed" && ours.has(e.data.key_id));
  // Each child: 0.5 and 1 once each; the parent: 0.5 ($5 of its children's $6), never 1.
  await until("seven thresholds", () => crossed().length === 7, 15_000);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const got = crossed().map((e) => `${e.data.key_id} ${e.data.threshold}`).sort();
  const want = [`${parent.key_id} 0.5`, ...kids.flatMap((k) => [`${k.key_id} 0.5`, `${k.key_id} 1`])].sort();
  assert.deepEqual(got, want);
  const forParent = crossed().find((e) => e.data.key_id === parent.key_id);
  // Crossed when its children's spend reached $5: the parent spent nothing itself.
  assert.equal(forParent.data.spent_usd, 5, "a parent's threshold counts its descendants' spend");
  for (const e of crossed().filter((e) => e.data.key_id !== parent.key_id)) assert.equal(e.data.parent_key_id, parent.key_id);
  assert.ok([...arrivalsById(r, (e) => e?.type === "key.threshold_crossed" && ours.has(e.data.key_id)).values()].every((n) => n === 1));
  // Cap hits: once per child, each naming the child's own cap.
  const capHits = r.events((e) => e?.type === "key.cap_hit" && ours.has(e.data.key_id));
  assert.deepEqual(capHits.map((e) => e.data.key_id).sort(), kids.map((k) => k.key_id).sort());
  for (const e of capHits) assert.equal(e.data.scope, "key");
});

test("an issuer's thresholds are checked like a key's and shown on the issuer", async () => {
  for (const thresholds of [[0], [1.5], [0.5, 0.5], "0.5", []]) {
    const res = await kb.call("POST", "/vault/issuers", {
      body: { name: unique("bad"), daily_usd_budget: 10, vendors: ["stripe"], allowed_endpoints: [ENDPOINT], alert_thresholds: thresholds },
    });
    assert.equal(res.status, 400, JSON.stringify(thresholds));
    assert.match(res.json.error.message, /alert_thresholds/);
  }
  const issuer = await createIssuer({ alert_thresholds: [1, 0.5] });
  assert.deepEqual(issuer.alert_thresholds, [0.5, 1]);
  const got = await kb.call("GET", `/vault/issuers/${issuer.issuer_id}`, { token: issuer.issuer_token });
  assert.deepEqual(got.json.alert_thresholds, [0.5, 1]);
  const plain = await createIssuer();
  assert.deepEqual(plain.alert_thresholds, []);
});

test("an issuer's thresholds fire exactly once each under a parallel burst over several of its keys", async (t) => {
  const root = await receiver(t, { events: ["issuer.threshold_crossed", "key.cap_hit"] });
  const issuer = await createIssuer({ daily_usd_budget: 10, alert_thresholds: [0.5, 0.8, 1] });
  const own = await receiver(t, { token: issuer.issuer_token, events: ["issuer.threshold_crossed", "key.cap_hit"] });
  const keys = [];
  for (let i = 0; i < 5; i++) keys.push(await issueAs(issuer.issuer_token, { agent_run_label: unique("burst") }));

  // 40 one-dollar calls over 5 keys of $10 each: the $10 budget admits exactly 10.
  const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => charge(keys[i % 5].vault_key)));
  assert.equal(answers.filter((a) => a.status === 200).length, 10);
  await Promise.all(keys.map((k) => kb.settled(k)));

  const mine = (e) => e?.type === "issuer.threshold_crossed" && e.data.issuer_id === issuer.issuer_id;
  for (const r of [root, own]) {
    await until("three issuer thresholds", () => r.events(mine).length === 3, 15_000);
  }
  // Give any duplicate time to arrive, then count deliveries, not distinct ids.
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  for (const r of [root, own]) {
    const crossed = r.events(mine);
    assert.deepEqual(crossed.map((e) => e.data.threshold).sort(), [0.5, 0.8, 1]);
    assert.deepEqual(crossed.map((e) => e.data.threshold_usd).sort((a, b) => a - b), [5, 8, 10]);
    for (const e of crossed) {
      assert.equal(e.data.daily_usd_budget, 10);
      assert.equal(e.data.key_id, undefined, "an issuer event is about the issuer, not a key");
      assert.ok(e.data.spent_usd >= e.data.threshold_usd);
      assert.match(e.id, new RegExp(`^evt_${issuer.issuer_id}_`));
    }
    assert.ok([...arrivalsById(r, mine).values()].every((n) => n === 1), "each threshold delivered once");
  }
  // Cap hits at the budget name their scope, once per key and day.
  const capHits = own.events((e) => e?.type === "key.cap_hit" && e.data.issuer_id === issuer.issuer_id);
  assert.ok(capHits.length >= 1 && capHits.length <= 5);
  assert.equal(new Set(capHits.map((e) => e.data.key_id)).size, capHits.length);
  for (const e of capHits) assert.equal(e.data.scope, "issuer");

  // The delivery log names the issuer of an issuer event, and no key.
  const log = await kb.call("GET", "/vault/webhooks/deliveries?limit=500", { token: issuer.issuer_token });
  assert.equal(log.status, 200);
  const issuerRows = log.json.data.filter((d) => d.type === "issuer.threshold_crossed");
  assert.equal(issuerRows.length, 3);
  for (const d of issuerRows) {
    assert.equal(d.key_id, null);
    assert.equal(d.issuer_id, issuer.issuer_id);
    assert.equal(d.webhook_id, own.hook.id);
  }
});

test("an issuer's webhooks hear only of its own keys; root's hear of all; each sees only its own", async (t) => {
  const a = await createIssuer();
  const b = await createIssuer();
  const rootHook = await receiver(t, { events: ["key.revoked"] });
  const aHook = await receiver(t, { token: a.issuer_token, events: ["key.revoked"] });
  const bHook = await receiver(t, { token: b.issuer_token, events: ["key.revoked"] });
  assert.equal(aHook.hook.owner, a.issuer_id);
  assert.equal(rootHook.hook.owner, "root");

  const aKey = await issueAs(a.issuer_token);
  const aChild = await kb.call("POST", `/vault/keys/${aKey.key_id}/children`, { token: aKey.vault_key, body: { daily_usd_cap: 1 } });
  assert.equal(aChild.status, 201, aChild.text);
  const bKey = await issueAs(b.issuer_token);
  const rootKey = await kb.issueKey({ agent_run_label: unique("root") });
  for (const [key, token] of [[aKey, a.issuer_token], [bKey, b.issuer_token], [rootKey, undefined]]) {
    const res = await kb.call("DELETE", `/vault/keys/${key.key_id}`, { token });
    assert.equal(res.status, 200, res.text);
  }
  const revoked = (r, id) => r.events((e) => e?.type === "key.revoked" && e.data.key_id === id).length;
  await until("root hears of every revoke", () => [aKey, aChild.json, bKey, rootKey].every((k) => revoked(rootHook, k.key_id) === 1), 15_000);
  await until("each issuer hears of its own", () => revoked(aHook, aChild.json.key_id) === 1 && revoked(bHook, bKey.key_id) === 1, 15_000);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const heard = (r) => new Set(r.events((e) => e?.type === "key.revoked").map((e) => e.data.key_id));
  assert.deepEqual([...heard(aHook)].sort(), [aKey.key_id, aChild.json.key_id].sort(), "A hears of its key and its child only");
  assert.deepEqual([...heard(bHook)], [bKey.key_id], "B hears of its own key only");
  const child = aHook.events((e) => e?.data?.key_id === aChild.json.key_id)[0];
  assert.equal(child.data.parent_key_id, aKey.key_id);
  assert.equal(child.data.issuer_id, a.issuer_id);

  // Listings: an issuer sees its own webhooks only; root sees every one.
  const aList = await kb.call("GET", "/vault/webhooks", { token: a.issuer_token });
  assert.deepEqual(aList.json.data.map((w) => w.id), [aHook.hook.id]);
  const rootList = await kb.call("GET", "/vault/webhooks");
  for (const id of [rootHook.hook.id, aHook.hook.id, bHook.hook.id]) assert.ok(rootList.json.data.some((w) => w.id === id));

  // Deliveries: only to its own webhooks; another's key is 404.
  const aLog = await kb.call("GET", "/vault/webhooks/deliveries", { token: a.issuer_token });
  assert.equal(aLog.status, 200);
  assert.ok(aLog.json.data.length >= 2);
  assert.ok(aLog.json.data.every((d) => d.webhook_id === aHook.hook.id));
  assert.equal((await kb.call("GET", `/vault/webhooks/deliveries?key_id=${bKey.key_id}`, { token: a.issuer_token })).status, 404);
  assert.equal((await kb.call("GET", `/vault/webhooks/deliveries?key_id=${rootKey.key_id}`, { token: a.issuer_token })).status, 404);
  const rootLog = await kb.call("GET", `/vault/webhooks/deliveries?key_id=${bKey.key_id}`);
  assert.ok(rootLog.json.data.some((d) => d.webhook_id === bHook.hook.id), "root reads every delivery");

  // Deletion: another owner's webhook is 404 to an issuer, and stays.
  for (const id of [rootHook.hook.id, bHook.hook.id]) {
    assert.equal((await kb.call("DELETE", `/vault/webhooks/${id}`, { token: a.issuer_token })).status, 404);
  }
  assert.equal((await kb.call("GET", "/vault/webhooks", { token: b.issuer_token })).json.data.length, 1);
});

test("an issuer lists and counts only its own keys", async () => {
  const a = await createIssuer();
  const b = await createIssuer();
  const label = unique("shared");
  const aKey = await issueAs(a.issuer_token, { agent_run_label: label });
  const child = await kb.call("POST", `/vault/keys/${aKey.key_id}/children`, { token: aKey.vault_key, body: { daily_usd_cap: 1 } });
  const bKey = await issueAs(b.issuer_token, { agent_run_label: label });
  const rootKey = await kb.issueKey({ agent_run_label: label });
  assert.equal((await charge(aKey.vault_key, 2)).status, 200);
  assert.equal((await charge(bKey.vault_key, 3)).status, 200);
  await Promise.all([kb.settled(aKey), kb.settled(bKey)]);

  const aList = await kb.call("GET", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`, { token: a.issuer_token });
  assert.equal(aList.status, 200);
  assert.deepEqual(aList.json.data.map((k) => k.key_id).sort(), [aKey.key_id, child.json.key_id].sort());
  const listedChild = aList.json.data.find((k) => k.key_id === child.json.key_id);
  assert.equal(listedChild.parent_key_id, aKey.key_id);
  assert.equal(listedChild.issuer_id, a.issuer_id);
  const all = await kb.call("GET", `/vault/keys?agent_run_label=${encodeURIComponent(label)}`);
  assert.equal(all.json.data.length, 4);
  const byIssuer = await kb.call("GET", `/vault/keys?issuer_id=${b.issuer_id}`);
  assert.deepEqual(byIssuer.json.data.map((k) => k.key_id), [bKey.key_id]);
  assert.equal((await kb.call("GET", `/vault/keys?issuer_id=${b.issuer_id}`, { token: a.issuer_token })).status, 404);

  // Spend: by issuer, and a run label counted over the issuer's own keys only.
  const today = (res) => res.json.days[res.json.days.length - 1].cost_usd;
  const aSpend = await kb.call("GET", `/vault/spend?issuer_id=${a.issuer_id}&days=1`, { token: a.issuer_token });
  assert.equal(aSpend.status, 200, aSpend.text);
  assert.equal(aSpend.json.scope, "issuer_id");
  await until("the audit rows of both charges", async () => {
    const [x, y] = await Promise.all([
      kb.call("GET", `/vault/spend?agent_run_label=${encodeURIComponent(label)}&days=1`, { token: a.issuer_token }),
      kb.call("GET", `/vault/spend?agent_run_label=${encodeURIComponent(label)}&days=1`),
    ]);
    return today(x) === 2 && today(y) === 5;
  });
  assert.equal(today(await kb.call("GET", `/vault/spend?issuer_id=${a.issuer_id}&days=1`)), 2);
  assert.equal((await kb.call("GET", `/vault/spend?issuer_id=${b.issuer_id}`, { token: a.issuer_token })).status, 404);
  assert.equal((await kb.call("GET", `/vault/spend?key_id=${bKey.key_id}`, { token: a.issuer_token })).status, 404);
  assert.equal((await kb.call("GET", `/vault/spend?key_id=${rootKey.key_id}`, { token: a.issuer_token })).status, 404);
});
