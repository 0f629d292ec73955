/**
 * The worker's puller against a real nats-server: a `no_wait` pull whose message another pull took
 * is never answered by nats-server 2.9. The puller gives it up after its timeout (a typed error the
 * dispatcher reads as "unanswered", not a stall of the 5 s pull timeout), and the message the server
 * later delivers to that forgotten request reaches the stray handler (the dispatcher runs it), not
 * a later pull of another consumer.
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
      // A pull from another consumer, in progress meanwhile, does not take what the forgotten
      // request of consumer a is given.
      await js.publish("p.b", new TextEncoder().encode("other lane"));
      const other = puller.pull("b", 1, 2000);
      const late = await js.publish("p.a", new TextEncoder().encode("late"));
      const got = await other;
      assert.deepEqual(
        got.map((m) => new TextDecoder().decode(m.data)),
        ["other lane"],
      );
      for (const m of got) m.ack();
      assert.ok(
        await eventually(() => strays.length === 1, 5000),
        "the late message never reached the stray handler",
      );
      assert.equal(strays[0]!.info.streamSequence, late.seq);
      assert.equal(new TextDecoder().decode(strays[0]!.data), "late");
      strays[0]!.ack();
    } finally {
      puller.close();
      rivalSub.unsubscribe();
    }
  });
});
