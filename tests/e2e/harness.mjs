// Runs the built Worker (build/index.js + wasm) in workerd through Miniflare, with real
// Durable Objects (SQLite) and a real D1 database. Only the vendors are faked, by servers on
// loopback that record what they receive.
import { Miniflare, Log, LogLevel } from "miniflare";
import { readFileSync, readdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startStripeFake } from "../fakes/stripe.mjs";
import { startTwilioFake } from "../fakes/twilio.mjs";
import { startResendFake } from "../fakes/resend.mjs";

export const ADMIN_KEY = "kb_admin_test_0f3c9a7d5e1b2c4d6e8f";
export const STRIPE_SECRET = "sk_test_keybrake_e2e_51HfakeSecretValue";
export const TWILIO_ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef";
export const TWILIO_AUTH_TOKEN = "twilio_auth_token_e2e_5f2b9c";
export const RESEND_API_KEY = "re_e2e_9Qm2kLx7VendorSecret";
/** Every vendor secret the Worker holds: none may ever reach a client, a log or an audit row. */
export const VENDOR_SECRETS = [STRIPE_SECRET, TWILIO_AUTH_TOKEN, RESEND_API_KEY];
const ROOT = new URL("../..", import.meta.url).pathname;

export function migrationStatements() {
  const dir = join(ROOT, "migrations");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort()
    .flatMap((f) =>
      readFileSync(join(dir, f), "utf8")
        .split("\n")
        .filter((line) => !line.trim().startsWith("--"))
        .join("\n")
        .split(";")
        .map((s) => s.trim())
        .filter(Boolean),
    );
}

export async function startKeybrake({ vars = {}, twilio: twilioOptions = {} } = {}) {
  const stripe = await startStripeFake({ secret: STRIPE_SECRET });
  const twilio = await startTwilioFake({ accountSid: TWILIO_ACCOUNT_SID, authToken: TWILIO_AUTH_TOKEN, ...twilioOptions });
  const resend = await startResendFake({ apiKey: RESEND_API_KEY });
  const persist = mkdtempSync(join(tmpdir(), "keybrake-e2e-"));
  const mf = new Miniflare({
    modules: true,
    scriptPath: join(ROOT, "build/index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: "2026-04-20",
    durableObjects: {
      VAULT_KEYS: { className: "VaultKey", useSQLite: true },
      ADMIN_GUARD: { className: "AdminGuard", useSQLite: true },
    },
    durableObjectsPersist: join(persist, "do"),
    d1Databases: { DB: "keybrake-test" },
    d1Persist: join(persist, "d1"),
    bindings: {
      KEYBRAKE_API_KEY: ADMIN_KEY,
      STRIPE_SECRET_KEY: STRIPE_SECRET,
      STRIPE_API_BASE: stripe.url,
      TWILIO_ACCOUNT_SID,
      TWILIO_AUTH_TOKEN,
      TWILIO_API_BASE: twilio.url,
      RESEND_API_KEY,
      RESEND_API_BASE: resend.url,
      UPSTREAM_TIMEOUT_MS: "2000",
      ALARM_BACKOFF_MS: "100",
      ...vars,
    },
    host: "127.0.0.1",
    port: 0,
    cf: false,
    log: new Log(LogLevel.WARN),
  });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  const db = await mf.getD1Database("DB");
  for (const statement of migrationStatements()) await db.prepare(statement).run();

  async function call(method, path, { body, token = ADMIN_KEY, headers = {}, signal } = {}) {
    const res = await fetch(url + path, {
      method,
      signal,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, json, text };
  }

  return {
    url,
    port: Number(new URL(url).port),
    mf,
    db,
    stripe,
    twilio,
    resend,
    resetVendors() {
      stripe.reset();
      twilio.reset();
      resend.reset();
    },
    persistDir: persist,
    call,
    async key(state) {
      return (await call("GET", `/vault/keys/${state.key_id}`)).json;
    },
    /**
     * The key's state once every hold is closed and every audit row has reached D1. A call is
     * answered as soon as the vendor has answered; its settlement lands a moment later.
     */
    async settled(state, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = (await call("GET", `/vault/keys/${state.key_id}`)).json;
        if (s.reserved_usd === 0 && s.unresolved === 0 && s.audit_pending === 0) return s;
        if (Date.now() > deadline) throw new Error(`holds never closed: ${JSON.stringify(s)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async issueKey(overrides = {}) {
      const res = await call("POST", "/vault/keys", {
        body: {
          vendor: "stripe",
          daily_usd_cap: 300,
          allowed_endpoints: ["POST /v1/payment_intents"],
          expires_in: "2h",
          ...overrides,
        },
      });
      if (res.status !== 201) throw new Error(`issue failed: ${res.status} ${res.text}`);
      return res.json;
    },
    /** Polls the audit API until `predicate(page)` holds; audit rows reach D1 off the request path. */
    async auditUntil(query, predicate, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const res = await call("GET", `/vault/audit?${new URLSearchParams(query)}`);
        if (res.status === 200 && predicate(res.json)) return res.json;
        if (Date.now() > deadline) throw new Error(`audit never matched: ${res.status} ${res.text}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async close() {
      await mf.dispose();
      await Promise.all([stripe.close(), twilio.close(), resend.close()]);
      rmSync(persist, { recursive: true, force: true });
    },
  };
}

/** A stripe-node client pointed at Keybrake with only host, port and protocol. */
export async function stripeClient(kb, vaultKey, options = {}) {
  const { default: Stripe } = await import("stripe");
  return new Stripe(vaultKey, { host: "127.0.0.1", port: kb.port, protocol: "http", telemetry: false, ...options });
}

/**
 * A twilio-node client that talks to Keybrake. twilio-node has no base-URL option; its
 * documented extension point is a custom `httpClient`, here one that sends every request to
 * Keybrake's `/twilio` route instead of api.twilio.com. The vault key is the auth token; the
 * account sid can be anything, since Keybrake pins the real one.
 */
export async function twilioClient(kb, vaultKey, accountSid = "ACanything") {
  const { default: twilio } = await import("twilio");
  const base = new twilio.RequestClient();
  const httpClient = {
    request(opts) {
      const uri = new URL(opts.uri);
      return base.request({ ...opts, uri: `${kb.url}/twilio${uri.pathname}${uri.search}` });
    },
  };
  return twilio(accountSid, vaultKey, { httpClient });
}

/** The resend SDK pointed at Keybrake through RESEND_BASE_URL, as its docs describe. */
export async function resendClient(kb, vaultKey) {
  const { Resend } = await import("resend");
  process.env.RESEND_BASE_URL = `${kb.url}/resend`;
  return new Resend(vaultKey);
}
