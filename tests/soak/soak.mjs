// `make soak SEED=… OPS=…`: a randomized end-to-end check in the spirit of Jepsen's bank test.
// Drives a seeded log of concurrent charges, retries (same and mutated bodies), vendor faults,
// client aborts, revokes and expiries through the built Worker, waits for quiescence, and
// judges Keybrake's ledger and audit trail against what the Stripe fake recorded.
//
// On a failure it prints the seed and shrinks the op log: it re-runs subsets of the failing
// log on fresh instances (delta debugging, bounded in time) and prints the smallest log that
// still breaks the same invariant. Exits non-zero on any violation.
//
//   node tests/soak/soak.mjs --seed 1 --ops 2000 [--shrink-seconds 60]   (per failed invariant)
import { parseArgs } from "node:util";
import { generate, describe } from "./ops.mjs";
import { startInstance } from "./instance.mjs";
import { execute } from "./run.mjs";
import { quiesce, check, INVARIANTS } from "./check.mjs";

const { values } = parseArgs({
  options: {
    seed: { type: "string", default: process.env.SEED ?? "1" },
    ops: { type: "string", default: process.env.OPS ?? "2000" },
    "shrink-seconds": { type: "string", default: process.env.SHRINK_SECONDS ?? "60" },
  },
});
const seed = Number(values.seed);
const count = Number(values.ops);
const shrinkSeconds = Number(values["shrink-seconds"]);
if (!Number.isInteger(seed) || !Number.isInteger(count) || count < 10) {
  console.error("usage: soak.mjs --seed <integer> --ops <integer >= 10>");
  process.exit(2);
}

/** Runs `ops` on a fresh instance; returns the violations (quiescence failure included). */
async function trial(ops) {
  const kb = await startInstance();
  const inflight = new Set();
  let watchdog;
  try {
    // Every call is bounded by the client's timeout; this bounds the run as a whole.
    const bound = 60_000 + ops.length * 100;
    const stuck = new Promise((_, reject) => {
      watchdog = setTimeout(() => reject(new Error(`ops still running after ${bound / 1000} s: #${[...inflight].join(", #")}`)), bound);
    });
    const trace = await Promise.race([execute(kb, ops, { deadline: Date.now() + bound, inflight }), stuck]);
    clearTimeout(watchdog);
    const final = await quiesce(kb, trace.keys);
    if (final === null) return [{ inv: 0, key: null, msg: "keys never settled within 30 s" }];
    return check(ops, trace, final, kb.stripe.requests, kb.stripe.charges);
  } catch (e) {
    return [{ inv: 0, key: null, msg: e.message }];
  } finally {
    clearTimeout(watchdog);
    await kb.close();
  }
}

/** The ops a subset needs to mean the same thing: each key's issue (a child's parent's too), each retry's first call. */
function closure(all, chosen) {
  const ids = new Set(chosen.map((o) => o.id));
  for (const o of chosen) if (o.kind === "retry") ids.add(o.of);
  // Each key's issue, and a child's parent's issue too, up the chain.
  for (let added = true; added; ) {
    added = false;
    const keysNeeded = new Set([...ids].flatMap((id) => [all[id].key, all[id].parent].filter((k) => k !== undefined)));
    for (const o of all) {
      if (o.kind === "issue" && keysNeeded.has(o.key) && !ids.has(o.id)) [added] = [true, ids.add(o.id)];
    }
  }
  return all.filter((o) => ids.has(o.id));
}

/**
 * ddmin over the failing log, keyed on the invariant that failed. Starts from the ops of one
 * key that broke it (the smallest of up to three that reproduces), then removes chunks while
 * the failure stays. Interleavings differ run to run, so a subset counts as failing if either
 * of two runs fails.
 */
async function shrink(all, inv, badKeys, budgetMs) {
  const deadline = Date.now() + budgetMs;
  let seen = null; // the violations of the last failing subset, printed with it
  const fails = async (ops) => {
    for (let i = 0; i < 2 && Date.now() < deadline; i++) {
      const found = (await trial(ops)).filter((v) => v.inv === inv);
      if (found.length > 0) return (seen = found);
    }
    return false;
  };
  let current = all;
  const perKey = [...badKeys]
    .filter((k) => k !== null)
    .map((k) => closure(all, all.filter((o) => o.key === k)))
    .sort((a, b) => a.length - b.length);
  for (const ofKey of perKey.slice(0, 3)) {
    if (await fails(ofKey)) {
      current = ofKey;
      break;
    }
  }
  let parts = 2;
  while (current.length > 1 && Date.now() < deadline) {
    const size = Math.ceil(current.length / parts);
    let reduced = false;
    for (let i = 0; i < current.length && Date.now() < deadline; i += size) {
      const rest = closure(all, [...current.slice(0, i), ...current.slice(i + size)]);
      if (rest.length < current.length && (await fails(rest))) {
        current = rest;
        parts = Math.max(parts - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (size <= 1) break;
      parts = Math.min(parts * 2, current.length);
    }
  }
  return { ops: current, minimal: Date.now() < deadline, seen };
}

const started = Date.now();
const ops = generate(seed, count);
const violations = await trial(ops);
const seconds = ((Date.now() - started) / 1000).toFixed(1);
const failedInvs = new Set(violations.map((v) => v.inv));
const judged = Object.keys(INVARIANTS).map(Number).sort((a, b) => a - b);
for (const inv of judged) {
  console.log(`${failedInvs.has(inv) ? "FAIL" : "ok  "} ${inv}. ${INVARIANTS[inv]}`);
  for (const v of violations.filter((v) => v.inv === inv).slice(0, 10)) {
    console.log(`       ${v.key === null ? "" : `k${v.key}: `}${v.msg}`);
  }
  const more = violations.filter((v) => v.inv === inv).length - 10;
  if (more > 0) console.log(`       … and ${more} more`);
}
console.log(`seed ${seed}, ${count} ops, ${seconds} s`);
console.log(`${judged.length - failedInvs.size} passed, ${failedInvs.size} failed`);
if (failedInvs.size === 0) process.exit(0);

console.log(`\nreproduce: make soak SEED=${seed} OPS=${count}`);
for (const inv of [...failedInvs].sort()) {
  const badKeys = new Set(violations.filter((v) => v.inv === inv).map((v) => v.key));
  const { ops: small, minimal, seen } = await shrink(ops, inv, badKeys, shrinkSeconds * 1000);
  console.log(`\ninvariant ${inv} (${INVARIANTS[inv]}): ${small.length} of ${count} ops${minimal ? "" : " (shrinking ran out of time)"}`);
  for (const op of small.slice(0, 80)) console.log(`  ${describe(op)}`);
  if (small.length > 80) console.log(`  … ${small.length - 80} more ops (a larger --shrink-seconds shrinks further)`);
  for (const v of (seen ?? violations.filter((v) => v.inv === inv)).slice(0, 3)) {
    console.log(`  → ${v.key === null ? "" : `k${v.key}: `}${v.msg}`);
  }
}
process.exit(1);
