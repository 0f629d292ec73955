/**
 * The console's live view, one stream per page (GET /v1/stream): every second, the workers, the
 * queues, the newest jobs and the progress of those running, as the caller's key may see them,
 * sent when something changed. Progress comes from one subscription to every job's progress
 * events (core NATS, what a job's own stream replays), not from a stream per job: a browser holds
 * six connections per host, and a page with one stream per running job froze past six.
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import type { Logger } from "pino";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import {
  TERMINAL_STATES,
  decode,
  eventJobId,
  progressSchema,
  stateEventSchema,
  subjects,
} from "../broker/index.js";

/** How many jobs' progress the API keeps at most (the oldest goes first). */
const MAX_TRACKED = 10_000;
/** How often a live page is brought up to date. */
export const LIVE_EVERY_MS = 1000;
/** A comment line this often keeps proxies from closing a quiet stream. */
const KEEPALIVE_MS = 15_000;

export interface Progress {
  bytes: number;
  total: number;
  at: number;
}

/** The last progress of every running job, from one wildcard subscription. */
export class LiveProgress {
  private readonly latest = new Map<string, Progress>();
  private readonly subs: Subscription[];

  constructor(nc: NatsConnection, log: Logger) {
    const idOf = (subject: string): string => eventJobId(subject) ?? "";
    this.subs = [
      nc.subscribe(subjects.progress("*"), {
        callback: (_err, msg) => {
          try {
            const p = decode(progressSchema, msg.data, "progress event");
            const id = idOf(msg.subject);
            this.latest.delete(id); // re-inserted last: the map's order is the eviction order
            this.latest.set(id, { bytes: p.bytes, total: p.total, at: p.at });
            if (this.latest.size > MAX_TRACKED) this.latest.delete(this.latest.keys().next().value!);
          } catch (err) {
            // Not a progress event we can read: the bar shows none for that job, nothing else.
            log.debug({ err, subject: msg.subject }, "unreadable progress event");
          }
        },
      }),
      nc.subscribe(subjects.state("*"), {
        callback: (_err, msg) => {
          try {
            const s = decode(stateEventSchema, msg.data, "state event");
            if (TERMINAL_STATES.has(s.state)) this.latest.delete(idOf(msg.subject));
          } catch {
            // An unreadable state event: the job's progress stays until evicted; harmless.
          }
        },
      }),
    ];
  }

  of(id: string): Progress | undefined {
    return this.latest.get(id);
  }

  close(): void {
    for (const s of this.subs) s.unsubscribe();
  }
}

/**
 * Serve one page's live view: `snapshot()` every LIVE_EVERY_MS (or back to back when one takes longer), sent as an `overview` event when it
 * differs from the last one sent. Ends when the client goes away.
 */
export async function streamLive(
  req: FastifyRequest,
  reply: FastifyReply,
  snapshot: () => Promise<unknown>,
): Promise<void> {
  let open = true;
  req.raw.on("close", () => (open = false));
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache, private",
    connection: "keep-alive",
  });
  let last = "";
  let quietSince = Date.now();
  try {
    while (open) {
      const tick = Date.now();
      try {
        const data = JSON.stringify(await snapshot());
        if (data !== last) {
          res.write(`event: overview\ndata: ${data}\n\n`);
          last = data;
          quietSince = Date.now();
        }
      } catch (err) {
        // The broker did not answer this time: the page says so, and the next tick tries again.
        res.write(`event: error\ndata: ${JSON.stringify({ message: (err as Error).message })}\n\n`);
      }
      if (Date.now() - quietSince >= KEEPALIVE_MS) {
        res.write(": still here\n\n");
        quietSince = Date.now();
      }
      // Every LIVE_EVERY_MS from the start of one snapshot to the next, however long one takes
      // (100 running jobs made the view 1.6 s apart when the wait came after the snapshot).
      await new Promise((r) => setTimeout(r, Math.max(0, LIVE_EVERY_MS - (Date.now() - tick))));
    }
  } finally {
    if (!res.writableEnded) res.end();
  }
}
