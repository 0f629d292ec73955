/**
 * Fair share by recent use (#26): the arithmetic of a usage record, the rules' `usage`, a lane's
 * choice with it, and a fleet where a user who used much MARS time lately yields to one who did not.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { JobHandle } from "../src/client/job.js";
import { LaneBoard } from "../src/qos/lanes.js";
import { NO_RULES, parseRules, usageWindowMs } from "../src/qos/rules.js";
import {
  USAGE_PERIODS,
  UsageTable,
  addUsage,
  usageChangesAt,
  usageKey,
  usagePenalty,
  usedWithin,
} from "../src/qos/usage.js";
import { silentLogger } from "../src/core/logging.js";
import { eventually } from "./helpers/proc.js";
import { thrown } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { QosLab } from "./helpers/qos-lab.js";

const HOUR = 3_600_000;

describe("QoS usage: the arithmetic", () => {
  it("sums what was used in the window and forgets what left it", () => {
    const window = 24 * HOUR;
    const t0 = 100 * window;
    let rec = addUsage(undefined, t0, 600, window);
    rec = addUsage(rec, t0 + 1000, 60, window); // same period: added up
    assert.equal(rec.periods.length, 1);
    rec = addUsage(rec, t0 + 5 * HOUR, 300, window);
    assert.equal(usedWithin(rec, t0 + 5 * HOUR, window), 960);
    // Just before the first period leaves the window, and after.
    assert.equal(usedWithin(rec, t0 + window - 1, window), 960);
    assert.equal(usedWithin(rec, t0 + window + window / USAGE_PERIODS, window), 300);
    // A write long after drops the periods that left the window.
    rec = addUsage(rec, t0 + 3 * window, 10, window);
    assert.deepEqual(
      rec.periods.map(([, s]) => s),
      [10],
    );
    assert.equal(usedWithin(undefined, t0, window), 0);
  });

  it("costs weight points per hour used, only under rules with usage", () => {
    const rules = parseRules("usage: { window: 24h, weight: 2 }\n");
    assert.equal(usageWindowMs(rules), 24 * HOUR);
    assert.equal(usagePenalty(rules, 5400), 3);
    assert.equal(usagePenalty(NO_RULES, 5400), 0);
    assert.equal(usageWindowMs(NO_RULES), undefined);
  });

  it("refuses a usage without a sensible window or weight, naming the line", () => {
    for (const text of [
      "usage: { window: 10s, weight: 1 }\n",
      "usage: { window: forever, weight: 1 }\n",
      "usage: { window: 24h, weight: -1 }\n",
      "usage: { window: 24h }\n",
      "usage: { window: 24h, weight: 1, decay: 2 }\n",
    ]) {
      const err = thrown(() => parseRules(text, "rules.yaml"));
      assert.equal(err.code, "QOS_RULES_INVALID", text);
      assert.match(err.message, /rules\.yaml:1:/, text);
    }
  });

  it("a lane whose user used more MARS time lately yields to one who used less", () => {
    const rules = parseRules("usage: { window: 24h, weight: 1 }\n");
    const board = new LaneBoard();
    const shape = (user: string) => ({ queue: "q", environ: { user_id: user }, requests: [] });
    board.heard("heavy", { id: "h1", submittedAt: 1, shape: shape("heavy") });
    board.heard("light", { id: "l1", submittedAt: 2, shape: shape("light") });
    const used = new Map([
      ["heavy", 5 * 3600],
      ["light", 0.5 * 3600],
    ]);
    const pick = (penalty?: (lane: string) => number): string | undefined =>
      board.pick({
        now: 3,
        rules,
        blocked: () => false,
        unknownHeads: true,
        ...(penalty && { penalty }),
      });
    // Without usage, the oldest head goes first (same priority, neither served yet: by name).
    assert.equal(pick(), "heavy");
    assert.equal(
      pick((lane) => usagePenalty(rules, used.get(lane) ?? 0)),
      "light",
    );
  });
});

describe("QoS usage: a fleet", { timeout: 120_000 }, () => {
  let lab: QosLab;
  before(async () => {
    lab = await QosLab.start();
  });
  after(async () => {
    await lab?.dispose();
  });

  it("a worker follows every user's record: another worker's addition arrives and is heard, an unreadable record counts as unused", async () => {
    const follower = new UsageTable(lab.qos, silentLogger());
    const writer = new UsageTable(lab.qos, silentLogger());
    const heard: string[] = [];
    follower.onChange((token) => heard.push(token));
    follower.follow();
    try {
      assert.ok(await eventually(() => follower.following, 5000), "the usage watch never started");
      await writer.add("ufollow", 120, HOUR);
      assert.ok(
        await eventually(() => follower.used("ufollow", HOUR) === 120, 5000),
        "another worker's addition never reached the follower",
      );
      assert.ok(heard.includes("ufollow"), "the follower's listeners were not told");
      // Its use leaves the window by time alone, an hour after its period began.
      const now = Date.now();
      const at = follower.changesAt("ufollow", HOUR, now);
      assert.ok(at !== undefined && at > now && at <= now + HOUR, `changes at ${at}`);
      assert.equal(at, usageChangesAt(await writer.read("ufollow"), now, HOUR));
      await lab.qos.put(usageKey("ugarbage"), new TextEncoder().encode("not a record"));
      assert.ok(
        await eventually(() => heard.includes("ugarbage"), 5000),
        "the unreadable record was not heard",
      );
      assert.equal(follower.used("ugarbage", HOUR), 0);
      assert.equal(follower.changesAt("ugarbage", HOUR, Date.now()), undefined);
    } finally {
      follower.stop();
    }
  });

  it("a user who used much MARS time lately yields to one who used little, and status and qos show say why", async () => {
    const queue = TestFleet.queue("usage");
    // 10 points per second of MARS time: a few jobs of 0.3 s make a difference.
    await lab.apply("usage: { window: 1h, weight: 36000 }\n");
    const tf = lab.tf;
    const settings = { queue, concurrency: 1 };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "150" });
    const fleet = await tf.client(settings);
    const submit = (user: string, i: number): Promise<JobHandle> =>
      fleet.submit(
        { param: "2t/msl", date: "20240101", grid: "10/10" },
        { targetDir: "usage", targetFname: `${user}-${i}.grib`, environ: { user_id: user } },
      );
    // Alice used the fleet alone for a while.
    for (let i = 0; i < 4; i++) await (await submit("alice", i)).result();
    // Then Bob comes, and Alice asks for more: Bob's jobs all go before hers (round-robin alone
    // would alternate them, Alice's lane being the one served longest ago).
    const bob: JobHandle[] = [];
    for (let i = 0; i < 3; i++) bob.push(await submit("bob", i));
    const alice: JobHandle[] = [];
    for (let i = 4; i < 7; i++) alice.push(await submit("alice", i));
    const why = await fleet.explain(alice[alice.length - 1]!.id);
    assert.ok(
      why.some((w) => /^usage: alice used \d+ s of MARS time in the last 1h: priority -\d+/.test(w)),
      `explanation: ${why.join(" | ")}`,
    );
    const state = await fleet.qosState(queue);
    const row = state.usage.find((u) => u.lane === "alice");
    assert.ok(row && row.seconds > 0.8 && row.penalty > 8, `qos show: ${JSON.stringify(state.usage)}`);
    await Promise.all([...bob, ...alice].map((j) => j.result()));
    const started = async (jobs: JobHandle[]): Promise<number[]> =>
      (await Promise.all(jobs.map((j) => j.status()))).map((r) => r.startedAt!);
    const [bobStarts, aliceStarts] = [await started(bob), await started(alice)];
    assert.ok(
      Math.max(...bobStarts) < Math.min(...aliceStarts),
      `bob ${JSON.stringify(bobStarts)}, alice ${JSON.stringify(aliceStarts)}`,
    );
  });
});
