// After a run: wait for quiescence, then judge Keybrake's ledger and audit against what the
// Stripe fake actually received and created, per key and UTC day.
export const INVARIANTS = {
  1: "USD created at the vendor for a key and all its descendants within its daily cap",
  2: "spent + held >= created; spent = created once nothing is unresolved; nothing unresolved on a key still active",
  3: "nothing reaches the vendor for a key after its (or an ancestor's) revoke answered, or after it expired",
  4: "one audit row per authenticated call, and audit total_usd = spent",
  5: "nothing reaches the vendor for a call Keybrake refused (4xx with X-Keybrake-Error)",
  6: "a retry with another body under a used Idempotency-Key is refused (422 idempotency_mismatch) and never forwarded",
  0: "the run ends: every call answered, holds settle and audit rows reach D1",
};

// workerd's clock only advances with I/O, so its notion of "now" can trail this process's by
// a few milliseconds; an expiry is judged with that much slack.
const CLOCK_SLACK_MS = 50;
const QUIET_MS = 2_500; // longer than any fault takes to clear at ALARM_BACKOFF_MS = 50
const QUIESCE_TIMEOUT_MS = 30_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const micros = (usd) => Math.round(usd * 1e6);
const utcDay = (ms) => Math.floor(ms / 86_400_000);

/**
 * Polls every key until nothing is moving: audit rows all in D1, and either no money held, or
 * the same state, no vendor request and nothing running at the fake for QUIET_MS. Holds that
 * can never resolve (replays stopped by a revoke) then stay, counted as unresolved. Returns
 * the final state and audit page per key, read consistently (state unchanged around the
 * audit read), or null if the run never quiesced.
 */
export async function quiesce(kb, keys) {
  const deadline = Date.now() + QUIESCE_TIMEOUT_MS;
  let last = null;
  let since = Date.now();
  while (Date.now() < deadline) {
    const states = await readStates(kb, keys);
    const snapshot = JSON.stringify([...states.values()].map(({ spent_usd, reserved_usd, unresolved, audit_pending }) =>
      [spent_usd, reserved_usd, unresolved, audit_pending]));
    const lastVendorAt = kb.stripe.requests.reduce((m, r) => Math.max(m, r.at), 0);
    const fakeBusy = kb.stripe.requests.some((r) => r.running);
    if (snapshot !== last) [last, since] = [snapshot, Date.now()];
    const pending = [...states.values()].some((s) => s.audit_pending > 0);
    const held = [...states.values()].some((s) => s.reserved_usd > 0);
    const quiet = Date.now() - Math.max(since, lastVendorAt) >= QUIET_MS;
    if (!pending && !fakeBusy && (!held || quiet)) {
      const audits = new Map();
      for (const [n, key] of keys) audits.set(n, await auditOf(kb, key));
      const again = await readStates(kb, keys);
      if (JSON.stringify([...again.values()]) === JSON.stringify([...states.values()])) return { states, audits };
    }
    await sleep(100);
  }
  return null;
}

/** A key's whole audit: its totals, and every row, page by page. */
async function auditOf(kb, key) {
  let page = (await kb.admin("GET", `/vault/audit?key_id=${key.key_id}&limit=1000`)).json;
  const calls = [...page.calls];
  while (page.has_more) {
    page = (await kb.admin("GET", `/vault/audit?key_id=${key.key_id}&limit=1000&starting_after=${calls.at(-1).id}`)).json;
    calls.push(...page.calls);
  }
  return { ...page, calls };
}

async function readStates(kb, keys) {
  const states = new Map();
  for (const [n, key] of keys) states.set(n, (await kb.admin("GET", `/vault/keys/${key.key_id}`)).json);
  return states;
}

/** Every violation found, as `{ inv, key, msg }`. */
export function check(ops, trace, final, requests, charges) {
  const { keys, results } = trace;
  const { states, audits } = final;
  const violations = [];
  const fail = (inv, key, msg) => violations.push({ inv, key, msg });
  const opOf = (r) => {
    const m = /^keybrake-soak\/(\d+)$/.exec(r.headers["user-agent"] ?? "");
    return m ? Number(m[1]) : null;
  };
  const opById = new Map(ops.map((o) => [o.id, o]));

  // What reached the vendor, per op, in arrival order. An op's first request is its own
  // forward; any later one is an alarm replay of it. A replay that lost the agent header is
  // still known by the Idempotency-Key its op was sent under.
  const sorted = [...requests].sort((a, b) => a.at - b.at);
  const opOfIdem = new Map();
  for (const r of sorted) if (opOf(r) !== null) opOfIdem.set(r.headers["idempotency-key"], opOf(r));
  const byOp = new Map();
  for (const r of sorted) {
    const id = opOf(r) ?? opOfIdem.get(r.headers["idempotency-key"]);
    if (id === undefined) continue;
    if (!byOp.has(id)) byOp.set(id, []);
    byOp.get(id).push(r);
  }
  // Which key each Idempotency-Key the vendor saw belongs to: through the op that sent it.
  const keyOfIdem = new Map();
  for (const [id, rs] of byOp) for (const r of rs) keyOfIdem.set(r.headers["idempotency-key"], opById.get(id).key);

  // A key's ancestors, and when a revoke first stopped it: its own, or an ancestor's.
  const ancestors = (n) => {
    const chain = [];
    for (let k = keys.get(n)?.parent; k !== null && k !== undefined; k = keys.get(k)?.parent) chain.push(k);
    return chain;
  };
  const stoppedAt = (n) =>
    [n, ...ancestors(n)].map((k) => keys.get(k)?.revokedAt ?? null).filter((t) => t !== null).reduce((a, t) => Math.min(a, t), Infinity);

  for (const [n, key] of keys) {
    const state = states.get(n);
    const audit = audits.get(n);
    const mine = ops.filter((o) => (o.kind === "charge" || o.kind === "retry") && o.key === n);
    const created = charges.filter((c) => keyOfIdem.get(c.idempotencyKey) === n);
    const subtree = new Set([n, ...[...keys.keys()].filter((k) => ancestors(k).includes(n))]);
    const createdBelow = charges.filter((c) => subtree.has(keyOfIdem.get(c.idempotencyKey)));
    const createdMicros = created.reduce((s, c) => s + c.amount * 10_000, 0);
    const today = utcDay(Date.now());
    const days = new Set(created.map((c) => utcDay(c.at)));

    // 1. The cap, over the key and all its descendants, per UTC day of creation.
    for (const day of new Set(createdBelow.map((c) => utcDay(c.at)))) {
      const sum = createdBelow.filter((c) => utcDay(c.at) === day).reduce((s, c) => s + c.amount, 0);
      const whose = subtree.size > 1 ? ` by it and its ${subtree.size - 1} descendant(s)` : "";
      if (sum > key.cap * 100) fail(1, n, `created $${sum / 100} at the vendor${whose} on a $${key.cap} cap`);
    }

    // 2. The ledger against the vendor. The key's state reports today only.
    const spent = micros(state.spent_usd);
    const held = micros(state.reserved_usd);
    if (days.size <= 1 && (days.size === 0 || days.has(today))) {
      if (spent + held < createdMicros) {
        fail(2, n, `spent $${state.spent_usd} + held $${state.reserved_usd} < created $${createdMicros / 1e6}`);
      }
      if (state.unresolved === 0 && spent !== createdMicros) {
        fail(2, n, `spent $${state.spent_usd} != created $${createdMicros / 1e6} with nothing unresolved`);
      }
    }
    const revokedAt = stoppedAt(n) === Infinity ? null : stoppedAt(n);
    const active = revokedAt === null && key.expiresAt > Date.now();
    if (active && state.unresolved > 0) {
      fail(2, n, `${state.unresolved} call(s) unresolved on an active key ($${state.reserved_usd} held) though Stripe answers every replay`);
    }

    // 3. Nothing after the revoke answered; after expiry, no replay and no call sent after it.
    for (const o of mine) {
      (byOp.get(o.id) ?? []).forEach((r, i) => {
        if (revokedAt !== null && r.at > revokedAt) {
          fail(3, n, `#${o.id}: ${i === 0 ? "forwarded" : "replayed"} ${r.at - revokedAt} ms after the revoke answered`);
        }
        const sentAt = results.get(o.id)?.sentAt ?? 0;
        const expired = key.expiresAt + CLOCK_SLACK_MS;
        if (r.at > expired && (i > 0 || sentAt > expired)) {
          fail(3, n, `#${o.id}: ${i === 0 ? "forwarded" : "replayed"} ${r.at - key.expiresAt} ms after the key expired`);
        }
      });
    }

    // 4. One audited call per call that authenticated: `count` sums rows, a coalesced row of
    //    refusals counting all it stands for. Every answered call authenticated (all carry a
    //    valid token and a canonical request); an aborted one did if it reached the vendor,
    //    and may have if it did not.
    const answered = mine.filter((o) => results.get(o.id).status !== null).length;
    const abortedForwarded = mine.filter((o) => results.get(o.id).status === null && byOp.has(o.id)).length;
    const abortedOther = mine.filter((o) => results.get(o.id).status === null && !byOp.has(o.id)).length;
    const must = answered + abortedForwarded;
    if (audit.count < must || audit.count > must + abortedOther) {
      fail(4, n, `${audit.count} audited calls for ${must} authenticated calls${abortedOther ? ` (+ up to ${abortedOther} aborted before the vendor)` : ""}`);
    }
    if (new Set(audit.calls.map((c) => c.id)).size !== audit.calls.length) fail(4, n, "an audit row id appears twice");
    if (audit.calls.reduce((sum, c) => sum + c.count, 0) !== audit.count) fail(4, n, "the rows' counts do not add up to the totals");
    if (micros(audit.total_usd) !== spent && days.size <= 1) {
      fail(4, n, `audit total_usd $${audit.total_usd} != spent $${state.spent_usd}`);
    }

    for (const o of mine) {
      const res = results.get(o.id);
      const forwarded = byOp.get(o.id) ?? [];
      if (res.timedOut) fail(0, n, `#${o.id}: no answer within the client's 10 s`);
      // 5. A refusal by Keybrake sends nothing.
      if (res.status >= 400 && res.status < 500 && res.error && forwarded.length > 0) {
        fail(5, n, `#${o.id}: refused ${res.status} ${res.error}, yet reached the vendor ${forwarded.length} time(s)`);
      }
      // 6. Once the vendor has seen an Idempotency-Key, another body under it is refused. The
      //    first request under the key arrived before this call was sent, so Keybrake knew.
      if (!res.idem) continue;
      const body = `amount=${res.amount}&currency=${res.currency}`;
      const first = requests
        .filter((r) => r.headers["idempotency-key"] === res.idem)
        .reduce((a, r) => (a === null || r.at < a.at ? r : a), null);
      if (!first || first.body === body || first.at >= res.sentAt) continue;
      if (forwarded.length > 0) fail(6, n, `#${o.id}: ${body} forwarded under ${res.idem}, first used with ${first.body}`);
      const refusedOk =
        (res.status === 422 && res.error === "idempotency_mismatch") ||
        (res.status === 409 && res.error === "idempotency_in_flight") ||
        (res.status === 401 && (res.error === "key_revoked" || res.error === "key_expired"));
      if (res.status !== null && !refusedOk) {
        fail(6, n, `#${o.id}: ${body} under ${res.idem} (first used with ${first.body}) answered ${res.status} ${res.error ?? ""}`.trim());
      }
    }
  }
  return violations;
}
