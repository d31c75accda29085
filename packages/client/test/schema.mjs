// Checks a JSON value against a schema of openapi/openapi.json: the subset of JSON Schema the
// document uses (types, enum, const, required, additionalProperties, items, $ref, anyOf, oneOf,
// allOf, pattern, minimum/maximum). Returns the list of problems, empty when it conforms.
import { readFileSync } from "node:fs";

export const DOC = JSON.parse(readFileSync(new URL("../../../openapi/openapi.json", import.meta.url), "utf8"));

export function problems(value, schema, path = "$", doc = DOC) {
  if (typeof schema === "string") schema = { $ref: `#/components/schemas/${schema}` };
  if (schema.$ref) return problems(value, doc.components.schemas[schema.$ref.split("/").pop()], path, doc);
  const out = [];
  if ("const" in schema && value !== schema.const) out.push(`${path}: ${JSON.stringify(value)} is not ${JSON.stringify(schema.const)}`);
  if (schema.enum && !schema.enum.includes(value)) out.push(`${path}: ${JSON.stringify(value)} is not one of ${schema.enum}`);
  if (schema.allOf) for (const s of schema.allOf) out.push(...problems(value, s, path, doc));
  for (const options of [schema.anyOf, schema.oneOf].filter(Boolean)) {
    if (!options.some((s) => problems(value, s, path, doc).length === 0)) out.push(`${path}: matches none of its alternatives`);
  }
  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : null;
  if (types && !types.some((t) => is(value, t))) return [...out, `${path}: ${JSON.stringify(value)} is not ${types.join(" or ")}`];
  if (typeof value === "string" && schema.pattern && !new RegExp(schema.pattern, "u").test(value)) out.push(`${path}: "${value}" does not match ${schema.pattern}`);
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) out.push(`${path}: ${value} < ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) out.push(`${path}: ${value} > ${schema.maximum}`);
  }
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => out.push(...problems(v, schema.items, `${path}[${i}]`, doc)));
  if (value && typeof value === "object" && !Array.isArray(value) && (schema.properties || schema.required)) {
    for (const name of schema.required ?? []) if (!(name in value)) out.push(`${path}.${name}: missing`);
    for (const [name, v] of Object.entries(value)) {
      const prop = schema.properties?.[name];
      if (prop) out.push(...problems(v, prop, `${path}.${name}`, doc));
      else if (schema.additionalProperties === false) out.push(`${path}.${name}: not in the document`);
    }
  }
  return out;
}

function is(value, type) {
  switch (type) {
    case "null":
      return value === null;
    case "integer":
      return Number.isInteger(value);
    case "array":
      return Array.isArray(value);
    case "object":
      return value !== null && typeof value === "object" && !Array.isArray(value);
    default:
      return typeof value === type;
  }
}
