export { Keybrake, type KeybrakeOptions } from "./client.js";
export { KeybrakeError, isCapHit, isRetryable } from "./errors.js";
export type { VendorSdks } from "./vendors.js";
export type * from "./api.js";
