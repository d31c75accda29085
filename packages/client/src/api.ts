// The request and response types of Keybrake's HTTP API. Those of the routes in
// openapi/openapi.json are the document's own schemas (generated); the lineage and issuer
// routes are written here until the document describes them.
import type { IssuedKey, NewKey } from "./openapi.gen.js";

export type * from "./openapi.gen.js";

/** `DELETE /vault/keys?agent_run_label=…`: every key of a run, revoked. */
export interface RunRevoked {
  revoked: number;
  key_ids: string[];
}

/** `POST /vault/keys/{key_id}/children`, authenticated with the parent's vault key. */
export interface NewChildKey {
  daily_usd_cap: NewKey["daily_usd_cap"];
  /** A subset of the parent's; default the parent's. */
  allowed_endpoints?: NewKey["allowed_endpoints"];
  expires_in?: NewKey["expires_in"];
  agent_run_label?: NewKey["agent_run_label"];
}

/** A child key: spends against its own cap and its parent's. */
export type IssuedChildKey = IssuedKey & { parent_key_id: string };

/** `POST /vault/issuers` (root token only). */
export interface NewIssuer {
  name: string;
  daily_usd_budget: number;
  vendors: NewKey["vendor"][];
  allowed_endpoints: NewKey["allowed_endpoints"];
  max_key_usd_cap?: number;
  max_expires_in?: NewKey["expires_in"];
}

/** An issuer as Keybrake shows it; `issuer_token` only in the answer to its creation. */
export interface Issuer {
  issuer_id: string;
  name: string;
  issuer_token?: string;
  [field: string]: unknown;
}

/** Which audit rows to read: exactly one of `keyId`, `agentRunLabel`, `issuerId`. */
export interface AuditQuery {
  keyId?: string;
  agentRunLabel?: string;
  issuerId?: string;
  limit?: number;
  order?: "asc" | "desc";
  startingAfter?: string;
  endingBefore?: string;
  decision?: string;
  outcome?: "settled" | "released" | "unknown" | "denied" | "replayed";
}
