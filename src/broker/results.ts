/**
 * Results through the broker: for a gateway that does not share the workers' filesystem, the worker
 * puts the finished GRIB into a JetStream object store (chunked), and the gateway streams it out.
 */
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createHash } from "node:crypto";
import type { JetStreamManager } from "@nats-io/jetstream";
import { Objm, type ObjectStore } from "@nats-io/obj";
import { z } from "zod";
import { BrokerError } from "../core/index.js";
import { decode } from "./codec.js";
import { withRetry } from "./transient.js";
import { replayStored } from "./stream-reads.js";
import { RESULTS_BUCKET } from "./subjects.js";

/** Objects not picked up within this time are dropped by the server. */
export const RESULTS_MAX_AGE_MS = 60 * 60 * 1000;

/** The results store, provisioned by `broker init` (a worker or gateway may not create it). */
export async function resultsStore(nc: NatsConnection): Promise<ObjectStore> {
  return new Objm(nc).open(RESULTS_BUCKET);
}

export async function uploadResult(store: ObjectStore, name: string, path: string): Promise<void> {
  const stream = Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>;
  await store.put({ name }, stream);
}

const objectMetaSchema = z.object({
  nuid: z.string(),
  size: z.number().int().min(0),
  chunks: z.number().int().min(0),
  digest: z.string(),
  deleted: z.boolean().optional(),
});

/** An object's name as its meta subject spells it (padded base64url, as the object store client does). */
function metaSubject(name: string): string {
  const b64 = Buffer.from(name).toString("base64").replace(/\+/g, "-").replace(/\//g, "_");
  return `$O.${RESULTS_BUCKET}.M.${b64}`;
}

/**
 * The object's bytes as they are read, or null when there is no such object. Read chunk by chunk
 * with message gets, not the object store client's ordered consumer: a gateway (a submitter) makes
 * no consumers (stream-reads.ts says why). The digest is checked at the end: a corrupt object fails
 * the stream rather than pass for a result.
 */
export async function downloadResult(
  jsm: JetStreamManager,
  name: string,
): Promise<ReadableStream<Uint8Array> | null> {
  const stream = `OBJ_${RESULTS_BUCKET}`;
  const meta = await withRetry(() => jsm.streams.getMessage(stream, { last_by_subj: metaSubject(name) }), {
    what: `read result ${name}`,
  });
  if (!meta) return null;
  const info = decode(objectMetaSchema, meta.data, `result ${name}`);
  if (info.deleted) return null;
  const chunks = replayStored(jsm, stream, `$O.${RESULTS_BUCKET}.C.${info.nuid}`);
  const hash = createHash("sha256");
  let bytes = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const next = await chunks.next();
      if (!next.done) {
        hash.update(next.value.data);
        bytes += next.value.data.length;
        controller.enqueue(next.value.data);
        return;
      }
      const sum = hash.digest();
      const want = info.digest.replace(/^SHA-256=/, "");
      const ok =
        bytes === info.size &&
        [
          sum.toString("base64url"),
          sum.toString("base64").replace(/\+/g, "-").replace(/\//g, "_"),
          sum.toString("hex"),
        ].includes(want);
      if (ok) controller.close();
      else controller.error(new BrokerError(`result ${name} is corrupt (size or digest differ)`, {}));
    },
    async cancel() {
      await chunks.return(undefined);
    },
  });
}
