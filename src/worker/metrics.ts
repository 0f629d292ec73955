/**
 * Prometheus metrics of a worker, all in one place, served on `MARS_METRICS_PORT` (off by default):
 * jobs by outcome, job duration, running jobs and slots, and the result cache's events and bytes.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

const DURATION_BUCKETS = [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600];

export class WorkerMetrics {
  readonly registry = new Registry();
  private readonly jobs: Counter<"queue" | "state">;
  private readonly duration: Histogram<"queue" | "state">;
  private readonly running: Gauge<"queue">;
  private readonly slots: Gauge<"queue">;
  private readonly cacheEvents: Counter<"event">;
  private readonly cacheBytes: Counter<"event">;
  private server: Server | undefined;

  constructor(
    private readonly queue: string,
    workerId: string,
  ) {
    this.registry.setDefaultLabels({ worker: workerId });
    collectDefaultMetrics({ register: this.registry, prefix: "mars_fleet_worker_" });
    this.jobs = new Counter({
      name: "mars_fleet_jobs_total",
      help: "Job attempts settled by this worker, by resulting state (retrying = handed back for another attempt)",
      labelNames: ["queue", "state"],
      registers: [this.registry],
    });
    this.duration = new Histogram({
      name: "mars_fleet_job_duration_seconds",
      help: "Wall-clock time of MARS runs on this worker",
      labelNames: ["queue", "state"],
      buckets: DURATION_BUCKETS,
      registers: [this.registry],
    });
    this.running = new Gauge({
      name: "mars_fleet_running_jobs",
      help: "MARS runs in progress",
      labelNames: ["queue"],
      registers: [this.registry],
    });
    this.slots = new Gauge({
      name: "mars_fleet_slots",
      help: "Job slots of this worker",
      labelNames: ["queue"],
      registers: [this.registry],
    });
    this.cacheEvents = new Counter({
      name: "mars_fleet_cache_events_total",
      help: "Result cache lookups and changes by this worker: hit, miss, stored, dropped, evicted",
      labelNames: ["event"],
      registers: [this.registry],
    });
    this.cacheBytes = new Counter({
      name: "mars_fleet_cache_bytes_total",
      help: "Bytes served from the result cache (hit), kept in it (stored) and evicted from it",
      labelNames: ["event"],
      registers: [this.registry],
    });
  }

  /** What the result cache did: hits, misses, entries stored, dropped (corrupt, expired) and evicted. */
  cache(event: string, bytes = 0): void {
    this.cacheEvents.inc({ event });
    if (bytes > 0) this.cacheBytes.inc({ event }, bytes);
  }

  setSlots(n: number): void {
    this.slots.set({ queue: this.queue }, n);
  }

  setRunning(n: number): void {
    this.running.set({ queue: this.queue }, n);
  }

  settled(state: string, elapsedMs: number | undefined): void {
    this.jobs.inc({ queue: this.queue, state });
    if (elapsedMs !== undefined) this.duration.observe({ queue: this.queue, state }, elapsedMs / 1000);
  }

  /** Serve `GET /metrics` on this port (0 = any free port); returns the port. */
  async serve(port: number, host: string): Promise<number> {
    const server = createServer((req, res) => {
      if (req.url !== "/metrics") {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { "Content-Type": this.registry.contentType }).end(text),
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
