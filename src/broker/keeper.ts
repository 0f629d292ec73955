/**
 * The lane keeper: the one process kind that makes and edits lane consumers. Workers ask it for a
 * lane (`mars.keeper.lane.<queue>.<lane>`, a core request); it makes the lane's consumer, or
 * gives an existing one the cap and idle time asked for, and answers.
 *
 * Why a keeper (docs/SECURITY.md, "Workers make no consumers"): NATS permissions match the tokens
 * of a consumer-create subject as wildcards, and on nats-server 2.9 nothing ties a consumer's name
 * to its filter. A process allowed to make lane consumers could name the queue's own consumer
 * (re-pointing it) or give a literal `*` as the lane (one consumer over every lane, which blocks
 * the others on a work-queue stream). The keeper checks both; workers no longer hold the right.
 *
 * What a worker may ask is bounded: a lane that is one literal token, a cap (the per-user limit,
 * `max_ack_pending`) and an idle time. Everything else a lane consumer has (ack wait, deliveries,
 * policies) is copied from the queue's own consumer, which only `broker init` makes. Keepers are
 * stateless and answer in one queue group: run as many as you like, in any account set-up.
 */
import type { ConsumerConfig, JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Msg, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { z } from "zod";
import {
  asFleetError,
  errorFromRecord,
  errorRecordSchema,
  ConfigError,
  MessageInvalidError,
  NoKeeperError,
  TopologyMissingError,
} from "../core/index.js";
import { decode, encode } from "./codec.js";
import { isAlreadyExists, isNoStream, isTopologyMissing } from "./nats-errors.js";
import { consumerName, isToken, JOBS_STREAM, laneConsumerName, subjects } from "./subjects.js";

/** Keepers answer in this queue group: each request is answered once, by any of them. */
export const KEEPER_GROUP = "mars-keepers";

/** The longest idle time a worker may ask for a lane (a day: a longer one keeps idle lanes). */
const MAX_IDLE_MS = 24 * 3600 * 1000;
/**
 * How long a worker waits for a keeper's answer before asking again. Short: keepers answer in a
 * queue group, and one whose host is cut off still holds its place in the group until its server
 * notices (minutes), so a request it was given is lost; asked again, another keeper answers.
 */
export const KEEPER_TIMEOUT_MS = 2000;
/** How long a keeper trusts what it read of a queue's own consumer. */
const TEMPLATE_TTL_MS = 10_000;

export const laneAskSchema = z
  .object({
    /** `max_ack_pending`: a per-user limit the server enforces, or -1 for none. */
    cap: z
      .number()
      .int()
      .min(-1)
      .max(100_000)
      .refine((n) => n !== 0, "0 would stop the lane; -1 is no cap"),
    /** The consumer's inactive threshold in milliseconds; 0: kept while the stream lasts. */
    idleMs: z.number().int().min(0).max(MAX_IDLE_MS),
  })
  .strict();
export type LaneAsk = z.infer<typeof laneAskSchema>;

const laneAnswerSchema = z.union([
  z.object({ ok: z.literal(true) }).strict(),
  z.object({ error: errorRecordSchema }).strict(),
]);

/** The message of NO_KEEPER, with what to do about it. */
const NO_KEEPER_HINT =
  "no lane keeper answered: run `mars-fleet keeper` with the keeper role's credentials " +
  "(or, on an open server, let workers keep lanes themselves: MARS_KEEPER)";

/**
 * Ask a keeper for a lane's consumer with this cap and idle time. Resolves once the consumer is
 * there as asked; throws the keeper's refusal as its typed error, or NoKeeperError.
 */
export async function askForLane(
  nc: NatsConnection,
  queue: string,
  lane: string,
  ask: LaneAsk,
  timeoutMs: number,
): Promise<void> {
  let reply: Msg;
  try {
    reply = await nc.request(subjects.keeper(queue, lane), encode(laneAskSchema.parse(ask)), {
      timeout: timeoutMs,
    });
  } catch (err) {
    if (isNoStream(err)) throw new NoKeeperError(NO_KEEPER_HINT, { queue, lane });
    throw err;
  }
  const answer = decode(laneAnswerSchema, reply.data, "lane keeper answer");
  if ("error" in answer) throw errorFromRecord(answer.error);
}

/** The consumer configuration of a lane: the queue's own settings, this lane's filter, cap and idle. */
export function laneConsumerConfig(
  template: ConsumerConfig,
  queue: string,
  lane: string,
  ask: LaneAsk,
): Partial<ConsumerConfig> & { durable_name: string } {
  return {
    durable_name: laneConsumerName(queue, lane),
    filter_subject: subjects.lane(queue, lane),
    ack_policy: template.ack_policy,
    deliver_policy: template.deliver_policy,
    ack_wait: template.ack_wait,
    max_deliver: template.max_deliver,
    max_ack_pending: ask.cap,
    ...(ask.idleMs > 0 && { inactive_threshold: ask.idleMs * 1_000_000 }),
  };
}

/** Whether a consumer found is a lane's as `want` defines it (filter, cap, idle time). */
export function isLaneAsWanted(found: ConsumerConfig, want: Partial<ConsumerConfig>): boolean {
  return (
    found.filter_subject === want.filter_subject &&
    found.max_ack_pending === want.max_ack_pending &&
    found.inactive_threshold === want.inactive_threshold
  );
}

/**
 * Make or edit a lane's consumer as asked: the one place a lane consumer is configured. Throws
 * MessageInvalidError for a queue or lane that is not one literal token, TopologyMissingError for
 * a queue `broker init` did not make, ConfigError for a consumer of that name with another filter
 * (made by hand: left as it is).
 */
export async function keepLane(
  jsm: JetStreamManager,
  template: (queue: string) => Promise<ConsumerConfig>,
  queue: string,
  lane: string,
  ask: LaneAsk,
): Promise<void> {
  // isToken admits neither `*`, `>` nor `.`: a lane is one literal subject token, never a wildcard.
  if (!isToken(queue) || !isToken(lane))
    throw new MessageInvalidError("a queue and a lane are each one literal token", { queue, lane });
  const cfg = laneConsumerConfig(await template(queue), queue, lane, ask);
  // Looked up first, never created blindly: on nats-server 2.9 a create naming an existing durable
  // edits it, filter included. Only keepers and admins make consumers, so what is found is the
  // lane's own unless made by hand.
  const found = await jsm.consumers.info(JOBS_STREAM, cfg.durable_name).catch((err: unknown) => {
    if (isTopologyMissing(err)) return undefined; // none yet: made below
    throw err;
  });
  if (found && found.config.filter_subject !== cfg.filter_subject)
    throw new ConfigError(`consumer ${cfg.durable_name} exists with another filter; left as it is`, {
      consumer: cfg.durable_name,
      filter: found.config.filter_subject,
    });
  if (found && isLaneAsWanted(found.config, cfg)) return; // as asked already: another worker's ask
  if (!found) {
    try {
      await jsm.consumers.add(JOBS_STREAM, cfg);
      return;
    } catch (err) {
      // Another keeper made it at the same moment, with the same filter: given this cap below.
      if (!isAlreadyExists(err)) throw err;
    }
  }
  const { max_ack_pending, inactive_threshold } = cfg;
  await jsm.consumers.update(JOBS_STREAM, cfg.durable_name, {
    max_ack_pending,
    ...(inactive_threshold !== undefined && { inactive_threshold }),
  });
}

/** A keeper: answers lane requests on its connection until closed. */
export class LaneKeeper {
  private readonly templates = new Map<string, { cfg: ConsumerConfig; at: number }>();
  /**
   * The asks being carried out, by lane and ask: the same ask again meanwhile (another worker's, for
   * the same new user's jobs) waits for that one instead of making the consumer a second time.
   */
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly sub: Subscription;
  private served = 0;

  constructor(
    nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly log: Logger,
  ) {
    this.sub = nc.subscribe(subjects.allKeeper, {
      queue: KEEPER_GROUP,
      callback: (_err, msg) => void this.answer(msg),
    });
  }

  /** Lane requests answered so far (each a made or edited consumer, or a refusal). */
  get answered(): number {
    return this.served;
  }

  /**
   * Make or edit a lane's consumer as asked (keepLane), once for the same ask at the same time.
   * Also how a worker that runs a keeper has its own lanes kept: in process, not through the
   * queue group, where a keeper cut off from its server still holds a place and would lose the
   * request (each such loss costs the asker KEEPER_TIMEOUT_MS).
   */
  keep(queue: string, lane: string, asked: LaneAsk): Promise<void> {
    const ask = laneAskSchema.parse(asked); // bounded alike, asked in process or by a request
    const key = `${queue}.${lane}.${ask.cap}.${ask.idleMs}`;
    let done = this.inFlight.get(key);
    if (!done) {
      done = keepLane(this.jsm, (q) => this.templateOf(q), queue, lane, ask).finally(() =>
        this.inFlight.delete(key),
      );
      this.inFlight.set(key, done);
    }
    return done;
  }

  private async answer(msg: Msg): Promise<void> {
    const [, , , queue = "", lane = ""] = msg.subject.split(".");
    try {
      await this.keep(queue, lane, decode(laneAskSchema, msg.data, "lane request"));
      msg.respond(encode({ ok: true }));
    } catch (err) {
      const e = asFleetError(err);
      this.log.warn({ err, queue, lane }, "lane request refused");
      msg.respond(encode({ error: e.toRecord() }));
    } finally {
      this.served++;
    }
  }

  /** The queue's own consumer's configuration, which lane consumers copy (read again after 10 s). */
  private async templateOf(queue: string): Promise<ConsumerConfig> {
    const known = this.templates.get(queue);
    if (known && Date.now() - known.at < TEMPLATE_TTL_MS) return known.cfg;
    try {
      const cfg = (await this.jsm.consumers.info(JOBS_STREAM, consumerName(queue))).config;
      this.templates.set(queue, { cfg, at: Date.now() });
      return cfg;
    } catch (err) {
      if (isTopologyMissing(err)) throw new TopologyMissingError([`consumer ${consumerName(queue)}`], err);
      throw err;
    }
  }

  /** Stop answering (requests in flight finish). */
  async close(): Promise<void> {
    this.sub.unsubscribe();
    await this.sub.closed;
  }
}
