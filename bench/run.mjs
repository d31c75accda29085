// `make bench`: runs the release Worker in workerd through Miniflare, as the end-to-end tests do,
// against a vendor fake in a child process, and measures what the proxy adds. Prints one table
// and writes the same figures to bench/results.json.
//
// `make bench-smoke` (--smoke) runs the same code with tiny counts in a few seconds. It asserts
// correctness only (the exact cap, every answer, every figure a finite number), never speed,
// and writes bench/results.smoke.json. Both end with a line "N passed, M failed" and exit
// non-zero if any check failed.
//
// Only loopback is used. Every loop is bounded in count and time, and a watchdog ends the run,
// disposing workerd and the fake, if it ever overstays.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Log, LogLevel, Miniflare } from "miniflare";
import { migrationStatements, workerOptions } from "../tests/e2e/harness.mjs";
import { keepAliveAgent, sleep, timedRequest } from "./client.mjs";
import { cpuMeter, descendantsNamed } from "./cpu.mjs";
import * as phases from "./phases.mjs";
import { Checks, renderTable, tableRows } from "./report.mjs";
import { round } from "./stats.mjs";
import { startVendorFake } from "./vendor-fake.mjs";

const ROOT = new URL("..", import.meta.url).pathname;
const SMOKE = process.argv.includes("--smoke");
const ADMIN_KEY = "kb_admin_bench_6a1f0c3e9d2b4a8f7e5c";
const STRIPE_SECRET = "sk_test_keybrake_bench_51HfakeSecretValue";

const FULL = {
  warmup: { calls: 300, queries: 100, issues: 30 },
  latency: { warmup: 200, calls: 2_000 },
  burst: { calls: 1_000, admits: 600, amountCents: 100 },
  childBurst: { children: 100 },
  manyKeys: { calls: 1_000, keys: 100, amountCents: 100 },
  growth: {
    warmup: 10,
    samples: 100,
    auditRows: [1_000, 10_000, 100_000],
    labelRows: [1_000, 1_000_000],
    keys: [10, 10_000],
    idempotencyKeys: [10, 10_000],
    historyConcurrency: 16,
  },
  // Seconds. A phase stops starting new calls at its budget; the whole run at runSeconds.
  flood: { calls: 10_000, concurrency: 50 },
  cold: { keys: 20 },
  budgets: {
    warmup: 30, latency: 60, manyKeysSetup: 30, auditDrain: 30, auditGrowth: 240, issueGrowth: 30, idempotencyGrowth: 60,
    flood: 90,
  },
  runSeconds: 600,
  // A full run that was cut short did not measure what it claims: that fails a check.
  strictCounts: true,
  out: "results.json",
};
const SMOKE_CFG = {
  warmup: { calls: 20, queries: 5, issues: 3 },
  latency: { warmup: 10, calls: 50 },
  burst: { calls: 100, admits: 60, amountCents: 100 },
  childBurst: { children: 10 },
  manyKeys: { calls: 100, keys: 10, amountCents: 100 },
  growth: {
    warmup: 2,
    samples: 10,
    auditRows: [100, 1_000],
    labelRows: [100, 1_000],
    keys: [10, 100],
    idempotencyKeys: [10, 100],
    historyConcurrency: 8,
  },
  // Generous: a slow CI machine may take its time, and the smoke run never judges speed.
  flood: { calls: 2_000, concurrency: 50 },
  cold: { keys: 3 },
  budgets: {
    warmup: 60, latency: 60, manyKeysSetup: 60, auditDrain: 60, auditGrowth: 60, issueGrowth: 60, idempotencyGrowth: 60,
    flood: 60,
  },
  runSeconds: 300,
  strictCounts: false,
  out: "results.smoke.json",
};
// Reported against in the table, never failed on: speed depends on the machine. Speed targets
// are ratios against the floor (a bare pass-through Worker, bench/floor/) measured in the same
// run, or against another figure of the same run: absolute times move with what else the
// machine is doing, ratios much less.
const TARGETS = {
  cpu_per_call_over_floor: 3, // at most: workerd CPU per guarded call / per floor call
  one_key_burst_over_floor: 0.5, // at least: one-key calls/s / the floor's calls/s
  many_keys_over_one_key: 1, // at least: 100-key calls/s / one-key calls/s
  added_p99_over_added_p50: 3, // at most: (guarded - floor) p99 / (guarded - floor) p50
  wasm_gzip_bytes: 400_000,
  growth_ratio: 2,
};

const cfg = SMOKE ? SMOKE_CFG : FULL;
const runStart = performance.now();
const runEnd = runStart + cfg.runSeconds * 1000;

// What was started, to undo newest first (Miniflare before the fake it calls). No step may
// hold up the rest for long.
const cleanups = [];
async function cleanup() {
  while (cleanups.length) {
    const step = cleanups.pop();
    let timer;
    const limit = new Promise((resolve) => (timer = setTimeout(resolve, 10_000)));
    await Promise.race([step().catch((e) => console.error(`cleanup: ${e.message}`)), limit]);
    clearTimeout(timer);
  }
}

const watchdog = setTimeout(async () => {
  console.error(`bench: still running after ${cfg.runSeconds + 30} s; stopping`);
  await cleanup();
  process.exit(2);
}, (cfg.runSeconds + 30) * 1000);
watchdog.unref();
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, async () => {
    await cleanup();
    process.exit(130);
  });
}


/** Starts the Worker and times its cold start: from new Miniflare(...) to the first answer. */
async function startKeybrake(fake) {
  const persist = mkdtempSync(join(tmpdir(), "keybrake-bench-"));
  cleanups.push(async () => rmSync(persist, { recursive: true, force: true }));
  const started = performance.now();
  const options = {
    ...workerOptions(persist),
    bindings: {
      KEYBRAKE_API_KEY: ADMIN_KEY,
      STRIPE_SECRET_KEY: STRIPE_SECRET,
      STRIPE_API_BASE: fake.url,
      UPSTREAM_TIMEOUT_MS: "10000",
    },
    log: new Log(LogLevel.WARN),
  };
  const mf = new Miniflare(options);
  cleanups.push(() => mf.dispose());
  const url = (await mf.ready).toString().replace(/\/$/, "");
  // An unauthenticated admin call: answered (401) by the Worker itself, before any storage.
  const agent = keepAliveAgent(1);
  const first = await timedRequest(url, { agent, method: "POST", path: "/vault/keys" });
  const coldStartMs = performance.now() - started;
  agent.destroy();
  if (first.status !== 401) throw new Error(`the first call answered ${first.status}, not 401: ${first.body}`);

  const db = await mf.getD1Database("DB");
  for (const statement of migrationStatements()) await db.prepare(statement).run();
  /** Restarts workerd on the same storage: every Durable Object is evicted. */
  async function restart() {
    await mf.setOptions(options);
    return { url: (await mf.ready).toString().replace(/\/$/, ""), db: await mf.getD1Database("DB") };
  }
  return { url, db, coldStartMs, restart };
}

/**
 * Starts the floor (bench/floor/: a bare pass-through Worker, no Durable Object, no D1) in its
 * own workerd, the same version as Keybrake's, forwarding to the same fake with the same secret.
 */
async function startFloor(fake) {
  const { compatibilityDate, host, cf } = workerOptions(ROOT);
  const started = performance.now();
  const mf = new Miniflare({
    modules: true,
    scriptPath: join(ROOT, "bench/floor/build/index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate,
    bindings: { STRIPE_SECRET_KEY: STRIPE_SECRET, STRIPE_API_BASE: fake.url },
    host,
    port: 0,
    cf,
    log: new Log(LogLevel.WARN),
  });
  cleanups.push(() => mf.dispose());
  const url = (await mf.ready).toString().replace(/\/$/, "");
  const agent = keepAliveAgent(1);
  const first = await timedRequest(url, { agent, method: "GET", path: "/v1/balance" });
  const coldStartMs = performance.now() - started;
  agent.destroy();
  if (first.status !== 404) throw new Error(`the floor's first call answered ${first.status}, not the fake's 404: ${first.body}`);
  return { url, coldStartMs };
}

function makeContext(kb, floor, workerds, fake, checks) {
  const adminHeaders = { authorization: `Bearer ${ADMIN_KEY}` };
  const adminAgent = keepAliveAgent(8);
  cleanups.push(async () => adminAgent.destroy());

  async function admin(method, path, body) {
    const headers = body === undefined ? adminHeaders : { ...adminHeaders, "content-type": "application/json" };
    const res = await timedRequest(kb.url, {
      agent: adminAgent,
      method,
      path,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    try {
      res.json = JSON.parse(res.body);
    } catch {
      res.json = undefined;
    }
    return res;
  }

  /** Polls `predicate` every 100 ms until it holds or `seconds` pass; says whether it held. */
  async function waitFor(predicate, seconds) {
    const until = Math.min(performance.now() + seconds * 1000, runEnd);
    for (;;) {
      if (await predicate()) return true;
      if (performance.now() > until) return false;
      await sleep(100);
    }
  }

  const meter = cpuMeter({ workerd: workerds.guard, workerd_floor: workerds.floor, vendor_fake: fake.pid });

  /**
   * Waits (at most 10 s) until the audit table stops growing: the objects' outboxes have
   * flushed, so the next phase does not share the CPU with the last one's audit writes.
   */
  async function quiesce() {
    let last = -1;
    let stillFor = 0; // polls in a row without a new row; an outbox flushes 100 ms after a write
    await waitFor(async () => {
      const { n } = await kb.db.prepare("SELECT COUNT(*) AS n FROM audit").first();
      stillFor = n === last ? stillFor + 1 : 0;
      last = n;
      return stillFor >= 3;
    }, 10);
  }

  return {
    cfg,
    checks,
    url: kb.url,
    db: kb.db,
    floor,
    fake,
    /** Restarts Keybrake's workerd (the CPU meter no longer applies after it). */
    async restart() {
      const { url, db } = await kb.restart();
      Object.assign(kb, { url, db });
      this.url = url;
      this.db = db;
      this.cpu = undefined;
    },
    secret: STRIPE_SECRET,
    adminHeaders,
    admin,
    waitFor,
    quiesce,
    cpu: meter.available ? meter : undefined,
    /** A performance.now() deadline `seconds` from now, never past the run's own end. */
    deadline: (seconds) => Math.min(performance.now() + seconds * 1000, runEnd),
    async issueKey(overrides) {
      const res = await admin("POST", "/vault/keys", {
        vendor: "stripe",
        daily_usd_cap: 300,
        allowed_endpoints: ["POST /v1/payment_intents"],
        expires_in: "2h",
        ...overrides,
      });
      if (res.status !== 201) throw new Error(`issuing a key answered ${res.status}: ${res.body}`);
      return res.json;
    },
    /** The audit page of `label` once `predicate` holds, or the last page seen. */
    async auditUntil(label, predicate, seconds) {
      let page;
      await waitFor(async () => {
        const res = await admin("GET", `/vault/audit?agent_run_label=${encodeURIComponent(label)}`);
        if (res.status === 200) page = res.json;
        return page !== undefined && predicate(page);
      }, seconds);
      return page;
    },
  };
}

/** The commit measured, marked +dirty when tracked files differ from it. */
function revision() {
  const git = (...args) =>
    execFileSync("git", args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  try {
    const commit = git("rev-parse", "--short", "HEAD");
    return git("status", "--porcelain", "--untracked-files=no") === "" ? commit : `${commit}+dirty`;
  } catch {
    return "unknown";
  }
}

function writeResults(results) {
  // Written whole, then renamed: a reader never sees half a file.
  const path = join(ROOT, "bench", cfg.out);
  writeFileSync(`${path}.tmp`, `${JSON.stringify(results, null, 2)}\n`);
  renameSync(`${path}.tmp`, path);
  return path;
}

async function main() {
  const checks = new Checks();
  const fake = await startVendorFake();
  cleanups.push(() => fake.stop());
  const kb = await startKeybrake(fake);
  const [guardWorkerd] = descendantsNamed(process.pid, "workerd");
  const floor = await startFloor(fake);
  const floorWorkerd = descendantsNamed(process.pid, "workerd").find((pid) => pid !== guardWorkerd);
  const ctx = makeContext(kb, floor, { guard: guardWorkerd, floor: floorWorkerd }, fake, checks);

  const step = async (name, run) => {
    const t = performance.now();
    process.stderr.write(`bench: ${name}... `);
    const out = await run();
    process.stderr.write(`${((performance.now() - t) / 1000).toFixed(1)} s\n`);
    return out;
  };
  // Growth of the audit query and of key issue first, while the only audit rows and keys in
  // D1 are the seeded ones; the proxied phases after them add rows of their own. Each phase
  // after a load starts once the audit writes behind it have settled.
  await step("warm-up", () => phases.warmUp(ctx));
  const audit_query = await step("growth: audit query", () => phases.auditQueryGrowth(ctx));
  const audit_summary = await step("growth: audit summary", () => phases.auditSummaryGrowth(ctx));
  const issue_key = await step("growth: key issue", () => phases.issueKeyGrowth(ctx));
  await ctx.quiesce();
  const latency = await step("latency, guarded and floor", () => phases.latency(ctx));
  const floor_burst = await step("floor burst", () => phases.floorBurst(ctx));
  await ctx.quiesce();
  const burst = await step("same-key burst", () => phases.sameKeyBurst(ctx));
  await ctx.quiesce();
  const child_burst = await step("child-key burst", () => phases.childBurst(ctx));
  await ctx.quiesce();
  const open_burst = await step("one key, every call forwarded", () => phases.oneKeyOpenBurst(ctx));
  await ctx.quiesce();
  const many_keys = await step("many keys", () => phases.manyKeys(ctx));
  await ctx.quiesce();
  const idempotency = await step("growth: idempotency keys", () => phases.idempotencyGrowth(ctx));
  await ctx.quiesce();
  const flood = await step("refused-call flood", () => phases.deniedFlood(ctx));
  await ctx.quiesce();
  const cold = await step("cold paths", () => phases.coldPaths(ctx));
  const size = {
    ...phases.wasmSize(join(ROOT, "build/index_bg.wasm")),
    floor_wasm_gzip_bytes: phases.wasmSize(join(ROOT, "bench/floor/build/index_bg.wasm")).wasm_gzip_bytes,
    cold_start_ms: round(kb.coldStartMs),
    floor_cold_start_ms: round(floor.coldStartMs),
  };

  const ratios = phases.ratios({ latency, floor_burst, burst, open_burst, many_keys });
  const figures = {
    ratios,
    latency,
    floor_burst,
    burst,
    child_burst,
    open_burst,
    many_keys,
    cold,
    growth: { audit_query, audit_summary, issue_key, idempotency },
    flood,
    size,
  };
  for (const [name, value] of Object.entries(figures)) checks.finite(name, value);

  const meta = {
    mode: SMOKE ? "smoke" : "full",
    date: new Date().toISOString(),
    revision: revision(),
    // The binary measured: the working tree may have moved on since it was built.
    wasm_sha256: createHash("sha256").update(readFileSync(join(ROOT, "build/index_bg.wasm"))).digest("hex"),
    node: process.version,
    cpus: cpus().length,
    cpu_model: cpus()[0]?.model ?? "unknown",
    miniflare: JSON.parse(readFileSync(join(ROOT, "node_modules/miniflare/package.json"), "utf8")).version,
    run_seconds: round((performance.now() - runStart) / 1000, 1),
  };
  const results = {
    meta,
    // Absolute figures (milliseconds, calls/s) are this machine's, in this run; the ratios are
    // the figures to compare across runs and machines.
    note: "absolute figures are this machine's, from this run; compare ratios",
    targets: TARGETS,
    ...figures,
    checks: checks.summary(),
  };
  const path = writeResults(results);

  console.log(
    `\nKeybrake bench (${meta.mode}): release build in workerd via Miniflare ${meta.miniflare}, ` +
      `${meta.cpus} CPUs, Node ${meta.node}, revision ${meta.revision}`,
  );
  console.log(renderTable(["section", "measurement", "value", "target", ""], tableRows(results, { judgeSpeed: !SMOKE })));
  console.log(`\nwritten to ${path.slice(ROOT.length)} after ${meta.run_seconds} s`);
  for (const c of checks.list.filter((c) => !c.ok)) console.log(`FAILED: ${c.name} (${c.detail})`);
  console.log(`${checks.passed} passed, ${checks.failed} failed`);
  return checks.failed === 0 ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (e) {
  console.error(`bench failed: ${e.stack ?? e}`);
  console.log("0 passed, 1 failed");
} finally {
  await cleanup();
}
process.exit(code);
