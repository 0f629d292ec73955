import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  basePriority,
  deniedBy,
  effectivePriority,
  factsOf,
  fieldCount,
  heldByLane,
  laneCap,
  laneOf,
  limitsFor,
  slotLimits,
  tokenFor,
  type JobShape,
} from "../src/qos/evaluate.js";
import { LaneBoard, type Heard } from "../src/qos/lanes.js";
import { NO_RULES, parseRules, withFleetCap, type QosRules } from "../src/qos/rules.js";
import { thrown } from "./helpers/errors.js";

const RULES = `# what a data store asks of its MARS fleet
fairShare: user
agingPerMinute: 2
rules:
  - name: per-user
    limit: 4
    per: user
  - name: era5-complete
    match: { dataset: reanalysis-era5-complete }
    limit: 20
  - name: guest-od
    match: { user: guest, class: od }
    limit: 1
  - name: small-first
    match: { fields: { max: 12 } }
    priority: 10
  - name: cerra-closed
    match: { environ.namespace: cerra }
    deny: CERRA is closed for maintenance until Monday
  - name: too-large
    match: { fields: { min: 100001 } }
    deny: a request may ask for at most 100000 fields; split it
`;

function job(
  user: string | undefined,
  params: Record<string, string[]>,
  environ: Record<string, string> = {},
): JobShape {
  return {
    queue: "default",
    environ: { ...(user !== undefined && { user_id: user }), ...environ },
    requests: [{ verb: "retrieve", params }],
  };
}

describe("QoS rules: the language", () => {
  it("parses a data store's rules with their defaults", () => {
    const rules = parseRules(RULES);
    assert.equal(rules.fairShare, "user");
    assert.equal(rules.agingPerMinute, 2);
    assert.deepEqual(
      rules.rules.map((r) => r.name),
      ["per-user", "era5-complete", "guest-od", "small-first", "cerra-closed", "too-large"],
    );
    assert.deepEqual(parseRules(""), NO_RULES);
    assert.equal(NO_RULES.fairShare, "user");
  });

  it("rejects a file whole, naming the line of every problem", () => {
    const bad = [
      "rules:", //                                  1
      "  - name: per-user", //                      2
      "    limit: -1", //                           3
      "  - name: Bad Name", //                      4
      "    priority: 5", //                         5
      "  - name: two-kinds", //                     6
      "    priority: 1", //                         7
      "    deny: no", //                            8
      "  - name: fields-value", //                  9
      "    match: { fields: 10 }", //              10
      "    limit: 1", //                           11
    ].join("\n");
    const err = thrown(() => parseRules(bad, "rules.yaml"));
    assert.equal(err.code, "QOS_RULES_INVALID");
    const lines = (err.details["errors"] as Array<{ line: number }>).map((e) => e.line);
    assert.ok(lines.includes(3), `limit -1 on line 3: ${err.message}`);
    assert.ok(lines.includes(4), `bad name on line 4: ${err.message}`);
    assert.ok(
      lines.some((l) => l >= 6 && l <= 8),
      `two kinds at lines 6-8: ${err.message}`,
    );
    assert.ok(lines.includes(10), `fields takes a range, line 10: ${err.message}`);
    assert.match(err.message, /rules\.yaml:3:/);
  });

  it("names the line of a YAML syntax error and of an unknown key", () => {
    const syntax = thrown(() => parseRules("rules:\n  - name: a\n    limit: [1\n"));
    assert.equal(syntax.code, "QOS_RULES_INVALID");
    assert.ok((syntax.details["errors"] as Array<{ line: number }>)[0]!.line >= 3, syntax.message);
    const unknown = thrown(() => parseRules("fairShare: user\nlimits: 4\n"));
    assert.equal(unknown.code, "QOS_RULES_INVALID");
    assert.match(unknown.message, /:1:|:2:/);
    const dup = thrown(() => parseRules("rules:\n  - {name: a, limit: 1}\n  - {name: a, priority: 1}\n"));
    assert.match(dup.message, /:3:.*duplicate rule name a/);
  });
});

describe("QoS rules: what they say about a job", () => {
  const rules = parseRules(RULES);

  it("counts fields as MARS expands them", () => {
    assert.equal(fieldCount({ param: ["2t", "msl"], date: ["20240101", "to", "20240110"] }), 20);
    assert.equal(
      fieldCount({ param: ["t"], levelist: ["500", "850"], step: ["0", "to", "12", "by", "6"] }),
      6,
    );
    assert.equal(fieldCount({ param: ["2t"], date: ["garbage"] }), 1);
  });

  it("denies with the rule's message, by environ or by size", () => {
    const closed = deniedBy(rules, factsOf(job("alice", { param: ["2t"] }, { namespace: "CERRA" })));
    assert.equal(closed?.name, "cerra-closed");
    assert.match(closed!.deny, /CERRA is closed/);
    const huge = deniedBy(
      rules,
      factsOf(
        job("alice", {
          param: ["2t"],
          date: ["19400101", "to", "20240101"],
          time: ["0", "to", "23", "by", "1"],
        }),
      ),
    );
    assert.equal(huge?.name, "too-large");
    assert.equal(deniedBy(rules, factsOf(job("alice", { param: ["2t"] }))), undefined);
  });

  it("lists the limits a job counts against, per value when asked", () => {
    const guestOd = limitsFor(
      rules,
      factsOf(job("Guest", { class: ["OD"], dataset: ["reanalysis-era5-complete"] })),
    );
    assert.deepEqual(
      guestOd.map((l) => l.key),
      ["per-user.guest", "era5-complete.all", "guest-od.all"],
    );
    const plain = limitsFor(rules, factsOf(job(undefined, { class: ["ea"] })));
    assert.deepEqual(
      plain.map((l) => l.key),
      [`per-user.${tokenFor("(none)")}`],
    );
  });

  it("prefers small requests, and ages the rest only up to the top priority", () => {
    const small = factsOf(job("a", { param: ["2t"], date: ["20240101"] }));
    const big = factsOf(job("a", { param: ["2t"], date: ["20240101", "to", "20240131"] }));
    assert.equal(basePriority(rules, small), 10);
    assert.equal(basePriority(rules, big), 0);
    assert.equal(effectivePriority(rules, 0, 0), 0);
    assert.equal(effectivePriority(rules, 0, 2 * 60_000), 4); // 2 a minute
    assert.equal(effectivePriority(rules, 0, 60 * 60_000), 10); // capped at the top
    assert.equal(effectivePriority(NO_RULES, 0, 60 * 60_000), 0); // no priorities: nothing to age into
  });

  it("puts a job in its user's lane, a safe token whatever the user is called", () => {
    assert.equal(laneOf(rules, factsOf(job("Alice", {}))), "alice");
    assert.equal(laneOf(rules, factsOf(job(undefined, {}))), "_");
    const odd = laneOf(rules, factsOf(job("bob@example.org", {})));
    assert.match(odd, /^h-[0-9a-f]{24}$/);
    const byClass = { ...rules, fairShare: "class" };
    assert.equal(laneOf(byClass, factsOf(job("x", { class: ["ea"] }))), "ea");
  });

  it("leaves a per-user limit on every job to the lanes' consumers, and any narrower one to slots", () => {
    const text = `fairShare: user
rules:
  - name: per-user
    limit: 4
    per: user
  - name: busy-queue
    match: { queue: [busy] }
    limit: 2
    per: user
  - name: guest-od
    match: { user: guest, class: od }
    limit: 1
    per: user
  - name: paused
    limit: 0
    per: user
  - name: per-class
    limit: 3
    per: class
`;
    const r = parseRules(text);
    const byName = (name: string) =>
      r.rules.find((x) => x.name === name)! as Parameters<typeof heldByLane>[1];
    assert.equal(heldByLane(r, byName("per-user")), true);
    assert.equal(heldByLane(r, byName("busy-queue")), true, "a selector on the queue alone");
    assert.equal(heldByLane(r, byName("guest-od")), false, "not every job of the lane");
    assert.equal(heldByLane(r, byName("paused")), false, "0 is no max_ack_pending");
    assert.equal(heldByLane(r, byName("per-class")), false, "not counted by the fairness key");
    assert.equal(laneCap(r, "default"), 4);
    assert.equal(laneCap(r, "busy"), 2);
    assert.equal(laneCap(NO_RULES, "default"), undefined);
    assert.equal(laneCap({ ...r, fairShare: "class" }, "default"), 3, "per-class is then the lanes'");

    const limits = limitsFor(r, factsOf({ ...job("Guest", { class: ["od"] }), queue: "busy" }));
    assert.deepEqual(
      limits.map((l) => [l.key, l.lane]),
      [
        ["per-user.guest", "guest"],
        ["busy-queue.guest", "guest"],
        ["guest-od.guest", undefined],
        ["paused.guest", undefined],
        ["per-class.od", undefined],
      ],
    );
    // Pulled from its lane: the lane's consumer holds the first two. From the lane-less subject of
    // earlier clients, no consumer holds any: every limit takes a slot.
    assert.deepEqual(
      slotLimits(limits, "guest").map((l) => l.key),
      ["guest-od.guest", "paused.guest", "per-class.od"],
    );
    assert.equal(slotLimits(limits, "").length, 5);
  });

  it("turns the fleet-wide cap into a limit rule", () => {
    const capped = withFleetCap(NO_RULES, 3);
    assert.deepEqual(
      limitsFor(capped, factsOf(job("a", {}))).map((l) => [l.key, l.rule.limit]),
      [["fleet.all", 3]],
    );
    assert.equal(withFleetCap(NO_RULES, 0), NO_RULES);
  });
});

describe("QoS lanes: which lane a free slot serves", () => {
  const heard = (
    id: string,
    user: string,
    at: number,
    params: Record<string, string[]> = { param: ["2t"] },
  ): Heard => ({
    id,
    submittedAt: at,
    shape: job(user, params),
  });
  const pick = (
    board: LaneBoard,
    rules: QosRules = NO_RULES,
    now = 1000,
    blocked: (h: Heard) => boolean = () => false,
  ) => board.pick({ now, rules, blocked, unknownHeads: true });

  it("leaves a job another free worker was woken for to it, unless woken for a later one or a slot came free", () => {
    const board = new LaneBoard();
    board.heard("a", { ...heard("j1", "a", 1000), elsewhereUntil: 3000 });
    assert.equal(pick(board, NO_RULES, 1000), undefined, "pulled for a job another worker was woken for");
    assert.equal(
      pick(board, NO_RULES, 3000),
      "a",
      "the other worker may have filled up: taken after the wait",
    );
    board.heard("a", { ...heard("j2", "a", 1001), elsewhereUntil: 3001 });
    board.heard("b", { ...heard("k1", "b", 1002), elsewhereUntil: 3002 });
    board.heard("b", heard("k2", "b", 1003)); // woken for this one: the lane's oldest goes to this pull
    assert.equal(pick(board, NO_RULES, 1100), "b");
    assert.ok(board.knows("b", "k2") && !board.knows("b", "zz"));
    board.heard("a", heard("j1", "a", 1000)); // then woken for a job heard before: its wait ends
    assert.equal(pick(board, NO_RULES, 1100) !== undefined, true);
    const other = new LaneBoard();
    other.heard("c", { ...heard("m1", "c", 1000), elsewhereUntil: 9000 });
    other.slotFreed(); // a slot of this worker came free: it may pull them now
    assert.equal(pick(other, NO_RULES, 1000), "c");
  });

  it("leaves a lane whose pull found nothing quiet while its count holds, for one interval", () => {
    const board = new LaneBoard(5000);
    board.counted("a", 2, 1000); // two jobs running on other workers: looks like two to pull
    assert.equal(pick(board), "a");
    board.empty("a", 1100);
    board.counted("a", 2, 2000);
    assert.equal(pick(board, NO_RULES, 2000), undefined, "pulled again for jobs running elsewhere");
    board.counted("a", 1, 3000); // one ended
    board.counted("a", 2, 4000); // a new one, its doorbell missed: the count rose above the fewest
    assert.equal(pick(board, NO_RULES, 4000), "a");
    board.empty("a", 4100);
    board.counted("a", 2, 4200);
    assert.equal(pick(board, NO_RULES, 4200), undefined);
    board.freed("a"); // a worker handed one back
    board.counted("a", 2, 4300);
    assert.equal(pick(board, NO_RULES, 4300), "a");
    board.empty("a", 4400);
    board.counted("a", 2, 9000);
    assert.equal(pick(board, NO_RULES, 9000), undefined);
    board.counted("a", 2, 9500); // an interval on: a dead worker's job may be back
    assert.equal(pick(board, NO_RULES, 9500), "a");
    board.empty("a", 9600);
    board.heard("a", heard("new", "a", 9700)); // heard of: pulled whatever the count
    assert.equal(pick(board, NO_RULES, 9700), "a");
  });

  it("goes round-robin across users, not in arrival order", () => {
    const board = new LaneBoard();
    for (let i = 0; i < 100; i++) board.heard("a", heard(`a${i}`, "a", i));
    board.heard("b", heard("b0", "b", 500));
    board.heard("b", heard("b1", "b", 501));
    const order: string[] = [];
    for (let i = 0; i < 6; i++) {
      const lane = pick(board)!;
      order.push(lane);
      board.took(lane, undefined, 1000);
    }
    assert.deepEqual(order, ["a", "b", "a", "b", "a", "a"]);
  });

  it("serves higher priority first, and skips a lane whose next job is blocked", () => {
    const rules = parseRules(RULES);
    const board = new LaneBoard();
    board.heard("a", heard("big", "a", 0, { param: ["2t"], date: ["20240101", "to", "20240131"] }));
    board.heard("b", heard("small", "b", 10, { param: ["2t"] }));
    assert.equal(pick(board, rules, 20), "b");
    assert.equal(
      pick(board, rules, 20, (h) => h.id === "small"),
      "a",
    );
    assert.equal(
      pick(board, rules, 20, () => true),
      undefined,
    );
  });

  it("asks whether a lane is blocked only when it would beat the best lane so far, and picks as a full scan would", () => {
    const rules = parseRules(RULES);
    const board = new LaneBoard();
    for (let u = 0; u < 50; u++) board.heard(`u${u}`, heard(`j${u}`, `u${u}`, u));
    // Every lane ties on priority and has never been served: the first by name wins the tie.
    const asked: string[] = [];
    const blockedU0 = (h: Heard): boolean => {
      asked.push(h.id);
      return h.id === "j0";
    };
    const lane = pick(board, rules, 100, blockedU0);
    // A full scan: the best of the lanes whose head is not blocked.
    const unblocked = [...board.queued().keys()].filter((l) => l !== "u0").sort();
    assert.equal(lane, unblocked[0]);
    assert.equal(lane, "u1");
    assert.ok(asked.length < 50, `asked of ${asked.length} lanes out of 50`);
    // All blocked: every lane was asked, and none is picked.
    asked.length = 0;
    assert.equal(
      pick(board, rules, 100, (h) => (asked.push(h.id), true)),
      undefined,
    );
    assert.equal(asked.length, 50);
  });

  it("bounds the messages a lane may hold by the last count and the jobs heard since", () => {
    const board = new LaneBoard();
    assert.equal(board.atMost("a"), 0);
    board.heard("a", heard("a1", "a", 1));
    board.heard("a", heard("a1", "a", 1)); // the same job twice: heard once
    assert.equal(board.atMost("a"), 1);
    const mark = board.mark();
    board.heard("a", heard("a2", "a", 2)); // after the count was asked for: on top of it
    board.counted("a", 5, 10, mark); // three more in flight on other workers
    assert.equal(board.atMost("a"), 6);
    board.heard("a", heard("a3", "a", 3));
    assert.equal(board.atMost("a"), 7);
    board.counted("a", 2, 20);
    assert.equal(board.atMost("a"), 2);
  });

  it("keeps a job heard while a pull or a count was on its way, whatever they found", () => {
    const board = new LaneBoard();
    board.heard("a", heard("a1", "a", 0));
    const mark = board.mark(); // the pull leaves
    board.heard("a", heard("a2", "a", 1)); // published while it was on its way
    board.empty("a", 2, mark); // a1 went to another worker; a2 may not have been stored yet
    assert.equal(board.queued().get("a"), 1);
    assert.equal(pick(board, NO_RULES, 3), "a");
    board.empty("a", 4, board.mark());
    assert.equal(pick(board, NO_RULES, 5), undefined);
    // The same for a count asked for before a job was heard: it cannot know of it.
    const counting = board.mark();
    board.heard("a", heard("a3", "a", 6));
    board.counted("a", 0, 7, counting);
    assert.equal(pick(board, NO_RULES, 8), "a");
    board.counted("a", 0, 9, board.mark());
    assert.equal(pick(board, NO_RULES, 10), undefined);
  });

  it("forgets what other workers took from the server's counts, and pulls where messages are unaccounted for", () => {
    const board = new LaneBoard();
    board.heard("a", heard("a1", "a", 0));
    board.heard("a", heard("a2", "a", 1));
    board.counted("a", 1, 10); // one message left: a1 went to another worker
    assert.equal(board.queued().get("a"), 1);
    board.took("a", "a2", 11);
    assert.equal(board.queued().get("a"), 0);
    assert.equal(pick(board, NO_RULES, 20), undefined);
    // The message of the job this worker runs is accounted for.
    board.counted("a", 1, 500);
    assert.equal(pick(board, NO_RULES, 500), undefined);
    board.settled("a");
    // The server still holds a message (a job running elsewhere, or one to redeliver): worth a pull.
    board.counted("a", 1, 1000);
    assert.equal(pick(board, NO_RULES, 1000), "a");
    board.empty("a", 1001); // it was in flight: nothing until the next count
    assert.equal(pick(board, NO_RULES, 1002), undefined);
    board.counted("a", 0, 2000);
    assert.equal(board.size, 0);
    // Jobs the server holds that this worker never heard of are served first (they are older).
    board.counted("c", 2, 3000);
    board.heard("c", heard("c9", "c", 3001));
    board.took("c", "x", 3002);
    assert.equal(board.queued().get("c"), 2);
    // Unknown heads are left alone when the worker holds as many parked jobs as it may.
    assert.equal(
      board.pick({ now: 3003, rules: NO_RULES, blocked: () => false, unknownHeads: false }),
      undefined,
    );
  });
});
