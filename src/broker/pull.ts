/**
 * Messages from a lane consumer, pulled with `no_wait`: the server answers at once, with the next
 * jobs or with "no messages". (nats.js's fetch waits at least a second on an empty consumer;
 * a worker choosing among many lanes needs the answer now.) The reply is wrapped as the part of a
 * JetStream message the worker uses: data, headers, delivery info, and the acknowledgements.
 */
import {
  createInbox,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from "@nats-io/transport-node";
import { BrokerError } from "../core/index.js";
import { JOBS_STREAM, ackTokens, jsApi } from "./subjects.js";

/** What the worker needs of a delivered job message. */
export interface JobMsg {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  readonly info: { deliveryCount: number; streamSequence: number; pending: number };
  ack(): void;
  nak(delayMs?: number): void;
  term(): void;
  working(): void;
}

const encoder = new TextEncoder();

class PulledMsg implements JobMsg {
  constructor(
    private readonly nc: NatsConnection,
    readonly subject: string,
    readonly data: Uint8Array,
    readonly headers: MsgHdrs | undefined,
    private readonly reply: string,
    readonly info: JobMsg["info"],
  ) {}

  private send(body: string): void {
    this.nc.publish(this.reply, encoder.encode(body));
  }
  ack(): void {
    this.send("+ACK");
  }
  nak(delayMs?: number): void {
    this.send(delayMs ? `-NAK ${JSON.stringify({ delay: delayMs * 1_000_000 })}` : "-NAK");
  }
  term(): void {
    this.send("+TERM");
  }
  working(): void {
    this.send("+WPI");
  }
}

/**
 * The consumer and the delivery info an ack subject names: `$JS.ACK.<stream>.<consumer>.<delivered>.
 * <stream seq>.<consumer seq>.<time>.<pending>`, or the newer form with domain and account hash
 * before the stream.
 */
function readAckSubject(reply: string): { consumer: string; info: JobMsg["info"] } | undefined {
  const t = ackTokens(reply);
  if (!t) return undefined;
  const at = t.length === 9 ? 4 : t.length >= 11 ? 6 : -1;
  if (at < 0) return undefined;
  const n = (i: number): number => Number(t[at + i]);
  const info = { deliveryCount: n(0), streamSequence: n(1), pending: n(4) };
  return Object.values(info).every(Number.isInteger) ? { consumer: t[at - 1]!, info } : undefined;
}

/**
 * Pulls, one at a time, each for up to `batch` messages with `no_wait`: the server answers at once
 * with what it has, ending with a status when it has fewer than asked (or, with `waitMs`, when that
 * time is up). Answers come to one inbox
 * subscription (`<inbox>.<n>`, n per pull): a delivered message carries its own subject, not the
 * inbox's, so a status is matched to its pull by subject, and messages belong to the pull in
 * progress when its ack subject names that pull's consumer. Any other is a stray (see the
 * constructor).
 *
 * A pull given up unanswered moves the inbox: the old subscription is drained and a new one made.
 * The server keeps a `no_wait` pull it forgot (nats-server 2.9) as long as its reply subject has a
 * subscriber, and a pull consumer with a request waiting is never idle, so a lane's consumer would
 * outlive its inactive threshold for as long as the worker. With nobody behind the old inbox, the
 * server drops the request (at its next look at the consumer's waiting pulls).
 */
export class Puller {
  private inbox: string;
  private sub: Subscription;
  private seq = 0;
  private current:
    | {
        token: string;
        consumer: string;
        want: number;
        got: JobMsg[];
        done: (result: JobMsg[] | Error) => void;
      }
    | undefined;

  /**
   * @param stray a message delivered to a pull that is over: one that gave up waiting, or one the
   *   server kept (nats-server 2.9 never answers a `no_wait` pull whose messages another pull took,
   *   and delivers the lane's next message to it later). Without one, such a message is given back.
   */
  constructor(
    private readonly nc: NatsConnection,
    private readonly inboxPrefix: string | undefined,
    private readonly stray: (job: JobMsg) => void = (job) => job.nak(),
  ) {
    this.inbox = createInbox(inboxPrefix);
    this.sub = this.listen(this.inbox);
  }

  private listen(inbox: string): Subscription {
    return this.nc.subscribe(`${inbox}.*`, { callback: (err, msg) => this.receive(err, msg) });
  }

  /**
   * Move to a new inbox, and drain the old one: what the server sent there before it heard the
   * unsubscribe still arrives (to `receive`: a stray, or the next pull's), and the pulls it kept
   * for that inbox lose their subscriber, which makes the server drop them.
   */
  private moveInbox(): void {
    const old = this.sub;
    this.inbox = createInbox(this.inboxPrefix);
    this.sub = this.listen(this.inbox);
    // A drain that fails leaves the old inbox unsubscribed or the connection closing: either way
    // nothing more is received there, which is what moving meant.
    old.drain().catch(() => undefined);
  }

  /**
   * Up to `batch` messages of `consumer`; none when it has none to give now, or, with `waitMs`,
   * none within that time (the server waits for a message to arrive, instead of `no_wait`).
   * A pull not answered within `timeoutMs` fails with `details.unanswered`: its consumer is gone
   * (nobody answers), or, on nats-server 2.9, a `no_wait` pull's messages were taken by another
   * pull (never answered; what the server later delivers to it goes to `stray`).
   */
  pull(consumer: string, batch: number, timeoutMs: number, waitMs?: number): Promise<JobMsg[]> {
    if (this.current) return Promise.reject(new BrokerError("a pull is already in progress", { consumer }));
    const token = String(++this.seq);
    return new Promise<JobMsg[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        end(
          new BrokerError(`pull from ${consumer}: no answer within ${timeoutMs} ms`, {
            consumer,
            unanswered: true,
          }),
        );
        this.moveInbox(); // the server may keep the request: leave it nobody to answer
      }, timeoutMs);
      const end = (result: JobMsg[] | Error): void => {
        clearTimeout(timer);
        this.current = undefined;
        if (result instanceof Error) reject(result);
        else resolve(result);
      };
      this.current = { token, consumer, want: batch, got: [], done: end };
      const ask = waitMs === undefined ? { batch, no_wait: true } : { batch, expires: waitMs * 1_000_000 };
      const body = encoder.encode(JSON.stringify(ask));
      this.nc.publish(jsApi.msgNext(JOBS_STREAM, consumer), body, {
        reply: `${this.inbox}.${token}`,
      });
    });
  }

  private receive(err: Error | null, msg: Msg): void {
    const cur = this.current;
    if (err) {
      cur?.done(new BrokerError(`pulls cannot be received: ${err.message}`, {}, err));
      return;
    }
    const status = msg.headers?.code ?? 0;
    if (status !== 0 || !msg.reply) {
      if (!cur || msg.subject !== `${this.inbox}.${cur.token}`) return; // answers a pull that gave up
      // No messages (404), or fewer than asked (408): the pull is over, with what it got. So is a
      // 409: newer servers answer so at once for a consumer at its max_ack_pending (a lane at its
      // cap), where 2.9 waits; its other meanings (a leader change, a consumer deleted) show again
      // at the next pull, which then fails or times out.
      if (status === 404 || status === 408 || status === 409 || cur.got.length > 0) return cur.done(cur.got);
      const what = `${status} ${msg.headers?.description ?? ""}`.trim();
      return cur.done(new BrokerError(`pull from ${cur.consumer} answered ${what}`, { status }));
    }
    const ack = readAckSubject(msg.reply);
    if (!ack) return cur?.done(new BrokerError(`unexpected ack subject ${msg.reply}`, {}));
    const job = new PulledMsg(this.nc, msg.subject, msg.data, msg.headers, msg.reply, ack.info);
    // Delivered to a pull that is over (see the constructor), or, by the consumer its ack subject
    // names, to an earlier pull from another lane that the server kept.
    if (!cur || ack.consumer !== cur.consumer) return this.stray(job);
    cur.got.push(job);
    if (cur.got.length >= cur.want) cur.done(cur.got);
  }

  close(): void {
    this.sub.unsubscribe();
  }
}
