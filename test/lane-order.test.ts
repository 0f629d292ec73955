import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { LaneBoard, type Heard, type PickOptions } from "../src/qos/lanes.js";
import { parseRules, type QosRules } from "../src/qos/rules.js";
import { addUsage, usageChangesAt, usagePenalty, usedWithin, type UsageRecord } from "../src/qos/usage.js";

/**
 * The kept order of lanes (LaneBoard.inOrder, src/qos/lane-order.ts) against reading every lane
 * (LaneBoard.scan, the choice as it was made before): the same operations on two boards, one only
 * ever asked through the kept order, the other only by reading, must choose alike at every step.
 */

const LANES = ["a", "b", "c", "d", "e", "f", "g", "h"];

/** Rules with aging, priorities and (`usage`) a point of priority lost per second of MARS time in the last minute. */
function rulesWith(aging: number, usage = false): QosRules {
  return parseRules(`fairShare: user
agingPerMinute: ${aging}
${usage ? "usage: { window: 1m, weight: 3600 }" : ""}
rules:
  - { name: vip, match: { user: a }, priority: 6 }
  - { name: low, match: { user: b }, priority: -3 }
  - { name: top, match: { user: c }, priority: 9 }
  - { name: small, match: { fields: { max: 1 } }, priority: 2 }
`);
}

type Op =
  | { kind: "heard"; lane: number; age: number; two: boolean; elsewhere: boolean }
  | { kind: "took"; lane: number; which: number }
  | { kind: "empty"; lane: number }
  | { kind: "counted"; lane: number; messages: number }
  | { kind: "give"; lane: number }
  | { kind: "forget"; seed: number }
  | { kind: "slotFreed" }
  | { kind: "settled"; lane: number }
  | { kind: "time"; ms: number }
  | { kind: "rules"; which: number }
  | { kind: "use"; lane: number; seconds: number }
  | { kind: "check"; unknownHeads: boolean; blockSeed: number; skipSeed: number };

const lane = fc.integer({ min: 0, max: LANES.length - 1 });
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("use" as const),
      lane,
      seconds: fc.double({ min: 0.05, max: 4, noNaN: true }),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("heard" as const),
      lane,
      age: fc.integer({ min: -2000, max: 40_000 }),
      two: fc.boolean(),
      elsewhere: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("took" as const),
      lane,
      which: fc.integer({ min: -1, max: 3 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("empty" as const), lane }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("counted" as const),
      lane,
      messages: fc.integer({ min: 0, max: 4 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("give" as const), lane }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("forget" as const), seed: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("slotFreed" as const) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("settled" as const), lane }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("time" as const),
      ms: fc.oneof(
        { weight: 1, arbitrary: fc.integer({ min: -300, max: -1 }) },
        { weight: 19, arbitrary: fc.integer({ min: 0, max: 8000 }) },
      ),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant("rules" as const), which: fc.integer({ min: 0, max: 5 }) }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("check" as const),
      unknownHeads: fc.boolean(),
      blockSeed: fc.nat(),
      skipSeed: fc.nat(),
    }),
  },
);

/** A pseudo-random yes for (seed, key), the same every time it is asked. */
function hit(seed: number, key: string, oneIn: number): boolean {
  let h = seed | 0;
  for (const ch of key) h = Math.imul(h ^ ch.charCodeAt(0), 0x9e3779b1);
  return (h >>> 0) % oneIn === 0;
}

describe("QoS lanes: the kept order", () => {
  it("moves a lane when aging raises its priority, at that very millisecond", () => {
    // 30 points a minute: one every 2 s of waiting, up to the top rule priority (9).
    const rules = rulesWith(30);
    const board = new LaneBoard();
    const heard = (id: string, user: string, at: number): Heard => ({
      id,
      submittedAt: at,
      shape: {
        queue: "q",
        environ: { user_id: user },
        requests: [{ verb: "retrieve", params: { param: ["2t", "msl"] } }],
      },
    });
    board.heard("x", heard("x1", "x", -5000));
    board.took("x", "x1", 0); // x was served: among equals, y goes first
    board.heard("x", heard("x2", "x", 0));
    board.heard("y", heard("y1", "y", 1000));
    const order = (now: number) => [
      ...board.inOrder({ now, rules, blocked: () => false, unknownHeads: true }),
    ];
    assert.deepEqual(order(1999), ["y", "x"], "both waited less than 2 s: y, not served yet, first");
    assert.deepEqual(order(2000), ["x", "y"], "x waited 2 s, a point more than y");
    assert.deepEqual(order(2999), ["x", "y"]);
    assert.deepEqual(order(3000), ["y", "x"], "y waited 2 s too: equal again");
    assert.deepEqual(order(60_000), ["y", "x"], "both at the top priority: turn decides");
  });

  it("chooses as reading every lane does, whatever lanes hear, take, count and give, as time goes", () => {
    // Aging of 0 (priorities fixed), a fraction of a point a minute, and 30 a minute (a step every
    // 2 s, so that lanes move within the runs of time below), with and without priority rules.
    // Then the same two with fair share by recent use: a user's penalty rises as her jobs end
    // (told to the kept board, as the usage table's watch does) and falls as her use leaves the
    // minute's window (by time alone).
    const ruleSets = [
      rulesWith(0),
      rulesWith(6),
      rulesWith(30),
      parseRules("fairShare: user\n"),
      rulesWith(6, true),
      rulesWith(30, true),
    ];
    const windowMs = 60_000;
    fc.assert(
      fc.property(fc.nat(5), fc.array(op, { minLength: 20, maxLength: 150, size: "max" }), (first, ops) => {
        const kept = new LaneBoard(3000);
        const read = new LaneBoard(3000);
        let now = 1_000_000;
        let rules = ruleSets[first]!;
        let n = 0;
        const heardIds = new Map<string, string[]>();
        const used = new Map<string, UsageRecord>();
        // The penalty under the rules of a choice (as the dispatcher makes it at each choice).
        const penaltyUnder =
          (r: QosRules) =>
          (name: string, at: number): number =>
            usagePenalty(r, usedWithin(used.get(name), at, windowMs));
        for (const o of ops) {
          switch (o.kind) {
            case "use": {
              const name = LANES[o.lane]!;
              used.set(name, addUsage(used.get(name), now, o.seconds, windowMs));
              kept.penaltyChanged(name);
              break;
            }
            case "heard": {
              const name = LANES[o.lane]!;
              const id = `j${++n}`;
              const job: Heard = {
                id,
                submittedAt: now - o.age,
                shape: {
                  queue: "q",
                  environ: { user_id: name },
                  requests: [{ verb: "retrieve", params: { param: o.two ? ["2t", "msl"] : ["2t"] } }],
                },
                ...(o.elsewhere && { elsewhereUntil: now + 1500 }),
              };
              heardIds.set(name, [...(heardIds.get(name) ?? []), id]);
              for (const b of [kept, read]) b.heard(name, { ...job });
              break;
            }
            case "took": {
              const name = LANES[o.lane]!;
              const id = o.which < 0 ? undefined : heardIds.get(name)?.[o.which];
              for (const b of [kept, read]) b.took(name, id, now);
              break;
            }
            case "empty":
              for (const b of [kept, read]) b.empty(LANES[o.lane]!, now);
              break;
            case "counted":
              for (const b of [kept, read]) b.counted(LANES[o.lane]!, o.messages, now);
              break;
            case "give":
              for (const b of [kept, read]) b.give(LANES[o.lane]!, now);
              break;
            case "forget":
              for (const b of [kept, read]) b.forgetGiven((name) => !hit(o.seed, name, 2));
              break;
            case "slotFreed":
              for (const b of [kept, read]) b.slotFreed();
              break;
            case "settled":
              for (const b of [kept, read]) b.settled(LANES[o.lane]!);
              break;
            case "time":
              now += o.ms;
              break;
            case "rules":
              rules = ruleSets[o.which]!;
              break;
            case "check": {
              const opts: PickOptions = {
                now,
                rules,
                unknownHeads: o.unknownHeads,
                blocked: (job) => hit(o.blockSeed, job.id, 3),
                skip: (name) => hit(o.skipSeed, name, 4),
                ...(rules.usage && { penalty: penaltyUnder(rules) }),
              };
              const order = [
                ...kept.inOrder({
                  ...opts,
                  ...(rules.usage && {
                    penaltyChangesAt: (name: string, at: number) =>
                      usageChangesAt(used.get(name), at, windowMs),
                  }),
                }),
              ];
              // The reference order: read every lane, again and again, leaving out those listed.
              const expected: string[] = [];
              for (;;) {
                const next = read.scan({
                  ...opts,
                  skip: (name) => expected.includes(name) || opts.skip!(name),
                });
                if (next === undefined) break;
                expected.push(next);
              }
              assert.deepEqual(order, expected, `at ${now}, rules ${ruleSets.indexOf(rules)}`);
              const keptOpts: PickOptions = {
                ...opts,
                ...(rules.usage && {
                  penaltyChangesAt: (name: string, at: number) =>
                    usageChangesAt(used.get(name), at, windowMs),
                }),
              };
              assert.equal(kept.pick(keptOpts), expected[0]);
              // Looking at no more than k lanes: a beginning of the order, of at most k.
              const some = [...kept.inOrder(keptOpts, 2)];
              assert.ok(some.length <= 2);
              assert.deepEqual(some, order.slice(0, some.length));
              break;
            }
          }
        }
      }),
      { numRuns: 1000 },
    );
  });
});
