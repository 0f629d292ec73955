/**
 * Which workers are serving now, kept current by one watch of the worker registry for the life of
 * the client, so that asking costs nothing (the gateway asks on every request).
 */
import { setTimeout as sleep } from "node:timers/promises";
import { KvWatchInclude, type KV, type KvEntry } from "@nats-io/kv";
import type { QueuedIterator } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { decode } from "../broker/codec.js";
import { workerInfoSchema, type WorkerInfo } from "../broker/schemas.js";

const REOPEN_DELAY_MS = 500;

export class LiveWorkers {
  private readonly entries = new Map<string, { info: WorkerInfo; at: number }>();
  private watcher: QueuedIterator<KvEntry> | undefined;
  private stopped = false;

  private constructor(
    private readonly kv: KV,
    /** The registry's TTL: an entry older than this belongs to a worker that stopped renewing it. */
    private readonly ttlMs: number,
    private readonly log: Logger,
  ) {}

  static async open(kv: KV, log: Logger): Promise<LiveWorkers> {
    const live = new LiveWorkers(kv, (await kv.status()).ttl, log);
    // Changes from now on first, then what is there: nothing falls between the two.
    live.watcher = await kv.watch({ include: KvWatchInclude.UpdatesOnly });
    void live.follow();
    for await (const key of await kv.keys()) {
      const entry = await kv.get(key);
      if (entry) live.apply(entry);
    }
    return live;
  }

  /** Workers of `queue` that take jobs: running, and heard from within the registry's TTL. */
  serving(queue: string, now = Date.now()): WorkerInfo[] {
    return [...this.entries.values()]
      .filter(
        ({ info, at }) =>
          info.queue === queue && info.state === "running" && (this.ttlMs <= 0 || now - at < this.ttlMs),
      )
      .map(({ info }) => info);
  }

  stop(): void {
    this.stopped = true;
    this.watcher?.stop();
  }

  private apply(entry: KvEntry): void {
    if (entry.operation !== "PUT") {
      this.entries.delete(entry.key);
      return;
    }
    let info: WorkerInfo;
    try {
      info = decode(workerInfoSchema, entry.value, "worker entry");
    } catch {
      return; // an entry from an incompatible version: not a worker we can count on
    }
    // The server's time stamp, not the worker's clock.
    const at = entry.created.getTime();
    const known = this.entries.get(entry.key);
    if (!known || known.at <= at) this.entries.set(entry.key, { info, at });
  }

  private async follow(): Promise<void> {
    while (!this.stopped) {
      try {
        for await (const entry of this.watcher!) this.apply(entry);
      } catch (err) {
        this.log.warn({ err }, "worker registry watch broke; opening it again");
      }
      if (this.stopped) return;
      await sleep(REOPEN_DELAY_MS);
      try {
        this.watcher = await this.kv.watch({ include: KvWatchInclude.LastValue });
      } catch (err) {
        this.log.warn({ err }, "could not watch the worker registry; trying again");
      }
    }
  }
}
