/** A handle on one fleet job: its story as events, its result, cancel. Works from any process. */
import { DeliverPolicy, type Consumer, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { decode, encode } from "../broker/codec.js";
import type { BrokerConnection } from "../broker/connection.js";
import type { JobStore, RecordWatch } from "../broker/records.js";
import { withRetry } from "../broker/retry.js";
import {
  heartbeatSchema,
  logBatchSchema,
  progressSchema,
  stateEventSchema,
  TERMINAL_STATES,
  type JobRecord,
  type JobState,
  type StateEvent,
} from "../broker/schemas.js";
import { EVENTS_STREAM, eventKind, subjects } from "../broker/subjects.js";
import { Channel } from "../core/channel.js";
import { resolveInside } from "../runner/target.js";
import { errorFromRecord, JobFailedError } from "../core/errors.js";

export type JobEvent =
  | { type: "log"; line: string; seq: number; attempt: number; at: number }
  | { type: "progress"; bytes: number; total: number; attempt: number; at: number }
  | {
      type: "state";
      state: JobState;
      attempt: number;
      worker?: string;
      /** With `running`: the pid of MARS (its process group). */
      pid?: number;
      at: number;
      error?: StateEvent["error"];
      result?: StateEvent["result"];
    }
  | { type: "heartbeat"; worker: string; attempt: number; pid: number; bytes: number; at: number };

export interface FleetJobResult {
  /** Absolute path of the result under this client's shared root. */
  target: string;
  bytes: number;
  elapsedMs: number;
  /** Set when the result went to the results object store instead of the shared root. */
  object?: string;
}

/** How long a watch started by `submit` waits for `result()` or `events()` to take it over. */
const EARLY_WATCH_MS = 10_000;

/** A watch from `submit`, for `result()` or `events()` to take: closed after EARLY_WATCH_MS unused. */
class Unclaimed<T extends { close(): void }> {
  private value: T | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(value: T) {
    this.value = value;
    this.timer = setTimeout(() => this.take()?.close(), EARLY_WATCH_MS);
    this.timer.unref();
  }

  /** The watch, once: undefined when it was taken already or closed unused. */
  take(): T | undefined {
    clearTimeout(this.timer);
    const value = this.value;
    this.value = undefined;
    return value;
  }
}

/** How long to wait for a finished job's terminal event before reporting it from its record. */
const LATE_REPLAY_MS = 1500;

/**
 * A job's events followed with a core subscription (`mars.job.<id>.*`) made before the job existed,
 * so that nothing can come before it: what `events()` then reads instead of replaying the stream
 * through a consumer made for it. Messages are kept until `events()` takes them. After a reconnect
 * core messages may have been lost, and `events()` replays the stream after all.
 */
export class LiveEvents {
  private readonly kept: Array<{ subject: string; data: Uint8Array }> = [];
  private sink: ((subject: string, data: Uint8Array) => void) | undefined;
  private onLost: (() => void) | undefined;
  private lostAlready = false;
  private readonly sub: Subscription;
  private readonly stopWatching: () => void;

  constructor(nc: NatsConnection, id: string, store: JobStore) {
    this.sub = nc.subscribe(subjects.jobEvents(id), {
      callback: (err, msg) => {
        if (err) return this.lost();
        if (this.sink) this.sink(msg.subject, msg.data);
        else this.kept.push({ subject: msg.subject, data: msg.data });
      },
    });
    this.stopWatching = store.afterReconnect(() => this.lost());
  }

  private lost(): void {
    this.lostAlready = true;
    this.onLost?.();
  }

  /** Hand what was kept, then every message, to `sink`; `onLost` when messages may have been lost. */
  attach(sink: (subject: string, data: Uint8Array) => void, onLost: () => void): void {
    for (const m of this.kept.splice(0)) sink(m.subject, m.data);
    this.sink = sink;
    this.onLost = onLost;
    if (this.lostAlready) onLost();
  }

  close(): void {
    this.sub.unsubscribe();
    this.stopWatching();
  }
}

/**
 * Events as `events()` shows them: each log line once (a batch re-sent after a lost ack may be
 * stored twice), each state change once, progress only forward; true from `add` after the
 * terminal state.
 */
class EventFilter {
  private readonly lastLine = new Map<number, number>();
  private readonly states = new Set<string>();
  private lastProgress = -1;

  constructor(private readonly out: Channel<JobEvent>) {}

  add(subject: string, data: Uint8Array): boolean {
    const events = toEvent(subject, data);
    if (!events) return false;
    for (const e of events) {
      if (e.type === "log") {
        if (e.seq <= (this.lastLine.get(e.attempt) ?? 0)) continue;
        this.lastLine.set(e.attempt, e.seq);
      } else if (e.type === "state") {
        const key = `${e.state}/${e.attempt}`;
        if (this.states.has(key)) continue;
        this.states.add(key);
      } else if (e.type === "progress") {
        if (e.at < this.lastProgress) continue;
        this.lastProgress = e.at;
      }
      this.out.push(e);
    }
    const last = events.at(-1);
    return last?.type === "state" && TERMINAL_STATES.has(last.state);
  }
}

export class JobHandle {
  /** The completion callback's signing secret, when `submit` made one (shown once). */
  callbackSecret: string | undefined;
  /** From `submit`: the record as it was then (new, or the existing job's for a known requestId). */
  submitted: JobRecord | undefined;
  private early: Unclaimed<RecordWatch> | undefined;
  private live: Unclaimed<LiveEvents> | undefined;
  private readonly nc: NatsConnection;
  private readonly js: JetStreamClient;

  constructor(
    readonly id: string,
    private readonly conn: BrokerConnection,
    private readonly store: JobStore,
    private readonly sharedRoot: string,
  ) {
    this.nc = conn.nc;
    this.js = conn.js;
  }

  /** The log lines stored so far (all attempts), without waiting for more. */
  async storedLog(): Promise<string[]> {
    const consumer = await this.replay();
    try {
      const lines: string[] = [];
      for (;;) {
        let got = 0;
        let pending = 0;
        for await (const m of await consumer.fetch({ max_messages: 1000, expires: 1000 })) {
          got++;
          pending = m.info.pending;
          for (const e of toEvent(m.subject, m.data) ?? []) if (e.type === "log") lines.push(e.line);
          if (pending === 0) break;
        }
        if (got === 0 || pending === 0) return lines;
      }
    } finally {
      dropConsumer(consumer);
    }
  }

  /**
   * An ordered consumer replaying this job's events from the beginning. Its reader deletes it when
   * done (dropConsumer); should the process die first, the server drops it after REPLAY_INACTIVE_MS.
   */
  private replay(): Promise<Consumer> {
    return withRetry(() =>
      this.js.consumers.get(EVENTS_STREAM, {
        filter_subjects: subjects.jobEvents(this.id),
        deliver_policy: DeliverPolicy.All,
        inactive_threshold: REPLAY_INACTIVE_MS,
      }),
    );
  }

  /** Delete the job's stored events (its log). */
  async dropLog(): Promise<void> {
    await this.conn.jsm.streams.purge(EVENTS_STREAM, { filter: subjects.jobEvents(this.id) });
  }

  /** The job record as it is now. */
  async status(): Promise<JobRecord> {
    return (await this.store.require(this.id)).record;
  }

  /**
   * Everything the job did, from the beginning and then live: log lines, progress, state changes
   * and heartbeats. Ends after the terminal state. Events that do not validate are skipped.
   */
  events(opts: { signal?: AbortSignal } = {}): AsyncIterable<JobEvent> {
    const out = new Channel<JobEvent>();
    // Stop reading the stream as soon as the reader stops iterating, not at the next event.
    const readerGone = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, readerGone.signal]) : readerGone.signal;
    const live = this.live?.take();
    const pump = live ? this.pumpLive(out, live, signal) : this.pumpEvents(out, signal);
    void pump.catch((err: unknown) => out.fail(err));
    return (async function* () {
      try {
        yield* out;
      } finally {
        readerGone.abort();
      }
    })();
  }

  /** Heartbeats are live only (never stored): pushed as they come, until unsubscribed. */
  private followHeartbeats(out: Channel<JobEvent>): Subscription {
    return this.nc.subscribe(subjects.heartbeat(this.id), {
      callback: (err, msg) => {
        if (err) return;
        try {
          out.push({ type: "heartbeat", ...decode(heartbeatSchema, msg.data, "heartbeat") });
        } catch {
          // A malformed heartbeat is not worth failing the stream for.
        }
      },
    });
  }

  /**
   * Events from a LiveEvents subscription made before the job existed. Should messages have been
   * lost (a reconnect), the stream is replayed from the start (pumpEvents), and what was shown
   * already is not shown again.
   */
  private async pumpLive(out: Channel<JobEvent>, live: LiveEvents, signal: AbortSignal): Promise<void> {
    const filter = new EventFilter(out);
    const hbSub = this.followHeartbeats(out);
    let done = false;
    const stopLive = (): void => {
      if (done) return;
      done = true;
      live.close();
      hbSub.unsubscribe();
    };
    const finish = (): void => {
      stopLive();
      out.close();
    };
    signal.addEventListener("abort", finish, { once: true });
    live.attach(
      (subject, data) => {
        if (!done && filter.add(subject, data)) finish();
      },
      () => {
        if (done) return;
        stopLive();
        signal.removeEventListener("abort", finish);
        void this.pumpEvents(out, signal, filter).catch((err: unknown) => out.fail(err));
      },
    );
    if (signal.aborted) finish();
  }

  private async pumpEvents(
    out: Channel<JobEvent>,
    signal?: AbortSignal,
    filter = new EventFilter(out),
  ): Promise<void> {
    // The record (for the fallback below) is read while the replay consumer is created.
    const [consumer, record] = await Promise.all([this.replay(), this.store.get(this.id)]);
    const messages = await consumer.consume();
    const hbSub = this.followHeartbeats(out);
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      messages.stop();
      dropConsumer(consumer);
      hbSub.unsubscribe();
      out.close();
    };
    signal?.addEventListener("abort", finish, { once: true });
    if (signal?.aborted) finish();
    // A job that finished long ago may have no events left (max age): fall back on its record.
    let sawTerminal = false;
    const fallback =
      record && TERMINAL_STATES.has(record.record.state)
        ? setTimeout(() => {
            if (sawTerminal) return;
            out.push(stateFromRecord(record.record));
            finish();
          }, LATE_REPLAY_MS)
        : undefined;
    try {
      for await (const m of messages) {
        if (filter.add(m.subject, m.data)) {
          sawTerminal = true;
          break;
        }
      }
    } finally {
      if (fallback) clearTimeout(fallback);
      finish();
    }
  }

  /**
   * From `submit`: the record followed since before the job existed, so that `result()` called
   * soon after reads nothing until the job ends. Dropped after EARLY_WATCH_MS unused.
   */
  followFromSubmit(watch: RecordWatch): void {
    this.early = new Unclaimed(watch);
  }

  /**
   * From `submit`: the job's events followed since before it existed, so that `events()` called
   * soon after needs no consumer on the server. Dropped after EARLY_WATCH_MS unused.
   */
  followEventsFromSubmit(events: LiveEvents): void {
    this.live = new Unclaimed(events);
  }

  /** Wait for the end; the result, or the typed error the job failed with. */
  async result(opts: { signal?: AbortSignal } = {}): Promise<FleetJobResult> {
    const record = await this.store.finalRecord(this.id, opts.signal, this.early?.take());
    if (record.state === "succeeded" && record.result) {
      const { target, bytes, elapsedMs, object } = record.result;
      return {
        // Whoever wrote the record, the path handed back stays inside the shared root.
        target: resolveInside(this.sharedRoot, target),
        bytes,
        elapsedMs,
        ...(object !== undefined && { object }),
      };
    }
    throw record.error
      ? errorFromRecord(record.error)
      : new JobFailedError(`job ended ${record.state}`, { jobId: this.id });
  }

  /**
   * Cancel: a queued job never runs; a running one is stopped (its process group killed) and
   * recorded cancelled. Returns false when the job had already finished.
   */
  async cancel(): Promise<boolean> {
    let requested = false;
    // The request goes into the submission, the one key a submitter writes: a queued job then reads
    // as cancelled (and is dropped when delivered), and a running one is stopped by its worker.
    const record = await this.store.mutateSubmission(this.id, (sub, current) => {
      requested = false;
      if (TERMINAL_STATES.has(current.state) || current.cancelRequested) return undefined;
      requested = true;
      return { ...sub, cancelRequested: true };
    });
    if (!requested) return false;
    // Always, even for a queued job: a worker may have claimed it since the record was read. One
    // that misses this (reconnecting) finds the request in the record when it checks again.
    this.nc.publish(subjects.cancel(this.id));
    if (record.state === "cancelled") {
      const event: StateEvent = {
        state: "cancelled",
        attempt: record.attempt,
        at: Date.now(),
        ...(record.error && { error: record.error }),
      };
      await this.js.publish(subjects.state(this.id), encode(event));
    }
    return true;
  }
}

/** How long the server keeps a replay consumer nobody pulls from (its reader died without deleting it). */
const REPLAY_INACTIVE_MS = 30_000;

/** Delete a replay consumer now rather than leave it to the server's inactivity timer. */
function dropConsumer(consumer: Consumer): void {
  // Best effort: one that cannot be deleted now (connection closing) goes after REPLAY_INACTIVE_MS.
  void consumer.delete().catch(() => undefined);
}

function stateFromRecord(rec: JobRecord): JobEvent {
  return {
    type: "state",
    state: rec.state,
    attempt: rec.attempt,
    at: rec.finishedAt ?? rec.updatedAt,
    ...(rec.worker !== undefined && { worker: rec.worker }),
    ...(rec.error && { error: rec.error }),
    ...(rec.result && { result: rec.result }),
  };
}

function toEvent(subject: string, data: Uint8Array): JobEvent[] | undefined {
  try {
    switch (eventKind(subject)) {
      case "log": {
        const b = decode(logBatchSchema, data, "log batch");
        return b.lines.map((line, i) => ({
          type: "log",
          line,
          seq: b.first + i,
          attempt: b.attempt,
          at: b.at[i] ?? 0,
        }));
      }
      case "progress":
        return [{ type: "progress", ...decode(progressSchema, data, "progress") }];
      case "state":
        return [{ type: "state", ...decode(stateEventSchema, data, "state") }];
      default:
        return undefined;
    }
  } catch {
    // An event that does not validate is skipped, as documented for events().
    return undefined;
  }
}
