/**
 * The worker's puller against a real nats-server: a `no_wait` pull whose message another pull took
 * is never answered by nats-server 2.9. The puller gives it up after its timeout (a typed error the
 * dispatcher reads as "unanswered", not a stall of the 5 s pull timeout) and moves its inbox, so
 * that the server drops the forgotten request: kept, it would hold the consumer active for ever
 * (a lane consumer never reaching its inactive threshold) and take the lane's next message.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect, createInbox, type NatsConnection } from "@nats-io/transport-node";
import { AckPolicy, jetstream, jetstreamManager, RetentionPolicy } from "@nats-io/jetstream";
import { LocalNatsServer } from "../src/local/server.js";
import { Puller, type JobMsg } from "../src/broker/pull.js";
import { jsApi, JOBS_STREAM } from "../src/broker/subjects.js";
import { BrokerError } from "../src/core/errors.js";
import { eventually } from "./helpers/proc.js";

const TRIES = 40;

describe("puller", { timeout: 60_000 }, () => {
  let server: LocalNatsServer;
  let nc: NatsConnection;

  before(async () => {
    server = await LocalNatsServer.start();
    nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: JOBS_STREAM, subjects: ["p.>"], retention: RetentionPolicy.Workqueue });
    for (const c of ["a", "b"])
      await jsm.consumers.add(JOBS_STREAM, {
        durable_name: c,
        filter_subject: `p.${c}`,
        ack_policy: AckPolicy.Explicit,
      });
  });

  after(async () => {
    await nc?.close();
    await server?.dispose();
  });

  it("gives up a pull the server never answers, and hands what is delivered to it later to the stray handler", async () => {
    const js = jetstream(nc);
    const strays: JobMsg[] = [];
    const puller = new Puller(nc, undefined, (m) => strays.push(m));
    const rival = createInbox();
    let taken = 0;
    // A rival pull that takes the message, acks it, and never stays with the server (expires).
    const rivalSub = nc.subscribe(rival, {
      callback: (_e, m) => {
        if (!m.reply) return; // a status: no message for it
        taken++;
        m.respond("+ACK");
      },
    });
    const rivalAsk = JSON.stringify({ batch: 1, no_wait: true, expires: 200_000_000 });
    let lost: BrokerError | undefined;
    let answered = 0;
    try {
      for (let i = 0; i < TRIES && !lost; i++) {
        await js.publish("p.a", new TextEncoder().encode(`job ${i}`));
        // Two no_wait pulls in one flush: the first takes the one message; the second arrived while
        // it was still pending, which is how nats-server 2.9 comes to forget to answer it.
        nc.publish(jsApi.msgNext(JOBS_STREAM, "a"), rivalAsk, { reply: rival });
        const err = await puller.pull("a", 1, 300).then(
          (msgs) => {
            answered++;
            taken += msgs.length;
            for (const m of msgs) m.ack();
            return undefined;
          },
          (e: unknown) => e,
        );
        if (err !== undefined) {
          assert.ok(err instanceof BrokerError, `a pull failed with ${String(err)}`);
          assert.equal(err.code, "BROKER_ERROR");
          assert.equal(err.details["unanswered"], true);
          lost = err;
        }
        assert.ok(await eventually(() => taken === i + 1, 5000), `round ${i}: the message was not taken`);
      }
      if (!lost) {
        // A server that answers every no_wait pull (newer than 2.9): nothing stalls, nothing strays.
        assert.equal(answered, TRIES);
        assert.equal(strays.length, 0);
        return;
      }
      // The forgotten request is dropped: the server reads a consumer's waiting pulls when asked
      // for its info, and drops those nobody would receive.
      const jsm = await jetstreamManager(nc);
      assert.ok(
        await eventually(async () => (await jsm.consumers.info(JOBS_STREAM, "a")).num_waiting === 0, 5000),
        "the server still keeps the pull that was given up",
      );
      // Nothing is lost either way: the lane's next message reaches this worker once, by the next
      // pull of its lane or, had the server sent it before it heard of the move, as a stray; a
      // pull from another consumer in progress meanwhile does not take it.
      await js.publish("p.b", new TextEncoder().encode("other lane"));
      const other = puller.pull("b", 1, 2000);
      const late = await js.publish("p.a", new TextEncoder().encode("late"));
      const got = await other;
      assert.deepEqual(
        got.map((m) => new TextDecoder().decode(m.data)),
        ["other lane"],
      );
      for (const m of got) m.ack();
      const next = await puller.pull("a", 1, 2000);
      const received = [...strays, ...next];
      assert.deepEqual(
        received.map((m) => [m.info.streamSequence, new TextDecoder().decode(m.data)]),
        [[late.seq, "late"]],
      );
      for (const m of received) m.ack();
    } finally {
      puller.close();
      rivalSub.unsubscribe();
    }
  });
});
