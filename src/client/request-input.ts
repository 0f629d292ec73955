import { MarsRequestError } from "../core/index.js";
import { type MarsRequest, type MarsRequestObject, normaliseRequests, parseRequests } from "../mars/index.js";

/** A request as users give it: MARS request text, one object, or a list of objects (keys inherited). */
export type MarsRequestInput = string | MarsRequestObject | MarsRequestObject[];

/** Validate and normalise any request input; throws MarsRequestError. */
export function toRequests(input: MarsRequestInput): MarsRequest[] {
  if (typeof input === "string") return parseRequests(input);
  if (input === null || typeof input !== "object") {
    throw new MarsRequestError("a request must be MARS request text, an object or a list of objects");
  }
  return normaliseRequests(input);
}
