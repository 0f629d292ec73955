/**
 * A worker's picture of a queue's lanes (one per fairness key value, each a subject with its own
 * consumer) and the choice of the lane a free slot pulls from next. Pure: the dispatcher feeds it
 * what it hears (new jobs on the lanes' subjects), what it finds (a pull that came back empty) and
 * what the server counts (pending messages per lane consumer); it decides nothing else.
 *
 * The choice: among lanes whose next job is not held back by a full limit, the one whose next job
 * has the highest priority (with aging, less what the lane's recent use costs under `usage`); among
 * equals, the one served longest ago (round-robin).
 */
import {
  basePriority,
  effectivePriority,
  factsOf,
  limitsFor,
  type JobFacts,
  type JobShape,
  type LimitSlot,
} from "./evaluate.js";
import { compare, LaneOrder, type Place, type Standing } from "./lane-order.js";
import type { QosRules } from "./rules.js";

/** A queued job the worker heard about: its id, when it was submitted, and what the rules look at. */
export interface Heard {
  id: string;
  submittedAt: number;
  /** The job as the rules read it; its facts are worked out when rules first need them. */
  shape: JobShape;
  facts?: JobFacts;
  /** What the rules in force say of it, worked out once per rules version (see `judged`). */
  judged?: { rules: QosRules; limits: LimitSlot[]; base: number };
  /** When this worker heard of it, in the board's own order (see `LaneBoard.mark`). */
  heardAt?: number;
  /**
   * Not this worker's to pull before then (ms): it was free when the job was published, and the
   * server woke another free worker for it, which takes it. Past this time (that worker filled up
   * meanwhile), any worker may.
   */
  elsewhereUntil?: number;
}

/** The limits and base priority the rules give a heard job, computed once for each rules version. */
export function judged(job: Heard, rules: QosRules): { limits: LimitSlot[]; base: number } {
  if (rules.rules.length === 0) return NOTHING;
  if (job.judged?.rules !== rules) {
    const facts = (job.facts ??= factsOf(job.shape));
    job.judged = { rules, limits: limitsFor(rules, facts), base: basePriority(rules, facts) };
  }
  return job.judged;
}

const NOTHING = { limits: [], base: 0 };

interface Lane {
  /** Jobs heard of, oldest first; the lane's queue is FIFO. */
  heard: Heard[];
  /**
   * Messages the server holds beyond those heard of: jobs queued before this worker listened, or
   * jobs running elsewhere (a work queue keeps a message until it is acknowledged). A pull tells
   * which; one that finds nothing clears them until the next count. That pull is also how a dead
   * worker's job comes back: the server redelivers on a pull.
   */
  unheard: number;
  unheardSince: number;
  /** Messages of this lane this worker holds (running or parked): in flight, and accounted for. */
  mine: number;
  /** Order of the last pull that returned a job from this lane (round-robin). */
  servedAt: number;
  /** Messages the server held in the lane at the last count, and jobs heard since: at most that many now. */
  counted: number;
  heardSince: number;
  /**
   * After a pull found nothing: every message counted then was in flight on some worker, and stays
   * unpullable until the server redelivers it (ack wait), a worker hands it back (which rings
   * `freed`), or a new one arrives (the count rises above `quietFloor`, the fewest counted since).
   * Until `quietUntil` such messages are not worth a pull: without this every free worker pulls
   * once per count for every job running elsewhere.
   */
  quietUntil: number;
  quietFloor: number;
}

/** A penalty for recent use, and when it changes by time (see PickOptions). */
type Penalties = Pick<PickOptions, "penalty" | "penaltyChangesAt">;

/** The next job of a lane, as far as this worker knows it. */
export interface Head {
  lane: string;
  /** Undefined for a job queued before this worker listened: known to exist, not what it is. */
  job: Heard | undefined;
  since: number;
}

export interface PickOptions {
  now: number;
  rules: QosRules;
  /** Whether a known job would wait for a full limit now (skip its lane). */
  blocked: (job: Heard) => boolean;
  /** Whether to pull from lanes whose next job is unknown (false when enough are parked). */
  unknownHeads: boolean;
  /** Lanes to pass over whatever their jobs (a lane consumer at its cap). */
  skip?: (lane: string) => boolean;
  /** Priority points a lane loses at `now` (fair share by recent use: its value's MARS time lately). */
  penalty?: (lane: string, now: number) => number;
  /**
   * When a lane's penalty next changes by time alone (use leaving its window), undefined for
   * never. Given with `penalty`, the lanes are kept in order under it too, and the board must be
   * told of every other change of a penalty (`penaltyChanged`); without it, every lane is read at
   * each choice.
   */
  penaltyChangesAt?: (lane: string, now: number) => number | undefined;
}

export class LaneBoard {
  private readonly lanes = new Map<string, Lane>();
  /** Lanes with a job left to the worker woken for it (elsewhereUntil): what slotFreed clears. */
  private readonly deferred = new Set<Lane>();
  /**
   * Lanes this worker was given a job of (one worker per job, see Dispatcher.makeAhead), and when:
   * among lanes equal in priority and turn, these go first (see `compare`).
   */
  private readonly given = new Map<string, number>();
  /** The lanes in the order they are served, kept as they change (see `inOrder`). */
  private order: LaneOrder | undefined;
  /** The penalty the order is kept under (the last choice's), if any. */
  private penalties: Penalties | undefined;
  private served = 0;
  private hearings = 0;

  /**
   * @param quietMs how long a lane whose pull found nothing is not pulled again for messages it
   *   only counted (a job that ran on a worker that died comes back at most this much later than
   *   its ack wait); a job heard of, a rising count or `freed` ends it sooner.
   */
  constructor(private readonly quietMs = 0) {}

  private lane(name: string, now: number): Lane {
    let l = this.lanes.get(name);
    if (!l) {
      l = {
        heard: [],
        unheard: 0,
        unheardSince: now,
        mine: 0,
        servedAt: 0,
        counted: 0,
        heardSince: 0,
        quietUntil: 0,
        quietFloor: 0,
      };
      this.lanes.set(name, l);
    }
    return l;
  }

  /** A job was published on the lane. */
  heard(name: string, job: Heard): void {
    const l = this.lane(name, job.submittedAt);
    const known = l.heard.find((h) => h.id === job.id);
    if (!known) {
      l.heard.push({ ...job, heardAt: ++this.hearings });
      l.heardSince++;
      if (job.elsewhereUntil !== undefined) this.deferred.add(l);
      if (l.heard.length === 1) this.place(name);
    } else if (job.elsewhereUntil === undefined) delete known.elsewhereUntil; // woken for it after all
  }

  /** The point reached in what this worker heard: taken before a pull, given to `empty` after it. */
  mark(): number {
    return this.hearings;
  }

  /**
   * A pull from the lane returned `id`. Jobs heard before it were taken by other workers (the lane
   * is FIFO); when it was not heard of, it was one of the unheard ones.
   */
  took(name: string, id: string | undefined, now: number): void {
    const l = this.lane(name, now);
    const i = id === undefined ? -1 : l.heard.findIndex((h) => h.id === id);
    l.mine++;
    if (i >= 0) {
      l.heard.splice(0, i + 1);
      l.unheard = 0; // the server gave a job we heard of: none older is waiting (FIFO); they run elsewhere
    } else if (l.unheard > 0) l.unheard--;
    else l.heard.shift(); // one we did not hear of after all (or garbage): the head is gone either way
    l.servedAt = ++this.served;
    this.place(name);
  }

  /**
   * A slot of this worker came free: jobs it left to the workers woken for them are its to pull
   * again. Those workers may be full by now (a backlog), and this one is free.
   */
  slotFreed(): void {
    // Only the lanes that had such a job: with thousands of lanes, all of them at each freed slot
    // made this the worker's main cost.
    for (const l of this.deferred) for (const h of l.heard) delete h.elsewhereUntil;
    this.deferred.clear();
  }

  /** Whether the board has `id` as queued in the lane (heard of, not taken here, not found gone). */
  knows(name: string, id: string): boolean {
    return this.lanes.get(name)?.heard.some((h) => h.id === id) ?? false;
  }

  /** A job this worker took from the lane was settled (acknowledged, terminated or handed back). */
  settled(name: string): void {
    const l = this.lanes.get(name);
    if (l && l.mine > 0) l.mine--;
  }

  /**
   * A pull from the lane came back empty: nothing was queued there when it was made. Jobs heard
   * after `mark` (taken before the pull) may have been published after it: they stay.
   */
  empty(name: string, now: number, mark = Infinity): void {
    const l = this.lane(name, now);
    l.heard = l.heard.filter((h) => (h.heardAt ?? 0) > mark);
    l.unheard = 0;
    l.quietUntil = now + this.quietMs;
    l.quietFloor = l.counted;
    this.place(name);
  }

  /** A worker handed a message of the lane back (or its retry delay ran out): worth a pull again. */
  freed(name: string): void {
    const l = this.lanes.get(name);
    if (l) l.quietUntil = 0;
  }

  /**
   * How many messages the server holds in the lane (queued, or delivered and not yet
   * acknowledged). Jobs heard of beyond that number were taken by other workers; messages beyond
   * those heard of are worth a pull. Jobs heard after `mark` (taken before the count was asked for)
   * may have been published after it: they are kept, whatever the count.
   */
  counted(name: string, messages: number, now: number, mark = Infinity): void {
    const l = this.lane(name, now);
    const waiting = Math.max(0, messages - l.mine);
    const before = l.heard.filter((h) => (h.heardAt ?? 0) <= mark);
    const since = l.heard.length - before.length;
    l.counted = messages;
    l.heardSince = since;
    if (before.length > waiting) l.heard.splice(0, before.length - waiting);
    let unheard = waiting - Math.min(before.length, waiting);
    if (now < l.quietUntil && messages <= l.quietFloor) {
      l.quietFloor = messages; // fewer now: one more later is a new message
      unheard = 0; // all in flight when a pull last found nothing, and none new since
    } else l.quietUntil = 0;
    if (unheard > 0 && l.unheard === 0) l.unheardSince = now;
    l.unheard = unheard;
    if (messages === 0 && l.mine === 0 && since === 0) {
      this.lanes.delete(name);
      this.deferred.delete(l);
    }
    this.place(name);
  }

  /** The ahead group gave this worker a job of the lane (see `compare`: preferred among equals). */
  give(name: string, at: number): void {
    this.given.set(name, at);
    this.place(name);
  }

  /** Forget the lanes given to this worker that `keep` no longer keeps. */
  forgetGiven(keep: (name: string, at: number) => boolean): void {
    for (const [name, at] of this.given)
      if (!keep(name, at)) {
        this.given.delete(name);
        this.place(name);
      }
  }

  /** How many jobs the board has queued in the lane (heard of, or counted beyond those). */
  queuedIn(name: string): number {
    const l = this.lanes.get(name);
    return l ? l.heard.length + l.unheard : 0;
  }

  /**
   * The most messages the server can hold in the lane now (queued and in flight, every worker's):
   * the last count and the jobs heard since. A job published while the doorbell missed it is not
   * in it; the next count is.
   */
  atMost(name: string): number {
    const l = this.lanes.get(name);
    return l ? l.counted + l.heardSince : 0;
  }

  /** Lanes the board knows of, with their queued counts (for the registry and explanations). */
  queued(): Map<string, number> {
    return new Map([...this.lanes].map(([name, l]) => [name, l.heard.length + l.unheard]));
  }

  get size(): number {
    return this.lanes.size;
  }

  private head(name: string, l: Lane, now: number): Head | undefined {
    if (l.unheard > 0) return { lane: name, job: undefined, since: l.unheardSince };
    // The lane is FIFO: a pull takes its oldest job, whichever this worker was woken for. Jobs left
    // to the workers woken for them do not count, unless this worker was woken for a later one.
    const job = l.heard[0];
    const mine = l.heard.some((h) => h.elsewhereUntil === undefined || h.elsewhereUntil <= now);
    if (!job || !mine) return undefined;
    return { lane: name, job, since: job.submittedAt };
  }

  /** What places a lane in the order at `now` (undefined: nothing this worker knows is queued there). */
  private standing(
    name: string,
    l: Lane,
    rules: QosRules,
    now: number,
    pen: Penalties | undefined,
  ): Standing | undefined {
    const head: { base: number; since: number } | undefined =
      l.unheard > 0
        ? { base: 0, since: l.unheardSince }
        : l.heard[0] && { base: judged(l.heard[0], rules).base, since: l.heard[0].submittedAt };
    if (!head) return undefined;
    return {
      ...head,
      servedAt: l.servedAt,
      mine: this.given.has(name),
      penalty: pen?.penalty?.(name, now) ?? 0,
      penaltyUntil: pen?.penaltyChangesAt?.(name, now),
    };
  }

  /** A lane's standing for the order as it is kept (its rules, its clock, its penalty). */
  private standingInOrder(name: string): Standing | undefined {
    const l = this.lanes.get(name);
    return l && this.order && this.standing(name, l, this.order.rules, this.order.time, this.penalties);
  }

  /** Put a lane that changed in its place in the order (when there is one). */
  private place(name: string): void {
    this.order?.set(name, this.standingInOrder(name));
  }

  /** A lane's penalty changed (its user's recent use): it moves in the order. */
  penaltyChanged(name: string): void {
    if (this.penalties) this.place(name);
  }

  /**
   * The order for these rules and penalty at `now`: kept from the last choice, made anew when the
   * rules changed, a penalty came or went, or the clock went back.
   */
  private orderAt(opts: PickOptions): LaneOrder {
    const pen = opts.penalty && opts.penaltyChangesAt ? opts : undefined;
    const stale =
      !this.order ||
      this.order.rules !== opts.rules ||
      opts.now < this.order.time ||
      !pen !== !this.penalties;
    this.penalties = pen && { penalty: pen.penalty, penaltyChangesAt: pen.penaltyChangesAt };
    if (stale) {
      this.order = new LaneOrder(opts.rules, opts.now);
      for (const name of this.lanes.keys()) this.place(name);
    } else this.order!.advance(opts.now, (name) => this.standingInOrder(name));
    return this.order!;
  }

  /** Whether a slot may pull from the lane now, by `opts` (`blocked` last: the costly test). */
  private eligible(name: string, l: Lane, opts: PickOptions): boolean {
    const head = this.head(name, l, opts.now);
    if (!head || (!head.job && !opts.unknownHeads) || opts.skip?.(name)) return false;
    return !(head.job && opts.blocked(head.job));
  }

  /** Whether a choice under `opts` reads every lane: a penalty that may change unheard of. */
  private readsAll(opts: PickOptions): boolean {
    return opts.penalty !== undefined && opts.penaltyChangesAt === undefined;
  }

  /** The lane to pull from next (the first of `inOrder`), or undefined when none has a job this worker may take. */
  pick(opts: PickOptions): string | undefined {
    if (this.readsAll(opts)) {
      this.order = undefined; // not kept up while every lane is read
      return this.scan(opts);
    }
    for (const name of this.inOrder(opts)) return name;
    return undefined;
  }

  /**
   * The lanes a slot may pull from, in the order it takes them (`compare`), looking at no more
   * than `within` lanes. The order is kept as lanes change, so the first costs a few steps however
   * many lanes there are; under a penalty the board is not told of, every lane is read and sorted.
   */
  *inOrder(opts: PickOptions, within = Infinity): Generator<string, void, undefined> {
    let looked = 0;
    if (this.readsAll(opts)) {
      this.order = undefined;
      const places = [...this.lanes].flatMap(([name, l]) => {
        const place = this.placeAt(name, l, opts);
        return place ? [place] : [];
      });
      for (const place of places.sort(compare)) {
        if (++looked > within) return;
        if (this.eligible(place.lane, this.lanes.get(place.lane)!, opts)) yield place.lane;
      }
      return;
    }
    for (const name of this.orderAt(opts).lanes()) {
      if (++looked > within) return;
      if (this.eligible(name, this.lanes.get(name)!, opts)) yield name;
    }
  }

  /** A lane's place at `opts.now`, read afresh (the penalty included). */
  private placeAt(name: string, l: Lane, opts: PickOptions): Place | undefined {
    const s = this.standing(name, l, opts.rules, opts.now, opts);
    if (!s) return undefined;
    const priority = effectivePriority(opts.rules, s.base, opts.now - s.since) - s.penalty;
    return { lane: name, priority, servedAt: s.servedAt, mine: s.mine, since: s.since };
  }

  /**
   * The choice by reading every lane: the best lane of `compare` that a slot may pull from.
   * `blocked` (the costly test: it looks up limit slots) is asked only of a lane that would beat
   * the best found so far.
   */
  scan(opts: PickOptions): string | undefined {
    let best: Place | undefined;
    for (const [name, l] of this.lanes) {
      const head = this.head(name, l, opts.now);
      if (!head || (!head.job && !opts.unknownHeads) || opts.skip?.(name)) continue;
      const place = this.placeAt(name, l, opts)!;
      if ((!best || compare(place, best) < 0) && !(head.job && opts.blocked(head.job))) best = place;
    }
    return best?.lane;
  }
}
