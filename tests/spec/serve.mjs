// Runs the built Worker in Miniflare exactly as the end-to-end tests do (D1 with the
// migrations applied, Durable Objects, vendor fakes on loopback), seeds a few keys and calls
// so that the admin API has real state to answer about, prints one JSON line and stays up
// until SIGINT or SIGTERM.
//
// The line: {"url", "admin_key", "key_ids": [...], "label", "vault_keys": {vendor: key},
// "issuer": {"issuer_id", "issuer_token"}, "spare_issuer_id", "parent": {"key_id", "vault_key", "label"},
// "run_label"}. Nothing else goes to stdout. `key_ids` include a key an issuer made and a child
// key, so their lineage fields are checked too; `spare_issuer_id` is an issuer for
// `DELETE /vault/issuers/{issuer_id}` to revoke, so `issuer` stays usable; `parent` is a key whose
// vault key mints children (never revoked by the run: hooks.py steers revokes away from its id
// and its label); `run_label` is the label of keys for `DELETE /vault/keys` to revoke. `vault_keys` are fresh keys for the proxy routes, one per vendor,
// each allowed the endpoints the document lists for its vendor. (Twilio's `.../Messages/{sid}.json`
// cannot be allowlisted by template: a `{param}` must be a whole segment.)
import { startKeybrake, ADMIN_KEY } from "../e2e/harness.mjs";

const SEED_LABEL = "spec/seed";

const kb = await startKeybrake();
let closing = false;
async function shutdown(code = 0) {
  if (closing) return;
  closing = true;
  try {
    await kb.close();
  } finally {
    process.exit(code);
  }
}
process.on("SIGINT", () => shutdown(0));
process.on("SIGTERM", () => shutdown(0));

async function proxy(path, vaultKey, { body, contentType = "application/x-www-form-urlencoded", basic = false } = {}) {
  const authorization = basic
    ? `Basic ${Buffer.from(`ACanything:${vaultKey}`).toString("base64")}`
    : `Bearer ${vaultKey}`;
  const res = await fetch(kb.url + path, {
    method: "POST",
    headers: { authorization, "content-type": contentType },
    body,
  });
  await res.arrayBuffer();
  return res.status;
}

function expect(what, got, want) {
  if (got !== want) throw new Error(`seed: ${what} answered ${got}, expected ${want}`);
}

try {
  // A Stripe key with every optional field: two charges settle, the third passes the cap,
  // a EUR charge is refused.
  const stripe = await kb.issueKey({
    daily_usd_cap: 5,
    max_usd_per_call: 3,
    allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/payment_intents/{id}"],
    agent_run_label: SEED_LABEL,
    stripe_account: "acct_1SpecSeed",
    allow_expand: true,
  });
  const charge = (currency) => proxy("/v1/payment_intents", stripe.vault_key, { body: `amount=200&currency=${currency}` });
  expect("stripe charge", await charge("usd"), 200);
  expect("stripe charge", await charge("usd"), 200);
  expect("stripe charge over the cap", await charge("usd"), 429);
  expect("stripe charge in eur", await charge("eur"), 422);

  // A Twilio message: its estimate is reconciled to the fake's price by the alarm.
  const twilio = await kb.issueKey({
    vendor: "twilio",
    daily_usd_cap: 1,
    allowed_endpoints: ["POST /2010-04-01/Accounts/{AccountSid}/Messages.json"],
    agent_run_label: SEED_LABEL,
  });
  const sms = new URLSearchParams({ To: "+14155550100", From: "+15005550006", Body: "spec seed" }).toString();
  expect("twilio message", await proxy("/twilio/2010-04-01/Accounts/ACanything/Messages.json", twilio.vault_key, { body: sms, basic: true }), 201);

  // A Resend email, and a key that is then revoked.
  const resend = await kb.issueKey({ vendor: "resend", daily_usd_cap: 1, allowed_endpoints: ["POST /emails"], agent_run_label: SEED_LABEL });
  const email = JSON.stringify({ from: "agent@example.com", to: ["a@example.com", "b@example.com"], subject: "seed", html: "<p>seed</p>" });
  expect("resend email", await proxy("/resend/emails", resend.vault_key, { body: email, contentType: "application/json" }), 200);
  const revoked = await kb.issueKey({ expires_in: 60 });
  expect("revoke", (await kb.call("DELETE", `/vault/keys/${revoked.key_id}`)).status, 200);

  // An issuer and a key it made, which spends once; a parent key and a child it minted; a spare
  // issuer; keys of a run to revoke.
  const newIssuer = async (name) => {
    const res = await kb.call("POST", "/vault/issuers", {
      body: {
        name,
        daily_usd_budget: 10,
        vendors: ["stripe"],
        allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/payment_intents/{id}"],
        max_key_usd_cap: 5,
        max_expires_in: "2h",
      },
    });
    expect(`issuer ${name}`, res.status, 201);
    return res.json;
  };
  const issuer = await newIssuer("spec/issuer");
  const spareIssuer = await newIssuer("spec/spare-issuer");
  const issued = await kb.call("POST", "/vault/keys", {
    token: issuer.issuer_token,
    body: { vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: ["POST /v1/payment_intents"], agent_run_label: "spec/issuer" },
  });
  expect("key by the issuer", issued.status, 201);
  expect("charge by the issuer's key", await proxy("/v1/payment_intents", issued.json.vault_key, { body: "amount=100&currency=usd" }), 200);
  const parent = await kb.issueKey({
    daily_usd_cap: 20,
    allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/payment_intents/{id}"],
    expires_in: "2h",
    agent_run_label: "spec/parent",
  });
  const child = await kb.call("POST", `/vault/keys/${parent.key_id}/children`, {
    token: parent.vault_key,
    body: { daily_usd_cap: 2, allowed_endpoints: ["POST /v1/payment_intents"] },
  });
  expect("child key", child.status, 201);
  expect("charge by the child", await proxy("/v1/payment_intents", child.json.vault_key, { body: "amount=100&currency=usd" }), 200);
  const RUN_LABEL = "spec/run";
  const runKey = await kb.issueKey({ agent_run_label: RUN_LABEL });
  const runChild = await kb.call("POST", `/vault/keys/${runKey.key_id}/children`, { token: runKey.vault_key, body: { daily_usd_cap: 1 } });
  expect("child of the run's key", runChild.status, 201);

  // Keys for the proxy routes.
  const fuzz = {
    stripe: await kb.issueKey({
      daily_usd_cap: 50,
      allowed_endpoints: [
        "GET /v1/payment_intents/{id}",
        "POST /v1/payment_intents",
        "POST /v1/payment_intents/{id}/cancel",
        "POST /v1/payment_intents/{id}/capture",
        "GET /v1/customers",
        "POST /v1/customers",
        "DELETE /v1/customers/{id}",
      ],
      stripe_account: "acct_1SpecSeed",
      agent_run_label: "spec/proxy",
    }),
    twilio: await kb.issueKey({
      vendor: "twilio",
      daily_usd_cap: 5,
      allowed_endpoints: [
        "GET /2010-04-01/Accounts/{AccountSid}/Messages.json",
        "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
        "GET /2010-04-01/Accounts/{AccountSid}/Calls.json",
        "POST /2010-04-01/Accounts/{AccountSid}/Calls.json",
      ],
      agent_run_label: "spec/proxy",
    }),
    resend: await kb.issueKey({
      vendor: "resend",
      daily_usd_cap: 1,
      allowed_endpoints: [
        "GET /emails",
        "POST /emails",
        "POST /emails/batch",
        "GET /emails/{id}",
        "PATCH /emails/{id}",
        "POST /emails/{id}/cancel",
      ],
      agent_run_label: "spec/proxy",
    }),
  };

  // Wait until every audit row has reached D1 and the Twilio price is in.
  for (const key of [stripe, twilio, resend, issued.json, child.json]) await kb.settled(key);
  await kb.auditUntil({ agent_run_label: SEED_LABEL }, (page) =>
    page.count === 6 && page.calls.some((row) => row.reconciled_at !== null),
  );

  process.stdout.write(
    JSON.stringify({
      url: kb.url,
      admin_key: ADMIN_KEY,
      key_ids: [stripe.key_id, twilio.key_id, resend.key_id, revoked.key_id, issued.json.key_id, child.json.key_id],
      label: SEED_LABEL,
      vault_keys: Object.fromEntries(Object.entries(fuzz).map(([vendor, key]) => [vendor, key.vault_key])),
      issuer: { issuer_id: issuer.issuer_id, issuer_token: issuer.issuer_token },
      spare_issuer_id: spareIssuer.issuer_id,
      parent: { key_id: parent.key_id, vault_key: parent.vault_key, label: parent.agent_run_label },
      run_label: RUN_LABEL,
    }) + "\n",
  );
} catch (error) {
  console.error(error);
  await shutdown(1);
}
