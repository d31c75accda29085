// The billing agent from Keybrake's product story, written with the helper: the run's vault
// key is issued once, every charge goes through Keybrake, and a cap hit ends the run.
import { Inngest } from "inngest";
import type Stripe from "stripe";
import { guarded, issueVaultKey, keybrakeFromEnv, stripeFor } from "./keybrake";

export const inngest = new Inngest({ id: "billing-app" });

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

export const billingAgent = inngest.createFunction(
  { id: "billing-agent", retries: 3, triggers: [{ event: "billing/subscription.process" }] },
  async ({ event, step, runId }) => {
    const data = event.data as BillingEvent;
    const keybrake = keybrakeFromEnv();

    const key = await issueVaultKey(step, keybrake, {
      vendor: "stripe",
      daily_usd_cap: data.budget_usd ?? 300,
      allowed_endpoints: ["POST /v1/payment_intents"],
      expires_in: "2h",
      agent_run_label: `inngest/${event.name}/${runId}`,
    });

    const customers = (await step.run("fetch-customers", async () => data.customers)) as Customer[];

    const stripe = stripeFor(key, keybrake, { maxNetworkRetries: 0 });
    const charges = await Promise.all(
      customers.map((customer) =>
        step.run(`charge-${customer.id}`, () =>
          guarded(() =>
            stripe.paymentIntents.create(
              { amount: customer.amount_cents, currency: "usd", customer: customer.id },
              // Stable across retries: a retried step cannot charge twice.
              { idempotencyKey: `${runId}-${customer.id}` },
            ),
          ).then((intent: Stripe.PaymentIntent) => ({ id: intent.id, amount: intent.amount })),
        ),
      ),
    );
    return { charged: charges.length, keyId: key.keyId };
  },
);
