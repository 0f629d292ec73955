/** A handle on one fleet job: its story as events, its result, cancel. Works from any process. */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import {
  type BrokerConnection,
  decode,
  endedWithoutResult,
  eventKind,
  EVENTS_STREAM,
  heartbeatSchema,
  type JobRecord,
  type JobState,
  type JobStore,
  logBatchSchema,
  progressSchema,
  type RecordWatch,
  replayStored,
  type StateEvent,
  stateEventSchema,
  subjects,
  TERMINAL_STATES,
} from "../broker/index.js";
import { formatLogLine, partIds } from "../mars/index.js";
import { Channel, errorFromRecord, JobFailedError } from "../core/index.js";
import { resolveInside } from "../runner/index.js";

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

/** How often the events of a job that may end without a worker read its record, whatever is heard. */
const RECORD_REREAD_MS = 10_000;

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
  /** The terminal state went out (from an event or from the record). */
  ended = false;
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
    if (last?.type === "state" && TERMINAL_STATES.has(last.state)) this.ended = true;
    return this.ended;
  }

  /** The end as the record tells it, for a job whose terminal event never came. */
  endFromRecord(record: JobRecord): void {
    if (this.ended) return;
    this.ended = true;
    for (const e of eventsFromRecord(record)) this.out.push(e);
  }
}

export class JobHandle {
  /** The completion callback's signing secret, when `submit` made one (shown once). */
  callbackSecret: string | undefined;
  /** From `submit`: the record as it was then (new, or the existing job's for a known requestId). */
  submitted: JobRecord | undefined;
  private early: Unclaimed<RecordWatch> | undefined;
  /** The final record this handle has read, once it has (status() never goes back before it). */
  private final: JobRecord | undefined;
  private live: Unclaimed<LiveEvents> | undefined;
  private readonly nc: NatsConnection;

  constructor(
    readonly id: string,
    private readonly conn: BrokerConnection,
    private readonly store: JobStore,
    private readonly sharedRoot: string,
  ) {
    this.nc = conn.nc;
  }

  /**
   * The log lines stored so far (all attempts), without waiting for more. A job refused before it
   * was queued has no events (only workers write them): its lines are its record's reason. None
   * after `dropLog()`.
   */
  async storedLog(): Promise<string[]> {
    const found = await this.store.get(this.id);
    if (found?.record.logDropped) return [];
    if (found && isRefusal(found.record)) return refusalLines(found.record);
    const lines: string[] = [];
    for await (const m of replayStored(this.conn.jsm, EVENTS_STREAM, subjects.jobEvents(this.id)))
      for (const e of toEvent(m.subject, m.data) ?? []) if (e.type === "log") lines.push(e.line);
    return lines;
  }

  /**
   * Hide the job's log (the pipe protocol's DELETE): `storedLog()` shows nothing from now on. The
   * events stay in the stream until they expire (events_max_age): a submitter may not purge a
   * stream that holds every job's events (docs/SECURITY.md).
   */
  async dropLog(): Promise<void> {
    await this.store.mutateSubmission(this.id, (sub) =>
      sub.logDropped ? undefined : { ...sub, logDropped: true },
    );
  }

  /**
   * The job record as it is now; once this handle has seen the job end, never a record of it still
   * running: in a cluster, a read may be answered by a replica that lags (direct gets), and a job
   * that `result()` saw end must not read as running again.
   */
  async status(): Promise<JobRecord> {
    return this.seen((await this.store.require(this.id)).record);
  }

  /**
   * `record`, unless this handle saw the job final already and `record` is not (a lagging
   * replica's answer): then the final one. (Times are not compared: writers' clocks differ.)
   */
  private seen(record: JobRecord): JobRecord {
    const final = this.final;
    if (final && !TERMINAL_STATES.has(record.state)) return final;
    if (TERMINAL_STATES.has(record.state)) this.final = record;
    return record;
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
    const pump = (async () => {
      const split = (this.submitted ?? (await this.store.get(this.id))?.record)?.split;
      if (split) {
        live?.close(); // a split job's own events are the fan-in's few: read from the stream
        return this.pumpSplit(out, split.parts, signal);
      }
      return live ? this.pumpLive(out, live, signal, "submit") : this.pumpEvents(out, signal);
    })();
    void pump.catch((err: unknown) => out.fail(err));
    return (async function* () {
      try {
        yield* out;
      } finally {
        readerGone.abort();
      }
    })();
  }

  /** The parts of a split job (#27), in part order, as their records are now (missing ones left out). */
  async parts(): Promise<JobRecord[]> {
    const split = (await this.status()).split;
    if (!split) return [];
    const found = await Promise.all(partIds(this.id, split.parts).map((id) => this.store.get(id)));
    return found.flatMap((f) => (f ? [f.record] : []));
  }

  /** A handle on each part of a split job of `total` parts, in part order. */
  private partHandles(total: number): JobHandle[] {
    return partIds(this.id, total).map((id) => new JobHandle(id, this.conn, this.store, this.sharedRoot));
  }

  /**
   * A split job's events: each part's log in part order, every line marked `[part i/n]`, progress as
   * the bytes of the parts so far, then the job's own (the fan-in's state, its end). A part's own
   * states are left out: the job's state is its own. Stops following parts once the job has ended
   * without a result.
   */
  private async pumpSplit(out: Channel<JobEvent>, total: number, signal: AbortSignal): Promise<void> {
    let before = 0;
    for (const [at, part] of this.partHandles(total).entries()) {
      if (signal.aborted) break;
      const i = at + 1;
      let bytes = 0;
      for await (const ev of part.events({ signal })) {
        if (ev.type === "log") out.push({ ...ev, line: `[part ${i}/${total}] ${ev.line}` });
        else if (ev.type === "progress") {
          bytes = ev.bytes;
          out.push({ ...ev, bytes: before + ev.bytes, total: 0 });
        }
      }
      before += bytes;
      const now = (await this.store.get(this.id))?.record;
      if (now && endedWithoutResult(now)) break;
    }
    await this.pumpEvents(out, signal);
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
  private async pumpLive(
    out: Channel<JobEvent>,
    live: LiveEvents,
    signal: AbortSignal,
    /** Submit's subscription, made when the job was created; or the rest of a replay, its record read. */
    from: "submit" | { filter: EventFilter; known: JobRecord | undefined },
  ): Promise<void> {
    const filter = from === "submit" ? new EventFilter(out) : from.filter;
    const hbSub = this.followHeartbeats(out);
    let done = false;
    const stopLive = (): void => {
      if (done) return;
      done = true;
      live.close();
      hbSub.unsubscribe();
      stopRecord();
    };
    const finish = (): void => {
      stopLive();
      out.close();
    };
    // Known at a replay's start; read now, but for the events submit followed from the job's creation
    // (a fresh job is not over: only a write seen from now on can end it).
    const known = from === "submit" ? undefined : from.known;
    const stopRecord = this.endWithRecord(filter, finish, known, from !== "submit" && known === undefined);
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

  /**
   * The stored events from the start, then live ones: the live subscription is made first, so that
   * nothing falls between the two, and what both bring is shown once (EventFilter).
   */
  private async pumpEvents(
    out: Channel<JobEvent>,
    signal: AbortSignal,
    filter = new EventFilter(out),
  ): Promise<void> {
    const live = new LiveEvents(this.nc, this.id, this.store);
    try {
      // The record, for a job whose events expired (it finished long ago): its record tells the end.
      const record = await this.store.get(this.id);
      for await (const m of replayStored(this.conn.jsm, EVENTS_STREAM, subjects.jobEvents(this.id)))
        if (signal.aborted || filter.add(m.subject, m.data)) break;
      if (signal.aborted || filter.ended) {
        live.close();
        out.close();
        return;
      }
      await this.pumpLive(out, live, signal, { filter, known: record?.record });
    } catch (err) {
      live.close();
      throw err;
    }
  }

  /**
   * Only workers write events, so a job refused at submit or cancelled while it waited ends in its
   * record alone, and one that finished long ago may have no events left (max age). Once the record
   * is terminal (`known` at the start of a replay; else read when a write may have made it so, and
   * then only if no worker ended it: a worker's terminal event always follows its final status) and
   * no terminal event came within LATE_REPLAY_MS, the end is reported from the record. Returns the
   * function that stops this.
   */
  private endWithRecord(
    filter: EventFilter,
    finish: () => void,
    known: JobRecord | undefined,
    readFirst: boolean,
  ): () => void {
    const watch = this.store.watch(this.id, readFirst);
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    const endLater = (record: JobRecord): void => {
      timer = setTimeout(() => {
        if (stopped || filter.ended) return;
        filter.endFromRecord(record);
        finish();
      }, LATE_REPLAY_MS);
    };
    if (known && TERMINAL_STATES.has(known.state)) endLater(known);
    else
      void (async () => {
        while (!stopped) {
          if (watch.take() === undefined) {
            // Read again now and then, whatever is heard: a lost nudge must not leave it waiting.
            if (!(await watch.nudged(RECORD_REREAD_MS))) watch.nudge("both");
            continue;
          }
          const ended = await this.store.endedWithoutWorker(this.id);
          if (!stopped && ended) return endLater(ended);
        }
      })().catch((err: unknown) => {
        // The record could not be read (connection closing): the events alone end the stream.
        void err;
      });
    return () => {
      stopped = true;
      clearTimeout(timer);
      watch.close();
      watch.nudge("both"); // wake the loop so that it sees it was stopped
    };
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
    const record = this.seen(await this.store.finalRecord(this.id, opts.signal, this.early?.take()));
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
    const after = await this.store.mutateSubmission(this.id, (sub, current) => {
      requested = false;
      if (TERMINAL_STATES.has(current.state) || current.cancelRequested) return undefined;
      requested = true;
      return { ...sub, cancelRequested: true };
    });
    if (!requested) return false;
    // A split job: each of its parts too (queued ones never run, running ones are stopped).
    if (after.split) await Promise.all(this.partHandles(after.split.parts).map((part) => part.cancel()));
    // Always, even for a queued job: a worker may have claimed it since the record was read. One
    // that misses this (reconnecting) finds the request in the record when it checks again. A job
    // cancelled while it waited gets no event (only workers write events): its record says it.
    this.nc.publish(subjects.cancel(this.id));
    return true;
  }
}

/** A job refused before it was queued: failed at attempt 0, never run, no events. */
function isRefusal(rec: JobRecord): boolean {
  return rec.state === "failed" && rec.attempt === 0 && rec.error !== undefined;
}

/** A refusal's log: its reason, one ERROR line per line, as MARS would print it. */
function refusalLines(rec: JobRecord): string[] {
  const at = new Date(rec.finishedAt ?? rec.updatedAt);
  return (rec.error?.message ?? "").split("\n").map((line) => formatLogLine("ERROR", line, at));
}

/** The events a record stands for when no terminal event is there: a refusal's lines, then its state. */
function eventsFromRecord(rec: JobRecord): JobEvent[] {
  const at = rec.finishedAt ?? rec.updatedAt;
  const lines: JobEvent[] = isRefusal(rec)
    ? refusalLines(rec).map((line, i) => ({ type: "log", line, seq: i + 1, attempt: 1, at }))
    : [];
  return [...lines, stateFromRecord(rec)];
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
