/**
 * A worker's dispatch: which job a free slot takes next. Jobs wait in lanes (`mars.jobs.<queue>.
 * <lane>`, one per fairness key value, each with a durable consumer all workers share). The worker
 * hears every job published on its queue's lanes (a core subscription: no consumer), counts what
 * the server holds per lane every second, and pulls with `no_wait` from the lane the rules put first
 * (LaneBoard): one message per turn when several lanes have work, as many as it has free slots when
 * one lane has it all. A job whose limits are full after it was pulled is parked: it
 * takes no slot, its message is kept alive with `working()`, and it starts as soon as a slot of
 * its limits is given back. Nothing here is central: every worker decides for its own slots, and
 * the limits are held in the broker by compare-and-set (SlotTable).
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { ConsumerConfig, JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { z } from "zod";
import {
  consumerName,
  decode,
  type JobMessage,
  jobMessageSchema,
  type JobMsg,
  JOBS_STREAM,
  type LaneAsk,
  isLaneAsWanted,
  laneConsumerConfig,
  laneConsumerName,
  laneOfAdvisory,
  isTopologyMissing,
  Puller,
  subjects,
} from "../broker/index.js";
import { BrokerError, QosDeniedError } from "../core/index.js";
import {
  basePriority,
  coversLane,
  deniedBy,
  effectivePriority,
  factsOf,
  type Holder,
  isLimit,
  type JobFacts,
  judged,
  LaneBoard,
  type PickOptions,
  laneCapOf,
  laneMessages,
  laneOf,
  limitFull,
  limitsFor,
  type LimitSlot,
  type QosRules,
  queuedJobSchema,
  type RulesFollower,
  slotLimits,
  type SlotTable,
  usagePenalty,
  type UsageTable,
  usageWindowMs,
  withFleetCap,
} from "../qos/index.js";
import type { AttemptEnd, AttemptEnv, JobAttempt } from "./attempt.js";
import { handleDelivery } from "./delivery.js";

/** How often the worker counts what the server holds per lane (catches jobs it did not hear of). */
export const COUNT_EVERY_MS = 1000;
/**
 * How long a job whose wake-up went to another free worker is left to that worker: it pulls at
 * once, so the others' counts meanwhile would only pull in vain (it runs there). Should it have
 * filled up before pulling, another worker takes the job this much later.
 */
const WOKEN_ELSEWHERE_MS = 2000;
/** The longest a lane whose pull found nothing goes without a pull for messages it only counted. */
const QUIET_MAX_MS = 5000;
/** The lane-less subject is counted at least once in this many counts (see Dispatcher.count). */
const LANELESS_RECOUNT = 10;
const PULL_TIMEOUT_MS = 5000;
/**
 * A `no_wait` pull the server has not answered in this time is given up (see pull): nats-server
 * never answers one whose messages another worker's pull took (two workers after a new user's one
 * job; test/pull.test.ts). Waiting PULL_TIMEOUT_MS for it stalled every free slot of the worker
 * (two such pulls in a run of 1,000 users' jobs took most of one worker's time).
 */
const NO_WAIT_PULL_TIMEOUT_MS = 500;

/**
 * How long a pull from a lane with a cap (`max_ack_pending`) waits on the server, when the lane may
 * hold as many messages as the cap: such a pull never uses `no_wait`, because at the cap
 * nats-server 2.9 leaves a `no_wait` pull waiting, and would deliver to it later, after it gave up.
 */
const CAPPED_PULL_MS = 20;
const CAP_HOLD_MS = 1000;
const CAP_HOLD_MAX_MS = 8000;

/**
 * A pull this soon after its wake-up that finds nothing is made again, waiting up to STORE_LAG_MS
 * on the server for the message to be stored.
 */
const FRESH_MS = 50;
const STORE_LAG_MS = 20;

/**
 * How many lane consumers a worker has made at once, in the background, while it pulls from the
 * lanes that have one: on a cluster each is a replicated group that takes about a second to form,
 * which one at a time in the dispatch loop would cost every new user's first job that second.
 */
const MAKING_MAX = 16;
/**
 * How far down the order a worker looks for lanes to have made beside the one it waits for: the
 * lanes in front may all have their consumers (made ahead), and reading past them all would cost
 * what keeping the lanes in order saves. A lane further back is made when its turn comes.
 */
const LOOK_AHEAD = 4 * MAKING_MAX;
/** How long a lane the ahead group gave this worker a job of is preferred (at most; see pick). */
const GIVEN_MS = 10_000;
/** After a failed ask for a lane's consumer, the lane is passed over this long, doubling (to 2 s). */
const MAKE_RETRY_MS = 100;
const MAKE_RETRY_MAX_MS = 2000;

/** The queue group of a queue's free workers, woken one per new job (`nats sub` shows it). */
const wakeGroup = (queue: string): string => `mars-free-workers-${queue}`;
/** The queue group of all of a queue's workers, one of which makes each new job's lane ahead. */
const aheadGroup = (queue: string): string => `mars-lane-makers-${queue}`;

/**
 * A pull nobody answered (503), or not within its time: its consumer may be gone (the server
 * removed an idle lane's), or, on nats-server 2.9, another pull took its messages (Puller).
 */
function isUnanswered(err: unknown): boolean {
  return err instanceof BrokerError && (err.details["status"] === 503 || err.details["unanswered"] === true);
}

export interface Parked {
  msg: JobMsg;
  job: JobMessage;
  lane: string;
  limits: LimitSlot[];
  holder: Holder;
  priority: number;
  /** Why it waits, as `mars-fleet status` says it. */
  reason: string;
}

export interface DispatcherDeps {
  nc: NatsConnection;
  /** Where this connection may receive replies (its role's inbox). */
  inboxPrefix: string;
  jsm: JetStreamManager;
  queue: string;
  workerId: string;
  concurrency: number;
  heartbeatMs: number;
  /** The queue's own consumer's settings (its max_ack_pending is the fleet's cap). */
  template: ConsumerConfig;
  rules: RulesFollower;
  slots: SlotTable;
  /** Each fairness value's recent MARS time (rules with `usage`). */
  usage: UsageTable;
  log: Logger;
  /** What each attempt runs with. */
  env: AttemptEnv;
  /** How long a lane consumer may go unused before the server removes it (0: kept). */
  laneIdleMs: number;
  /** Have a lane's consumer made, or given this cap (a keeper does it: broker/keeper.ts). */
  keepLane: (lane: string, ask: LaneAsk) => Promise<void>;
}

/** Told when an attempt starts and when it ends (metrics, the registry): they watch, they decide nothing. */
export interface DispatchObserver {
  started?(running: number): void;
  settled?(end: AttemptEnd | undefined, running: number): void;
  /** A job was held aside for a limit, or left the jobs held aside. */
  parked?(held: number): void;
}

export class Dispatcher {
  private readonly board: LaneBoard;
  private readonly parkedJobs: Parked[] = [];
  private readonly running = new Set<Promise<void>>();
  /**
   * Stream sequences of the messages this worker runs or holds aside. After a consumer leader
   * change the server may deliver one of them again, even with the same delivery count: a second
   * attempt here would then own the same record (same worker, attempt and sequence) and both would
   * pass the commit fence. The running attempt keeps the message instead (its acks name the same
   * sequence).
   */
  private readonly holding = new Set<number>();
  /** The attempts running now: the one route by which cancels and hand-backs reach them. */
  readonly attempts = new Set<JobAttempt>();
  private readonly observers: DispatchObserver[] = [];
  /** Lanes whose consumer this worker made sure exists, with the `max_ack_pending` it gave it (-1: none). */
  private readonly consumers = new Map<string, number>();
  private free: number;
  /** Messages delivered to pulls that were over, to run when the loop comes round (see stray). */
  private readonly strays: JobMsg[] = [];
  /** A lane-less job heard, or found by the last count, since that count: count that subject. */
  private lanelessSeen = false;
  private countsSinceLaneless = 0;
  /** When the last count was asked for (see count; the loop counts first after being full). */
  private countedAt = 0;
  private pulling = true;
  private wakeUp: (() => void) | undefined;
  private loopDone: Promise<void> | undefined;
  private doorbell: Subscription | undefined;
  /** The queue group that wakes one free worker per new job (see syncWakeBell). */
  private wakeBell: Subscription | undefined;
  /** The same group, for wake-ups other workers pass on (a job they were woken for when full). */
  private passBell: Subscription | undefined;
  /** Lanes whose new job woke this worker, and when: a first empty pull there is tried again. */
  private readonly rung = new Map<string, number>();
  /** Jobs this worker was woken for and has not taken: passed on if it fills up first. */
  private readonly wokenFor = new Map<string, { lane: string; data: Uint8Array }>();
  private laneless: Subscription | undefined;
  /** The queue group that has one worker make each new job's lane ahead (see makeAhead). */
  private aheadBell: Subscription | undefined;
  /** Advisories of lane consumers the server removed. */
  private gone: Subscription | undefined;
  /** Other workers' word that a capped lane has room again, or a job of a lane was handed back (see launch, ringFreed). */
  private freed: Subscription | undefined;
  private unreadable = 0;
  /** The last choice passed over a lane because its next job's limit was full. */
  private skippedBlocked = false;
  private countTimer: NodeJS.Timeout | undefined;
  private parkTimer: NodeJS.Timeout | undefined;
  private rulesNow: QosRules;
  private readonly fleetCap: number;
  /**
   * Lanes whose consumer seemed at its cap (a pull found nothing though jobs wait there): passed
   * over until a count finds room (the consumer's own count of jobs in flight), a job this worker
   * took from the lane is settled, or the hold runs out. The hold doubles with each pull in a row
   * that finds nothing (1 s up to CAP_HOLD_MAX_MS): a job of the lane whose worker died is
   * redelivered only to a pull, and still counts as in flight until then.
   */
  private readonly atCap = new Map<string, { until: number; strikes: number }>();
  /**
   * Lanes whose consumer is being made (or given its cap) in the background, and lanes whose last
   * ask failed, passed over until `until` (see makeLane).
   */
  private readonly making = new Set<string>();
  private readonly makeFailed = new Map<string, { until: number; strikes: number }>();
  /** How many counts read a known lane consumer back in turn (see readBack). */
  private verified = 0;

  private readonly puller: Puller;

  constructor(private readonly deps: DispatcherDeps) {
    this.puller = new Puller(deps.nc, deps.inboxPrefix, (msg) => this.stray(msg));
    // A lane whose pull found nothing is pulled again for what it only counted after a heartbeat
    // interval, at most QUIET_MAX_MS: a dead worker's job, back after its ack wait, waits at most
    // that much longer (5 s on the default 60 s ack wait).
    this.board = new LaneBoard(Math.min(deps.heartbeatMs, QUIET_MAX_MS));
    this.free = deps.concurrency;
    this.fleetCap = Math.max(0, deps.template.max_ack_pending ?? 0);
    this.rulesNow = withFleetCap(deps.rules.rules, this.fleetCap);
  }

  async start(): Promise<void> {
    const { deps } = this;
    deps.rules.onChange((r) => {
      this.rulesNow = withFleetCap(r, this.fleetCap);
      this.followTables();
      this.atCap.clear();
      void this.recap()
        .then(() => this.count())
        .catch((err: unknown) => deps.log.warn({ err }, "could not apply the rules' lane cap"));
      this.wake();
    });
    this.followTables();
    // A user's recent use changed: her lane moves in the order (under `usage` rules).
    deps.usage.onChange((token) => this.board.penaltyChanged(token));
    // A slot given back matters only to a job held back by a full limit.
    deps.slots.onChange(() => {
      if (this.parkedJobs.length > 0 || (this.skippedBlocked && this.free > 0)) this.wake();
    });
    // Every worker hears every job (it knows each lane's queue), but only one free worker is woken
    // to pull it: the wake bell's queue group, which a worker joins while it has a free slot.
    this.doorbell = deps.nc.subscribe(subjects.lanes(deps.queue), {
      callback: (_err, msg) => {
        this.hear(this.laneOf(msg.subject), msg.data, false);
      },
    });
    this.syncWakeBell();
    // One worker per new job, full or not, has its lane's consumer made ahead (see makeAhead).
    this.aheadBell = deps.nc.subscribe(subjects.lanes(deps.queue), {
      queue: aheadGroup(deps.queue),
      callback: (_err, msg) => {
        const lane = this.laneOf(msg.subject);
        this.board.give(lane, Date.now());
        this.makeAhead(lane);
      },
    });
    // The server removed an idle lane's consumer: made again before the lane's next pull, instead
    // of that pull going unanswered first (NO_WAIT_PULL_TIMEOUT_MS).
    this.gone = deps.nc.subscribe(subjects.consumersDeleted, {
      callback: (_err, msg) => {
        const lane = laneOfAdvisory(deps.queue, msg.subject);
        if (lane) this.consumers.delete(lane);
      },
    });
    // A job of a capped lane settled on another worker: the lane is no longer at its cap. Or a
    // worker handed a job back: it may be pulled again now, quiet lane or not.
    this.freed = deps.nc.subscribe(subjects.lanesFreed(deps.queue), {
      callback: (_err, msg) => {
        const lane = msg.subject.slice(subjects.lanesFreed(deps.queue).length - 1);
        this.board.freed(lane);
        if (this.atCap.delete(lane) && this.free > 0) this.wake();
      },
    });
    // Jobs of earlier clients, published without a lane.
    this.laneless = deps.nc.subscribe(subjects.jobs(deps.queue), {
      callback: (_err, msg) => {
        this.lanelessSeen = true;
        this.hear("", msg.data, true); // earlier clients' jobs: every free worker pulls (rare)
      },
    });
    await this.count({ full: true });
    this.countTimer = setInterval(() => {
      if (this.free > 0 || this.parkedJobs.length > 0)
        void this.count().catch((err: unknown) => deps.log.debug({ err }, "could not count the lanes"));
    }, COUNT_EVERY_MS);
    this.countTimer.unref();
    this.parkTimer = setInterval(() => {
      for (const p of this.parkedJobs) p.msg.working();
    }, deps.heartbeatMs);
    this.parkTimer.unref();
    this.loopDone = this.loop();
  }

  /**
   * Once the rules have limits, keep every slot's holders at hand (see SlotTable.follow); once they
   * have `usage`, every user's recent use (UsageTable.follow).
   */
  private followTables(): void {
    if (this.rulesNow.rules.some(isLimit)) this.deps.slots.follow();
    if (usageWindowMs(this.rulesNow) !== undefined) this.deps.usage.follow();
  }

  observe(observer: DispatchObserver): void {
    this.observers.push(observer);
  }

  /** Jobs pulled but waiting for a limit, with why (for the registry entry). */
  get parked(): ReadonlyArray<Parked> {
    return this.parkedJobs;
  }

  /** After a reconnect: count again, the jobs published meanwhile were not heard. */
  recount(): void {
    void this.count({ full: true }).catch((err: unknown) =>
      this.deps.log.debug({ err }, "could not count the lanes"),
    );
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  private sleepUntilWoken(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeUp = undefined;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** The lane of a job subject of this queue: "" for the lane-less one of earlier clients. */
  private laneOf(subject: string): string {
    return subject === subjects.jobs(this.deps.queue)
      ? ""
      : subject.slice(subjects.lanes(this.deps.queue).length - 1);
  }

  /**
   * In the wake bell's queue group while there is a free slot, out of it while there is none: the
   * server hands each new job's wake-up to one free worker, instead of every free worker pulling
   * for it (all but one in vain). A burst of jobs may wake one worker for more jobs than it has
   * free slots: once full, it passes the other wake-ups on to the group (`mars.wake.<queue>.<lane>`).
   */
  private syncWakeBell(): void {
    const want = this.pulling && this.free > 0;
    if (want && !this.wakeBell) {
      const woken = (prefix: string) => (_err: Error | null, msg: { subject: string; data: Uint8Array }) => {
        const lane = msg.subject.slice(prefix.length - 1);
        this.rung.set(lane, Date.now());
        const id = this.hear(lane, msg.data, true);
        if (id !== undefined) this.wokenFor.set(id, { lane, data: msg.data });
      };
      const queue = wakeGroup(this.deps.queue);
      this.wakeBell = this.deps.nc.subscribe(subjects.lanes(this.deps.queue), {
        queue,
        callback: woken(subjects.lanes(this.deps.queue)),
      });
      this.passBell = this.deps.nc.subscribe(subjects.lanesWake(this.deps.queue), {
        queue,
        callback: woken(subjects.lanesWake(this.deps.queue)),
      });
    } else if (!want && this.wakeBell) {
      this.wakeBell.unsubscribe();
      this.passBell?.unsubscribe();
      this.wakeBell = undefined;
      this.passBell = undefined;
      this.passOnWakes();
    }
  }

  /** Full: the jobs it was woken for and did not take go to another free worker, if there is one. */
  private passOnWakes(): void {
    for (const [id, { lane, data }] of this.wokenFor)
      if (this.pulling && this.board.knows(lane, id))
        this.deps.nc.publish(subjects.laneWake(this.deps.queue, lane), data);
    this.wokenFor.clear();
  }

  /** Put a job heard of on the board; its id, when it is one. */
  private hear(lane: string, data: Uint8Array, wake: boolean): string | undefined {
    let job: z.infer<typeof queuedJobSchema> | undefined;
    try {
      job = queuedJobSchema.parse(JSON.parse(new TextDecoder().decode(data)));
    } catch {
      job = undefined; // not a job: pulled all the same, and dead-lettered by the run
    }
    const shape = job ?? { queue: this.deps.queue, environ: {}, requests: [] };
    const id = job?.id ?? `unreadable-${++this.unreadable}`;
    // Heard but not woken while in the wake group: the server woke another free worker for it.
    const elsewhere = !wake && this.wakeBell !== undefined;
    this.board.heard(lane, {
      id,
      submittedAt: job?.submittedAt ?? Date.now(),
      shape,
      ...(elsewhere && { elsewhereUntil: Date.now() + WOKEN_ELSEWHERE_MS }),
    });
    if (wake && this.free > 0) this.wake();
    return job?.id;
  }

  /**
   * Count what the server holds per lane, and correct the board with it. The lane-less subject
   * (earlier clients) costs a request of its own, made only when it may hold something: on the
   * first count and after a reconnect, after a lane-less job was heard, while the last count found
   * some, and every LANELESS_RECOUNT counts in case the doorbell missed one.
   */
  private async count(opts: { full?: boolean } = {}): Promise<void> {
    const now = Date.now();
    this.countedAt = now;
    const laneless =
      opts.full === true || this.lanelessSeen || ++this.countsSinceLaneless >= LANELESS_RECOUNT;
    this.lanelessSeen = false;
    const mark = this.board.mark();
    const counts = await laneMessages(this.deps.jsm, this.deps.queue, { laneless });
    if (laneless) {
      this.countsSinceLaneless = 0;
      // Still some: counted again next time (not all were heard of: queued before this worker).
      this.lanelessSeen = (counts.get("") ?? 0) > 0;
    }
    for (const lane of this.board.queued().keys())
      if (!counts.has(lane) && (lane !== "" || laneless)) counts.set(lane, 0);
    for (const [lane, n] of counts) this.board.counted(lane, n, now, mark);
    this.board.forgetGiven((lane, at) => now - at <= GIVEN_MS && (counts.get(lane) ?? 0) > 0);
    await this.readBack([...this.atCap.keys(), ...this.nextToVerify()]);
    if (this.free > 0) this.wake();
  }

  /** The limits of a job pulled from `lane` that take slots (not those its lane consumer holds). */
  private limitsOf(facts: JobFacts, lane: string): LimitSlot[] {
    return slotLimits(limitsFor(this.rulesNow, facts), lane);
  }

  /**
   * Read lanes' consumers back (one request each, at once):
   * - a lane passed over at its cap is free again when its consumer has fewer jobs in flight than
   *   the cap, or none queued;
   * - a consumer that lost the cap is given it again: a worker from before the cap, or an
   *   operator's edit, sets -1 when it makes or edits the consumer.
   */
  private async readBack(lanes: string[]): Promise<void> {
    await Promise.all(
      [...new Set(lanes)].map(async (lane) => {
        const cap = this.capOf(lane);
        const name = laneConsumerName(this.deps.queue, lane);
        try {
          const info = await this.deps.jsm.consumers.info(JOBS_STREAM, name);
          if (cap <= 0 || info.num_ack_pending < cap || info.num_pending === 0) this.atCap.delete(lane);
          if (cap > 0 && info.config.max_ack_pending !== cap) {
            this.deps.log.warn(
              { consumer: name, found: info.config.max_ack_pending, cap },
              "a lane consumer lost the per-user limit's cap; setting it again",
            );
            await this.setCap(lane, cap);
          }
        } catch (err) {
          // Gone, or the server did not answer: made again (with the cap) at the next pull, which tells.
          this.deps.log.debug({ err, lane }, "could not read a lane consumer back");
          this.atCap.delete(lane);
          this.consumers.delete(lane);
        }
      }),
    );
  }

  /**
   * Under a lane cap, the known lane to read back at this count, in turn: a lost cap is restored
   * within a count per lane.
   */
  private nextToVerify(): string[] {
    if (!this.rulesNow.rules.some(isLimit) || this.consumers.size === 0) return [];
    const n = this.verified++ % this.consumers.size;
    let i = 0;
    for (const lane of this.consumers.keys()) if (i++ === n) return [lane];
    return [];
  }

  /**
   * Have a lane's consumer made, or given this cap (`max_ack_pending`; -1: none) and the idle time,
   * and remember it was.
   */
  private async setCap(lane: string, cap: number): Promise<void> {
    // With the idle threshold too: a lane made by a worker from before it gets one.
    await this.deps.keepLane(lane, { cap, idleMs: this.deps.laneIdleMs });
    this.consumers.set(lane, cap);
  }

  /**
   * Make sure a lane's consumer is there with this cap: read it (one request), and ask a keeper
   * only when it is missing or differs (another worker may have had it made: see makeAhead).
   */
  private async ensureLane(lane: string, cap: number): Promise<void> {
    // As the keeper would make it (the one definition of a lane consumer).
    const want = laneConsumerConfig(this.deps.template, this.deps.queue, lane, {
      cap,
      idleMs: this.deps.laneIdleMs,
    });
    const found = await this.deps.jsm.consumers.info(JOBS_STREAM, want.durable_name).catch((err: unknown) => {
      if (isTopologyMissing(err)) return undefined; // not there: a keeper makes it
      throw err;
    });
    if (found && isLaneAsWanted(found.config, want)) this.consumers.set(lane, cap);
    else await this.setCap(lane, cap);
  }

  /** The `max_ack_pending` a lane's consumer gets under the rules in force (-1: no cap; see laneCapOf). */
  private capOf(lane: string): number {
    return lane === "" ? -1 : (laneCapOf(this.rulesNow, this.deps.queue, lane) ?? -1);
  }

  /** Give every lane consumer this worker knows the cap of the rules in force (after they changed). */
  private async recap(): Promise<void> {
    for (const [lane, applied] of this.consumers) {
      const cap = this.capOf(lane);
      if (applied !== cap) await this.setCap(lane, cap);
    }
  }

  private async loop(): Promise<void> {
    let failures = 0;
    while (this.pulling) {
      if (this.strays.length > 0) await this.takeStrays();
      if (this.free === 0) {
        await this.sleepUntilWoken(COUNT_EVERY_MS);
        continue;
      }
      try {
        if (Date.now() - this.countedAt > 2 * COUNT_EVERY_MS) {
          // Full until now, so nothing was counted: jobs heard of meanwhile may have run on other
          // workers, and their lanes' consumers gone idle since. Counted first, or the free slot
          // would go to those lanes in turn (the oldest first), having each one's consumer made
          // again (with the next ones in order) only for its pull to find nothing.
          await this.count().catch((err: unknown) =>
            this.deps.log.debug({ err }, "could not count the lanes"),
          );
        }
        if (await this.unpark()) continue;
        this.skippedBlocked = false;
        const parkRoom = this.parkedJobs.length < this.deps.concurrency;
        const passedOver = (name: string): boolean =>
          (this.atCap.get(name)?.until ?? 0) > Date.now() || this.makeFailing(name);
        const choice: PickOptions = {
          now: Date.now(),
          rules: this.rulesNow,
          blocked: (job) => {
            const full = judged(job, this.rulesNow).limits.filter(
              (s) => s.lane === undefined && this.deps.slots.seemsFull(s),
            );
            if (full.length === 0) return false;
            // A full limit that holds every job of the lane alike (a per-user limit with lanes by
            // user, or a limit on one user by name) holds the whole lane back: pass it over, and
            // its jobs keep their order. Any other (a dataset cap) holds back this job alone: while
            // there is room, pull it and hold it aside, so the lane's next job can go.
            const laneWide = full.some((s) => coversLane(this.rulesNow, s.rule));
            if (!laneWide && parkRoom) return false;
            this.skippedBlocked = true;
            return true;
          },
          unknownHeads: parkRoom,
          skip: passedOver,
          ...this.usagePenalty(),
        };
        const lane = this.board.pick(choice);
        if (lane === undefined) {
          await this.sleepUntilWoken(COUNT_EVERY_MS);
          continue;
        }
        if (lane !== "" && !this.consumers.has(lane)) {
          // The lane that goes next has no consumer yet. It is made in the background, with the
          // next lanes in order that have none, among the next LOOK_AHEAD (a replicated consumer
          // takes about a second to form), and no lane after it is pulled from meanwhile: the
          // order stays as chosen.
          if (this.mayMake(lane)) this.makeLane(lane);
          this.makeNext(choice, passedOver);
          await this.sleepUntilWoken(COUNT_EVERY_MS);
          continue;
        }
        const mark = this.board.mark();
        let msgs = await this.pull(lane, this.batchFor(lane));
        const rungAt = this.rung.get(lane);
        this.rung.delete(lane);
        if (msgs.length === 0 && rungAt !== undefined && Date.now() - rungAt < FRESH_MS) {
          // Woken for a job just published, and none there: the server may tell subscribers of a
          // message before its stream has stored it. A pull that waits a moment gets it once stored.
          msgs = await this.pull(lane, 1, STORE_LAG_MS);
        }
        failures = 0;
        if (!this.pulling) {
          for (const m of msgs) m.nak(); // arrived as we began to stop: let another worker have it
          if (msgs.length > 0) this.ringFreed(lane);
          break;
        }
        if (msgs.length === 0) {
          // Under a cap, nothing may mean the lane's limit is full, not that the lane is empty.
          const cap = this.capOf(lane);
          if (cap > 0 && this.board.atMost(lane) >= cap) {
            const strikes = (this.atCap.get(lane)?.strikes ?? 0) + 1;
            const hold = Math.min(CAP_HOLD_MAX_MS, CAP_HOLD_MS * 2 ** (strikes - 1));
            this.atCap.set(lane, { until: Date.now() + hold, strikes });
            void this.readBack([lane]).then(() => this.atCap.has(lane) || this.wake());
            // The jobs it knows of there still wait (the server held them back): the lane keeps
            // its place, and is pulled from again as soon as it has room, not after the next count.
          } else this.board.empty(lane, Date.now(), mark);
        }
        if (msgs.length > 0) this.atCap.delete(lane);
        for (const m of msgs) await this.admit(lane, m);
      } catch (err) {
        failures++;
        if (failures === 1) this.deps.log.warn({ err }, "pull failed; retrying");
        await sleep(Math.min(2000, 100 * failures));
      }
    }
  }

  /** Whether the last ask for a lane's consumer failed, and the lane is passed over a while yet. */
  private makeFailing(lane: string): boolean {
    return (this.makeFailed.get(lane)?.until ?? 0) > Date.now();
  }

  /**
   * Whether a lane's consumer may be asked for now: the lane has none this worker knows of, none
   * is being asked for, fewer than MAKING_MAX asks are in flight, and no failure is waited out.
   */
  private mayMake(lane: string): boolean {
    return (
      lane !== "" &&
      !this.consumers.has(lane) &&
      !this.making.has(lane) &&
      this.making.size < MAKING_MAX &&
      !this.makeFailing(lane)
    );
  }

  /**
   * A new job's lane: have its consumer made now, in the background, by this worker alone (the
   * server hands each job to one worker of the group), so that whichever worker pulls it later
   * finds it made. A new user's first job would otherwise wait for it with a slot free: a request
   * round trip on one server, about a second for a replicated consumer on a cluster. Not beyond
   * MAKING_MAX at once: a lane not made ahead is made when picked, as before.
   */
  private makeAhead(lane: string): void {
    if (this.pulling && this.mayMake(lane)) this.makeLane(lane);
  }

  /**
   * Have the lanes next in order that have no consumer made, among the next LOOK_AHEAD, up to
   * MAKING_MAX asks at once.
   */
  private makeNext(choice: PickOptions, passedOver: (lane: string) => boolean): void {
    const unmade: PickOptions = { ...choice, skip: (name) => passedOver(name) || !this.mayMake(name) };
    const next: string[] = [];
    for (const name of this.board.inOrder(unmade, LOOK_AHEAD)) {
      if (this.making.size + next.length >= MAKING_MAX) break;
      next.push(name);
    }
    for (const name of next) this.makeLane(name);
  }

  /**
   * Have a lane's consumer made in the background (asked of a keeper: broker/keeper.ts), then wake
   * the loop to pull from it. A failed ask passes the lane over for a while, then asks again.
   */
  private makeLane(lane: string): void {
    this.making.add(lane);
    // Asked of a keeper straight away, not read first: a lane this worker has not seen is most often
    // a new user's, and a keeper finds one made by another worker as asked in the same one read.
    this.setCap(lane, this.capOf(lane))
      .then(() => this.makeFailed.delete(lane))
      .catch((err: unknown) => {
        const strikes = (this.makeFailed.get(lane)?.strikes ?? 0) + 1;
        const wait = Math.min(MAKE_RETRY_MAX_MS, MAKE_RETRY_MS * 2 ** (strikes - 1));
        this.makeFailed.set(lane, { until: Date.now() + wait, strikes });
        // Said once per lane and failure run; while stopping, a closed connection is expected.
        if (strikes === 1 && this.pulling)
          this.deps.log.warn({ err, lane }, "could not have a lane's consumer made; asking again");
      })
      .finally(() => {
        this.making.delete(lane);
        this.wake();
      });
  }

  /**
   * How many messages to pull at once: one when several lanes have work (each pick is a turn of the
   * round-robin), else as many as there are free slots and known jobs in the lane. Under limits,
   * no more than there is room to hold aside: every job pulled may have to wait, and a worker holds
   * at most as many aside as it has slots.
   */
  private batchFor(lane: string): number {
    // The board's size, not its queue map: that is built anew, lane by lane, at each call.
    if (this.board.size > 1) return 1;
    const room = this.rulesNow.rules.some(isLimit)
      ? this.deps.concurrency - this.parkedJobs.length
      : this.deps.concurrency;
    return Math.max(1, Math.min(this.free, room, this.board.queuedIn(lane) || 1));
  }

  private async pull(lane: string, batch: number, waitMs?: number, again = false): Promise<JobMsg[]> {
    const name = lane === "" ? consumerName(this.deps.queue) : laneConsumerName(this.deps.queue, lane);
    // The lane-less consumer is the queue's own, made by provisioning. A lane's is made by a keeper
    // before this worker first pulls from it (asked ahead, or in the background: makeLane), again
    // when the rules change its cap, and again after the server removed it for being idle
    // (MARS_LANE_IDLE: lanes cost what is active).
    const cap = this.capOf(lane);
    // A keeper makes it (workers may make no consumer: broker/keeper.ts), or gives it the cap.
    if (lane !== "" && this.consumers.get(lane) !== cap) await this.ensureLane(lane, cap);
    try {
      const mayBeAtCap = cap > 0 && this.board.atMost(lane) >= cap;
      const wait = mayBeAtCap ? Math.max(waitMs ?? 0, CAPPED_PULL_MS) : waitMs;
      const timeout = wait === undefined ? NO_WAIT_PULL_TIMEOUT_MS : PULL_TIMEOUT_MS;
      return await this.puller.pull(name, batch, timeout, wait);
    } catch (err) {
      this.consumers.delete(lane); // deleted meanwhile, perhaps: made again before the next pull
      // Nobody answers a pull from a consumer that is gone: the server removed an idle lane's
      // consumer after this worker last made sure of it. Made again now, and pulled once more:
      // its jobs wait in the stream meanwhile (deliver all), none is lost.
      if (isUnanswered(err)) {
        if (lane !== "" && !again) {
          this.deps.log.debug({ lane }, "a pull went unanswered: the lane's consumer is made again if gone");
          return this.pull(lane, batch, waitMs, true);
        }
        // Twice: its messages went to other pulls (nats-server 2.9), or the server is slow. The
        // lane is taken as empty until the next count; the loop goes on with the others.
        if (waitMs === undefined) return [];
      }
      throw err;
    }
  }

  /**
   * A message delivered to a pull that was over (Puller): run here when there is a slot for it, as
   * if pulled now (its lane is its subject's), else given back at once for another pull.
   */
  private stray(msg: JobMsg): void {
    if (!this.pulling || this.free <= 0) return msg.nak();
    this.strays.push(msg);
    this.wake();
  }

  /** Admit the strays there are slots for, the loop's own pulls being over; give the others back. */
  private async takeStrays(): Promise<void> {
    for (let msg = this.strays.shift(); msg; msg = this.strays.shift()) {
      if (!this.pulling || this.free <= 0) msg.nak();
      else await this.admit(this.laneOf(msg.subject), msg);
    }
  }

  /** A message pulled from `lane`: run it now, or park it when one of its limits is full. */
  private async admit(lane: string, msg: JobMsg): Promise<void> {
    const seq = msg.info.streamSequence;
    if (this.holding.has(seq)) {
      this.deps.log.warn(
        { streamSeq: seq, deliveries: msg.info.deliveryCount },
        "delivered again while this worker has it: the attempt running here keeps it",
      );
      return;
    }
    this.holding.add(seq);
    let job: JobMessage | undefined;
    try {
      job = decode(jobMessageSchema, msg.data, "job message");
    } catch {
      job = undefined; // garbage: the run dead-letters it
    }
    const now = Date.now();
    this.board.took(lane, job?.id, now);
    if (job) this.wokenFor.delete(job.id);
    if (!job || this.rulesNow.rules.length === 0) return this.launch(lane, msg, job, [], undefined);
    const facts = factsOf(job); // from the message as validated, not as heard
    const denied = this.refusal(facts);
    if (denied) return this.launch(lane, msg, job, [], undefined, denied);
    const limits = this.limitsOf(facts, lane);
    if (limits.length === 0) return this.launch(lane, msg, job, [], undefined);
    const holder: Holder = {
      job: job.id,
      attempt: msg.info.deliveryCount,
      worker: this.deps.workerId,
      at: now,
    };
    const got = await this.deps.slots.acquire(limits, holder);
    // The slot round trips ran on the message's ack wait, and the attempt's first heartbeat comes
    // one interval after its claim: the lease starts again from here, whether it runs or waits.
    msg.working();
    if (got.ok) return this.launch(lane, msg, job, limits, holder);
    const priority = effectivePriority(
      this.rulesNow,
      basePriority(this.rulesNow, facts),
      now - job.submittedAt,
    );
    const parked: Parked = {
      msg,
      job,
      lane,
      limits,
      holder,
      priority,
      reason: limitFull(got.slot, got.running),
    };
    this.parkedJobs.push(parked);
    this.deps.log.info({ jobId: job.id, reason: parked.reason }, "job waits for a QoS limit");
    this.parkedChanged();
  }

  /** Start the parked job that may run now, best first; true when one started. */
  private async unpark(): Promise<boolean> {
    if (this.parkedJobs.length === 0) return false;
    const order = [...this.parkedJobs].sort(
      (a, b) => b.priority - a.priority || a.job.submittedAt - b.job.submittedAt,
    );
    for (const p of order) {
      // The rules may have changed since it was parked.
      const facts = factsOf(p.job);
      const denied = this.refusal(facts);
      if (denied) {
        this.parkedJobs.splice(this.parkedJobs.indexOf(p), 1);
        this.parkedChanged();
        this.launch(p.lane, p.msg, p.job, [], undefined, denied);
        return true;
      }
      p.limits = this.limitsOf(facts, p.lane);
      if (p.limits.some((s) => this.deps.slots.seemsFull(s))) continue;
      const holder = { ...p.holder, at: Date.now() };
      const got =
        p.limits.length === 0 ? ({ ok: true } as const) : await this.deps.slots.acquire(p.limits, holder);
      if (!got.ok) {
        p.reason = limitFull(got.slot, got.running);
        continue;
      }
      this.parkedJobs.splice(this.parkedJobs.indexOf(p), 1);
      this.parkedChanged();
      p.msg.working(); // the park's last tick may be an interval old (see admit)
      this.launch(p.lane, p.msg, p.job, p.limits, holder);
      return true;
    }
    return false;
  }

  private parkedChanged(): void {
    for (const o of this.observers) o.parked?.(this.parkedJobs.length);
  }

  /** Under `usage` rules, what a lane's recent MARS time costs its next job (read from the usage table). */
  private usagePenalty(): Pick<PickOptions, "penalty" | "penaltyChangesAt"> {
    const rules = this.rulesNow;
    const windowMs = usageWindowMs(rules);
    if (windowMs === undefined) return {};
    const { usage } = this.deps;
    return {
      penalty: (lane, now) => (lane === "" ? 0 : usagePenalty(rules, usage.used(lane, windowMs, now))),
      // Followed, a value changes only as the board hears (penaltyChanged) or by time: the lanes
      // are kept in order under it too. Not followed (yet), every lane is read at each choice.
      ...(usage.following && {
        penaltyChangesAt: (lane: string, now: number) =>
          lane === "" ? undefined : usage.changesAt(lane, windowMs, now),
      }),
    };
  }

  /** Add a settled job's MARS time to its fairness value's use (rules with `usage`). */
  private recordUsage(job: JobMessage | undefined, end: AttemptEnd | undefined): void {
    const windowMs = usageWindowMs(this.rulesNow);
    if (windowMs === undefined || !job || !end?.elapsedMs) return;
    const token = laneOf(this.rulesNow, factsOf(job));
    void this.deps.usage.add(token, end.elapsedMs / 1000, windowMs).catch((err: unknown) =>
      // Fair share is a little less informed until the next job of this value ends; nothing else.
      this.deps.log.warn({ err, jobId: job.id }, "could not record the job's MARS time for fair share"),
    );
  }

  /** The deny rule in force that refuses a job with these facts, as the error its attempt fails with. */
  private refusal(facts: JobFacts): QosDeniedError | undefined {
    const rule = deniedBy(this.rulesNow, facts);
    return rule && new QosDeniedError(rule.deny, { rule: rule.name });
  }

  private launch(
    lane: string,
    msg: JobMsg,
    job: JobMessage | undefined,
    limits: LimitSlot[],
    holder: Holder | undefined,
    denied?: QosDeniedError,
  ): void {
    this.free--;
    this.syncWakeBell();
    for (const o of this.observers) o.started?.(this.attempts.size + 1);
    const done = handleDelivery(this.deps.env, msg, {
      attempts: this.attempts,
      ...(job && { job }),
      ...(denied && { denied }),
    })
      .then(async (end) => {
        for (const o of this.observers) o.settled?.(end, this.attempts.size);
        if (end?.againAfterMs !== undefined) this.ringFreed(lane, end.againAfterMs);
        this.recordUsage(job, end);
        if (holder) await this.deps.slots.releaseSettled(this.deps.nc, limits, holder);
      })
      .catch((err: unknown) =>
        // A slot not given back here is dropped by the next acquire that finds the job over.
        this.deps.log.warn({ err, jobId: job?.id }, "could not give the job's QoS slots back"),
      )
      .finally(() => {
        this.board.settled(lane);
        this.atCap.delete(lane); // this job's place under the lane's cap is free
        // ...and the queue's other workers, which may have passed the lane over at its cap, hear it
        // now rather than at their next count (up to a second later).
        if (this.capOf(lane) > 0) this.ringFreed(lane);
        this.running.delete(done);
        this.holding.delete(msg.info.streamSequence);
        this.free++;
        this.board.slotFreed();
        this.syncWakeBell();
        this.wake();
      });
    this.running.add(done);
  }

  /** Stop pulling; parked jobs go back to the queue. Resolves when the loop has ended. */
  async stopPulling(): Promise<void> {
    this.pulling = false;
    this.wake();
    clearInterval(this.countTimer);
    this.doorbell?.unsubscribe();
    this.aheadBell?.unsubscribe();
    this.gone?.unsubscribe();
    this.syncWakeBell();
    this.laneless?.unsubscribe();
    this.freed?.unsubscribe();
    await this.loopDone;
    this.puller.close();
    this.deps.usage.stop();
    for (const m of this.strays.splice(0)) m.nak();
    clearInterval(this.parkTimer);
    for (const p of this.parkedJobs.splice(0)) {
      p.msg.nak();
      this.holding.delete(p.msg.info.streamSequence);
      this.board.settled(p.lane);
      this.ringFreed(p.lane);
    }
  }

  /**
   * A message of the lane was handed back (or will be pullable after `afterMs`, its retry delay):
   * the queue's other workers, which may have found the lane empty and left it quiet, pull again.
   */
  private ringFreed(lane: string, afterMs = 0): void {
    const ring = (): void => this.deps.nc.publish(subjects.laneFreed(this.deps.queue, lane));
    if (afterMs <= 0) ring();
    else setTimeout(ring, afterMs).unref(); // a worker that stops first: the lane's quiet ends by itself
  }

  /** Resolves when every job this dispatcher started has been settled. */
  async settled(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running]);
  }
}
