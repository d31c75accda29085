// Seeds D1 directly (through Miniflare's binding, not the Worker) so growth can be measured at
// sizes the proxy would take minutes to produce. Rows go in as multi-row INSERTs with literal
// values (generated here, never user input), many statements per batch: D1 caps bound
// parameters per statement, and each batch is one round trip to workerd.
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";

const ROWS_PER_INSERT = 100;
const INSERTS_PER_BATCH = 20;
export const ROWS_PER_LABEL = 100;

const sqlString = (s) => (s === null ? "NULL" : `'${String(s).replaceAll("'", "''")}'`);
const hex64 = () => randomBytes(32).toString("hex");

export const auditLabel = (i) => `bench/audit/${String(i).padStart(5, "0")}`;
export const keysLabel = (i) => `bench/keys/${String(i).padStart(5, "0")}`;

async function count(db, table) {
  return (await db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).first()).n;
}

async function insertRows(db, table, columns, rows, deadline) {
  const statements = [];
  for (let i = 0; i < rows.length; i += ROWS_PER_INSERT) {
    const values = rows.slice(i, i + ROWS_PER_INSERT).map((r) => `(${r.join(", ")})`);
    statements.push(db.prepare(`INSERT INTO ${table} (${columns.join(", ")}) VALUES ${values.join(", ")}`));
  }
  for (let i = 0; i < statements.length; i += INSERTS_PER_BATCH) {
    if (performance.now() > deadline) throw new Error(`seeding ${table} ran out of time`);
    await db.batch(statements.slice(i, i + INSERTS_PER_BATCH));
  }
}

/**
 * Grows `audit` to `target` rows: row n belongs to label n / ROWS_PER_LABEL, so every label,
 * label 0 included, holds exactly ROWS_PER_LABEL rows whatever the table's size. The k-th rows
 * of all labels share a timestamp, so labels interleave in time as concurrent runs would.
 * Returns the row count afterwards.
 */
export async function seedAuditTo(db, target, { deadline }) {
  const have = await count(db, "audit");
  const base = Date.now() - ROWS_PER_LABEL * 1_000;
  const keyIds = new Map();
  const rows = [];
  for (let n = have; n < target; n += 1) {
    const label = (n / ROWS_PER_LABEL) | 0;
    const keyId = keyIds.get(label) ?? keyIds.set(label, hex64()).get(label);
    rows.push([
      sqlString(`seed-${String(n).padStart(9, "0")}`), // id
      base + (n % ROWS_PER_LABEL) * 1_000, // ts_ms
      sqlString(keyId),
      sqlString(auditLabel(label)),
      sqlString("stripe"),
      sqlString("POST"),
      sqlString("/v1/payment_intents"),
      200, // status
      sqlString("forwarded"),
      1_500_000, // reserved_micros
      1_500_000, // cost_micros
      sqlString("settled"),
      sqlString(`pi_seed${n}`),
      "NULL", // idempotency_key
      3, // latency_ms
    ]);
  }
  await insertRows(db, "audit", AUDIT_COLUMNS, rows, deadline);
  await addTotals(db, rows);
  return count(db, "audit");
}

const AUDIT_COLUMNS = [
  "id", "ts_ms", "key_id", "agent_run_label", "vendor", "method", "path", "status", "decision",
  "reserved_micros", "cost_micros", "outcome", "vendor_object_id", "idempotency_key", "latency_ms",
];

/**
 * Adds seeded rows (all settled) to the running totals, by key and by label, as each key's
 * object does for the rows it writes: the audit summary reads only these.
 */
async function addTotals(db, rows) {
  const sums = new Map();
  for (const r of rows) {
    for (const scope of [["key", r[2]], ["label", r[3]]]) {
      const id = scope.join("\n");
      const t = sums.get(id) ?? sums.set(id, { scope, calls: 0, cost: 0 }).get(id);
      t.calls += 1;
      t.cost += r[10];
    }
  }
  const statements = [...sums.values()].map(({ scope: [scope, value], calls, cost }) =>
    db
      .prepare(
        "INSERT INTO audit_totals (scope, value, calls, cost_micros, settled) VALUES (?1, ?2, ?3, ?4, ?3) " +
          "ON CONFLICT (scope, value) DO UPDATE SET calls = calls + excluded.calls, " +
          "cost_micros = cost_micros + excluded.cost_micros, settled = settled + excluded.settled",
      )
      .bind(scope, value.slice(1, -1).replaceAll("''", "'"), calls, cost),
  );
  for (let i = 0; i < statements.length; i += 100) await db.batch(statements.slice(i, i + 100));
}

/**
 * Grows one label, of one key, to `target` rows: the label whose summary is read as it grows.
 * Returns the label's row count afterwards, from its totals.
 */
export async function seedLabelTo(db, label, target, { deadline }) {
  const have = (await db.prepare("SELECT calls FROM audit_totals WHERE scope = 'label' AND value = ?").bind(label).first())?.calls ?? 0;
  const keyId = hex64();
  const base = Date.now() - target;
  for (let from = have; from < target; from += 100_000) {
    const rows = [];
    for (let n = from; n < Math.min(target, from + 100_000); n += 1) {
      rows.push([
        sqlString(`big-${String(n).padStart(9, "0")}`), base + n, sqlString(keyId), sqlString(label),
        sqlString("stripe"), sqlString("POST"), sqlString("/v1/payment_intents"), 200, sqlString("forwarded"),
        10_000, 10_000, sqlString("settled"), sqlString(`pi_big${n}`), "NULL", 3,
      ]);
    }
    await insertRows(db, "audit", AUDIT_COLUMNS, rows, deadline);
    await addTotals(db, rows);
  }
  return (await db.prepare("SELECT calls FROM audit_totals WHERE scope = 'label' AND value = ?").bind(label).first()).calls;
}

/** Grows `vault_keys` to `target` rows, ROWS_PER_LABEL keys per label. Returns the count afterwards. */
export async function seedKeysTo(db, target, { deadline }) {
  const have = await count(db, "vault_keys");
  const now = Date.now();
  const endpoints = sqlString(JSON.stringify(["POST /v1/payment_intents"]));
  const rows = [];
  for (let n = have; n < target; n += 1) {
    rows.push([
      sqlString(hex64()), // key_id
      sqlString("stripe"),
      sqlString(keysLabel((n / ROWS_PER_LABEL) | 0)),
      300_000_000, // daily_cap_micros
      "NULL", // max_per_call_micros
      endpoints,
      now - (target - n) * 10, // created_at_ms
      now + 7_200_000, // expires_at_ms
      "NULL", // revoked_at_ms
    ]);
  }
  const columns = [
    "key_id", "vendor", "agent_run_label", "daily_cap_micros", "max_per_call_micros", "allowed_endpoints",
    "created_at_ms", "expires_at_ms", "revoked_at_ms",
  ];
  await insertRows(db, "vault_keys", columns, rows, deadline);
  return count(db, "vault_keys");
}

