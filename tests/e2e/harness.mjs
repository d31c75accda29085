// Runs the built Worker (build/index.js + wasm) in workerd through Miniflare, with real
// Durable Objects (SQLite) and a real D1 database. Only the vendors are faked, by servers on
// loopback that record what they receive.
import { Miniflare, Log, LogLevel } from "miniflare";
import { readFileSync, readdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startStripeFake } from "../fakes/stripe.mjs";

export const ADMIN_KEY = "kb_admin_test_0f3c9a7d5e1b2c4d6e8f";
export const STRIPE_SECRET = "sk_test_keybrake_e2e_51HfakeSecretValue";
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

export async function startKeybrake({ vars = {} } = {}) {
  const stripe = await startStripeFake({ secret: STRIPE_SECRET });
  const persist = mkdtempSync(join(tmpdir(), "keybrake-e2e-"));
  const mf = new Miniflare({
    modules: true,
    scriptPath: join(ROOT, "build/index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: "2026-04-20",
    durableObjects: { VAULT_KEYS: { className: "VaultKey", useSQLite: true } },
    durableObjectsPersist: join(persist, "do"),
    d1Databases: { DB: "keybrake-test" },
    d1Persist: join(persist, "d1"),
    bindings: {
      KEYBRAKE_API_KEY: ADMIN_KEY,
      STRIPE_SECRET_KEY: STRIPE_SECRET,
      STRIPE_API_BASE: stripe.url,
      UPSTREAM_TIMEOUT_MS: "2000",
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

  async function call(method, path, { body, token = ADMIN_KEY, headers = {} } = {}) {
    const res = await fetch(url + path, {
      method,
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
    persistDir: persist,
    call,
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
      await stripe.close();
      rmSync(persist, { recursive: true, force: true });
    },
  };
}

/** A stripe-node client pointed at Keybrake with only host, port and protocol. */
export async function stripeClient(kb, vaultKey, options = {}) {
  const { default: Stripe } = await import("stripe");
  return new Stripe(vaultKey, { host: "127.0.0.1", port: kb.port, protocol: "http", telemetry: false, ...options });
}
