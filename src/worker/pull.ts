/**
 * One message from a lane consumer, pulled with `no_wait`: the server answers at once, with the
 * next job or with "no messages". (nats.js's fetch waits at least a second on an empty consumer;
 * a worker choosing among many lanes needs the answer now.) The reply is wrapped as the part of a
 * JetStream message the worker uses: data, headers, delivery info, and the acknowledgements.
 */
import { createInbox, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
import { BrokerError } from "../core/errors.js";
import { JOBS_STREAM } from "../broker/subjects.js";

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
 * Delivery info from the ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.
 * <consumer seq>.<time>.<pending>`, or the newer form with domain and account hash before the stream.
 */
export function parseAckSubject(reply: string): JobMsg["info"] | undefined {
  const t = reply.split(".");
  if (t[0] !== "$JS" || t[1] !== "ACK") return undefined;
  const at = t.length === 9 ? 4 : t.length >= 11 ? 6 : -1;
  if (at < 0) return undefined;
  const n = (i: number): number => Number(t[at + i]);
  const info = { deliveryCount: n(0), streamSequence: n(1), pending: n(4) };
  return Object.values(info).every(Number.isInteger) ? info : undefined;
}

/**
 * Pull the next message of `consumer`, or undefined when it has none to give now. The answer comes
 * to an inbox of its own: a delivered message carries its own subject, not the inbox's, so a
 * request multiplexer could not tell which request it answers.
 */
export function pullNoWait(
  nc: NatsConnection,
  inboxPrefix: string | undefined,
  consumer: string,
  timeoutMs: number,
): Promise<JobMsg | undefined> {
  const inbox = createInbox(inboxPrefix);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      sub.unsubscribe();
      reject(new BrokerError(`pull from ${consumer}: no answer within ${timeoutMs} ms`, { consumer }));
    }, timeoutMs);
    const sub = nc.subscribe(inbox, {
      max: 1,
      callback: (err, reply) => {
        clearTimeout(timer);
        if (err) return reject(new BrokerError(`pull from ${consumer} failed`, { consumer }, err));
        const status = reply.headers?.code ?? 0;
        if (status === 404 || status === 408) return resolve(undefined); // nothing now / the request lapsed
        const info = reply.reply ? parseAckSubject(reply.reply) : undefined;
        if (status !== 0 || !info) {
          const what = status !== 0 ? `${status} ${reply.headers?.description ?? ""}` : `no ack subject`;
          return reject(new BrokerError(`pull from ${consumer} answered ${what}`, { consumer, status }));
        }
        resolve(new PulledMsg(nc, reply.subject, reply.data, reply.headers, reply.reply!, info));
      },
    });
    nc.publish(`$JS.API.CONSUMER.MSG.NEXT.${JOBS_STREAM}.${consumer}`, NO_WAIT_ONE, { reply: inbox });
  });
}

const NO_WAIT_ONE = encoder.encode(JSON.stringify({ batch: 1, no_wait: true }));
