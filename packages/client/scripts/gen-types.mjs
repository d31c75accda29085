// Writes src/openapi.gen.ts: one TypeScript type per schema of openapi/openapi.json, so the
// client's request and response types are the document's, never a hand-kept copy of it.
// `node scripts/gen-types.mjs [openapi.json] [out.ts]`; the build runs it first.
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

/** The TypeScript for one JSON Schema (the subset the document uses). */
export function typeOf(schema, indent = "") {
  if (schema === true || schema === undefined) return "unknown";
  if (schema.$ref) return schema.$ref.replace("#/components/schemas/", "");
  if ("const" in schema) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.anyOf || schema.oneOf) return union((schema.anyOf ?? schema.oneOf).map((s) => typeOf(s, indent)));
  if (schema.allOf) return schema.allOf.map((s) => typeOf(s, indent)).join(" & ");
  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
  if (types.length === 0) return schema.properties ? objectType(schema, indent) : "unknown";
  return union(types.map((t) => primitive(t, schema, indent)));
}

function primitive(type, schema, indent) {
  switch (type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array":
      return `Array<${typeOf(schema.items, indent)}>`;
    case "object":
      return objectType(schema, indent);
    default:
      throw new Error(`unsupported schema type ${type}`);
  }
}

function objectType(schema, indent) {
  const required = new Set(schema.required ?? []);
  const inner = indent + "  ";
  const lines = Object.entries(schema.properties ?? {}).map(([name, prop]) => {
    const doc = prop.description ? `${inner}/** ${oneLine(prop.description)} */\n` : "";
    return `${doc}${inner}${name}${required.has(name) ? "" : "?"}: ${typeOf(prop, inner)};`;
  });
  const extra = schema.additionalProperties;
  if (extra && extra !== false) lines.push(`${inner}[name: string]: ${extra === true ? "unknown" : typeOf(extra, inner)};`);
  if (lines.length === 0) return "Record<string, unknown>";
  return `{\n${lines.join("\n")}\n${indent}}`;
}

const union = (parts) => [...new Set(parts)].join(" | ");
const oneLine = (text) => text.replace(/\s+/g, " ").replaceAll("*/", "*\\/");

/** The whole generated module for an OpenAPI document. */
export function generate(doc) {
  const out = [
    "// Generated from openapi/openapi.json by scripts/gen-types.mjs. Do not edit: run the build.",
    `// ${doc.info?.title ?? "OpenAPI"} ${doc.info?.version ?? ""}`.trimEnd(),
    "",
  ];
  for (const [name, schema] of Object.entries(doc.components?.schemas ?? {})) {
    if (schema.description) out.push(`/** ${oneLine(schema.description)} */`);
    out.push(`export type ${name} = ${typeOf(schema)};`, "");
  }
  return out.join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const input = process.argv[2] ?? here("../../../openapi/openapi.json");
  const output = process.argv[3] ?? here("../src/openapi.gen.ts");
  writeFileSync(output, generate(JSON.parse(readFileSync(input, "utf8"))));
}
