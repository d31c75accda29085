// A fresh Keybrake for one run: the built Worker in workerd (real Durable Objects and D1, as
// the end-to-end tests run it) in front of the recording Stripe fake. Short timeouts make
// every fault resolve within a second or two. The Worker's log is read and dropped: a soak run
// provokes thousands of expected upstream errors.
import { Miniflare, Log, LogLevel } from "miniflare";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ADMIN_KEY, STRIPE_SECRET, migrationStatements, workerOptions } from "../e2e/harness.mjs";
import { startStripeFake } from "../fakes/stripe.mjs";

export const UPSTREAM_TIMEOUT_MS = 400;
export const ALARM_BACKOFF_MS = 50;

export async function startInstance() {
  const stripe = await startStripeFake({ secret: STRIPE_SECRET });
  const persist = mkdtempSync(join(tmpdir(), "keybrake-soak-"));
  const mf = new Miniflare({
    ...workerOptions(persist),
    bindings: {
      KEYBRAKE_API_KEY: ADMIN_KEY,
      STRIPE_SECRET_KEY: STRIPE_SECRET,
      STRIPE_API_BASE: stripe.url,
      UPSTREAM_TIMEOUT_MS: String(UPSTREAM_TIMEOUT_MS),
      ALARM_BACKOFF_MS: String(ALARM_BACKOFF_MS),
    },
    log: new Log(LogLevel.NONE),
    handleRuntimeStdio(stdout, stderr) {
      stdout.resume();
      stderr.resume();
    },
  });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  const db = await mf.getD1Database("DB");
  for (const statement of migrationStatements()) await db.prepare(statement).run();

  /** An admin call; answers `{ status, json }`. */
  async function admin(method, path, body) {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, json, text };
  }

  return {
    url,
    stripe,
    admin,
    async close() {
      await mf.dispose();
      await stripe.close();
      rmSync(persist, { recursive: true, force: true });
    },
  };
}
