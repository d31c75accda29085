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
  const cpu = (section, figures) => {
    const c = figures.cpu_ms_per_call;
    if (!c) return; // no /proc on this machine
    const perCall = slash(ms(c.workerd), ms(c.vendor_fake), ms(c.load_generator));
    add(section, "CPU ms per call: workerd / vendor fake / load generator", perCall);
    add(section, "workerd busy, % of one core", `${figures.workerd_busy_pct.toFixed(0)}%`);
  };

  const L = r.latency;
  const spread = (s) => slash(ms(s.p50), ms(s.p90), ms(s.p99));
  add("latency", `direct to fake, p50 / p90 / p99 ms (n=${L.direct.n})`, spread(L.direct));
  add("latency", `through proxy, p50 / p90 / p99 ms (n=${L.proxy.n})`, spread(L.proxy));
  add("latency", "added p50 ms", ms(L.added.p50), `<= ${T.added_p50_ms}`, L.added.p50 <= T.added_p50_ms);
  add("latency", "added p90 ms", ms(L.added.p90));
  add("latency", "added p99 ms", ms(L.added.p99), `<= ${T.added_p99_ms}`, L.added.p99 <= T.added_p99_ms);
  cpu("latency", L);

  const B = r.burst;
  add("same-key burst", `${B.calls} calls at once on 1 key, cap $${B.cap_usd}: wall ms`, ms(B.wall_ms));
  const fastEnough = B.calls_per_s >= T.one_key_calls_per_s;
  add("same-key burst", "calls/s", int(B.calls_per_s), `>= ${T.one_key_calls_per_s}`, fastEnough);
  add("same-key burst", "p50 / p99 ms", slash(ms(B.latency.p50), ms(B.latency.p99)));
  const forwarded = slash(B.forwarded_at_fake, B.expected_forwarded);
  add("same-key burst", "forwarded (counted at fake) / admitted by cap", forwarded, "exact", B.exact, "FAIL");
  add("same-key burst", "answers 200 / 429 cap hit / other", slash(B.ok, B.cap_hit, B.other));
  cpu("same-key burst", B);

  const C = r.child_burst;
  add("child-key burst", `${C.calls} calls at once over ${C.children} children, parent cap $${C.parent_cap_usd}: wall ms`, ms(C.wall_ms));
  add("child-key burst", "calls/s (ratio to the same-key burst)", `${int(C.calls_per_s)} (${times(C.calls_per_s / B.calls_per_s)})`);
  add("child-key burst", "p50 / p99 ms", slash(ms(C.latency.p50), ms(C.latency.p99)));
  add("child-key burst", "forwarded (counted at fake) / admitted by the parent's cap", slash(C.forwarded_at_fake, C.expected_forwarded), "exact", C.exact, "FAIL");
  add("child-key burst", "answers 200 / 429 cap hit / other", slash(C.ok, C.cap_hit, C.other));
  cpu("child-key burst", C);

  const M = r.many_keys;
  add("many keys", `${M.calls} calls at once over ${M.keys} keys: wall ms`, ms(M.wall_ms));
  add("many keys", "calls/s", int(M.calls_per_s));
  add("many keys", "p50 / p99 ms", slash(ms(M.latency.p50), ms(M.latency.p99)));
  cpu("many keys", M);

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

  const S = r.size;
  add("size", "wasm raw bytes", int(S.wasm_bytes));
  const small = S.wasm_gzip_bytes <= T.wasm_gzip_bytes;
  add("size", "wasm gzip -9 bytes", int(S.wasm_gzip_bytes), `<= ${int(T.wasm_gzip_bytes)}`, small);
  add("size", "cold start ms, new Miniflare to first answer", ms(S.cold_start_ms));
  return rows;
}

export function renderTable(header, rows) {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((row) => String(row[i]).length)));
  const line = (row) => row.map((cell, i) => String(cell).padEnd(widths[i])).join("  ").trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}
