/**
 * The last hour of the fleet, kept in the API process for the console's charts (GET /v1/history):
 * each worker's CPU and memory and each queue's queued, running and finished jobs, sampled every
 * `everyMs` from the registry and the lanes. Nothing new to run: it starts with the API and
 * forgets with it.
 */
import type { Logger } from "pino";
import type { Fleet } from "../client/index.js";

export interface WorkerPoint {
  at: number;
  cpuPercent: number;
  rssMb: number;
  running: number;
}
export interface QueuePoint {
  at: number;
  queued: number;
  running: number;
  /** Jobs that ended since the sample before (succeeded, failed or cancelled). */
  finished: number;
}

const HOUR_MS = 3_600_000;

export class FleetHistory {
  readonly workers = new Map<string, WorkerPoint[]>();
  readonly queues = new Map<string, QueuePoint[]>();
  private timer: NodeJS.Timeout | undefined;
  private lastAt = Date.now();

  constructor(
    private readonly fleet: Fleet,
    private readonly everyMs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.sample().catch((err: unknown) =>
        // A sample missed: the charts have a gap there, nothing else.
        this.log.debug({ err }, "could not sample the fleet for its history"),
      );
    }, this.everyMs);
    this.timer.unref();
  }

  async sample(now = Date.now()): Promise<void> {
    const [workers, records] = await Promise.all([this.fleet.workers(), this.fleet.jobs()]);
    const queues = await this.fleet.queues(workers);
    for (const w of workers)
      add(this.workers, w.id, {
        at: now,
        cpuPercent: w.usage?.cpuPercent ?? 0,
        rssMb: w.usage?.rssMb ?? 0,
        running: w.running.length,
      });
    for (const q of queues) {
      const finished = records.filter(
        (r) =>
          r.queue === q.queue &&
          r.finishedAt !== undefined &&
          r.finishedAt > this.lastAt &&
          r.finishedAt <= now,
      ).length;
      add(this.queues, q.queue, { at: now, queued: q.queued, running: q.running, finished });
    }
    this.lastAt = now;
    // An hour, no more: points older than that, and series with none left, go.
    for (const series of [this.workers, this.queues] as Array<Map<string, Array<{ at: number }>>>)
      for (const [key, points] of series) {
        const kept = points.filter((p) => p.at > now - HOUR_MS);
        if (kept.length === 0) series.delete(key);
        else series.set(key, kept);
      }
  }

  close(): void {
    clearInterval(this.timer);
  }
}

function add<P>(series: Map<string, P[]>, key: string, point: P): void {
  const points = series.get(key) ?? [];
  points.push(point);
  series.set(key, points);
}
