// An adversarial corpus, end to end: requests an untrusted agent might send to trick the proxy
// into forwarding something other than what it matched. Every case has its expected status and,
// where the contract names one, its error type (X-Keybrake-Error). None may reach a vendor. The
// cases run one by one and every mismatch is reported together at the end, so one run shows
// every gap. What fetch cannot send (absolute-form targets, raw backslashes and control bytes,
// lower-case methods, malformed Host) goes over a raw socket.
import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { gzipSync, brotliCompressSync } from "node:zlib";
import { startKeybrake, ADMIN_KEY, STRIPE_SECRET } from "./harness.mjs";

let kb;
const keys = {};
const MESSAGES = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json";
const TWILIO_PATH = "/twilio/2010-04-01/Accounts/AC1/Messages.json";
const FORM = "application/x-www-form-urlencoded";
const PI = "amount=100&currency=usd";
const SMS = "To=%2B14155550100&From=%2B15005550006&Body=hi";
const EMAIL = JSON.stringify({ from: "agent@example.test", to: "user@example.test", subject: "hi", html: "<p>hi</p>" });
const MIB = 1024 * 1024;

before(async () => {
  kb = await startKeybrake();
  keys.stripe = await kb.issueKey({
    daily_usd_cap: 1000,
    allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/payment_intents/{id}", "POST /v1/customers"],
    agent_run_label: `hostile/stripe-${Date.now()}`,
  });
  keys.pinned = await kb.issueKey({ daily_usd_cap: 1000, stripe_account: "acct_123" });
  keys.twilio = await kb.issueKey({ vendor: "twilio", daily_usd_cap: 1, allowed_endpoints: [MESSAGES] });
  keys.resend = await kb.issueKey({ vendor: "resend", daily_usd_cap: 1, allowed_endpoints: ["POST /emails"] });
  keys.revoked = await kb.issueKey();
  const revoked = await kb.call("DELETE", `/vault/keys/${keys.revoked.key_id}`);
  assert.equal(revoked.status, 200, revoked.text);
});
after(async () => {
  await kb?.close();
});
beforeEach(() => kb.resetVendors());

// ---------------------------------------------------------------------------------------------
// Helpers to build requests

const bearer = (name) => (k) => `Bearer ${k[name].vault_key}`;
const basic = (user, password) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
/** The stripe key's token with its secret changed in one character. */
const flipped = (token) => token.slice(0, -1) + (token.endsWith("A") ? "B" : "A");
/** The stripe key's token with one hex digit of its key id changed. */
const otherId = (token) => {
  const i = "kb_stripe_".length + 10;
  return token.slice(0, i) + (token[i] === "0" ? "1" : "0") + token.slice(i + 1);
};
const revendored = (token, vendor) => token.replace(/^kb_stripe_/, `kb_${vendor}_`);

/**
 * The bytes of one HTTP/1.1 request. `target` and header values may be Buffers, for bytes that
 * are not ASCII. A Host naming this instance, the authorization, a content type and length are
 * added unless given (`host: null` leaves Host out).
 */
function rawBytes(k, { method = "POST", target, host, auth = bearer("stripe"), headers = {}, body = PI, contentType = FORM, extraLines = [] }) {
  const lines = [];
  if (host !== null) lines.push(`Host: ${host ?? `127.0.0.1:${kb.port}`}`);
  const authValue = typeof auth === "function" ? auth(k) : auth;
  if (authValue) lines.push(`Authorization: ${authValue}`);
  if (body !== undefined && contentType) lines.push(`Content-Type: ${contentType}`);
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  const bodyBytes = body === undefined ? Buffer.alloc(0) : Buffer.isBuffer(body) ? body : Buffer.from(body);
  if (!Object.keys(headers).some((h) => h.toLowerCase() === "transfer-encoding")) lines.push(`Content-Length: ${bodyBytes.length}`);
  lines.push("Connection: close", ...extraLines);
  return Buffer.concat([
    Buffer.from(`${method} `),
    Buffer.isBuffer(target) ? target : Buffer.from(target, "latin1"),
    Buffer.from(` HTTP/1.1\r\n${lines.join("\r\n")}\r\n\r\n`),
    bodyBytes,
  ]);
}
const bytesOf = (...parts) => Buffer.concat(parts.map((p) => (typeof p === "number" ? Buffer.from([p]) : Buffer.from(p, "utf8"))));
const chunked = (body, size = 64 * 1024) => {
  const parts = [];
  for (let i = 0; i < body.length; i += size) {
    const chunk = body.subarray(i, i + size);
    parts.push(Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from("\r\n"));
  }
  parts.push(Buffer.from("0\r\n\r\n"));
  return Buffer.concat(parts);
};

// Statuses for what the runtime rewrites before the Worker sees it: workerd resolves `.` and
// `..` segments (literal or as whole-segment %2e escapes, per the URL standard) and reads `\` as
// `/`. The Worker then sees the resolved path; it must not be forwarded, and is refused either
// as non-canonical (400) or as outside the allowlist (403).
const RESOLVED = { status: [400, 403], type: ["invalid_request", "endpoint_not_allowed"] };
const INVALID = { status: 400, type: "invalid_request" };
const NOT_ALLOWED_OR_INVALID = { status: [400, 403], type: ["endpoint_not_allowed", "invalid_request"] };
// workerd refuses these itself, before the Worker runs (a URL it cannot parse, a method it does
// not know), as Cloudflare's edge does: refused either way, and never forwarded.
const REFUSED_BY_RUNTIME = { status: [400, 403, 500, 501], type: ["invalid_request", "endpoint_not_allowed", null, undefined] };

// ---------------------------------------------------------------------------------------------
// The corpus. A case is sent with `call()` (method, path, auth, headers, body, contentType) or,
// with `raw`, as bytes over a socket. `auth` defaults to the stripe key's Bearer token.

const CASES = [
  // Paths: dot segments (resolved by the runtime), encoded separators, empty segments, odd bytes.
  { group: "path", name: "literal ./ segment", raw: (k) => rawBytes(k, { target: "/v1/./payouts" }), ...RESOLVED },
  { group: "path", name: "literal ../ segment", raw: (k) => rawBytes(k, { target: "/v1/../v1/payouts" }), ...RESOLVED },
  { group: "path", name: "../ out of the vendor prefix", raw: (k) => rawBytes(k, { target: "/stripe/v1/../../v1/payouts" }), ...RESOLVED },
  { group: "path", name: "../ out of an allowed path", raw: (k) => rawBytes(k, { target: "/v1/payment_intents/../../v1/payouts" }), ...RESOLVED },
  { group: "path", name: "%2e%2e segment", raw: (k) => rawBytes(k, { target: "/v1/%2e%2e/payouts" }), ...RESOLVED },
  { group: "path", name: "%2E%2E segment (upper case)", raw: (k) => rawBytes(k, { target: "/v1/%2E%2E/payouts" }), ...RESOLVED },
  { group: "path", name: "%2e segment", raw: (k) => rawBytes(k, { target: "/v1/%2e/payouts" }), ...RESOLVED },
  { group: "path", name: ".%2e segment (mixed)", raw: (k) => rawBytes(k, { target: "/v1/.%2e/v1/payouts" }), ...RESOLVED },
  { group: "path", name: "raw backslash as separator", raw: (k) => rawBytes(k, { target: "/v1\\payouts" }), ...RESOLVED },
  { group: "path", name: "raw backslash at the end", raw: (k) => rawBytes(k, { target: "/v1/payment_intents\\" }), ...INVALID },
  { group: "path", name: "%2e inside a segment", path: "/v1/payment%2eintents", ...INVALID },
  { group: "path", name: "%2e%2e%2f inside a segment", path: "/v1/payment_intents/%2e%2e%2fpayouts", ...INVALID },
  { group: "path", name: "%2F encoded slash", path: "/v1%2Fpayment_intents", ...INVALID },
  { group: "path", name: "%2f encoded slash (lower case)", path: "/v1%2fpayouts", ...INVALID },
  { group: "path", name: "%5C encoded backslash", path: "/v1%5Cpayment_intents", ...INVALID },
  { group: "path", name: "%5c..%5c traversal", path: "/v1/payment_intents%5c..%5cpayouts", ...INVALID },
  { group: "path", name: "empty segment //", path: "/v1//payment_intents", ...INVALID },
  { group: "path", name: "leading //", path: "//v1/payment_intents", ...INVALID },
  { group: "path", name: "empty segment after the vendor prefix", path: "/stripe//v1/payment_intents", ...INVALID },
  { group: "path", name: "trailing slash", path: "/v1/payment_intents/", ...INVALID },
  { group: "path", name: "trailing slash after the vendor prefix", path: "/stripe/v1/payment_intents/", ...INVALID },
  { group: "path", name: "raw control byte 0x01", raw: (k) => rawBytes(k, { target: bytesOf("/v1/pay", 0x01, "ment_intents") }), ...INVALID },
  { group: "path", name: "raw DEL byte 0x7f", raw: (k) => rawBytes(k, { target: bytesOf("/v1/pay", 0x7f, "ment_intents") }), ...INVALID },
  { group: "path", name: "%00 NUL", path: "/v1/payment_intents%00", ...INVALID },
  { group: "path", name: "%0d%0a CRLF", path: "/v1/payment_intents%0d%0aX-Injected:%201", ...INVALID },
  { group: "path", name: "%20 space", path: "/v1/payment_intents%20", ...INVALID },
  { group: "path", name: "raw UTF-8 é", raw: (k) => rawBytes(k, { target: Buffer.from("/v1/payment_intents/pi_é", "utf8") }), ...INVALID },
  { group: "path", name: "raw Latin-1 byte 0xe9", raw: (k) => rawBytes(k, { target: bytesOf("/v1/pay", 0xe9, "ment_intents") }), ...INVALID },
  { group: "path", name: "; matrix parameter", path: "/v1/payment_intents;x=1", ...INVALID },
  { group: "path", name: "; in the first segment", path: "/v1;/payment_intents", ...INVALID },
  { group: "path", name: ", in a segment", path: "/v1/payment_intents,payouts", ...INVALID },
  { group: "path", name: "%3F in a segment", path: "/v1/payment_intents%3Fexpand[]=customer", ...INVALID },
  { group: "path", name: "%23 in a segment", path: "/v1/payment_intents%23frag", ...INVALID },
  { group: "path", name: "double encoding %252e%252e", path: "/v1/%252e%252e/payouts", ...INVALID },
  { group: "path", name: "double encoding %252F", path: "/v1%252Fpayouts", ...INVALID },
  { group: "path", name: "look-alike: Cyrillic р (%D1%80)", path: "/v1/%D1%80ayment_intents", ...INVALID },
  { group: "path", name: "look-alike: fullwidth ｐ (%EF%BD%90)", path: "/v1/%EF%BD%90ayment_intents", ...INVALID },
  { group: "path", name: "look-alike: raw UTF-8 Cyrillic", raw: (k) => rawBytes(k, { target: Buffer.from("/v1/раyment_intents", "utf8") }), ...INVALID },
  { group: "path", name: "overlong path (1,100-byte id on an allowed GET)", method: "GET", path: `/v1/payment_intents/pi_${"a".repeat(1100)}`, body: undefined, ...INVALID },
  { group: "path", name: "path of 1,025 bytes", method: "GET", path: `/v1/payment_intents/${"b".repeat(1025 - "/v1/payment_intents/".length)}`, body: undefined, ...INVALID },
  { group: "path", name: "absolute-form target, another host", raw: (k) => rawBytes(k, { target: "http://evil.example/v1/payment_intents" }), ...REFUSED_BY_RUNTIME },
  { group: "path", name: "absolute-form target, the vendor's host", raw: (k) => rawBytes(k, { target: "https://api.stripe.com/v1/payment_intents" }), ...REFUSED_BY_RUNTIME },
  { group: "path", name: "absolute-form target, another host on our port", raw: (k) => rawBytes(k, { target: `http://evil.example:${kb.port}/v1/payment_intents` }), ...REFUSED_BY_RUNTIME },

  // Case and method tricks: allowlists are exact and case-sensitive.
  { group: "case", name: "/V1 upper case", path: "/V1/payment_intents", ...NOT_ALLOWED_OR_INVALID },
  { group: "case", name: "/Stripe prefix", path: "/Stripe/v1/payment_intents", ...NOT_ALLOWED_OR_INVALID },
  { group: "case", name: "/v1/PAYMENT_INTENTS", path: "/v1/PAYMENT_INTENTS", ...NOT_ALLOWED_OR_INVALID },
  { group: "case", name: "method post (lower case)", raw: (k) => rawBytes(k, { method: "post", target: "/v1/payment_intents" }), ...REFUSED_BY_RUNTIME },
  { group: "case", name: "method Post (mixed case)", raw: (k) => rawBytes(k, { method: "Post", target: "/v1/payment_intents" }), ...REFUSED_BY_RUNTIME },
  { group: "case", name: "a method outside the allowlist (DELETE)", method: "DELETE", path: "/v1/payment_intents", status: 403, type: "endpoint_not_allowed" },

  // Method overrides.
  { group: "override", name: "X-HTTP-Method-Override: GET", path: "/v1/payment_intents", headers: { "x-http-method-override": "GET" }, ...INVALID },
  { group: "override", name: "X-HTTP-Method: DELETE", path: "/v1/payment_intents", headers: { "x-http-method": "DELETE" }, ...INVALID },
  { group: "override", name: "X-Method-Override: PUT", path: "/v1/payment_intents", headers: { "x-method-override": "PUT" }, ...INVALID },
  { group: "override", name: "X-HTTP-Method-Override naming the same method", path: "/v1/payment_intents", headers: { "x-http-method-override": "POST" }, ...INVALID },
  { group: "override", name: "_method in the query", path: "/v1/payment_intents?_method=DELETE", ...INVALID },
  { group: "override", name: "_method in the form body", path: "/v1/payment_intents", body: `${PI}&_method=GET`, ...INVALID },
  { group: "override", name: "%5Fmethod (encoded) in the form body", path: "/v1/payment_intents", body: `${PI}&%5Fmethod=GET`, ...INVALID },
  { group: "override", name: "_method on an allowed GET", method: "GET", path: "/v1/payment_intents/pi_1?_method=POST", body: undefined, ...INVALID },
  { group: "override", name: "X-HTTP-Method-Override on Twilio", path: TWILIO_PATH, auth: bearer("twilio"), body: SMS, headers: { "x-http-method-override": "DELETE" }, ...INVALID },

  // Host and URL overrides, malformed Host.
  { group: "host", name: "X-Forwarded-Host", path: "/v1/payment_intents", headers: { "x-forwarded-host": "evil.example" }, ...INVALID },
  { group: "host", name: "X-Original-URL", path: "/v1/payment_intents", headers: { "x-original-url": "/v1/payouts" }, ...INVALID },
  { group: "host", name: "X-Rewrite-URL", path: "/v1/payment_intents", headers: { "x-rewrite-url": "/v1/payouts" }, ...INVALID },
  { group: "host", name: "X-Forwarded-Host on Resend", path: "/resend/emails", auth: bearer("resend"), body: EMAIL, contentType: "application/json", headers: { "x-forwarded-host": "evil.example" }, ...INVALID },
  { group: "host", name: "two Host headers", raw: (k) => rawBytes(k, { target: "/v1/payment_intents", extraLines: ["Host: evil.example"] }), ...REFUSED_BY_RUNTIME },
  { group: "host", name: "Host with userinfo", raw: (k) => rawBytes(k, { target: "/v1/payment_intents", host: `evil.example@127.0.0.1:${kb.port}` }), ...REFUSED_BY_RUNTIME },
  { group: "host", name: "Host with a path", raw: (k) => rawBytes(k, { target: "/v1/payment_intents", host: "evil.example/v1" }), ...REFUSED_BY_RUNTIME },

  // Connected accounts and expand[].
  { group: "headers", name: "Stripe-Account on a key that pins none", path: "/v1/payment_intents", headers: { "stripe-account": "acct_999" }, status: 403, type: "header_not_allowed" },
  { group: "headers", name: "Stripe-Context on a key that pins none", path: "/v1/payment_intents", headers: { "stripe-context": "acct_999" }, status: 403, type: "header_not_allowed" },
  { group: "headers", name: "Stripe-Account acct_123 on a key that pins none", path: "/v1/payment_intents", headers: { "stripe-account": "acct_123" }, status: 403, type: "header_not_allowed" },
  { group: "headers", name: "pinned acct_123, Stripe-Account acct_999", path: "/v1/payment_intents", auth: bearer("pinned"), headers: { "stripe-account": "acct_999" }, status: 403, type: "header_not_allowed" },
  { group: "headers", name: "pinned acct_123, Stripe-Context acct_999", path: "/v1/payment_intents", auth: bearer("pinned"), headers: { "stripe-context": "acct_999" }, status: 403, type: "header_not_allowed" },
  { group: "headers", name: "pinned acct_123, Stripe-Account acct_123 + Stripe-Context acct_999", path: "/v1/payment_intents", auth: bearer("pinned"), headers: { "stripe-account": "acct_123", "stripe-context": "acct_999" }, status: 403, type: "header_not_allowed" },
  { group: "headers", name: "pinned acct_123, Stripe-Account ACCT_123", path: "/v1/payment_intents", auth: bearer("pinned"), headers: { "stripe-account": "ACCT_123" }, status: 403, type: "header_not_allowed" },
  { group: "headers", name: "expand[] in the query", path: "/v1/payment_intents?expand[]=customer", status: 403, type: "parameter_not_allowed" },
  { group: "headers", name: "expand[] in the form body", path: "/v1/payment_intents", body: `${PI}&expand[]=customer`, status: 403, type: "parameter_not_allowed" },
  { group: "headers", name: "expand%5B%5D (encoded) in the form body", path: "/v1/payment_intents", body: `${PI}&expand%5B%5D=customer`, status: 403, type: "parameter_not_allowed" },
  { group: "headers", name: "expand[0] in the form body", path: "/v1/payment_intents", body: `${PI}&expand[0]=customer`, status: 403, type: "parameter_not_allowed" },
  { group: "headers", name: "expand[] on an allowed GET", method: "GET", path: "/v1/payment_intents/pi_1?expand[]=customer", body: undefined, status: 403, type: "parameter_not_allowed" },
  { group: "headers", name: "expand[] on a pinned key", path: "/v1/payment_intents", auth: bearer("pinned"), body: `${PI}&expand[]=latest_charge`, status: 403, type: "parameter_not_allowed" },

  // Bodies.
  { group: "body", name: "body over 1 MiB (Content-Length)", path: "/v1/payment_intents", body: `${PI}&metadata[x]=${"a".repeat(MIB)}`, status: 413, type: "payload_too_large" },
  { group: "body", name: "body over 1 MiB (chunked, no length)", raw: (k) => rawBytes(k, { target: "/v1/payment_intents", headers: { "Transfer-Encoding": "chunked" }, body: chunked(Buffer.from(`${PI}&metadata[x]=${"a".repeat(MIB)}`)) }), status: 413, type: "payload_too_large" },
  { group: "body", name: "JSON to a Stripe money endpoint", path: "/v1/payment_intents", body: JSON.stringify({ amount: 100, currency: "usd" }), contentType: "application/json", status: 415, type: "unsupported_media_type" },
  { group: "body", name: "multipart to a Stripe money endpoint", path: "/v1/payment_intents", body: "--b\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n100\r\n--b--\r\n", contentType: "multipart/form-data; boundary=b", status: 415, type: "unsupported_media_type" },
  { group: "body", name: "text/plain to Resend", path: "/resend/emails", auth: bearer("resend"), body: EMAIL, contentType: "text/plain", status: 415, type: "unsupported_media_type" },
  { group: "body", name: "a form to Resend", path: "/resend/emails", auth: bearer("resend"), body: "to=user%40example.test&from=agent%40example.test", status: 415, type: "unsupported_media_type" },
  { group: "body", name: "JSON to Twilio", path: TWILIO_PATH, auth: bearer("twilio"), body: JSON.stringify({ To: "+14155550100", From: "+15005550006", Body: "hi" }), contentType: "application/json", status: 415, type: "unsupported_media_type" },
  { group: "body", name: "Content-Encoding: gzip to Stripe", raw: (k) => rawBytes(k, { target: "/v1/payment_intents", headers: { "Content-Encoding": "gzip" }, body: gzipSync(PI) }), status: 415, type: "unsupported_media_type" },
  { group: "body", name: "Content-Encoding: gzip to Resend", raw: (k) => rawBytes(k, { target: "/resend/emails", auth: bearer("resend"), contentType: "application/json", headers: { "Content-Encoding": "gzip" }, body: gzipSync(EMAIL) }), status: 415, type: "unsupported_media_type" },
  { group: "body", name: "Content-Encoding: br to Twilio", raw: (k) => rawBytes(k, { target: TWILIO_PATH, auth: bearer("twilio"), headers: { "Content-Encoding": "br" }, body: brotliCompressSync(SMS) }), status: 415, type: "unsupported_media_type" },
  { group: "body", name: "Content-Encoding: identity", path: "/v1/payment_intents", headers: { "content-encoding": "identity" }, status: 415, type: "unsupported_media_type" },
  { group: "body", name: "duplicate amount", path: "/v1/payment_intents", body: "amount=1&amount=1000&currency=usd", ...INVALID },
  { group: "body", name: "duplicate amount, encoded name", path: "/v1/payment_intents", body: "amount=1&%61mount=1000&currency=usd", ...INVALID },
  { group: "body", name: "duplicate currency", path: "/v1/payment_intents", body: "amount=100&currency=usd&currency=eur", ...INVALID },
  { group: "body", name: "duplicate field in a Resend JSON body", path: "/resend/emails", auth: bearer("resend"), contentType: "application/json", body: '{"from":"agent@example.test","to":"a@example.test","subject":"hi","html":"x","to":["b@example.test","c@example.test"]}', ...INVALID },

  // Tokens.
  { group: "token", name: "no Authorization", auth: null, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "forged key id and secret", auth: () => `Bearer kb_stripe_${"a".repeat(64)}_${"A".repeat(43)}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "real key id, forged secret", auth: (k) => `Bearer kb_stripe_${k.stripe.key_id}_${"Z".repeat(43)}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "truncated", auth: (k) => `Bearer ${k.stripe.vault_key.slice(0, -1)}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "one character too many", auth: (k) => `Bearer ${k.stripe.vault_key}A`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "bit-flipped secret", auth: (k) => `Bearer ${flipped(k.stripe.vault_key)}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "key id with one digit changed", auth: (k) => `Bearer ${otherId(k.stripe.vault_key)}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "wrong vendor prefix (kb_twilio_ on a Stripe key)", auth: (k) => `Bearer ${revendored(k.stripe.vault_key, "twilio")}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "wrong vendor prefix on the vendor's route (kb_resend_)", auth: (k) => `Bearer ${revendored(k.stripe.vault_key, "resend")}`, path: "/resend/emails", body: EMAIL, contentType: "application/json", status: 401, type: "invalid_key" },
  { group: "token", name: "wrong vendor prefix as Twilio Basic password", auth: (k) => basic("ACx", revendored(k.stripe.vault_key, "twilio")), path: TWILIO_PATH, body: SMS, status: 401, type: "invalid_key" },
  { group: "token", name: "the vendor's own secret as bearer", auth: () => `Bearer ${STRIPE_SECRET}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "empty bearer", auth: "Bearer ", path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "Bearer without a token", auth: "Bearer", path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "Basic with garbage", auth: "Basic !!!not-base64!!!", path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "Basic without a colon", auth: () => `Basic ${Buffer.from("just-a-user").toString("base64")}`, path: TWILIO_PATH, body: SMS, status: 401, type: "invalid_key" },
  { group: "token", name: "unknown scheme", auth: (k) => `Token ${k.stripe.vault_key}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "two Authorization headers", raw: (k) => rawBytes(k, { target: "/v1/payment_intents", extraLines: [`Authorization: Bearer kb_stripe_${"b".repeat(64)}_${"B".repeat(43)}`] }), status: 401, type: "invalid_key" },
  { group: "token", name: "a revoked key", auth: bearer("revoked"), path: "/v1/payment_intents", status: 401, type: "key_revoked" },
  { group: "token", name: "the admin key on the proxy", auth: () => `Bearer ${ADMIN_KEY}`, path: "/v1/payment_intents", status: 401, type: "invalid_key" },
  { group: "token", name: "a Twilio key on the /stripe route", auth: bearer("twilio"), path: "/stripe/v1/payment_intents", status: 403, type: "endpoint_not_allowed" },
  { group: "token", name: "a Stripe key on the /twilio route", path: TWILIO_PATH, body: SMS, status: 403, type: "endpoint_not_allowed" },
  { group: "token", name: "a Stripe key on the /resend route", path: "/resend/emails", body: EMAIL, contentType: "application/json", status: 403, type: "endpoint_not_allowed" },

  // The admin API with vault keys (each from its own client address, so the lockout stays out of it).
  { group: "admin", name: "GET a key with a vault key", method: "GET", path: (k) => `/vault/keys/${k.stripe.key_id}`, body: undefined, headers: { "cf-connecting-ip": "198.51.100.1" }, status: 401, type: "unauthorized" },
  { group: "admin", name: "issue a key with a vault key", method: "POST", path: "/vault/keys", contentType: "application/json", body: JSON.stringify({ vendor: "stripe", daily_usd_cap: 1e6, allowed_endpoints: ["POST /v1/payouts"] }), headers: { "cf-connecting-ip": "198.51.100.2" }, status: 401, type: "unauthorized" },
  { group: "admin", name: "revoke a key with its own vault key", method: "DELETE", path: (k) => `/vault/keys/${k.stripe.key_id}`, body: undefined, headers: { "cf-connecting-ip": "198.51.100.3" }, status: 401, type: "unauthorized" },
  { group: "admin", name: "read the audit with a Twilio key as Basic", method: "GET", path: (k) => `/vault/audit?key_id=${k.twilio.key_id}`, auth: (k) => basic("ACx", k.twilio.vault_key), body: undefined, headers: { "cf-connecting-ip": "198.51.100.4" }, status: 401, type: "unauthorized" },
];

const vendorCounts = () => ({ stripe: kb.stripe.requests.length, twilio: kb.twilio.requests.length, resend: kb.resend.requests.length });

/** Sends one case; answers `{ status, type, note }` and what reached each vendor meanwhile. */
async function send(c) {
  const before = vendorCounts();
  let answer;
  try {
    if (c.raw) {
      answer = await kb.raw(c.raw(keys));
    } else {
      const method = c.method ?? "POST";
      const path = typeof c.path === "function" ? c.path(keys) : c.path;
      const auth = c.auth === undefined ? bearer("stripe") : c.auth;
      const authValue = typeof auth === "function" ? auth(keys) : auth;
      const body = "body" in c ? c.body : method === "GET" ? undefined : PI;
      const headers = {
        ...(authValue !== null ? { authorization: authValue } : {}),
        ...(body !== undefined ? { "content-type": c.contentType ?? FORM } : {}),
        ...c.headers,
      };
      answer = await kb.call(method, path, { token: null, body, headers });
    }
  } catch (e) {
    answer = { status: null, headers: new Headers(), error: String(e) };
  }
  const after = vendorCounts();
  const forwarded = Object.entries(after)
    .filter(([vendor, n]) => n > before[vendor])
    .map(([vendor, n]) => `${vendor} ×${n - before[vendor]}: ${kb[vendor].requests.slice(before[vendor]).map((r) => `${r.method} ${r.url}`).join(", ")}`);
  const type = answer.headers.get("x-keybrake-error");
  let note = answer.error ?? "";
  if (answer.status !== null && !type) {
    const text = (answer.text ?? "").replace(/\s+/g, " ").slice(0, 60);
    note = `answered by the runtime, not the Worker: "${answer.statusText ?? ""}" ${text}`.trim();
  }
  return { status: answer.status, type, note, forwarded };
}

const oneOf = (expected, actual) => (Array.isArray(expected) ? expected.includes(actual) : expected === actual);
const show = (v) => (Array.isArray(v) ? v.join("|") : String(v));

let results = null;

test(`hostile corpus: ${CASES.length} requests, none of which reaches a vendor`, async () => {
  assert.ok(CASES.length >= 60, `at least 60 cases, got ${CASES.length}`);
  results = [];
  for (const c of CASES) results.push({ c, ...(await send(c)) });
  const forwarded = results.filter((r) => r.forwarded.length > 0);
  assert.equal(
    forwarded.length,
    0,
    `forwarded to a vendor:\n${forwarded.map((r) => `- [${r.c.group}] ${r.c.name}: ${r.forwarded.join("; ")} (answered ${r.status})`).join("\n")}`,
  );
  assert.deepEqual(vendorCounts(), { stripe: 0, twilio: 0, resend: 0 });
  const state = await kb.key(keys.stripe);
  assert.equal(state.status, "active", "no admin call made with the key's own token revoked it");
  assert.equal(state.spent_usd + state.reserved_usd, 0, "nothing was held or spent");
});

test("hostile corpus: every request gets its expected status and error type", () => {
  assert.ok(results, "the corpus ran");
  const mismatches = results.filter(
    (r) => !oneOf(r.c.status, r.status) || (r.c.type !== undefined && !oneOf(r.c.type, r.type)),
  );
  const rows = mismatches.map(
    (r) =>
      `| ${r.c.group} | ${r.c.name} | ${show(r.c.status)} ${r.c.type ? show(r.c.type) : "(any type)"} | ${r.status ?? "no answer"} ${r.type ?? "—"} | ${r.note} |`,
  );
  const table = ["| group | case | expected | actual | note |", "|---|---|---|---|---|", ...rows].join("\n");
  console.log(`# hostile corpus: ${results.length - mismatches.length}/${results.length} as expected`);
  if (mismatches.length) console.log(table.split("\n").map((l) => `# ${l}`).join("\n"));
  assert.equal(mismatches.length, 0, `${mismatches.length} of ${results.length} cases answered otherwise:\n${table}`);
});

// ---------------------------------------------------------------------------------------------
// Controls and related properties. These calls do reach the vendor fakes, so they are kept
// out of the corpus.

const form = { "content-type": FORM };

test("controls: the corpus keys work, a pinned account is sent as Stripe-Account, expand[] passes with allow_expand", async () => {
  const plain = await kb.call("POST", "/v1/payment_intents", { token: keys.stripe.vault_key, body: PI, headers: form });
  assert.equal(plain.status, 200, plain.text);
  assert.equal(kb.stripe.requests.length, 1, "the corpus's stripe key reaches Stripe when nothing is wrong");
  assert.equal(kb.stripe.requests[0].headers["stripe-account"], undefined);

  for (const headers of [form, { ...form, "stripe-account": "acct_123" }]) {
    const res = await kb.call("POST", "/v1/payment_intents", { token: keys.pinned.vault_key, body: PI, headers });
    assert.equal(res.status, 200, res.text);
    assert.equal(kb.stripe.requests.at(-1).headers["stripe-account"], "acct_123", JSON.stringify(headers));
  }

  const expand = await kb.issueKey({ allow_expand: true, allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/payment_intents/{id}"] });
  const body = `${PI}&expand[]=customer`;
  const created = await kb.call("POST", "/v1/payment_intents", { token: expand.vault_key, body, headers: form });
  assert.equal(created.status, 200, created.text);
  assert.equal(kb.stripe.requests.at(-1).body, body);
  const read = await kb.call("GET", "/v1/payment_intents/pi_1?expand[]=customer", { token: expand.vault_key });
  assert.equal(read.status, 200, read.text);
  assert.equal(kb.stripe.requests.at(-1).url, "/v1/payment_intents/pi_1?expand[]=customer");
  assert.equal(kb.stripe.requests.length, 5);
});

test("what the runtime rewrites before the Worker runs is refused, or matched and forwarded as rewritten", async () => {
  const runLabel = `hostile/rewritten-${Date.now()}`;
  const key = await kb.issueKey({ agent_run_label: runLabel });
  const k = { stripe: key };
  const requests = [
    ["literal ./", rawBytes(k, { target: "/v1/./payment_intents" })],
    ["literal ../", rawBytes(k, { target: "/v1/x/../payment_intents" })],
    ["%2e segment", rawBytes(k, { target: "/v1/%2e/payment_intents" })],
    ["%2E%2E segment", rawBytes(k, { target: "/v1/x/%2E%2E/payment_intents" })],
    ["raw backslash", rawBytes(k, { target: "/v1\\payment_intents" })],
    ["trailing control byte", rawBytes(k, { target: bytesOf("/v1/payment_intents", 0x01) })],
    ["a foreign Host", rawBytes(k, { target: "/v1/payment_intents", host: "evil.example" })],
  ];
  const outcomes = [];
  let forwarded = 0;
  for (const [name, bytes] of requests) {
    const before = kb.stripe.requests.length;
    const res = await kb.raw(bytes);
    const seen = kb.stripe.requests.slice(before);
    outcomes.push(`${name}: ${res.status} ${res.headers.get("x-keybrake-error") ?? ""}, forwarded ${seen.map((r) => r.url).join(",") || "nothing"}`);
    if (res.status === 400 && res.headers.get("x-keybrake-error") === "invalid_request") {
      assert.equal(seen.length, 0, `${name}: refused, so nothing was forwarded`);
    } else {
      assert.equal(res.status, 200, `${name}: ${res.status} ${res.text}`);
      assert.equal(seen.length, 1, name);
      assert.equal(seen[0].url, "/v1/payment_intents", `${name}: forwarded as matched`);
      assert.equal(seen[0].headers.host, new URL(kb.stripe.url).host, `${name}: to the configured origin`);
      forwarded++;
    }
  }
  console.log(outcomes.map((o) => `# ${o}`).join("\n"));
  const audit = await kb.auditUntil({ agent_run_label: runLabel }, (p) => p.count === requests.length);
  assert.ok(audit.calls.every((c) => c.path === "/v1/payment_intents"), JSON.stringify(audit.calls.map((c) => c.path)));
  assert.equal(audit.calls.filter((c) => c.decision === "forwarded").length, forwarded);
});

test("more than 20 bad admin tokens from one address slow further failures; the right token always works", async () => {
  const own = await startKeybrake();
  try {
    const wrong = (i, ip) =>
      own.call("GET", "/vault/audit?key_id=x", { token: `${ADMIN_KEY.slice(0, -2)}${i}`, headers: { "cf-connecting-ip": ip } });
    const bad = [];
    for (let i = 0; i < 21; i++) bad.push(await wrong(i, "2001:db8:85a3:0:1::7"));
    bad.slice(0, 20).forEach((res, i) => {
      assert.equal(res.status, 401, `bad token ${i + 1}`);
      assert.equal(res.headers.get("x-keybrake-error"), "unauthorized");
    });
    // The same /64, another host: the same count.
    for (const res of [bad[20], await wrong(99, "2001:db8:85a3:0:ffff::1")]) {
      assert.equal(res.status, 429, res.text);
      assert.equal(res.json.error.type, "too_many_attempts");
      assert.equal(res.headers.get("x-keybrake-error"), "too_many_attempts");
      assert.ok(Number(res.headers.get("retry-after")) > 0, "says when to try again");
    }
    // The operator on that same address, with the right token, is never refused.
    const issued = await own.call("POST", "/vault/keys", {
      headers: { "cf-connecting-ip": "2001:db8:85a3:0:1::7" },
      body: { vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] },
    });
    assert.equal(issued.status, 201, issued.text);
    // Another /64 is counted apart.
    assert.equal((await wrong(100, "2001:db8:85a3:1::7")).status, 401);
    assert.equal((await wrong(101, "203.0.113.8")).status, 401);
  } finally {
    await own.close();
  }
});
