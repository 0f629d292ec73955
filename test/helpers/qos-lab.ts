/**
 * A test fleet with an admin's view of its QoS: the rules bucket, the JetStream manager, a way to put
 * rules in force, and the server's count of a lane's jobs in flight. Each QoS test file starts one
 * in `before` and disposes of it in `after`.
 */
import { Kvm, type KV } from "@nats-io/kv";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { isNotFound } from "../../src/broker/nats-errors.js";
import { OPEN_FLEET } from "../../src/broker/signing.js";
import { JOBS_STREAM, QOS_BUCKET, laneConsumerName } from "../../src/broker/subjects.js";
import { parseRules } from "../../src/qos/rules.js";
import { writeRules } from "../../src/qos/store.js";
import { TestFleet } from "./fleet.js";

export class QosLab {
  private constructor(
    readonly tf: TestFleet,
    readonly admin: NatsConnection,
    readonly qos: KV,
    readonly jsm: JetStreamManager,
  ) {}

  static async start(): Promise<QosLab> {
    const tf = await TestFleet.start();
    // Any client creates the topology on an open server; the rules live in its QoS bucket.
    await (await tf.client({ queue: TestFleet.queue("qos-setup") })).close();
    const admin = await tf.connectAs("admin");
    return new QosLab(tf, admin, await new Kvm(admin).open(QOS_BUCKET), await jetstreamManager(admin));
  }

  /** Put these rules in force (validated as `qos apply` does). */
  async apply(text: string): Promise<void> {
    await writeRules(this.qos, OPEN_FLEET, { text, rules: parseRules(text), appliedAt: Date.now() });
  }

  /** How many of a lane's jobs the server counts in flight (running or held aside); 0 before any pull. */
  async inFlight(queue: string, lane: string): Promise<number> {
    try {
      return (await this.jsm.consumers.info(JOBS_STREAM, laneConsumerName(queue, lane))).num_ack_pending;
    } catch (err) {
      if (isNotFound(err)) return 0; // nothing pulled from the lane yet
      throw err;
    }
  }

  async dispose(): Promise<void> {
    await this.admin.close();
    await this.tf.dispose();
  }
}
