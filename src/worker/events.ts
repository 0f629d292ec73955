/**
 * Publishing one job's events in order: log lines are batched (a batch grows while the previous
 * publish is in flight, so sparse lines go out at once and floods go out in few messages),
 * progress is coalesced, states are never dropped. A failed publish is retried, so a server
 * restart delays events but loses none.
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Logger } from "pino";
import { encode } from "../broker/codec.js";
import { withRetry } from "../broker/retry.js";
import type { LogBatch, ProgressEvent, StateEvent } from "../broker/schemas.js";
import { subjects } from "../broker/subjects.js";

const MAX_BATCH_LINES = 4000;
const MAX_BATCH_CHARS = 256 * 1024;
const PUBLISH_DEADLINE_MS = 10 * 60_000;

type Item =
  | { kind: "log"; batch: LogBatch; chars: number }
  | { kind: "progress"; event: ProgressEvent }
  | { kind: "state"; event: StateEvent };

export class JobEventPublisher {
  private readonly queue: Item[] = [];
  private pumping: Promise<void> | undefined;
  private inFlight: Item | undefined;

  constructor(
    private readonly js: JetStreamClient,
    private readonly jobId: string,
    private readonly log: Logger,
  ) {}

  line(attempt: number, seq: number, line: string, at: number): void {
    const last = this.queue.at(-1);
    if (
      last?.kind === "log" &&
      last !== this.inFlight &&
      last.batch.attempt === attempt &&
      last.batch.first + last.batch.lines.length === seq &&
      last.batch.lines.length < MAX_BATCH_LINES &&
      last.chars < MAX_BATCH_CHARS
    ) {
      last.batch.lines.push(line);
      last.batch.at.push(at);
      last.chars += line.length;
    } else {
      this.queue.push({
        kind: "log",
        batch: { attempt, first: seq, lines: [line], at: [at] },
        chars: line.length,
      });
    }
    this.pump();
  }

  progress(event: ProgressEvent): void {
    const last = this.queue.at(-1);
    if (last?.kind === "progress" && last !== this.inFlight) last.event = event;
    else this.queue.push({ kind: "progress", event });
    this.pump();
  }

  state(event: StateEvent): void {
    this.queue.push({ kind: "state", event });
    this.pump();
  }

  /** Resolves when everything queued so far is stored by the server. */
  async flush(): Promise<void> {
    while (this.pumping) await this.pumping;
  }

  private pump(): void {
    this.pumping ??= this.drainQueue().finally(() => {
      this.pumping = undefined;
    });
  }

  private async drainQueue(): Promise<void> {
    while (this.queue.length > 0) {
      const item = this.queue[0]!;
      this.inFlight = item;
      const [subject, body] =
        item.kind === "log"
          ? [subjects.log(this.jobId), item.batch]
          : item.kind === "progress"
            ? [subjects.progress(this.jobId), item.event]
            : [subjects.state(this.jobId), item.event];
      try {
        await withRetry(() => this.js.publish(subject, encode(body)), {
          deadlineMs: PUBLISH_DEADLINE_MS,
          onRetry: (err, n) =>
            n === 1 && this.log.warn({ err: String(err), subject }, "event publish failed; retrying"),
        });
      } catch (err) {
        this.log.error({ err: String(err), subject }, "event dropped after retries");
      }
      this.inFlight = undefined;
      this.queue.shift();
    }
  }
}
