/**
 * What an API key may reach: a `user` key its own jobs, request ids and files under its own prefix;
 * an `admin` key everything. Every route asks here, so the tenancy rules live in one place.
 */
import { createHash } from "node:crypto";
import { posix } from "node:path";
import { isToken, type JobRecord } from "../broker/index.js";
import { asFleetError, type ErrorCode, MarsFleetError, TargetError } from "../core/index.js";
import type { Problem } from "./schemas.js";
import { jobTarget, resolveInside } from "../runner/index.js";
import { lstat } from "node:fs/promises";
import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import type { Principal } from "./keys.js";

/** An error for the client, with the fields at fault for a 400. */
export class HttpProblem extends MarsFleetError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly fields?: Array<{ field: string; message: string }>,
    /** A status other than the code's own (414 for a URL too long, where the code says 413). */
    readonly status?: number,
  ) {
    super(code, message);
  }
}

/** The HTTP status of each error code the API answers with (500 for the rest). */
const STATUS_BY_CODE: Partial<Record<ErrorCode, number>> = {
  MARS_REQUEST_INVALID: 400,
  SPLIT_INVALID: 400,
  TARGET_INVALID: 400,
  ENVIRON_INVALID: 400,
  MESSAGE_INVALID: 400,
  CONFIG_INVALID: 400,
  API_AUTH: 401,
  QOS_DENIED: 403,
  API_FORBIDDEN: 403,
  REQUEST_TOO_LARGE: 413,
  MEDIA_TYPE_UNSUPPORTED: 415,
  JOB_NOT_FOUND: 404,
  JOB_EXPIRED: 410,
  WRONG_STATE: 409,
  RANGE_INVALID: 416,
  NO_WORKER: 503,
  BROKER_ERROR: 503,
};

/** An error as the API answers it: its status, and an RFC 9457 body with its stable code. */
export function problemOf(err: unknown): { status: number; body: Problem } {
  const e = asFleetError(err);
  const status = (e instanceof HttpProblem ? e.status : undefined) ?? STATUS_BY_CODE[e.code] ?? 500;
  const body: Problem = {
    type: "about:blank",
    title: e.code.toLowerCase().replaceAll("_", " "),
    status,
    detail: status === 500 ? "internal error" : e.message,
    code: e.code,
    ...(e instanceof HttpProblem && e.fields && { errors: e.fields }),
  };
  return { status, body };
}

/** The longest URL the API reads; a longer one is 414 (Node itself refuses past 16 KiB with 431). */
export const MAX_URL_LENGTH = 4096;

/** A URL past MAX_URL_LENGTH, refused before any route sees it. */
export function checkUrlLength(url: string): void {
  if (url.length > MAX_URL_LENGTH)
    throw new HttpProblem(
      "REQUEST_TOO_LARGE",
      `the URL is over ${MAX_URL_LENGTH} characters`,
      undefined,
      414,
    );
}

/**
 * What Node's HTTP parser refuses before fastify sees a request (headers too large, a malformed
 * request, a client too slow), answered as a problem like every other error.
 */
export function clientErrorHandler(err: NodeJS.ErrnoException, socket: Duplex): void {
  // A connection reset leaves nobody to answer.
  if (err.code === "ECONNRESET" || socket.destroyed || !socket.writable) return;
  const problem =
    err.code === "HPE_HEADER_OVERFLOW"
      ? new HttpProblem(
          "REQUEST_TOO_LARGE",
          "the request's headers (or its URL) are too large",
          undefined,
          431,
        )
      : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? new HttpProblem("MESSAGE_INVALID", "the request did not arrive in time", undefined, 408)
        : new HttpProblem("MESSAGE_INVALID", "the request is not valid HTTP");
  const { status, body: problemBody } = problemOf(problem);
  const body = JSON.stringify(problemBody);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/problem+json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** The one answer for a job this key may not see and for a job that does not exist: they are alike. */
export function noSuchJob(id: string): HttpProblem {
  return new HttpProblem("JOB_NOT_FOUND", `no job ${id}`);
}

/** A job id from a URL, or 400: anything else never reaches the broker. */
export function jobIdParam(id: string): string {
  if (!isToken(id))
    throw new HttpProblem("MESSAGE_INVALID", "not a job id", [{ field: "id", message: "not a job id" }]);
  return id;
}

/** A user's own directory under the shared root: `users/<user>/` (a hash when the name is not a plain token). */
export function userPrefix(user: string): string {
  const safe =
    isToken(user) && user.length <= 64
      ? user
      : `h-${createHash("sha256").update(user).digest("hex").slice(0, 24)}`;
  return `users/${safe}`;
}

/**
 * Where a job's result goes, relative to the shared root. A user key's target is inside its own
 * prefix, chosen here (the body's `target` is taken as relative to it); an admin's may be anywhere in
 * the root. A target that names a directory (`era5/`) is refused now, not when the job fails.
 */
export function targetFor(
  root: string,
  p: Principal,
  asked: string | undefined,
  id: string,
): { dir: string; file: string } {
  const wanted = asked ?? `api/${id}.grib`;
  if (wanted.endsWith("/"))
    throw new TargetError(`target ${JSON.stringify(wanted)} is a directory: name the file`, {
      target: wanted,
    });
  // Relative to the key's own directory (a leading / is that directory's top).
  const rel = wanted.replace(/^\/+/, "");
  const target = jobTarget(root, {
    dir: posix.dirname(rel),
    file: posix.basename(rel),
    within: p.role === "admin" ? undefined : userPrefix(p.user),
  });
  return { dir: posix.dirname(target), file: posix.basename(target) };
}

/**
 * The request id a key's `requestId` stands for: scoped to its user, so that one user's ids can
 * neither take nor reveal another's job.
 */
export function scopedRequestId(p: Principal, requestId: string): string {
  return `api/${p.user}/${requestId}`;
}

/**
 * The user whose jobs a query is about: a user key may ask about itself only (403 otherwise, never a
 * silent answer about someone else); an admin about anyone, or everyone.
 */
export function queriedUser(p: Principal, asked: string | undefined): string | undefined {
  if (p.role === "admin") return asked;
  if (asked !== undefined && asked !== p.user)
    throw new HttpProblem("API_FORBIDDEN", "a user key may ask about its own jobs only");
  return p.user;
}

/** Jobs newest first; a job's place never changes (its submission time and id), whatever its state. */
export function byNewest(a: JobRecord, b: JobRecord): number {
  return b.submittedAt - a.submittedAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** A page's `next`: where the list stood, not which job (a job leaving a filtered list breaks nothing). */
export function cursorAfter(r: JobRecord): string {
  return Buffer.from(JSON.stringify([r.submittedAt, r.id])).toString("base64url");
}

/** Whether `r` comes after the cursor's place in the list's order (newest first unless told). */
export function afterCursor(
  cursor: string,
  order: "newest" | "oldest" = "newest",
): (r: JobRecord) => boolean {
  let at: unknown;
  try {
    at = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
  } catch {
    at = undefined;
  }
  if (!Array.isArray(at) || typeof at[0] !== "number" || typeof at[1] !== "string")
    throw new HttpProblem("MESSAGE_INVALID", "invalid cursor: give the `next` of the previous page", [
      { field: "cursor", message: "not a cursor" },
    ]);
  const [submittedAt, id] = at as [number, string];
  if (order === "oldest")
    return (r) => r.submittedAt > submittedAt || (r.submittedAt === submittedAt && r.id < id);
  return (r) => r.submittedAt < submittedAt || (r.submittedAt === submittedAt && r.id > id);
}

/** A day `YYYY-MM-DD` that exists in the calendar, or 400. */
export function checkDays(from: string | undefined, to: string | undefined): void {
  for (const [field, day] of [
    ["from", from],
    ["to", to],
  ] as const) {
    const at = day === undefined ? undefined : new Date(`${day}T00:00:00Z`);
    if (at !== undefined && (Number.isNaN(at.getTime()) || at.toISOString().slice(0, 10) !== day))
      throw new HttpProblem("MESSAGE_INVALID", `${field}: ${day} is not a day`, [
        { field, message: "not a day" },
      ]);
  }
  if (from !== undefined && to !== undefined && to < from)
    throw new HttpProblem("MESSAGE_INVALID", "to is before from", [{ field: "to", message: "before from" }]);
}

/** A target that is an existing directory is refused at submit (the job could only fail). */
export async function refuseDirectory(root: string, target: { dir: string; file: string }): Promise<void> {
  const path = resolveInside(root, posix.join(target.dir, target.file));
  const found = await lstat(path).catch(() => undefined); // nothing there yet: the usual case
  if (found?.isDirectory())
    throw new TargetError(`target ${posix.join(target.dir, target.file)} is a directory: name a file in it`, {
      target: posix.join(target.dir, target.file),
    });
}

/**
 * fastify's own refusals (a body too large, a media type it does not take, a malformed body) as
 * the API's problems with their own codes; undefined for any other error.
 */
export function fastifyProblem(err: unknown): HttpProblem | undefined {
  if (err instanceof MarsFleetError) return undefined;
  const status = (err as { statusCode?: number }).statusCode;
  if (status === undefined || status < 400 || status >= 500) return undefined;
  const message = (err as Error).message;
  if (status === 413) return new HttpProblem("REQUEST_TOO_LARGE", message);
  if (status === 414) return new HttpProblem("REQUEST_TOO_LARGE", `the URL is too long`, undefined, 414);
  if (status === 415) return new HttpProblem("MEDIA_TYPE_UNSUPPORTED", `${message}: send application/json`);
  return new HttpProblem("MESSAGE_INVALID", message);
}
