/**
 * A job's completion callback as the wire contract holds it: what a submitter asks for, and the
 * record in the `mars-callbacks` bucket (registered before the job exists, so that its end cannot
 * come first). The API's sender (api/callbacks.ts) delivers it.
 */
import { randomBytes } from "node:crypto";
import type { KV } from "@nats-io/kv";
import { z } from "zod";
import { decode, encode } from "./codec.js";
import { isCasConflict } from "./nats-errors.js";

export const callbackRequestSchema = z
  .object({
    url: z.url({ protocol: /^https?$/, error: "an http or https URL" }),
    /** Signing secret (at least 16 characters); one is made and returned when none is given. */
    secret: z.string().min(16).max(256).optional(),
  })
  .strict();

export const callbackStateSchema = z.object({
  url: z.string(),
  secret: z.string(),
  attempts: z.array(
    z.object({ at: z.number(), status: z.number().int().optional(), error: z.string().optional() }),
  ),
  delivered: z.boolean().default(false),
  gaveUp: z.boolean().default(false),
});
export type CallbackState = z.infer<typeof callbackStateSchema>;

/** What the job's record shows of its callback (never the secret). */
export function publicCallback(c: CallbackState): Omit<CallbackState, "secret"> {
  const { secret: _secret, ...rest } = c;
  return rest;
}

/** Register a job's callback (before it is submitted, so no final state can come first). */
export async function registerCallback(
  kv: KV,
  jobId: string,
  req: z.infer<typeof callbackRequestSchema>,
): Promise<string> {
  const secret = req.secret ?? randomBytes(24).toString("base64url");
  const state: CallbackState = { url: req.url, secret, attempts: [], delivered: false, gaveUp: false };
  try {
    await kv.create(jobId, encode(state));
  } catch (err) {
    // Registered already (an idempotent resubmit): the first registration stands.
    if (!isCasConflict(err)) throw err;
    const e = await kv.get(jobId);
    if (e && e.operation === "PUT") return decode(callbackStateSchema, e.value, "callback").secret;
  }
  return secret;
}

export async function readCallback(kv: KV, jobId: string): Promise<CallbackState | undefined> {
  const e = await kv.get(jobId);
  return e && e.operation === "PUT" && e.length > 0
    ? decode(callbackStateSchema, e.value, "callback")
    : undefined;
}
