/**
 * Which workers are serving now, kept current for the life of the client by a core subscription to
 * the worker registry's writes, so that asking costs nothing (the gateway asks on every request).
 * No consumer: submitters create none (broker/stream-reads.ts says why).
 */
import type { KV } from "@nats-io/kv";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import {
  bucketKeys,
  decode,
  subjects,
  type WorkerInfo,
  workerInfoSchema,
  WORKERS_BUCKET,
} from "../broker/index.js";

export class LiveWorkers {
  private readonly entries = new Map<string, { info: WorkerInfo; at: number }>();
  private sub: Subscription | undefined;
  private stopWatching: () => void = () => undefined;

  private constructor(
    private readonly jsm: JetStreamManager,
    private readonly kv: KV,
    /** The registry's TTL: an entry older than this belongs to a worker that stopped renewing it. */
    private readonly ttlMs: number,
    private readonly log: Logger,
  ) {}

  static async open(
    nc: NatsConnection,
    jsm: JetStreamManager,
    kv: KV,
    afterReconnect: (f: () => void) => () => void,
    log: Logger,
  ): Promise<LiveWorkers> {
    const live = new LiveWorkers(jsm, kv, (await kv.status()).ttl, log);
    // Changes from now on first, then what is there: nothing falls between the two. After a
    // reconnect (writes may have been missed) the registry is read again.
    live.sub = nc.subscribe(subjects.registry("*"), {
      callback: (err, msg) => {
        if (!err) live.heard(msg);
      },
    });
    live.stopWatching = afterReconnect(() => void live.load());
    await live.load();
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
    this.sub?.unsubscribe();
    this.stopWatching();
  }

  private async load(): Promise<void> {
    try {
      for (const key of await bucketKeys(this.jsm, WORKERS_BUCKET)) {
        const e = await this.kv.get(key);
        // The server's time stamp, not the worker's clock.
        if (e) this.apply(key, e.operation === "PUT" ? e.value : undefined, e.created.getTime());
      }
    } catch (err) {
      this.log.warn({ err }, "could not read the worker registry; the next write or reconnect tells");
    }
  }

  private heard(msg: Msg): void {
    const key = msg.subject.slice(subjects.registry("").length);
    const deleted = (msg.headers?.get("KV-Operation") ?? "") !== "";
    // Heard now: the time of this process's clock, as `serving` compares it.
    this.apply(key, deleted ? undefined : msg.data, Date.now());
  }

  private apply(key: string, value: Uint8Array | undefined, at: number): void {
    if (!value || value.length === 0) {
      this.entries.delete(key);
      return;
    }
    let info: WorkerInfo;
    try {
      info = decode(workerInfoSchema, value, "worker entry");
    } catch {
      return; // an entry from an incompatible version: not a worker we can count on
    }
    const known = this.entries.get(key);
    if (!known || known.at <= at) this.entries.set(key, { info, at });
  }
}
