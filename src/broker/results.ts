/**
 * Results through the broker: for a gateway that does not share the workers' filesystem, the worker
 * puts the finished GRIB into a JetStream object store (chunked), and the gateway streams it out.
 */
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import type { NatsConnection } from "@nats-io/transport-node";
import { Objm, type ObjectStore } from "@nats-io/obj";
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

/** The object's bytes as they arrive, or null when there is no such object. */
export async function downloadResult(
  store: ObjectStore,
  name: string,
): Promise<ReadableStream<Uint8Array> | null> {
  const result = await store.get(name);
  return result ? result.data : null;
}
