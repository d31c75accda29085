// The bench's output: correctness checks (which decide the exit code) and the one table.

/** Collects named pass/fail checks. Timing never goes in here: only correctness. */
export class Checks {
  constructor() {
    this.list = [];
  }

  check(name, ok, detail = "") {
    this.list.push({ name, ok: Boolean(ok), detail: String(detail) });
    return Boolean(ok);
  }

  /** One check that every number under `value` is finite: NaN marks a measurement that failed. */
  finite(name, value) {
    const bad = [];
    (function walk(v, path) {
      if (typeof v === "number") {
        if (!Number.isFinite(v)) bad.push(path);
      } else if (v === null || v === undefined) {
        bad.push(path);
      } else if (typeof v === "object") {
        for (const [k, inner] of Object.entries(v)) walk(inner, path ? `${path}.${k}` : k);
      }
    })(value, "");
    return this.check(`${name}: every figure is a finite number`, bad.length === 0, bad.join(", "));
  }

  get passed() {
    return this.list.filter((c) => c.ok).length;
  }

  get failed() {
    return this.list.length - this.passed;
  }

  summary() {
    return { passed: this.passed, failed: this.failed, checks: this.list };
  }
}

// Sections marked * hold this machine's absolute figures, from this run: compare the ratios.
const ms = (v) => (Number.isFinite(v) ? v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2) : "n/a");
const int = (v) => (Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "n/a");
const times = (v) => (Number.isFinite(v) ? `${v.toFixed(2)}x` : "n/a");
const slash = (...values) => values.join(" / ");

/**
 * The table's rows, [section, measurement, value, target, status], from results.json's figures.
 * A failed correctness check reads FAIL, a missed speed target MISS, a growth ratio over the
 * limit FLAG. With `judgeSpeed` false (the smoke run's tiny samples) speed is shown, not judged.
 */
export function tableRows(r, { judgeSpeed = true } = {}) {
  const T = r.targets;
  const rows = [];
  // `met` undefined: nothing to judge.
  const add = (section, what, value, target = "", met = undefined, miss = "MISS") => {
    const judged = met !== undefined && (judgeSpeed || miss === "FAIL");
    rows.push([section, what, value, judged ? target : "", judged ? (met ? "ok" : miss) : ""]);
  };
  const cpu = (section, figures, { floor = false } = {}) => {
    const c = figures.cpu_ms_per_call;
    if (!c) return; // no /proc on this machine
    const [side, busy] = floor ? ["workerd_floor", "floor's workerd"] : ["workerd", "workerd"];
    const perCall = slash(ms(c[side]), ms(c.vendor_fake), ms(c.load_generator));
    add(section, `CPU ms per call: ${busy} / vendor fake / load generator`, perCall);
    const busyPct = floor ? figures.workerd_floor_busy_pct : figures.workerd_busy_pct;
    add(section, `${busy} busy, % of one core`, `${busyPct.toFixed(0)}%`);
  };

  // The headline: the guard against the floor (a bare pass-through Worker in the same workerd
  // version, measured in the same run), and figures of the same run against each other.
  const R = r.ratios;
  add("RATIOS", "workerd CPU per guarded call / per floor call (one at a time)", times(R.cpu_per_call_over_floor), `<= ${T.cpu_per_call_over_floor}x`, R.cpu_per_call_over_floor <= T.cpu_per_call_over_floor);
  add("RATIOS", "the same in bursts: one key, every call forwarded / floor (capped burst)", `${times(R.open_burst_cpu_per_call_over_floor)} (${times(R.burst_cpu_per_call_over_floor)})`);
  add("RATIOS", "added over the floor, p50 / p99 ms", slash(ms(R.added_p50_ms), ms(R.added_p99_ms)));
  add("RATIOS", "added p99 / added p50", times(R.added_p99_over_added_p50), `<= ${T.added_p99_over_added_p50}x`, R.added_p99_over_added_p50 <= T.added_p99_over_added_p50);
  add("RATIOS", "one-key burst calls/s / floor burst calls/s", times(R.one_key_burst_over_floor), `>= ${T.one_key_burst_over_floor}x`, R.one_key_burst_over_floor >= T.one_key_burst_over_floor);
  add("RATIOS", "100-key calls/s / one-key calls/s, every call forwarded", times(R.many_keys_over_one_key), `>= ${T.many_keys_over_one_key}x`, R.many_keys_over_one_key >= T.many_keys_over_one_key);
  add("RATIOS", "100-key calls/s / capped one-key burst calls/s (400 cheap refusals)", times(R.many_keys_over_capped_burst));
  add("RATIOS", "one key, every call forwarded, calls/s / floor burst calls/s", times(R.one_key_open_burst_over_floor));
  add("RATIOS", "guarded p99 / p50 (floor's)", `${times(R.p99_over_p50)} (${times(R.floor_p99_over_p50)})`);
  const S0 = r.size;
  add("RATIOS", "wasm gzip -9 bytes (the floor's)", `${int(S0.wasm_gzip_bytes)} (${int(S0.floor_wasm_gzip_bytes)})`, `<= ${int(T.wasm_gzip_bytes)}`, S0.wasm_gzip_bytes <= T.wasm_gzip_bytes);

  const L = r.latency;
  const spread = (s) => slash(ms(s.p50), ms(s.p90), ms(s.p99));
  add("latency*", `direct to fake, p50 / p90 / p99 ms (n=${L.direct.n})`, spread(L.direct));
  add("latency*", `through the floor, p50 / p90 / p99 ms (n=${L.floor.n})`, spread(L.floor));
  add("latency*", `through the guard, p50 / p90 / p99 ms (n=${L.proxy.n})`, spread(L.proxy));
  add("latency*", "added over the floor, p50 / p90 / p99 ms", spread(L.added_over_floor));
  add("latency*", "added over the fake, p50 / p90 / p99 ms", spread(L.added));
  if (L.cpu_ms_per_call) {
    const c = L.cpu_ms_per_call;
    add("latency*", "CPU ms per call: workerd guard / floor / vendor fake / load generator", slash(ms(c.workerd), ms(c.workerd_floor), ms(c.vendor_fake), ms(c.load_generator)));
  }

  const FB = r.floor_burst;
  add("floor burst*", `${FB.calls} calls at once through the floor: wall ms`, ms(FB.wall_ms));
  add("floor burst*", "calls/s", int(FB.calls_per_s));
  add("floor burst*", "p50 / p99 ms", slash(ms(FB.latency.p50), ms(FB.latency.p99)));
  add("floor burst*", "forwarded (counted at fake) / sent", slash(FB.forwarded_at_fake, FB.calls), "all", FB.forwarded_at_fake === FB.calls, "FAIL");
  cpu("floor burst*", FB, { floor: true });

  const B = r.burst;
  add("same-key burst*", `${B.calls} calls at once on 1 key, cap $${B.cap_usd}: wall ms`, ms(B.wall_ms));
  add("same-key burst*", "calls/s", int(B.calls_per_s));
  add("same-key burst*", "p50 / p99 ms", slash(ms(B.latency.p50), ms(B.latency.p99)));
  const forwarded = slash(B.forwarded_at_fake, B.expected_forwarded);
  add("same-key burst*", "forwarded (counted at fake) / admitted by cap", forwarded, "exact", B.exact, "FAIL");
  add("same-key burst*", "answers 200 / 429 cap hit / other", slash(B.ok, B.cap_hit, B.other));
  cpu("same-key burst*", B);

  const C = r.child_burst;
  add("child-key burst*", `${C.calls} calls at once over ${C.children} children, parent cap $${C.parent_cap_usd}: wall ms`, ms(C.wall_ms));
  add("child-key burst*", "calls/s (ratio to the same-key burst)", `${int(C.calls_per_s)} (${times(C.calls_per_s / B.calls_per_s)})`);
  add("child-key burst*", "p50 / p99 ms", slash(ms(C.latency.p50), ms(C.latency.p99)));
  add("child-key burst*", "forwarded (counted at fake) / admitted by the parent's cap", slash(C.forwarded_at_fake, C.expected_forwarded), "exact", C.exact, "FAIL");
  add("child-key burst*", "answers 200 / 429 cap hit / other", slash(C.ok, C.cap_hit, C.other));
  cpu("child-key burst*", C);

  const O = r.open_burst;
  add("one-key open burst*", `${O.calls} calls at once on 1 key, none near its cap: wall ms`, ms(O.wall_ms));
  add("one-key open burst*", "calls/s", int(O.calls_per_s));
  add("one-key open burst*", "p50 / p99 ms", slash(ms(O.latency.p50), ms(O.latency.p99)));
  add("one-key open burst*", "forwarded (counted at fake) / sent", slash(O.forwarded_at_fake, O.calls), "all", O.forwarded_at_fake === O.calls, "FAIL");
  cpu("one-key open burst*", O);

  const M = r.many_keys;
  add("many keys*", `${M.calls} calls at once over ${M.keys} keys: wall ms`, ms(M.wall_ms));
  add("many keys*", "calls/s", int(M.calls_per_s));
  add("many keys*", "p50 / p99 ms", slash(ms(M.latency.p50), ms(M.latency.p99)));
  cpu("many keys*", M);

  const growth = (name, g) => {
    for (const p of g.points) {
      add("growth", `${name}, ${p.label}: p50 / p90 ms (n=${p.n})`, slash(ms(p.p50), ms(p.p90)));
    }
    const ok = g.ratio_p50 <= T.growth_ratio;
    add("growth", `${name}: p50 ratio largest/smallest`, times(g.ratio_p50), `<= ${T.growth_ratio}x`, ok, "FLAG");
  };
  growth("audit query for 100 rows", r.growth.audit_query);
  growth("audit summary of one label", r.growth.audit_summary);
  growth("key issue", r.growth.issue_key);
  growth("proxied call", r.growth.idempotency);

  const F = r.flood;
  for (const p of F.points) add("flood", `D1 rows after ${int(p.calls)} refused calls on one key`, int(p.d1_rows));
  add("flood", "rows ratio, all / first tenth", times(F.ratio), "1x", F.ratio === 1, "FLAG");

  const K = r.cold;
  const p50p99 = (s) => slash(ms(s.p50), ms(s.p99));
  add("cold paths*", `issuing a key (creates its object), p50 / p99 ms (n=${K.issue.n})`, p50p99(K.issue));
  add("cold paths*", "a new key's first call / second call, p50 ms", slash(ms(K.new_key_first_call.p50), ms(K.new_key_second_call.p50)));
  add("cold paths*", `after eviction (workerd restarted in ${ms(K.restart_ms)} ms): first / second call, p50 ms`, slash(ms(K.evicted_first_call.p50), ms(K.evicted_second_call.p50)));
  add("cold paths*", "after eviction: first / second call, p99 ms", slash(ms(K.evicted_first_call.p99), ms(K.evicted_second_call.p99)));

  const S = r.size;
  add("size", "wasm raw bytes", int(S.wasm_bytes));
  add("size", "cold start ms, new Miniflare to first answer: guard / floor", slash(ms(S.cold_start_ms), ms(S.floor_cold_start_ms)));
  return rows;
}

export function renderTable(header, rows) {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((row) => String(row[i]).length)));
  const line = (row) => row.map((cell, i) => String(cell).padEnd(widths[i])).join("  ").trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}
