// The local vendor simulator `make dev` runs when no real vendor credentials are configured:
// Stripe on 127.0.0.1:12111, Twilio on :12112, Resend on :12113.
import { startStripeFake } from "./stripe.mjs";
import { startTwilioFake } from "./twilio.mjs";
import { startResendFake } from "./resend.mjs";

const SIMULATED = {
  stripe: { port: 12111, secret: "sk_test_local_simulator" },
  twilio: { port: 12112, accountSid: "AC00000000000000000000000000000000", authToken: "local_simulator_token" },
  resend: { port: 12113, apiKey: "re_local_simulator" },
};

const fakes = [
  await startStripeFake(SIMULATED.stripe),
  await startTwilioFake({ ...SIMULATED.twilio, pricedAfterPolls: 1 }),
  await startResendFake(SIMULATED.resend),
];
console.log(`Vendor simulator: Stripe ${fakes[0].url}, Twilio ${fakes[1].url}, Resend ${fakes[2].url}`);
const stop = () => Promise.all(fakes.map((f) => f.close())).then(() => process.exit(0));
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
