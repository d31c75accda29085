// Inngest middleware for Keybrake: one vault key per function run.
//
// - The key is issued in a step, so Inngest memoizes it: every retry and replay of the run
//   gets the same key, and its cap spans the whole run. Its label is the run id.
// - Handlers get the vendor SDKs on `ctx.keybrake`, already pointed at Keybrake.
// - A cap hit becomes NonRetriableError: the cap lasts until 00:00 UTC, so retrying into it
//   only burns attempts (and, with a budget gateway, thousands of refused calls a day).
// - When the run ends, succeeded or failed for good, its keys are revoked.
import { Middleware, NonRetriableError, type Context } from "inngest";
import { Keybrake, isCapHit, isRetryable, type IssuedChildKey, type IssuedKey, type KeybrakeOptions, type NewChildKey, type NewKey } from "keybrake";
import type StripeSdk from "stripe";
import type { Twilio } from "twilio";
import type { Resend } from "resend";

/** What the run's key may do; its label is set by the middleware. */
export type RunKeySpec = Omit<NewKey, "agent_run_label">;
/** What a child key may do: its own cap, and endpoints among the run key's. */
export type ChildKeySpec = Omit<NewChildKey, "agent_run_label">;

export interface KeybrakeMiddlewareOptions {
  /**
   * A Keybrake client, or what to make one from (it needs the admin token), or a function
   * giving either, called at the first run: for settings read from the environment at run time.
   */
  keybrake: Keybrake | KeybrakeOptions | (() => Keybrake | KeybrakeOptions);
  /**
   * The run's key, from the run's context (its event, typically) and function. `null`: this
   * function gets no key.
   */
  key: (ctx: Context.Any, fn: { id: string }) => RunKeySpec | null;
  /** The run's label on its keys and audit rows. Default the run id; it must be unique per run. */
  label?: (ctx: Context.Any) => string;
  /** Options for each SDK's constructor, e.g. `{ stripe: { maxNetworkRetries: 0 } }`. */
  sdkOptions?: { stripe?: Record<string, unknown>; twilio?: Record<string, unknown>; resend?: Record<string, unknown> };
}

/** A vault key and the vendor SDKs that use it. */
export interface VaultKeyClients<K extends IssuedKey = IssuedKey> {
  readonly key: K;
  readonly stripe: StripeSdk;
  readonly twilio: Twilio;
  readonly resend: Resend;
}

/** `ctx.keybrake` in a handler. */
export interface KeybrakeRunTools extends VaultKeyClients {
  /** The label on every key of this run. */
  readonly label: string;
  /**
   * A child key for one branch of a fan-out, issued in a memoized step `keybrake/child/<id>`:
   * its own cap, counted against the run key's too. Revoked with the run.
   */
  child(id: string, spec: ChildKeySpec): Promise<VaultKeyClients<IssuedChildKey>>;
}

const ISSUE_STEP = "keybrake/vault-key";

export function keybrakeMiddleware(options: KeybrakeMiddlewareOptions) {
  let client: Keybrake | undefined;
  const keybrakeClient = (): Keybrake => {
    if (client) return client;
    const given = typeof options.keybrake === "function" ? options.keybrake() : options.keybrake;
    // By shape, not instanceof: the user's Keybrake may come from the other (ESM/CJS) build.
    return (client = typeof (given as Keybrake).keys?.issue === "function" ? (given as Keybrake) : new Keybrake(given as KeybrakeOptions));
  };
  const labelOf = options.label ?? ((ctx: Context.Any) => ctx.runId);

  const clientsFor = <K extends IssuedKey>(key: K): VaultKeyClients<K> => {
    const made: Partial<Record<"stripe" | "twilio" | "resend", unknown>> = {};
    const once = <T>(name: "stripe" | "twilio" | "resend", make: () => T): T => (made[name] ??= make()) as T;
    return {
      key,
      get stripe() {
        return once("stripe", () => keybrakeClient().stripeFor(key, options.sdkOptions?.stripe));
      },
      get twilio() {
        return once("twilio", () => keybrakeClient().twilioFor(key, options.sdkOptions?.twilio));
      },
      get resend() {
        return once("resend", () => keybrakeClient().resendFor(key, options.sdkOptions?.resend));
      },
    };
  };

  // Inngest makes one instance per request, so the fields below hold this request's state.
  // Add it to the client (`new Inngest({ middleware: [...] })`) or to a function's options.
  return class KeybrakeMiddleware extends Middleware.BaseMiddleware {
    readonly id = "keybrake";
    #run: VaultKeyClients | null = null;
    #label = "";

    transformFunctionInput(arg: Middleware.TransformFunctionInputArgs) {
      const self = this;
      const step = arg.ctx.step;
      this.#label = labelOf(arg.ctx);
      const run = (): VaultKeyClients => {
        if (!self.#run) throw new Error("keybrake: this function has no vault key: the middleware's key() returned null for it");
        return self.#run;
      };
      const tools: KeybrakeRunTools = {
        get label() {
          return self.#label;
        },
        get key() {
          return run().key;
        },
        get stripe() {
          return run().stripe;
        },
        get twilio() {
          return run().twilio;
        },
        get resend() {
          return run().resend;
        },
        async child(id, spec) {
          const parent = run().key;
          const key = (await step.run(`keybrake/child/${id}`, () =>
            keybrakeClient().keys.children(parent, { ...spec, agent_run_label: self.#label }),
          )) as IssuedChildKey;
          return clientsFor(key);
        },
      };
      return { ...arg, ctx: { ...arg.ctx, keybrake: tools } };
    }

    override async wrapFunctionHandler({ ctx, fn, next }: Middleware.WrapFunctionHandlerArgs) {
      const spec = options.key(ctx as Context.Any, { id: fn.id() });
      if (spec) {
        const body = { ...spec, agent_run_label: this.#label };
        const key = (await ctx.step.run(ISSUE_STEP, () => issueRunKey(keybrakeClient(), body))) as IssuedKey;
        this.#run = clientsFor(key);
      }
      try {
        return await next();
      } catch (err) {
        throw finalIfCapHit(err);
      }
    }

    override async wrapStepHandler({ next }: Middleware.WrapStepHandlerArgs) {
      try {
        return await next();
      } catch (err) {
        throw finalIfCapHit(err);
      }
    }

    override async onRunComplete() {
      await this.#revoke();
    }

    override async onRunError({ isFinalAttempt }: Middleware.OnRunErrorArgs) {
      // A run that will be retried keeps its key: the retry needs it.
      if (isFinalAttempt) await this.#revoke();
    }

    /**
     * Revokes the run's key, and with it every child key minted from it. Revoking is
     * idempotent, so a repeat is harmless; a failure is logged, and the key still ends at its TTL.
     */
    async #revoke() {
      const key = this.#run?.key;
      if (!key) return;
      try {
        await keybrakeClient().keys.revoke(key.key_id);
      } catch (err) {
        this.client.logger.error({ err, key_id: key.key_id }, "keybrake: could not revoke the run's vault key");
      }
    }
  };
}

/** Issues the run's key; a refusal (a bad spec, a wrong token) will not get better by retrying. */
async function issueRunKey(keybrake: Keybrake, body: NewKey): Promise<IssuedKey> {
  try {
    return await keybrake.keys.issue(body);
  } catch (err) {
    if (isRetryable(err)) throw err;
    throw new NonRetriableError(`keybrake: could not issue the run's vault key: ${(err as Error).message}`, { cause: err });
  }
}

/** A cap hit, as the NonRetriableError that ends the run; anything else unchanged. */
function finalIfCapHit(err: unknown): unknown {
  if (!isCapHit(err) || (err as Error)?.name === "NonRetriableError") return err;
  return new NonRetriableError("keybrake: the run's vault key has spent its daily cap; the run stops here instead of retrying", { cause: err });
}

export { isCapHit };
