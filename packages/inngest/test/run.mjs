// Runs an Inngest function with the real SDK through @inngest/test, the way Inngest drives a
// run. @inngest/test runs one request at a time; this adds what the Inngest server does
// between requests:
// - a retry: the same run id, the attempt number counting up, and every step that already
//   succeeded replayed from memo instead of run again;
// - a step that failed for good: Inngest invokes the function once more, and that step throws
//   its error in the handler, so the run itself fails (and middleware sees the run's end).
import { InngestTestEngine, mockCtx } from "@inngest/test";
import { NonRetriableError } from "inngest";

/**
 * @param {any} fn the Inngest function
 * @param {{ name: string, data: any }} event
 * @param {{ runId: string, maxAttempts?: number, pauseMs?: number,
 *   afterAttempt?: (attempt: number, outcome: { result?: any, error?: any }) => unknown }} options
 * @returns {Promise<{ attempts: number, result?: any, error?: any, steps: string[] }>}
 */
export async function runWithRetries(fn, event, { runId, maxAttempts = 3, pauseMs = 200, afterAttempt }) {
  const memo = new Map();
  const failedForGood = new Map(); // step id -> its error, replayed as a throw
  let failedSteps = new Map(); // step id -> its error, in the attempt under way
  const pending = new Set(); // step handlers still running
  const attempts = [];
  const execute = (attempt) => {
    const engine = new InngestTestEngine({
      function: fn,
      events: [event],
      transformCtx: (ctx) => {
        const mocked = mockCtx(ctx);
        const run = mocked.step.run;
        const memoizing = (id, handler) => {
          if (failedForGood.has(id)) return Promise.reject(failedForGood.get(id));
          return run(id, () => {
            const step = (async () => {
              try {
                const value = await handler();
                memo.set(id, value);
                return value;
              } catch (err) {
                failedSteps.set(id, err);
                throw err;
              }
            })();
            pending.add(step);
            step.then(() => pending.delete(step), () => pending.delete(step));
            return step;
          });
        };
        // `step.invoke` runs the invoked function as a run of its own, with this runner, and
        // is memoized like any step.
        const invoke = (id, { function: invoked, data }) =>
          memoizing(id, async () => {
            const child = await runWithRetries(invoked, { name: "inngest/function.invoked", data }, { runId: `${runId}-${id}`, maxAttempts, pauseMs });
            // An invoked run that failed for good fails the invoking step for good too.
            if (child.error) throw child.error.name === "NonRetriableError" ? new NonRetriableError(child.error.message) : child.error;
            return child.result;
          });
        return { ...mocked, runId, attempt, maxAttempts, step: { ...mocked.step, run: memoizing, invoke } };
      },
    });
    const steps = [...memo].map(([id, value]) => ({ id, handler: () => value }));
    // The engine returns at the first failed step; Inngest would still get the result of every
    // parallel step already running, so wait for them before the next request.
    return engine.execute({ steps }).then(async (outcome) => {
      while (pending.size > 0) await Promise.allSettled([...pending]);
      return outcome;
    });
  };
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    // Inngest waits before a retry; a pause keeps that order: the failed attempt's calls have
    // settled by the time the retry arrives.
    if (attempt > 0) await new Promise((r) => setTimeout(r, pauseMs));
    failedSteps = new Map();
    let { result, error } = await execute(attempt);
    if (error?.name === "NonRetriableError" && failedSteps.size > 0) {
      // The attempt ended for good: every step that failed in it (parallel steps can fail
      // side by side) throws its error when the function is invoked the last time.
      for (const id of failedSteps.keys()) failedForGood.set(id, new NonRetriableError(error.message));
      ({ result, error } = await execute(attempt));
    }
    attempts.push({ result, error });
    await afterAttempt?.(attempt, { result, error });
    if (!error || error.name === "NonRetriableError") break;
  }
  const last = attempts[attempts.length - 1];
  return { attempts: attempts.length, result: last.result, error: last.error, steps: [...memo.keys()] };
}
