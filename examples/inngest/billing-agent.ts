// The billing agent from Keybrake's product story, on the packages: the middleware issues the
// run's vault key, hands the handler a Stripe client that uses it, ends the run on a cap hit
// and revokes the key when the run ends. Below it, the same work fanned out: one child run per
// customer, each with a child key of the plan run's key.
import { Inngest } from "inngest";
import { Keybrake } from "keybrake";
import { keybrakeMiddleware } from "@keybrake/inngest";

export interface Customer {
  id: string;
  amount_cents: number;
}

export interface BillingEvent {
  plan_id: string;
  budget_usd?: number;
  /** Stands in for a lookup of the plan's customers. */
  customers: Customer[];
}

export const inngest = new Inngest({
  id: "billing-app",
  middleware: [
    keybrakeMiddleware({
      keybrake: () => ({ baseUrl: process.env.KEYBRAKE_URL!, token: process.env.KEYBRAKE_API_KEY }),
      // A customer run spends on the child key its plan run minted for it: no key of its own.
      key: ({ event }, fn) =>
        fn.id === "charge-customer"
          ? null
          : {
              vendor: "stripe",
              daily_usd_cap: (event.data as BillingEvent).budget_usd ?? 300,
              allowed_endpoints: ["POST /v1/payment_intents"],
              expires_in: "2h",
            },
      // Inngest retries the step; stripe-node need not retry inside it as well.
      sdkOptions: { stripe: { maxNetworkRetries: 0 } },
    }),
  ],
});

export const billingAgent = inngest.createFunction(
  { id: "billing-agent", retries: 3, triggers: [{ event: "billing/subscription.process" }] },
  async ({ event, step, runId, keybrake }) => {
    const customers = (await step.run("fetch-customers", async () => (event.data as BillingEvent).customers)) as Customer[];
    const charges = await Promise.all(
      customers.map((customer) =>
        step.run(`charge-${customer.id}`, async () => {
          const intent = await keybrake.stripe.paymentIntents.create(
            { amount: customer.amount_cents, currency: "usd", customer: customer.id },
            // Stable across retries: a retried step cannot charge twice.
            { idempotencyKey: `${runId}-${customer.id}` },
          );
          return { id: intent.id, amount: intent.amount };
        }),
      ),
    );
    return { charged: charges.length, keyId: keybrake.key.key_id };
  },
);

export interface CustomerCharge {
  customer: Customer;
  /** The child vault key minted for this run. Event data is stored by Inngest: encrypt it
   * (Inngest's encryption middleware) in production. */
  vault_key: string;
}

/** One customer's charge, in a run of its own, on the child key its plan run minted. */
export const chargeCustomer = inngest.createFunction(
  { id: "charge-customer", retries: 3, triggers: [{ event: "billing/customer.charge" }] },
  async ({ event, step, runId }) => {
    const { customer, vault_key } = event.data as CustomerCharge;
    const stripe = new Keybrake({ baseUrl: process.env.KEYBRAKE_URL! }).stripeFor(vault_key, { maxNetworkRetries: 0 });
    return step.run("charge", async () => {
      const intent = await stripe.paymentIntents.create(
        { amount: customer.amount_cents, currency: "usd", customer: customer.id },
        { idempotencyKey: `${runId}-${customer.id}` },
      );
      return { id: intent.id, amount: intent.amount };
    });
  },
);

/**
 * The plan's run: its key's cap (the event's budget) bounds all its customers together. It
 * mints one child key per customer, capped at that customer's share, and invokes one customer
 * run with each, all at once. However the customer runs interleave, their spend together never
 * passes the plan's cap; when the plan run ends, revoking its key revokes every child.
 */
export const billingFanOut = inngest.createFunction(
  { id: "billing-fan-out", retries: 3, triggers: [{ event: "billing/plan.fan-out" }] },
  async ({ event, step, keybrake }) => {
    const { customers, budget_per_customer_usd } = event.data as BillingEvent & { budget_per_customer_usd: number };
    const children = [];
    for (const customer of customers) {
      children.push({ customer, child: await keybrake.child(customer.id, { daily_usd_cap: budget_per_customer_usd }) });
    }
    const results = await Promise.allSettled(
      children.map(({ customer, child }) =>
        step.invoke(`charge-${customer.id}`, {
          function: chargeCustomer,
          data: { customer, vault_key: child.key.vault_key } satisfies CustomerCharge,
        }),
      ),
    );
    return { charged: results.filter((r) => r.status === "fulfilled").length, refused: results.filter((r) => r.status === "rejected").length };
  },
);
