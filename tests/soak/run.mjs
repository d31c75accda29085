// Runs an op log against one Keybrake instance and records what each client saw. Every
// proxied request carries `User-Agent: keybrake-soak/<op id>`, which Keybrake forwards, so
// each request the Stripe fake records (alarm replays included) names the op it came from.
import { UPSTREAM_TIMEOUT_MS } from "./instance.mjs";

const CONCURRENCY = 6;
const CLIENT_TIMEOUT_MS = 10_000; // far above UPSTREAM_TIMEOUT_MS: Keybrake answers well before
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const agentOf = (op) => `keybrake-soak/${op.id}`;

/** The fake's behaviours for a fault name; each is aimed at the op's requests in turn. */
function behaviours(fault) {
  switch (fault) {
    case "500":
    case "429":
    case "402":
      return [Number(fault)];
    case "slow":
      return [{ delay: UPSTREAM_TIMEOUT_MS + 400 }];
    case "then429":
      return [500, 429];
    case "quick":
      return [{ delay: 100 }];
    default:
      return [fault]; // drop, reset, hang
  }
}

/**
 * Runs `ops` and returns the trace: per op, when it was sent and answered and what came back,
 * and per key, its id, expiry and when its revoke was answered.
 */
export async function execute(kb, ops, { deadline, inflight = new Set() }) {
  const keys = new Map(); // key n -> { n, key_id, vault_key, expiresAt, revokedAt, issued: Promise }
  const results = new Map(); // op id -> result
  const done = new Map(); // op id -> Promise of its result
  const running = new Set();

  const proxied = async (op, key, idem, amount, currency) => {
    for (const b of behaviours(op.fault ?? null)) {
      if (op.fault) kb.stripe.misbehave(b, (record) => record.headers["user-agent"] === agentOf(op));
    }
    // One controller and one timer: the op's own abort, else the client's patience.
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), op.abort ?? CLIENT_TIMEOUT_MS);
    const result = { op: op.id, key: op.key, idem, amount, currency, sentAt: Date.now() };
    // Node's fetch can leave a promise unsettled when it is aborted mid-exchange: the abort
    // itself ends the call for the client, whatever fetch does afterwards.
    const aborted = new Promise((_, reject) =>
      controller.signal.addEventListener("abort", () => reject(new Error("aborted")), { once: true }),
    );
    try {
      const exchange = fetch(`${kb.url}/v1/payment_intents`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${key.vault_key}`,
          "content-type": "application/x-www-form-urlencoded",
          "user-agent": agentOf(op),
          ...(idem ? { "idempotency-key": idem } : {}),
        },
        body: `amount=${amount}&currency=${currency}`,
        signal: controller.signal,
      }).then(async (res) => ({ res, text: await res.text() }));
      exchange.catch(() => {});
      const { res, text } = await Promise.race([exchange, aborted]);
      result.status = res.status;
      result.error = res.headers.get("x-keybrake-error");
      result.kbIdem = res.headers.get("x-keybrake-idempotency-key");
      try {
        result.errorType = JSON.parse(text)?.error?.type ?? null;
      } catch {
        result.errorType = null;
      }
    } catch {
      result.status = null; // aborted or cut off: the client never learned the outcome
      result.timedOut = op.abort === undefined;
    } finally {
      clearTimeout(timer);
      result.answeredAt = Date.now();
    }
    return result;
  };

  const runOp = async (op) => {
    if (op.kind !== "issue" && keys.get(op.key)?.unminted) return { op: op.id, skipped: true };
    switch (op.kind) {
      case "issue": {
        const key = { n: op.key, revokedAt: null, parent: op.parent ?? null };
        keys.set(op.key, key);
        if (op.parent !== undefined) {
          const parent = keys.get(op.parent);
          if (parent.unminted) {
            key.unminted = true;
            return { op: op.id };
          }
          const res = await fetch(`${kb.url}/vault/keys/${parent.key_id}/children`, {
            method: "POST",
            headers: { authorization: `Bearer ${parent.vault_key}`, "content-type": "application/json" },
            body: JSON.stringify({ daily_usd_cap: op.cap, agent_run_label: `soak/k${op.key}` }),
          });
          const json = await res.json();
          // The parent may have been revoked or have expired meanwhile: then nothing is minted,
          // and the key's ops are skipped.
          if (res.status === 401 && ["key_revoked", "key_expired"].includes(json.error?.type)) {
            key.unminted = true;
            return { op: op.id };
          }
          if (res.status !== 201) throw new Error(`mint k${op.key} failed: ${res.status} ${JSON.stringify(json)}`);
          Object.assign(key, { key_id: json.key_id, vault_key: json.vault_key, cap: op.cap });
          key.expiresAt = Date.parse(json.expires_at);
          return { op: op.id };
        }
        const res = await kb.admin("POST", "/vault/keys", {
          vendor: "stripe",
          daily_usd_cap: op.cap,
          allowed_endpoints: ["POST /v1/payment_intents"],
          expires_in: op.ttl,
          agent_run_label: `soak/k${op.key}`,
        });
        if (res.status !== 201) throw new Error(`issue k${op.key} failed: ${res.status} ${res.text}`);
        Object.assign(key, { key_id: res.json.key_id, vault_key: res.json.vault_key, cap: op.cap });
        key.expiresAt = Date.parse(res.json.expires_at);
        return { op: op.id };
      }
      case "charge":
        return proxied(op, keys.get(op.key), op.idem, op.amount, "usd");
      case "retry": {
        const of = ops.find((o) => o.id === op.of);
        // A sequential retry comes after the first call ended, and uses what it learned.
        const first = op.concurrent ? null : await done.get(op.of);
        const idem = of.idem ?? first?.kbIdem ?? null;
        return proxied(op, keys.get(op.key), idem, op.amount ?? of.amount, op.currency ?? "usd");
      }
      case "revoke": {
        const key = keys.get(op.key);
        const res = await kb.admin("DELETE", `/vault/keys/${key.key_id}`);
        if (res.status !== 200) throw new Error(`revoke k${op.key} failed: ${res.status} ${res.text}`);
        key.revokedAt ??= Date.now();
        return { op: op.id };
      }
    }
  };

  const start = Date.now() - (ops[0]?.at ?? 0);
  for (const op of ops) {
    if (Date.now() > deadline) throw new Error("the run overstayed its deadline");
    await sleep(start + op.at - Date.now());
    while (running.size >= CONCURRENCY) await Promise.race(running);
    // Ops on a key wait for its issue, a child's issue for its parent's; a retry waits for its
    // first call (inside runOp).
    const issueOf = (n) => ops.find((o) => o.kind === "issue" && o.key === n);
    const issue = op.kind === "issue" ? (op.parent !== undefined ? issueOf(op.parent) : null) : issueOf(op.key);
    const before = issue ? done.get(issue.id) : null;
    const p = (async () => {
      if (before) await before;
      inflight.add(op.id);
      const result = await runOp(op);
      inflight.delete(op.id);
      results.set(op.id, result);
      return result;
    })();
    done.set(op.id, p);
    const tracked = p.finally(() => running.delete(tracked));
    running.add(tracked);
  }
  await Promise.all(done.values());
  for (const [n, key] of keys) if (key.unminted) keys.delete(n);
  return { keys, results };
}
