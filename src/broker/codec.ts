import type { z } from "zod";
import { describeZodError, MessageInvalidError } from "../core/index.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encode<T>(value: T): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** Parse and validate a message body; throws MessageInvalidError naming what is wrong. */
export function decode<S extends z.ZodType>(schema: S, data: Uint8Array, what: string): z.infer<S> {
  let raw: unknown;
  try {
    raw = JSON.parse(decoder.decode(data));
  } catch (err) {
    throw new MessageInvalidError(`${what} is not JSON`, { what }, err);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success)
    throw new MessageInvalidError(`invalid ${what}: ${describeZodError(parsed.error)}`, { what });
  return parsed.data;
}
