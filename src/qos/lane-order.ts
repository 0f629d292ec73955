/**
 * The lanes of a queue in the order a free slot takes them (`compare`), kept sorted as they change
 * instead of read in full at each choice: with tens of thousands of users queued, reading every
 * lane was most of a worker's own CPU (PERFORMANCE.md, "Many users").
 *
 * A lane's place depends on time as well as on its jobs: a waiting job's priority rises with aging
 * (`effectivePriority`), and a penalty for recent use falls as that use leaves its window. Each
 * lane whose place will still change by time has the moment of its next change on a second sorted
 * list, and is placed again when the board's clock passes it, so the order is the one a full
 * reading would give at that moment. Other changes of a penalty (a user's job ended) are told to
 * the board (LaneBoard.penaltyChanged).
 */
import btree from "sorted-btree";
import { effectivePriority, topPriority } from "./evaluate.js";
import type { QosRules } from "./rules.js";

/** What orders a lane among the others. */
export interface Place {
  lane: string;
  /** Its next job's priority now: base, aging, less the penalty. */
  priority: number;
  /** Order of the last pull that returned a job from this lane (0: none yet). */
  servedAt: number;
  /** A lane this worker was given a job of (LaneBoard.give). */
  mine: boolean;
  /** When its next job was submitted (or its unknown jobs were first counted). */
  since: number;
}

/**
 * The order of lanes: negative when `a` goes before `b`. The higher priority; then the lane served
 * longest ago (the round-robin); then a lane this worker was given a job of, so that workers freeing
 * slots at once take different lanes instead of racing for one new user's one job; then the older
 * next job; then the name, so that the choice is the same each time.
 */
export function compare(a: Place, b: Place): number {
  if (a.priority !== b.priority) return b.priority - a.priority;
  if (a.servedAt !== b.servedAt) return a.servedAt - b.servedAt;
  if (a.mine !== b.mine) return a.mine ? -1 : 1;
  if (a.since !== b.since) return a.since - b.since;
  return a.lane < b.lane ? -1 : a.lane > b.lane ? 1 : 0;
}

/** What places a lane, apart from the time: its next job's base priority and the rest of `Place`. */
export interface Standing {
  base: number;
  since: number;
  servedAt: number;
  mine: boolean;
  /** Priority points it loses for recent use (0 without `usage` rules). */
  penalty: number;
  /** When that penalty changes next by time alone; undefined for never. */
  penaltyUntil: number | undefined;
}

interface Entry extends Place, Standing {
  /** When its place changes next by time (aging, or its penalty); undefined when it no longer will. */
  stepAt: number | undefined;
}

interface Step {
  at: number;
  lane: string;
}

const byTime = (a: Step, b: Step): number => a.at - b.at || (a.lane < b.lane ? -1 : a.lane > b.lane ? 1 : 0);

export class LaneOrder {
  private readonly order = new btree.default<Place, undefined>(undefined, compare);
  private readonly entries = new Map<string, Entry>();
  private readonly steps = new btree.default<Step, undefined>(undefined, byTime);
  private readonly top: number;

  /** @param now the clock the priorities are worked out at (see `advance`). */
  constructor(
    readonly rules: QosRules,
    private now: number,
  ) {
    this.top = topPriority(rules);
  }

  /** The clock the order is true at. */
  get time(): number {
    return this.now;
  }

  /** Put a lane in its place for this standing, or take it out (undefined: nothing to pull there). */
  set(lane: string, standing: Standing | undefined): void {
    const e = this.entries.get(lane);
    if (e && standing && same(e, standing)) return;
    if (e) this.remove(lane, e);
    if (!standing) return;
    const aged = effectivePriority(this.rules, standing.base, this.now - standing.since);
    const priority = aged - standing.penalty;
    const { base, since, servedAt, mine, penalty, penaltyUntil } = standing;
    const stepAt = earliest(
      this.stepAfter(standing, aged),
      penaltyUntil === undefined ? undefined : Math.max(this.now + 1, penaltyUntil),
    );
    const entry: Entry = { lane, priority, base, since, servedAt, mine, penalty, penaltyUntil, stepAt };
    this.order.set(entry, undefined);
    this.entries.set(lane, entry);
    if (entry.stepAt !== undefined) this.steps.set({ at: entry.stepAt, lane }, undefined);
  }

  /**
   * Move the clock on to `now` (never back: a board whose clock went back makes a new order), and
   * every lane whose place changed meanwhile to its new place, with its standing read again by
   * `restand` at that time.
   */
  advance(now: number, restand: (lane: string) => Standing | undefined): void {
    if (now <= this.now) return;
    this.now = now;
    for (let step = this.steps.minKey(); step !== undefined && step.at <= now; step = this.steps.minKey()) {
      this.remove(step.lane, this.entries.get(step.lane)!);
      this.set(step.lane, restand(step.lane));
    }
  }

  /** The lanes, first to be served first. */
  *lanes(): Generator<string, void, undefined> {
    for (const place of this.order.keys()) yield place.lane;
  }

  private remove(lane: string, e: Entry): void {
    this.order.delete(e);
    if (e.stepAt !== undefined) this.steps.delete({ at: e.stepAt, lane });
    this.entries.delete(lane);
  }

  /**
   * When the priority of a job of this standing rises next: aging adds a point each time the wait
   * reaches a further multiple of a minute ÷ agingPerMinute, until the top rule priority. Never
   * before the next millisecond (a rounding that makes the step late by one is corrected then).
   */
  private stepAfter(s: Standing, aged: number): number | undefined {
    const perMinute = this.rules.agingPerMinute;
    if (perMinute <= 0 || s.base >= this.top || aged >= this.top) return undefined;
    const steps = aged - s.base + 1;
    return Math.max(this.now + 1, s.since + Math.ceil((steps * 60_000) / perMinute));
  }
}

function earliest(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined ? b : b === undefined ? a : Math.min(a, b);
}

function same(e: Standing, s: Standing): boolean {
  return (
    e.base === s.base &&
    e.since === s.since &&
    e.servedAt === s.servedAt &&
    e.mine === s.mine &&
    e.penalty === s.penalty &&
    e.penaltyUntil === s.penaltyUntil
  );
}
