/**
 * Publishing one job's events in order: log lines are batched (a batch grows while the previous
 * publish is in flight, so sparse lines go out at once and floods go out in few messages),
 * progress is coalesced, states are never dropped. Each publish waits at most a few seconds for
 * its ack and is then sent again (in order, the same message id: the stream's duplicate window
 * drops a copy whose first send was stored after all), so a server restart delays events by about
 * its own length and loses none.
 */
import { randomBytes } from "node:crypto";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Logger } from "pino";
import { encode } from "./codec.js";
import { streamGoneCheck, withRetry } from "./transient.js";
import type { LogBatch, ProgressEvent, StateEvent } from "./schemas.js";
import { EVENTS_STREAM, subjects } from "./subjects.js";

const MAX_BATCH_LINES = 16_000;
/** Batch size budget in encoded bytes: 3/4 of the server's max_payload (default 1 MiB), at most 768 KiB. */
const MAX_BATCH_BYTES = 768 * 1024;
/** JSON quotes, comma and the 13-digit time stamp that go with each line. */
const PER_LINE_OVERHEAD = 20;
const PUBLISH_DEADLINE_MS = 10 * 60_000;
/** How long one publish waits for the server's ack before it is sent again. */
const PUBLISH_TIMEOUT_MS = 2000;

type Item = (
  | { kind: "log"; batch: LogBatch; chars: number }
  | { kind: "progress"; event: ProgressEvent }
  | { kind: "state"; event: StateEvent }
) & { msgID?: string };

export class JobEventPublisher {
  private readonly queue: Item[] = [];
  private pumping: Promise<void> | undefined;
  private inFlight: Item | undefined;
  /** Message ids are `<job>.<this publisher>.<n>`: unique, and the same for every re-send of one item. */
  private readonly publisherId = randomBytes(4).toString("hex");
  private published = 0;

  private readonly maxBatchBytes: number;
  private readonly streamGone: () => Promise<boolean>;

  constructor(
    private readonly js: JetStreamClient,
    private readonly jobId: string,
    private readonly log: Logger,
    /** The server's max_payload, when known. */
    maxPayload?: number,
  ) {
    this.streamGone = streamGoneCheck(js, EVENTS_STREAM);
    this.maxBatchBytes = Math.min(MAX_BATCH_BYTES, Math.floor((maxPayload ?? 1024 * 1024) * 0.75));
  }

  line(attempt: number, seq: number, text: string, at: number): void {
    // One line must fit in one message, whatever MARS prints.
    const limit = Math.floor(this.maxBatchBytes / 4); // characters: up to 3 bytes each in UTF-8
    const line =
      text.length > limit ? `${text.slice(0, limit)} ... (line truncated, ${text.length} characters)` : text;
    const last = this.queue.at(-1);
    if (
      last?.kind === "log" &&
      last !== this.inFlight &&
      last.batch.attempt === attempt &&
      last.batch.first + last.batch.lines.length === seq &&
      last.batch.lines.length < MAX_BATCH_LINES &&
      last.chars < this.maxBatchBytes
    ) {
      last.batch.lines.push(line);
      last.batch.at.push(at);
      last.chars += line.length + PER_LINE_OVERHEAD;
    } else {
      this.queue.push({
        kind: "log",
        batch: { attempt, first: seq, lines: [line], at: [at] },
        chars: line.length + PER_LINE_OVERHEAD,
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
      // Fixed when the item is first sent; a batch or progress item stops changing once in flight.
      item.msgID ??= `${this.jobId}.${this.publisherId}.${++this.published}`;
      const msgID = item.msgID;
      try {
        await withRetry(
          () => this.js.publish(subject, encode(body), { msgID, timeout: PUBLISH_TIMEOUT_MS }),
          {
            deadlineMs: PUBLISH_DEADLINE_MS,
            what: `publish ${subject}`,
            streamGone: this.streamGone,
            onRetry: (err, n) => n === 1 && this.log.warn({ err, subject }, "event publish failed; retrying"),
          },
        );
      } catch (err) {
        this.log.error({ err, subject }, "event dropped after retries");
      }
      this.inFlight = undefined;
      this.queue.shift();
    }
  }
}
