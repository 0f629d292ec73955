/** The retry policy travels with the job: the decision (pure), and a worker configured otherwise honouring it. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { afterFailure, policyOf } from "../src/broker/retry-policy.js";
import { rejection } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";

describe("retry policy: the decision", () => {
  const policy = { maxAttempts: 3, delayMs: 100 };

  it("retries a retryable error while attempts are left, with a delay growing per attempt", () => {
    assert.deepEqual(afterFailure({ code: "MARS_KILLED", retryable: true }, 1, policy), {
      kind: "retry",
      delayMs: 100,
    });
    assert.deepEqual(afterFailure({ code: "MARS_KILLED", retryable: true }, 2, policy), {
      kind: "retry",
      delayMs: 200,
    });
    assert.deepEqual(afterFailure({ code: "MARS_KILLED", retryable: true }, 3, policy), {
      kind: "failed",
      final: "attempts",
    });
  });

  it("fails at once on an error that is not retryable, and a cancel is a cancel", () => {
    assert.deepEqual(afterFailure({ code: "MARS_RUNTIME_ERROR", retryable: false }, 1, policy), {
      kind: "failed",
      final: "error",
    });
    assert.deepEqual(afterFailure({ code: "JOB_CANCELLED", retryable: false }, 1, policy), {
      kind: "cancelled",
    });
  });

  it("takes the job's policy, and the fallback only for what an older client's message lacks", () => {
    const fallback = { maxAttempts: 5, delayMs: 5000 };
    assert.deepEqual(policyOf({ maxAttempts: 2, retryDelayMs: 10 }, fallback), {
      maxAttempts: 2,
      delayMs: 10,
    });
    assert.deepEqual(policyOf({}, fallback), fallback);
  });
});

describe("retry policy: carried by the job", { timeout: 90_000 }, () => {
  let tf: TestFleet;
  before(async () => {
    tf = await TestFleet.start();
  });
  after(async () => {
    await tf.dispose();
  });

  it("a worker configured for 5 attempts gives a job the 2 its client asked for, or 3 asked per job", async () => {
    const queue = TestFleet.queue("policy");
    // MARS is killed by SIGTERM after a few bytes every time: a retryable failure on every attempt.
    await tf.worker(
      { queue, maxRetries: 5, retryDelay: "1s" },
      { MARS_SIM_KILL_AFTER_BYTES: "200", MARS_SIM_KILL_SIGNAL: "SIGTERM" },
    );
    const fleet = await tf.client({ queue, maxRetries: 2, retryDelay: "50ms" });
    const job = await fleet.submit({ param: "2t", date: "20240101" }, { targetDir: "policy" });
    assert.equal((await rejection(job.result())).code, "JOB_FAILED");
    const rec = await job.status();
    assert.equal(rec.attempt, 2, "the worker's own max_retries (5) was used");
    assert.equal(rec.maxAttempts, 2);
    assert.equal(rec.error?.details["lastCode"], "MARS_KILLED");

    const three = await fleet.submit(
      { param: "2t", date: "20240101" },
      { targetDir: "policy", retry: { maxAttempts: 3 } },
    );
    assert.equal((await rejection(three.result())).code, "JOB_FAILED");
    assert.equal((await three.status()).attempt, 3);
    for (const retry of [{ maxAttempts: 0 }, { maxAttempts: 1.5 }, { maxAttempts: 101 }, { delayMs: -1 }])
      assert.equal(
        await rejection(fleet.submit({ param: "2t", date: "20240101" }, { retry })).then((e) => e.code),
        "CONFIG_INVALID",
      );
  });
});
