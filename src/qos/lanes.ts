/**
 * A worker's picture of a queue's lanes (one per fairness key value, each a subject with its own
 * consumer) and the choice of the lane a free slot pulls from next. Pure: the dispatcher feeds it
 * what it hears (new jobs on the lanes' subjects), what it finds (a pull that came back empty) and
 * what the server counts (pending messages per lane consumer); it decides nothing else.
 *
 * The choice: among lanes whose next job is not held back by a full limit, the one whose next job
 * has the highest priority (with aging); among equals, the one served longest ago (round-robin).
 */
import { basePriority, effectivePriority, type JobFacts } from "./evaluate.js";
import type { QosRules } from "./rules.js";

/** A queued job the worker heard about: its id, when it was submitted, and what the rules look at. */
export interface Heard {
  id: string;
  submittedAt: number;
  facts: JobFacts;
}

interface Lane {
  /** Jobs heard of, oldest first; the lane's queue is FIFO. */
  heard: Heard[];
  /** Jobs the server counts ahead of those heard of (queued before this worker listened). */
  unheard: number;
  unheardSince: number;
  /** Messages delivered and not yet acknowledged: a crashed worker's job comes back by a pull. */
  inFlight: number;
  /** Order of the last pull that returned a job from this lane (round-robin). */
  servedAt: number;
  /** When a pull last came back empty while jobs were in flight (a probe for redeliveries). */
  probedAt: number;
}

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
  /** Minimum time between probes of a lane with nothing queued but jobs in flight. */
  probeEveryMs: number;
}

export class LaneBoard {
  private readonly lanes = new Map<string, Lane>();
  private served = 0;

  private lane(name: string, now: number): Lane {
    let l = this.lanes.get(name);
    if (!l) {
      l = { heard: [], unheard: 0, unheardSince: now, inFlight: 0, servedAt: 0, probedAt: 0 };
      this.lanes.set(name, l);
    }
    return l;
  }

  /** A job was published on the lane. */
  heard(name: string, job: Heard): void {
    const l = this.lane(name, job.submittedAt);
    if (!l.heard.some((h) => h.id === job.id)) l.heard.push(job);
  }

  /**
   * A pull from the lane returned `id`. Jobs heard before it were taken by other workers (the lane
   * is FIFO); when it was not heard of, it was one of the unheard ones.
   */
  took(name: string, id: string | undefined, now: number): void {
    const l = this.lane(name, now);
    const i = id === undefined ? -1 : l.heard.findIndex((h) => h.id === id);
    if (i >= 0) l.heard.splice(0, i + 1);
    else if (l.unheard > 0) l.unheard--;
    else l.heard.shift(); // one we did not hear of after all (or garbage): the head is gone either way
    l.servedAt = ++this.served;
  }

  /** A pull from the lane came back empty: nothing is queued there now. */
  empty(name: string, now: number): void {
    const l = this.lane(name, now);
    l.heard = [];
    l.unheard = 0;
    l.probedAt = now;
  }

  /**
   * What the server counts for the lane: `pending` queued (not yet delivered), `inFlight`
   * delivered and unacknowledged. The newest `pending` jobs heard of are the queued ones.
   */
  counted(name: string, pending: number, inFlight: number, now: number): void {
    const l = this.lane(name, now);
    if (l.heard.length > pending) l.heard.splice(0, l.heard.length - pending);
    const unheard = pending - l.heard.length;
    if (unheard > 0 && l.unheard === 0) l.unheardSince = now;
    l.unheard = unheard;
    l.inFlight = inFlight;
    if (pending === 0 && inFlight === 0 && l.heard.length === 0) this.lanes.delete(name);
  }

  /** Lanes the board knows of, with their queued counts (for the registry and explanations). */
  queued(): Map<string, number> {
    return new Map([...this.lanes].map(([name, l]) => [name, l.heard.length + l.unheard]));
  }

  get size(): number {
    return this.lanes.size;
  }

  private head(name: string, l: Lane): Head | undefined {
    if (l.unheard > 0) return { lane: name, job: undefined, since: l.unheardSince };
    const job = l.heard[0];
    return job ? { lane: name, job, since: job.submittedAt } : undefined;
  }

  /** The lane to pull from next, or undefined when none has a job this worker may take. */
  pick(opts: PickOptions): string | undefined {
    let best: { lane: string; priority: number; servedAt: number } | undefined;
    let probe: string | undefined;
    for (const [name, l] of this.lanes) {
      const head = this.head(name, l);
      if (!head) {
        if (l.inFlight > 0 && opts.now - l.probedAt >= opts.probeEveryMs) probe ??= name;
        continue;
      }
      if (head.job ? opts.blocked(head.job) : !opts.unknownHeads) continue;
      const base = head.job ? basePriority(opts.rules, head.job.facts) : 0;
      const priority = effectivePriority(opts.rules, base, opts.now - head.since);
      if (
        !best ||
        priority > best.priority ||
        (priority === best.priority && l.servedAt < best.servedAt) ||
        (priority === best.priority && l.servedAt === best.servedAt && name < best.lane)
      )
        best = { lane: name, priority, servedAt: l.servedAt };
    }
    if (best) return best.lane;
    if (probe !== undefined) this.lane(probe, opts.now).probedAt = opts.now;
    return probe;
  }
}
