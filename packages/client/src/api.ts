// The request and response types of Keybrake's HTTP API: the document's own schemas
// (generated from openapi/openapi.json), and the few shapes only the client adds.
import type { IssuedKey } from "./openapi.gen.js";

export type * from "./openapi.gen.js";

/** A child key: spends against its own cap and its parent's. */
export type IssuedChildKey = IssuedKey & { parent_key_id: string };

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
