// The billing agent from Keybrake's product story, on the packages: the middleware issues the
// run's vault key, hands the handler a Stripe client that uses it, ends the run on a cap hit
// and revokes the key when the run ends.
import { Inngest } from "inngest";
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
      key: ({ event }) => ({
        vendor: "stripe",
        daily_usd_cap: (event.data as BillingEvent).budget_usd ?? 300,
        allowed_endpoints: ["POST /v1/payment_intents"],
        expires_in: "2h",
      }),
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
