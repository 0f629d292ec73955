/**
 * Completion callbacks: when a job reaches a final state, its record is POSTed to the URL given at
 * submit, signed (`X-Mars-Signature: t=<unix seconds>,v1=<HMAC-SHA256 of "<t>.<body>" with the
 * job's secret>`), only to addresses callbacks may reach (callback-post.ts), and retried with
 * exponential backoff for up to `maxAgeMs`.
 *
 * Durable, with no state in any api process: every api process consumes the state events through
 * one shared durable consumer (`api-callbacks` on MARS_EVENTS, filter `mars.job.*.state`). A failed
 * attempt is `nak`ed with the backoff as its delay, so the server redelivers it then to whichever
 * api process is alive; one that dies mid-attempt leaves the message to be redelivered after the
 * ack wait. Each attempt is recorded in the job's entry of the `mars-callbacks` bucket.
 */
import type { BlockList } from "node:net";
import { allowList, postCallback, signCallback } from "./callback-post.js";
import type { ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { Logger } from "pino";
import {
  type BrokerConnection,
  CALLBACKS_CONSUMER,
  type CallbackState,
  callbackStateSchema,
  decode,
  encode,
  EVENTS_STREAM,
  isCasConflict,
  readCallback,
  stateEventSchema,
  TERMINAL_STATES,
} from "../broker/index.js";
import type { Fleet } from "../client/index.js";

/** A callback attempt lasts at most POST_TIMEOUT_MS (its message is kept alive before it starts). */
const POST_TIMEOUT_MS = 10_000;

export interface CallbackOptions {
  /** First retry delay; doubles with each failed attempt, at most 5 minutes. */
  backoffMs: number;
  /** Give up this long after the first attempt. */
  maxAgeMs: number;
  /** Address ranges callbacks may reach although special (loopback, private...); default none. */
  allow?: string[];
}

export class CallbackSender {
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private readonly allow: BlockList;

  constructor(
    private readonly conn: BrokerConnection,
    private readonly kv: KV,
    private readonly fleet: Fleet,
    private readonly opts: CallbackOptions,
    private readonly log: Logger,
  ) {
    this.allow = allowList(opts.allow ?? []);
  }

  async start(): Promise<void> {
    const consumer = await this.conn.js.consumers.get(EVENTS_STREAM, CALLBACKS_CONSUMER);
    // Few in hand at once: those a dying process holds wait out the ack wait.
    this.messages = await consumer.consume({ max_messages: 4 });
    this.loop = (async () => {
      for await (const msg of this.messages!) {
        await this.handle(msg).catch((err: unknown) => {
          // Left unacknowledged: redelivered after the ack wait, to this process or another.
          this.log.warn({ err, subject: msg.subject }, "callback handling failed");
        });
      }
    })();
  }

  private async handle(msg: JsMsg): Promise<void> {
    const jobId = msg.subject.split(".")[2]!;
    let state: string;
    try {
      state = decode(stateEventSchema, msg.data, "state event").state;
    } catch {
      msg.ack(); // not a state event we can read: nothing to call back for it
      return;
    }
    if (!TERMINAL_STATES.has(state as never)) return msg.ack();
    const cb = await readCallback(this.kv, jobId);
    if (!cb || cb.delivered || cb.gaveUp) return msg.ack();
    msg.working();
    const record = await (await this.fleet.job(jobId)).status();
    const body = JSON.stringify(record);
    const attempt: CallbackState["attempts"][number] = { at: Date.now() };
    try {
      const headers = {
        "content-type": "application/json",
        "x-mars-signature": signCallback(body, cb.secret),
        "x-mars-job": jobId,
        "x-mars-delivery": String(cb.attempts.length + 1),
      };
      attempt.status = await postCallback(cb.url, body, headers, {
        allow: this.allow,
        timeoutMs: POST_TIMEOUT_MS,
      });
    } catch (err) {
      attempt.error = (err as Error).message;
    }
    const ok = attempt.status !== undefined && attempt.status >= 200 && attempt.status < 300;
    const first = cb.attempts[0]?.at ?? attempt.at;
    const gaveUp = !ok && Date.now() - first >= this.opts.maxAgeMs;
    await this.record(jobId, attempt, ok, gaveUp);
    if (ok || gaveUp) {
      this.log.info({ jobId, attempts: cb.attempts.length + 1, delivered: ok }, "callback done");
      msg.ack();
      return;
    }
    const delay = Math.min(300_000, this.opts.backoffMs * 2 ** cb.attempts.length);
    this.log.info(
      { jobId, status: attempt.status, error: attempt.error, retryInMs: delay },
      "callback failed; retrying",
    );
    msg.nak(delay);
  }

  private async record(
    jobId: string,
    attempt: CallbackState["attempts"][number],
    delivered: boolean,
    gaveUp: boolean,
  ): Promise<void> {
    for (let tries = 0; tries < 10; tries++) {
      const e = await this.kv.get(jobId);
      if (!e || e.operation !== "PUT") return;
      const cb = decode(callbackStateSchema, e.value, "callback");
      const next = { ...cb, attempts: [...cb.attempts, attempt], delivered, gaveUp };
      try {
        await this.kv.update(jobId, encode(next), e.revision);
        return;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
  }

  async stop(): Promise<void> {
    this.messages?.stop();
    await this.loop;
  }
}
