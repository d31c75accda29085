// The operation log: generated from a seed alone, so a seed names the same log on every
// machine. Execution is concurrent and its interleaving is not reproducible; the log is.

/** mulberry32: small, fast, and the same sequence everywhere. */
export function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    chance: (p) => next() < p,
    pick: (list) => list[Math.floor(next() * list.length)],
  };
}

/**
 * Vendor faults, each aimed at one call's first arrival at the fake. `slow` runs past the
 * upstream timeout, so the Worker gives up while the fake is still running the call and a
 * retry meanwhile gets the fake's 409. `then429` is a 500 whose first alarm replay is rate
 * limited.
 */
export const FAULTS = ["500", "drop", "reset", "hang", "429", "402", "slow", "then429", "quick"];

/**
 * Op kinds:
 * - `issue`: a vault key `k<n>` with `cap` dollars and `ttl` seconds; or, with `parent`, a child
 *   key minted with the parent's vault key, `cap` at most the parent's, expiring with it;
 * - `charge`: POST /v1/payment_intents on key `k`, `amount` cents, with a client
 *   Idempotency-Key (`idem`) or none, an optional vendor `fault`, an optional client abort
 *   after `abort` ms;
 * - `retry`: the same call as op `of` under its Idempotency-Key (the client's, or the one
 *   Keybrake answered with), after `of` has ended, or at once if `concurrent`; `amount` or
 *   `currency` set means a mutated body;
 * - `revoke`: DELETE /vault/keys/{id}.
 * Every op also has `at`: when it starts, in ms from the start of the run. A subset of the
 * log keeps these times (shifted to start at 0), so shrinking keeps the ops' timing.
 */
export function generate(seed, count) {
  const r = prng(seed);
  const ops = [];
  const keys = []; // { n, revoked, cap, depth }
  const charges = []; // indices of charge ops, for retries
  const keyCount = Math.max(3, Math.ceil(count / 40));
  let clock = 0;
  const push = (op) => {
    op.id = ops.length;
    clock += r.int(0, 12);
    op.at = clock;
    ops.push(op);
    return op;
  };
  const issue = () => {
    const n = keys.length;
    // Some keys are children of a recent live key (nesting at most 4 deep): their spend counts
    // against every ancestor's cap, and a revoke of an ancestor stops them.
    const parents = keys.slice(-4).filter((k) => !k.revoked && k.depth < 4);
    if (parents.length > 0 && r.chance(0.4)) {
      const parent = r.pick(parents);
      const cap = r.int(1, parent.cap);
      push({ kind: "issue", key: n, cap, parent: parent.n });
      keys.push({ n, revoked: false, cap, depth: parent.depth + 1 });
      return;
    }
    const short = r.chance(0.3);
    const cap = r.int(2, 20);
    push({ kind: "issue", key: n, cap, ttl: short ? r.int(3, 8) : 7200 });
    keys.push({ n, revoked: false, cap, depth: 1 });
  };
  // A client that gives up mostly does so on a slow call: abort those often, while the
  // Worker still waits for the vendor.
  const abortMaybe = (op) => {
    if (["hang", "slow", "quick"].includes(op.fault) && r.chance(0.3)) op.abort = r.int(20, 380);
    else if (r.chance(0.05)) op.abort = r.int(5, 600);
  };
  for (let i = 0; i < 3; i++) issue();
  while (ops.length < count) {
    // Keys come in over the run, so each is busy for a while and then left alone.
    if (keys.length < keyCount && r.chance(keyCount / count)) issue();
    const live = keys.slice(-4).filter((k) => !k.revoked);
    const roll = r.next();
    if (roll < 0.012 && live.length > 1) {
      const k = r.pick(live);
      k.revoked = true;
      push({ kind: "revoke", key: k.n });
    } else if (roll < 0.02) {
      clock += r.int(100, 900); // a lull: expiries come, alarms run
    } else if (roll < 0.3 && charges.length > 0) {
      // Retries go to recent calls, as a client's would.
      const of = ops[charges[Math.max(0, charges.length - r.int(1, 8))]];
      const op = { kind: "retry", of: of.id, key: of.key, concurrent: of.idem !== null && r.chance(0.25) };
      const mutate = r.next();
      if (mutate < 0.15) op.amount = of.amount + 25 * r.int(1, 8);
      else if (mutate < 0.22) op.currency = "eur";
      if (r.chance(0.15)) op.fault = r.pick(FAULTS);
      abortMaybe(op);
      push(op);
    } else if (live.length > 0) {
      const op = {
        kind: "charge",
        key: r.pick(live).n,
        amount: 25 * r.int(1, 16),
        idem: r.chance(0.6) ? `s${seed}-c${ops.length}` : null,
      };
      if (r.chance(0.2)) op.fault = r.pick(FAULTS);
      abortMaybe(op);
      charges.push(push(op).id);
    }
  }
  return ops;
}

/** One readable line per op, as printed for a failing run. */
export function describe(op) {
  const extra = [
    op.fault && `fault=${op.fault}`,
    op.abort !== undefined && `abort-after=${op.abort}ms`,
  ].filter(Boolean);
  const tail = extra.length ? ` ${extra.join(" ")}` : "";
  const when = `@${op.at}ms`;
  switch (op.kind) {
    case "issue":
      if (op.parent !== undefined) return `${when} #${op.id} mint k${op.key} as a child of k${op.parent} cap=$${op.cap}${tail}`;
      return `${when} #${op.id} issue k${op.key} cap=$${op.cap} expires_in=${op.ttl}s${tail}`;
    case "charge":
      return `${when} #${op.id} charge k${op.key} amount=${op.amount} ${op.idem ? `idempotency-key=${op.idem}` : "no-idempotency-key"}${tail}`;
    case "retry": {
      const body = op.amount !== undefined ? `amount=${op.amount}` : op.currency ? `currency=${op.currency}` : "same body";
      return `${when} #${op.id} retry #${op.of} k${op.key} ${body}${op.concurrent ? " concurrently" : ""}${tail}`;
    }
    case "revoke":
      return `${when} #${op.id} revoke k${op.key}${tail}`;
  }
}
