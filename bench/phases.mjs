// The measurements. Each takes the bench context (see run.mjs), records correctness checks,
// and returns plain figures for results.json. Timing is reported, never asserted.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { gzipSync } from "node:zlib";
import { boundedPool, keepAliveAgent, sleep, timedRequest } from "./client.mjs";
import { auditLabel, keysLabel, ROWS_PER_LABEL, seedAuditTo, seedKeysTo, seedLabelTo } from "./seed.mjs";
import { round, rounded, summarize } from "./stats.mjs";

const PAYMENT_INTENTS = "/v1/payment_intents";
// Calls sent straight to the fake carry their own token, so the fake's count of calls bearing
// the real secret is exactly what the proxy forwarded.
const DIRECT_TOKEN = "sk_test_bench_direct_0000000000000000";

/** A request promise that never rejects: a failure becomes `{ status: 0, error }`. */
const attempt = (promise) => promise.catch((e) => ({ status: 0, error: e.message, ms: NaN, headers: {}, body: "" }));

const formHeaders = (token, extra = {}) => ({
  authorization: `Bearer ${token}`,
  "content-type": "application/x-www-form-urlencoded",
  ...extra,
});

/** A POST /v1/payment_intents, timed. */
const paymentIntent = (baseUrl, agent, token, body, extraHeaders) =>
  timedRequest(baseUrl, { agent, method: "POST", path: PAYMENT_INTENTS, headers: formHeaders(token, extraHeaders), body });

/** Counts answers by status, for check details. */
function statusTally(results) {
  const tally = {};
  for (const r of results) tally[r.status] = (tally[r.status] ?? 0) + 1;
  const failed = results.find((r) => r.status === 0);
  return JSON.stringify(tally) + (failed ? `, first network error: ${failed.error}` : "");
}

/** Latency summary of every call that got an answer. */
const answeredLatency = (results) => rounded(summarize(results.filter((r) => r.status > 0).map((r) => r.ms)));

/**
 * Opens `n` keep-alive connections on `agent` with cheap calls that carry no vault key (401
 * before any Durable Object; admin calls would count against the admin lockout), so a burst
 * measures the proxy rather than hundreds of TCP handshakes queuing in a listen backlog.
 */
async function openConnections(ctx, agent, n, expected = 401) {
  const answers = await Promise.all(
    Array.from({ length: n }, () => attempt(timedRequest(ctx.url, { agent, method: "POST", path: "/v1/payment_intents" }))),
  );
  return answers.filter((a) => a.status === expected).length;
}

/** CPU ms per call of each process over an interval, and how busy workerd kept one core. */
function cpuFigures(cpu, calls, wallMs) {
  if (!cpu) return {};
  const perCall = Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, round(v / calls)]));
  return {
    cpu_ms_per_call: perCall,
    workerd_busy_pct: round((100 * cpu.workerd) / wallMs, 1),
    workerd_floor_busy_pct: round((100 * cpu.workerd_floor) / wallMs, 1),
  };
}

async function forwardedAtFake(ctx) {
  const counts = await ctx.fake.counts();
  return counts.intents[`Bearer ${ctx.secret}`] ?? 0;
}

// ---------------------------------------------------------------------------------------------
// 0. Warm-up, not reported: the first few hundred calls run slower while V8 tiers up the wasm
//    and JavaScript and workerd opens its databases. Measured first, they would inflate the
//    small end of every growth ratio and hide growth. Everything it writes to D1 is removed,
//    so the growth phases still see exactly the rows they seed.

export async function warmUp(ctx) {
  const { cfg, checks } = ctx;
  const { calls, queries, issues } = cfg.warmup;
  const label = "bench/warmup";
  const deadline = ctx.deadline(cfg.budgets.warmup);
  const key = await ctx.issueKey({ daily_usd_cap: 1_000_000, agent_run_label: label });
  const agent = keepAliveAgent(1);
  let forwarded = 0;
  for (let i = 0; i < calls && performance.now() < deadline; i++) {
    const res = await attempt(paymentIntent(ctx.url, agent, key.vault_key, "amount=150&currency=usd"));
    if (res.status === 200) forwarded++;
  }
  agent.destroy();
  const path = `/vault/audit?agent_run_label=${encodeURIComponent(label)}`;
  for (let i = 0; i < queries && performance.now() < deadline; i++) await ctx.admin("GET", path);
  for (let i = 0; i < issues && performance.now() < deadline; i++) await ctx.issueKey({ agent_run_label: label });

  const audit = await ctx.auditUntil(label, (page) => page.count >= forwarded, cfg.budgets.auditDrain);
  await ctx.db.batch([
    ctx.db.prepare("DELETE FROM audit WHERE agent_run_label = ?").bind(label),
    ctx.db.prepare("DELETE FROM vault_keys WHERE agent_run_label = ?").bind(label),
  ]);
  checks.check(
    `warm-up: ${calls} proxied calls answered 200 and their audit rows arrived`,
    forwarded === calls && audit?.count === forwarded,
    `${forwarded} answered 200, ${audit?.count} audit rows`,
  );
}

// ---------------------------------------------------------------------------------------------
// 1. Added latency: the same call through the proxy, through the floor (a bare pass-through
//    Worker in the same workerd version) and straight to the fake, one at a time, in turn.

export async function latency(ctx) {
  const { cfg, checks } = ctx;
  const { warmup, calls } = cfg.latency;
  const key = await ctx.issueKey({ daily_usd_cap: 1_000_000, agent_run_label: "bench/latency" });
  const body = "amount=150&currency=usd";
  const agents = { proxy: keepAliveAgent(1), floor: keepAliveAgent(1), direct: keepAliveAgent(1) };
  const send = {
    proxy: () => paymentIntent(ctx.url, agents.proxy, key.vault_key, body),
    floor: () => paymentIntent(ctx.floor.url, agents.floor, DIRECT_TOKEN, body),
    direct: () => paymentIntent(ctx.fake.url, agents.direct, DIRECT_TOKEN, body),
  };
  // Rotate which side goes first, so none always runs right after another.
  const orders = [
    ["proxy", "floor", "direct"],
    ["floor", "direct", "proxy"],
    ["direct", "proxy", "floor"],
  ];

  const deadline = ctx.deadline(cfg.budgets.latency);
  const samples = { proxy: [], floor: [], direct: [] };
  const failures = { proxy: 0, floor: 0, direct: 0 };
  const started = performance.now();
  ctx.cpu?.start();
  let i = 0;
  for (; i < warmup + calls && performance.now() < deadline; i++) {
    for (const side of orders[i % orders.length]) {
      const res = await attempt(send[side]());
      if (res.status !== 200) failures[side]++;
      else if (i >= warmup) samples[side].push(res.ms);
    }
  }
  // The last calls' audit rows leave the key's outbox 100 ms after them: part of their cost.
  await sleep(400);
  const cpu = ctx.cpu?.stop();
  const wallMs = performance.now() - started;
  for (const agent of Object.values(agents)) agent.destroy();

  const measured = Math.max(0, i - warmup);
  checks.check("latency: every proxied call answered 200", failures.proxy === 0, `${failures.proxy} failed`);
  checks.check("latency: every call through the floor answered 200", failures.floor === 0, `${failures.floor} failed`);
  checks.check("latency: every direct call answered 200", failures.direct === 0, `${failures.direct} failed`);
  if (cfg.strictCounts) {
    checks.check(`latency: all ${calls} calls measured within the time budget`, measured === calls, `${measured} measured`);
  }
  const proxy = summarize(samples.proxy);
  const floor = summarize(samples.floor);
  const direct = summarize(samples.direct);
  const over = (a, b) => ({
    p50: round(a.p50 - b.p50),
    p90: round(a.p90 - b.p90),
    p99: round(a.p99 - b.p99),
    mean: round(a.mean - b.mean),
  });
  return {
    warmup_calls: warmup,
    calls: measured,
    concurrency: 1,
    direct: rounded(direct),
    floor: rounded(floor),
    proxy: rounded(proxy),
    // What the guard adds over the floor: the headline. Over the fake itself, for reference.
    added_over_floor: over(proxy, floor),
    added: over(proxy, direct),
    floor_over_direct: over(floor, direct),
    // Per iteration, that is one call on each side: each workerd serves exactly one of them.
    ...cpuFigures(cpu, i, wallMs),
  };
}

// ---------------------------------------------------------------------------------------------
// 1b. The floor's burst: the same 1,000 calls at once, through the bare pass-through.

export async function floorBurst(ctx) {
  const { cfg, checks } = ctx;
  const { calls, amountCents } = cfg.burst;
  const agent = keepAliveAgent(calls);
  const opened = await openConnections({ url: ctx.floor.url }, agent, calls, 200);
  await ctx.fake.reset();
  const body = `amount=${amountCents}&currency=usd`;
  ctx.cpu?.start();
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: calls }, () => attempt(paymentIntent(ctx.floor.url, agent, DIRECT_TOKEN, body))),
  );
  const wallMs = performance.now() - started;
  const cpu = ctx.cpu?.stop();
  agent.destroy();
  const forwarded = await forwardedAtFake(ctx);
  const ok = results.filter((r) => r.status === 200).length;
  checks.check(`floor burst: all ${calls} calls answered 200`, ok === calls, statusTally(results));
  checks.check(`floor burst: all ${calls} calls reached the vendor once`, forwarded === calls, `${forwarded} at the fake`);
  return {
    calls,
    connections_opened: opened,
    ok,
    forwarded_at_fake: forwarded,
    wall_ms: round(wallMs),
    calls_per_s: round(calls / (wallMs / 1000), 1),
    latency: answeredLatency(results),
    ...cpuFigures(cpu, calls, wallMs),
  };
}

// ---------------------------------------------------------------------------------------------
// 2. Same-key burst: every call at once on one key whose cap admits exactly `admits` of them.

export async function sameKeyBurst(ctx) {
  const { cfg, checks } = ctx;
  const { calls, admits, amountCents } = cfg.burst;
  const capUsd = (admits * amountCents) / 100;
  const label = "bench/burst";
  const key = await ctx.issueKey({ daily_usd_cap: capUsd, agent_run_label: label });
  const agent = keepAliveAgent(calls);
  const opened = await openConnections(ctx, agent, calls);
  await ctx.fake.reset();

  const body = `amount=${amountCents}&currency=usd`;
  ctx.cpu?.start();
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: calls }, () => attempt(paymentIntent(ctx.url, agent, key.vault_key, body))),
  );
  const wallMs = performance.now() - started;
  const cpu = ctx.cpu?.stop();
  agent.destroy();

  const forwarded = await forwardedAtFake(ctx);
  const ok = results.filter((r) => r.status === 200).length;
  const capHit = results.filter((r) => r.status === 429 && r.headers["x-keybrake-cap-hit"] === "true").length;
  const exact = forwarded === admits;
  checks.check(`burst: exactly ${admits} of ${calls} calls reached the vendor`, exact, `${forwarded} counted at the fake`);
  checks.check(
    `burst: ${admits} answered 200 and ${calls - admits} answered 429 with x-keybrake-cap-hit`,
    ok === admits && capHit === calls - admits,
    statusTally(results),
  );

  const state = await ctx.admin("GET", `/vault/keys/${key.key_id}`);
  checks.check(
    `burst: the key's spent_usd equals its $${capUsd} cap, nothing held`,
    state.json?.spent_usd === capUsd && state.json?.reserved_usd === 0,
    state.body,
  );

  // Every call, forwarded or refused, must reach the audit trail. Rows arrive off the request
  // path, so poll (bounded) rather than expect them at once.
  const audit = await ctx.auditUntil(label, (page) => page.count >= calls, cfg.budgets.auditDrain);
  checks.check(
    `burst: audit holds ${calls} rows totalling $${capUsd}`,
    audit?.count === calls && audit?.total_usd === capUsd,
    audit ? `count ${audit.count}, total_usd ${audit.total_usd}` : "no answer",
  );

  return {
    calls,
    cap_usd: capUsd,
    amount_cents: amountCents,
    connections_opened: opened,
    expected_forwarded: admits,
    forwarded_at_fake: forwarded,
    exact,
    ok,
    cap_hit: capHit,
    other: calls - ok - capHit,
    wall_ms: round(wallMs),
    calls_per_s: round(calls / (wallMs / 1000), 1),
    latency: answeredLatency(results),
    ...cpuFigures(cpu, calls, wallMs),
  };
}

// ---------------------------------------------------------------------------------------------
// 3. Many-key throughput: the same load spread evenly over many keys, none near its cap.

/**
 * The same burst spread over child keys: `children` keys minted from one parent whose cap
 * admits exactly `admits` calls, each child able to spend more than its share. Every call
 * checks its own cap and the parent's in the parent's object: exactly `admits` may pass.
 */
export async function childBurst(ctx) {
  const { cfg, checks } = ctx;
  const { calls, admits, amountCents } = cfg.burst;
  const { children: childCount } = cfg.childBurst;
  const capUsd = (admits * amountCents) / 100;
  const childCapUsd = Math.ceil(calls / childCount) * (amountCents / 100);
  const label = "bench/child-burst";
  const parent = await ctx.issueKey({ daily_usd_cap: capUsd, agent_run_label: label });
  const minted = await boundedPool(childCount, 8, ctx.deadline(cfg.budgets.manyKeysSetup), async () => {
    const res = await timedRequest(ctx.url, {
      method: "POST",
      path: `/vault/keys/${parent.key_id}/children`,
      headers: { authorization: `Bearer ${parent.vault_key}`, "content-type": "application/json" },
      body: JSON.stringify({ daily_usd_cap: childCapUsd }),
    });
    if (res.status !== 201) throw new Error(`minting a child answered ${res.status}: ${res.body}`);
    return JSON.parse(res.body);
  });
  checks.check(`child burst: ${childCount} children minted`, minted.done === childCount, `${minted.done} minted`);
  const children = minted.results;

  const agent = keepAliveAgent(calls);
  await openConnections(ctx, agent, calls);
  await ctx.fake.reset();
  const body = `amount=${amountCents}&currency=usd`;
  ctx.cpu?.start();
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: calls }, (_, i) =>
      attempt(paymentIntent(ctx.url, agent, children[i % children.length].vault_key, body)),
    ),
  );
  const wallMs = performance.now() - started;
  const cpu = ctx.cpu?.stop();
  agent.destroy();

  const forwarded = await forwardedAtFake(ctx);
  const ok = results.filter((r) => r.status === 200).length;
  const capHit = results.filter((r) => r.status === 429 && r.headers["x-keybrake-cap-hit"] === "true").length;
  const exact = forwarded === admits;
  checks.check(`child burst: exactly ${admits} of ${calls} calls over ${childCount} children reached the vendor`, exact, `${forwarded} counted at the fake`);
  checks.check(
    `child burst: ${admits} answered 200 and ${calls - admits} answered 429 with x-keybrake-cap-hit`,
    ok === admits && capHit === calls - admits,
    statusTally(results),
  );
  const state = await ctx.admin("GET", `/vault/keys/${parent.key_id}`);
  checks.check(
    `child burst: the parent's children spent its $${capUsd} cap, nothing held`,
    state.json?.descendants_usd === capUsd && state.json?.remaining_usd === 0 && state.json?.reserved_usd === 0,
    state.body,
  );
  // The children carry the parent's label: one audit listing holds every call.
  const audit = await ctx.auditUntil(label, (page) => page.count >= calls, cfg.budgets.auditDrain);
  checks.check(
    `child burst: audit holds ${calls} rows totalling $${capUsd}`,
    audit?.count === calls && audit?.total_usd === capUsd,
    audit ? `count ${audit.count}, total_usd ${audit.total_usd}` : "no answer",
  );
  return {
    calls,
    children: children.length,
    parent_cap_usd: capUsd,
    child_cap_usd: childCapUsd,
    expected_forwarded: admits,
    forwarded_at_fake: forwarded,
    exact,
    ok,
    cap_hit: capHit,
    other: calls - ok - capHit,
    wall_ms: round(wallMs),
    calls_per_s: round(calls / (wallMs / 1000), 1),
    latency: answeredLatency(results),
    ...cpuFigures(cpu, calls, wallMs),
  };
}

/**
 * The many-key burst's work on one key: the same 1,000 calls, all forwarded (the key's cap is
 * far off), so that 100 keys and one key are compared on the same work per call. The capped
 * burst above refuses 400 of its calls, which cost far less than a forwarded one.
 */
export async function oneKeyOpenBurst(ctx) {
  const { cfg, checks } = ctx;
  const { calls, amountCents } = cfg.manyKeys;
  const label = "bench/open-burst";
  const key = await ctx.issueKey({ daily_usd_cap: 1_000_000, agent_run_label: label });
  const agent = keepAliveAgent(calls);
  await openConnections(ctx, agent, calls);
  await ctx.fake.reset();
  const body = `amount=${amountCents}&currency=usd`;
  ctx.cpu?.start();
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: calls }, () => attempt(paymentIntent(ctx.url, agent, key.vault_key, body))),
  );
  const wallMs = performance.now() - started;
  const cpu = ctx.cpu?.stop();
  agent.destroy();

  const forwarded = await forwardedAtFake(ctx);
  const ok = results.filter((r) => r.status === 200).length;
  const spentUsd = (calls * amountCents) / 100;
  checks.check(`one-key open burst: all ${calls} calls answered 200`, ok === calls, statusTally(results));
  checks.check(`one-key open burst: all ${calls} calls reached the vendor once`, forwarded === calls, `${forwarded} at the fake`);
  const state = await ctx.admin("GET", `/vault/keys/${key.key_id}`);
  checks.check(
    `one-key open burst: the key's spent_usd is $${spentUsd}, nothing held`,
    state.json?.spent_usd === spentUsd && state.json?.reserved_usd === 0,
    state.body,
  );
  return {
    calls,
    ok,
    forwarded_at_fake: forwarded,
    wall_ms: round(wallMs),
    calls_per_s: round(calls / (wallMs / 1000), 1),
    latency: answeredLatency(results),
    ...cpuFigures(cpu, calls, wallMs),
  };
}

export async function manyKeys(ctx) {
  const { cfg, checks } = ctx;
  const { calls, keys: keyCount, amountCents } = cfg.manyKeys;
  const issued = await boundedPool(keyCount, 8, ctx.deadline(cfg.budgets.manyKeysSetup), (i) =>
    ctx.issueKey({ daily_usd_cap: 1_000, agent_run_label: `bench/many/${String(i).padStart(4, "0")}` }),
  );
  checks.check(`many keys: ${keyCount} keys issued`, issued.done === keyCount, `${issued.done} issued`);
  const keys = issued.results;

  const agent = keepAliveAgent(calls);
  await openConnections(ctx, agent, calls);
  await ctx.fake.reset();
  const body = `amount=${amountCents}&currency=usd`;
  ctx.cpu?.start();
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: calls }, (_, i) => attempt(paymentIntent(ctx.url, agent, keys[i % keys.length].vault_key, body))),
  );
  const wallMs = performance.now() - started;
  const cpu = ctx.cpu?.stop();
  agent.destroy();

  const forwarded = await forwardedAtFake(ctx);
  const ok = results.filter((r) => r.status === 200).length;
  checks.check(`many keys: all ${calls} calls answered 200`, ok === calls, statusTally(results));
  checks.check(`many keys: all ${calls} calls reached the vendor once`, forwarded === calls, `${forwarded} at the fake`);
  return {
    calls,
    keys: keys.length,
    ok,
    forwarded_at_fake: forwarded,
    wall_ms: round(wallMs),
    calls_per_s: round(calls / (wallMs / 1000), 1),
    latency: answeredLatency(results),
    ...cpuFigures(cpu, calls, wallMs),
  };
}

// ---------------------------------------------------------------------------------------------
// 4. Growth: the same operation timed at a small and a large size of what it might scan.

/** Runs `sample(i)` one at a time, `warmup` untimed runs first; keeps the times `expect` accepts. */
async function timeSamples({ warmup, samples, deadline, sample, expect }) {
  const times = [];
  const bad = [];
  for (let i = 0; i < warmup + samples && performance.now() < deadline; i++) {
    const res = await attempt(sample(i));
    if (!expect(res)) bad.push(`${res.status} ${res.error ?? res.body.slice(0, 120)}`);
    else if (i >= warmup) times.push(res.ms);
  }
  return { times, bad };
}

function point(label, size, times) {
  const s = summarize(times);
  return { label, size, n: s.n, p50: round(s.p50), p90: round(s.p90) };
}

function growthFigures(points) {
  const [first, last] = [points[0], points[points.length - 1]];
  return { points, ratio_p50: round(last.p50 / first.p50, 2), ratio_p90: round(last.p90 / first.p90, 2) };
}

/**
 * GET `path` timed at each size `seed(size)` grows D1 to; `expect(page, size)` judges every
 * answer, and `what(size)` names the check and the point.
 */
async function auditGrowth(ctx, { sizes, seed, path, expect, what }) {
  const { cfg, checks } = ctx;
  const deadline = ctx.deadline(cfg.budgets.auditGrowth);
  const agent = keepAliveAgent(1);
  const points = [];
  for (const size of sizes) {
    const rows = await seed(size, deadline);
    const { times, bad } = await timeSamples({
      ...cfg.growth,
      deadline,
      sample: () => timedRequest(ctx.url, { agent, path, headers: ctx.adminHeaders }),
      expect: (res) => res.status === 200 && expect(JSON.parse(res.body), size),
    });
    checks.check(`growth: ${what(rows)}: every answer as expected`, bad.length === 0 && rows === size, bad[0] ?? `${rows}`);
    points.push(point(what(rows), rows, times));
  }
  agent.destroy();
  return growthFigures(points);
}

/** 4a. GET /vault/audit for one 100-row label as the audit table grows. */
export const auditQueryGrowth = (ctx) =>
  auditGrowth(ctx, {
    sizes: ctx.cfg.growth.auditRows,
    seed: (size, deadline) => seedAuditTo(ctx.db, size, { deadline }),
    path: `/vault/audit?agent_run_label=${encodeURIComponent(auditLabel(0))}`,
    expect: (page) => page.count === ROWS_PER_LABEL && page.calls.length === ROWS_PER_LABEL,
    what: (rows) => `${rows.toLocaleString("en-US")} rows in D1`,
  });

/**
 * 4a'. The summary of one label (count, total, outcomes) and its newest row, as the label itself
 * grows: read from running totals and one index range, it should not grow with the label.
 */
export const auditSummaryGrowth = (ctx) =>
  auditGrowth(ctx, {
    sizes: ctx.cfg.growth.labelRows,
    seed: (size, deadline) => seedLabelTo(ctx.db, "bench/audit/summary", size, { deadline }),
    path: `/vault/audit?agent_run_label=${encodeURIComponent("bench/audit/summary")}&order=desc&limit=1`,
    expect: (page, size) => page.count === size && page.outcomes.settled === size && page.calls.length === 1 && page.has_more,
    what: (rows) => `${rows.toLocaleString("en-US")} calls in the label`,
  });

/**
 * 4d. A flood of refused calls on one key: the D1 rows it leaves after a tenth of the flood
 * and after all of it. Past 100 refusals a day, a key's refusals are counted on one row.
 */
export async function deniedFlood(ctx) {
  const { cfg, checks } = ctx;
  const { calls, concurrency } = cfg.flood;
  const key = await ctx.issueKey({ daily_usd_cap: 1, agent_run_label: "bench/flood" });
  const agent = keepAliveAgent(concurrency);
  const rowsOfKey = async () =>
    (await ctx.db.prepare("SELECT COUNT(*) AS n FROM audit WHERE key_id = ?").bind(key.key_id).first()).n;
  const refuse = () => attempt(paymentIntent(ctx.url, agent, key.vault_key, "amount=100&currency=eur"));
  const rowsAt = [];
  let sent = 0;
  const started = performance.now();
  const deadline = ctx.deadline(cfg.budgets.flood);
  for (const upTo of [calls / 10, calls]) {
    const { results } = await boundedPool(upTo - sent, concurrency, deadline, refuse);
    sent += results.length;
    checks.check(`flood: ${results.length} refused calls answered 422`, results.every((r) => r.status === 422), statusTally(results));
    await ctx.auditUntil("bench/flood", (page) => page.count >= sent, cfg.budgets.auditDrain);
    rowsAt.push({ calls: sent, d1_rows: await rowsOfKey() });
  }
  agent.destroy();
  const [tenth, all] = rowsAt;
  checks.check(
    `flood: ${all.calls} refused calls left the rows ${tenth.calls} did`,
    all.d1_rows === tenth.d1_rows && all.d1_rows <= 101 && (all.calls === calls || !cfg.strictCounts),
    JSON.stringify(rowsAt),
  );
  return { points: rowsAt, ratio: round(all.d1_rows / tenth.d1_rows, 2), calls_per_s: round((1000 * calls) / (performance.now() - started)) };
}

/**
 * 4b. POST /vault/keys as the registry grows. Each issued key's registry row is deleted after
 * its sample (untimed), so the registry holds exactly the stated number of keys throughout.
 */
export async function issueKeyGrowth(ctx) {
  const { cfg, checks } = ctx;
  const deadline = ctx.deadline(cfg.budgets.issueGrowth);
  const agent = keepAliveAgent(1);
  const headers = { ...ctx.adminHeaders, "content-type": "application/json" };
  const body = JSON.stringify({
    vendor: "stripe",
    daily_usd_cap: 300,
    allowed_endpoints: ["POST /v1/payment_intents"],
    expires_in: "2h",
    agent_run_label: keysLabel(0),
  });
  const points = [];
  for (const size of cfg.growth.keys) {
    const rows = await seedKeysTo(ctx.db, size, { deadline });
    const { times, bad } = await timeSamples({
      ...cfg.growth,
      deadline,
      sample: async () => {
        const res = await timedRequest(ctx.url, { agent, method: "POST", path: "/vault/keys", headers, body });
        if (res.status === 201) {
          await ctx.db.prepare("DELETE FROM vault_keys WHERE key_id = ?").bind(JSON.parse(res.body).key_id).run();
        }
        return res;
      },
      expect: (res) => res.status === 201,
    });
    checks.check(
      `growth: every key issued with ${rows} keys existing answered 201`,
      bad.length === 0 && rows === size,
      bad[0] ?? `${rows} keys in D1`,
    );
    points.push(point(`${rows.toLocaleString("en-US")} keys in D1`, rows, times));
  }
  agent.destroy();
  return growthFigures(points);
}

/** 4c. A proxied call on a key that has already sent N distinct Idempotency-Keys. */
export async function idempotencyGrowth(ctx) {
  const { cfg, checks } = ctx;
  const deadline = ctx.deadline(cfg.budgets.idempotencyGrowth);
  const body = "amount=100&currency=usd";
  const points = [];
  for (const size of cfg.growth.idempotencyKeys) {
    const key = await ctx.issueKey({ daily_usd_cap: 1_000_000, agent_run_label: `bench/idempotency/${size}` });
    let n = 0;
    const nextIdempotencyKey = () => ({ "idempotency-key": `bench-${size}-${String(n++).padStart(6, "0")}` });
    const call = (agent) => paymentIntent(ctx.url, agent, key.vault_key, body, nextIdempotencyKey());

    // The history: `size` calls with distinct keys, several in flight to keep this quick.
    const lanes = cfg.growth.historyConcurrency;
    const historyAgent = keepAliveAgent(lanes);
    const history = await boundedPool(size, lanes, deadline, () => attempt(call(historyAgent)));
    historyAgent.destroy();
    const sent = history.results.filter((r) => r.status === 200).length;
    checks.check(
      `growth: ${size} calls with distinct idempotency keys all answered 200`,
      sent === size,
      statusTally(history.results),
    );

    // Let the key's audit outbox drain first, so its flush to D1 does not share the samples' CPU.
    const drained = await ctx.waitFor(async () => {
      const state = await ctx.admin("GET", `/vault/keys/${key.key_id}`);
      return state.json?.audit_pending === 0;
    }, cfg.budgets.auditDrain);
    await ctx.quiesce();

    const agent = keepAliveAgent(1);
    const { times, bad } = await timeSamples({
      ...cfg.growth,
      deadline,
      sample: () => call(agent),
      expect: (res) => res.status === 200,
    });
    agent.destroy();
    checks.check(`growth: every call after ${sent} idempotency keys answered 200`, bad.length === 0, bad[0] ?? "");
    const label = `${sent.toLocaleString("en-US")} idempotency keys before`;
    points.push({ ...point(label, sent, times), outbox_drained: drained });
  }
  return growthFigures(points);
}

// ---------------------------------------------------------------------------------------------
// 5. Size: the wasm as it ships (Cloudflare limits and transfers the compressed Worker).

export function wasmSize(wasmPath) {
  const wasm = readFileSync(wasmPath);
  return { wasm_bytes: wasm.length, wasm_gzip_bytes: gzipSync(wasm, { level: 9 }).length };
}

// ---------------------------------------------------------------------------------------------
// 6. Cold paths: a new key, and a key whose object was evicted. Runs last: it restarts workerd.

/**
 * Per key, one at a time: issuing it (which creates its object and storage), its first proxied
 * call and a later one. Then workerd is restarted on the same storage, so every object is
 * evicted; after a few calls on one key to warm the isolate, each other key's first call must
 * rebuild its object from storage, and its second call finds it in memory.
 */
export async function coldPaths(ctx) {
  const { cfg, checks } = ctx;
  const { keys: keyCount } = cfg.cold;
  const body = "amount=100&currency=usd";
  let agent = keepAliveAgent(1);
  const times = { issue: [], first: [], second: [], after_eviction_first: [], after_eviction_second: [] };
  const bad = [];
  const keys = [];
  const call = async (key, into) => {
    const res = await attempt(paymentIntent(ctx.url, agent, key.vault_key, body));
    if (res.status === 200) into?.push(res.ms);
    else bad.push(`${res.status} ${res.error ?? res.body.slice(0, 120)}`);
  };
  for (let i = 0; i <= keyCount; i++) {
    const started = performance.now();
    const key = await ctx.issueKey({ daily_usd_cap: 1_000, agent_run_label: `bench/cold/${i}` });
    times.issue.push(performance.now() - started);
    keys.push(key);
    await call(key, times.first);
    await call(key, times.second);
  }
  agent.destroy();

  const restart = performance.now();
  await ctx.restart();
  const restartMs = performance.now() - restart;
  agent = keepAliveAgent(1);
  // The isolate is new too: warm it on key 0 (its own object rebuilt), untimed.
  for (let i = 0; i < 20; i++) await call(keys[0]);
  for (const key of keys.slice(1)) {
    await call(key, times.after_eviction_first);
    await call(key, times.after_eviction_second);
  }
  agent.destroy();
  checks.check(`cold paths: every call on ${keyCount + 1} new and evicted keys answered 200`, bad.length === 0, bad[0] ?? "");
  const s = (list) => rounded(summarize(list));
  return {
    keys: keyCount,
    restart_ms: round(restartMs),
    issue: s(times.issue),
    new_key_first_call: s(times.first),
    new_key_second_call: s(times.second),
    evicted_first_call: s(times.after_eviction_first),
    evicted_second_call: s(times.after_eviction_second),
  };
}

// ---------------------------------------------------------------------------------------------
// 7. The ratios: each figure of the guard against the floor, or against another figure of the
//    same run. These are what to compare between runs; the absolute figures are the machine's.

export function ratios({ latency, floor_burst, burst, open_burst, many_keys }) {
  const cpu = (figures, side) => figures.cpu_ms_per_call?.[side] ?? NaN;
  const added = latency.added_over_floor;
  return {
    cpu_per_call_over_floor: round(cpu(latency, "workerd") / cpu(latency, "workerd_floor"), 2),
    // The same in the bursts: 1,000 calls at once on one key, every one forwarded, over the
    // floor's 1,000; and the capped burst's (600 forwarded, 400 cheap refusals).
    open_burst_cpu_per_call_over_floor: round(cpu(open_burst, "workerd") / cpu(floor_burst, "workerd_floor"), 2),
    burst_cpu_per_call_over_floor: round(cpu(burst, "workerd") / cpu(floor_burst, "workerd_floor"), 2),
    added_p50_ms: added.p50,
    added_p99_ms: added.p99,
    added_p99_over_added_p50: round(added.p99 / added.p50, 2),
    one_key_burst_over_floor: round(burst.calls_per_s / floor_burst.calls_per_s, 2),
    // The same work per call (every call forwarded) on 100 keys and on one.
    many_keys_over_one_key: round(many_keys.calls_per_s / open_burst.calls_per_s, 2),
    // Against the capped burst, whose 400 refused calls are cheap: the issue's first figure.
    many_keys_over_capped_burst: round(many_keys.calls_per_s / burst.calls_per_s, 2),
    one_key_open_burst_over_floor: round(open_burst.calls_per_s / floor_burst.calls_per_s, 2),
    p99_over_p50: round(latency.proxy.p99 / latency.proxy.p50, 2),
    floor_p99_over_p50: round(latency.floor.p99 / latency.floor.p50, 2),
  };
}
