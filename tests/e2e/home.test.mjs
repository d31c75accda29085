// GET / answers whoever opens the URL: HTML for a browser, JSON for a script that asks for it,
// with no secret and no state in either.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useKeybrake, ADMIN_KEY, VENDOR_SECRETS, TWILIO_ACCOUNT_SID } from "./harness.mjs";

const kb = useKeybrake();

const BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

function assertNoSecret(text) {
  for (const secret of [ADMIN_KEY, TWILIO_ACCOUNT_SID, ...VENDOR_SECRETS]) {
    assert.ok(!text.includes(secret), "a secret in the home page");
  }
  assert.doesNotMatch(text, /kb_(stripe|twilio|resend|admin)_/);
}

test("a browser gets a small HTML page that links the OpenAPI document", async () => {
  const res = await kb.call("GET", "/", { token: null, headers: { accept: BROWSER_ACCEPT } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^text\/html/);
  assert.match(res.headers.get("vary"), /accept/i);
  assert.match(res.text, /<title>Keybrake<\/title>/);
  assert.match(res.text, /href="\/openapi.json"/);
  assert.match(res.text, /href="\/console"/);
  assertNoSecret(res.text);
});

test("Accept: application/json gets the same as JSON", async () => {
  const res = await kb.call("GET", "/", { token: null, headers: { accept: "application/json" } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^application\/json/);
  assert.equal(res.json.service, "keybrake");
  assert.equal(res.json.openapi, "/openapi.json");
  assertNoSecret(res.text);
});

test("the page is the same with and without state or credentials", async () => {
  const before = await kb.call("GET", "/", { token: null });
  const key = await kb.issueKey();
  const withVaultKey = await kb.call("GET", "/", { token: key.vault_key });
  const withAdminKey = await kb.call("GET", "/", {});
  for (const res of [withVaultKey, withAdminKey]) {
    assert.equal(res.status, 200);
    assert.equal(res.text, before.text);
  }
  assertNoSecret(withVaultKey.text);
});

test("HEAD / answers the headers without a body; POST / is still the proxy's", async () => {
  const head = await kb.call("HEAD", "/", { token: null, headers: { accept: "application/json" } });
  assert.equal(head.status, 200);
  assert.match(head.headers.get("content-type"), /^application\/json/);
  assert.equal(head.text, "");
  const post = await kb.call("POST", "/", { token: null });
  assert.equal(post.status, 401);
  assert.equal(post.json.error.type, "invalid_key");
});
