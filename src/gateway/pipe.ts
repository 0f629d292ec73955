/**
 * cads-mars-server pipe mode (HTTP) in front of the fleet: `POST /` submits a job and streams the
 * GRIB back as a chunked `application/binary` body while it is produced, with the `RWND`, `ENDR`
 * and `EROR` control chunks; `GET|DELETE /<uid>` serve and drop the MARS log.
 */
import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import type { ServerResponse } from "node:http";
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from "fastify";
import type { Logger } from "pino";
import type { Fleet, JobHandle } from "../client/index.js";
import {
  asFleetError,
  describeZodError,
  type ErrorRecord,
  JobNotFoundError,
  type MarsFleetError,
  MarsRequestError,
} from "../core/index.js";
import { attemptRunId, partPathFor, resolveInside } from "../runner/index.js";
import { FileTail } from "./tail.js";
import { CONTROL, UID_PATTERN, environStrings, failureBody, failureShape, pipeBodySchema } from "./wire.js";

export type DataPath = "share" | "objectstore";

/** Directory under the shared root where pipe-mode results are written before they are streamed. */
export const PIPE_DIR = ".gateway";

/** The response side of one pipe-mode request: headers are decided when the first byte or the outcome is known. */
class PipeReply {
  private started = false;
  private sentThisAttempt = 0;
  ended = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly uid: string,
  ) {}

  private async write(buf: Buffer): Promise<void> {
    if (this.ended || this.res.destroyed) return;
    if (this.res.write(buf)) return;
    // Back-pressure: wait for the client (or for it to go away), leaving no listener behind.
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.res.off("drain", done);
        this.res.off("close", done);
        resolve();
      };
      this.res.on("drain", done);
      this.res.on("close", done);
    });
  }

  private begin(): void {
    if (this.started) return;
    this.started = true;
    this.res.writeHead(200, { "Content-Type": "application/binary", "X-MARS-UID": this.uid });
  }

  /** A data chunk. Never exactly 4 bytes long, so it cannot be taken for a control chunk. */
  async data(chunk: Buffer): Promise<void> {
    this.begin();
    this.sentThisAttempt += chunk.length;
    if (chunk.length === CONTROL.end.length) {
      await this.write(chunk.subarray(0, 2));
      await this.write(chunk.subarray(2));
    } else {
      await this.write(chunk);
    }
  }

  /** The job restarts on another worker: the client goes back to its start position. */
  async rewind(): Promise<void> {
    if (this.sentThisAttempt === 0) return;
    this.sentThisAttempt = 0;
    await this.write(CONTROL.rewind);
  }

  async finish(): Promise<void> {
    this.begin();
    await this.write(CONTROL.end);
    this.end();
  }

  async fail(error: ErrorRecord | undefined): Promise<void> {
    const shape = failureShape(error);
    if (shape.kind === "nodata") return this.finish();
    const body = JSON.stringify(failureBody(shape));
    if (this.started) {
      await this.write(CONTROL.error);
      await this.write(Buffer.from(body));
      this.end();
      return;
    }
    const headers: Record<string, string> = { "Content-Type": "application/json", "X-MARS-UID": this.uid };
    if (shape.kind === "exited") headers["X-MARS-EXIT-CODE"] = String(shape.exitCode);
    else {
      headers["X-MARS-SIGNAL"] = String(shape.signal);
      headers["X-MARS-RETRY-NEXT-HOST"] = shape.retryNextHost ? "1" : "0";
      headers["X-MARS-RETRY-SAME-HOST"] = "0";
    }
    this.started = true;
    this.res.writeHead(shape.kind === "exited" ? 400 : 500, headers);
    this.res.end(body);
    this.ended = true;
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.res.end();
  }
}

export interface PipeOptions {
  fleet: Fleet;
  sharedRoot: string;
  dataPath: DataPath;
  log: Logger;
}

/** Stream a job's result from the shared root, following each attempt's part file. */
async function streamFromShare(
  job: JobHandle,
  reply: PipeReply,
  opts: PipeOptions,
  signal: AbortSignal,
): Promise<void> {
  // Where the job's record says its result goes (made by jobTarget at submit), on this host.
  const target = resolveInside(opts.sharedRoot, (await job.status()).target);
  let tail: FileTail | undefined;
  let following: Promise<void> = Promise.resolve();
  const stopTail = async (): Promise<void> => {
    tail?.stop();
    await following;
    await tail?.close();
    tail = undefined;
  };
  try {
    for await (const ev of job.events({ signal })) {
      if (ev.type !== "state") continue;
      if (ev.state === "running") {
        await stopTail();
        await reply.rewind();
        const part = partPathFor(target, attemptRunId(job.id, ev.attempt));
        const t = new FileTail(() => [part, target]);
        tail = t;
        following = t.follow((chunk) => reply.data(chunk));
      } else if (ev.state === "retrying") {
        await stopTail();
        await reply.rewind();
      }
    }
    if (signal.aborted) return;
    const record = await job.status();
    if (record.state === "succeeded") {
      // The part file was renamed into place: an open descriptor reads on; else open the target.
      const t = tail ?? new FileTail(() => [target]);
      tail?.stop();
      await following;
      await t.drain((chunk) => reply.data(chunk));
      await t.close();
      tail = undefined;
      await reply.finish();
    } else {
      await stopTail();
      await reply.fail(record.error);
    }
  } finally {
    await stopTail();
    await rm(target, { force: true });
  }
}

/** Wait for the job, then stream its result out of the results object store. */
async function streamFromObjectStore(
  job: JobHandle,
  reply: PipeReply,
  opts: PipeOptions,
  signal: AbortSignal,
): Promise<void> {
  for await (const ev of job.events({ signal })) void ev; // the story ends with the terminal state
  if (signal.aborted) return;
  const record = await job.status();
  const name = record.result?.object;
  if (record.state !== "succeeded" || !name) return reply.fail(record.error);
  // Loaded on first use (the object store client): a gateway on a shared root never needs it.
  const { downloadResult } = await import("../broker/results.js");
  const data = await downloadResult(opts.fleet.connection.jsm, name);
  if (!data)
    return reply.fail({
      code: "JOB_FAILED",
      message: "the result object is gone",
      retryable: true,
      details: {},
    });
  for await (const chunk of data) await reply.data(Buffer.from(chunk));
  await reply.finish();
  // The object is left to expire with the bucket's max age (an hour): a gateway is a submitter, and
  // submitters delete nothing (docs/SECURITY.md).
}

/** The uid a log request names: the last segment of any path (`/<uid>`, `//<uid>`, `/mars/<uid>`). */
function uidOf(url: string): string | undefined {
  const uid = url.split("?")[0]!.split("/").filter(Boolean).at(-1);
  return uid !== undefined && UID_PATTERN.test(uid) ? uid : undefined;
}

/**
 * Refuse a request with 400. The pipe client never reads the body of a 400: it fetches the log of
 * `X-MARS-UID`, so the reason is recorded there too (any gateway of the fleet can serve it).
 */
async function refuse(
  reply: FastifyReply,
  uid: string,
  error: MarsFleetError,
  environ: Record<string, string>,
  opts: PipeOptions,
): Promise<FastifyReply> {
  await opts.fleet.recordRefusal(error, { requestId: uid, environ }).catch((err: unknown) => {
    // The client still gets the 400 and its body; only the log lookup will come back empty.
    opts.log.warn({ err, uid }, "could not record the refusal");
  });
  return reply.code(400).header("X-MARS-UID", uid).send({ error: error.message, code: error.code });
}

/** The job of a uid, or undefined when there is none (any other trouble is thrown). */
async function findJob(fleet: Fleet, uid: string): Promise<JobHandle | undefined> {
  try {
    return await fleet.job(uid);
  } catch (err) {
    if (err instanceof JobNotFoundError) return undefined;
    throw err;
  }
}

/** One pipe request: submit the job, then stream its log and result back on the held response. */
async function runPipeRequest(rawBody: unknown, reply: FastifyReply, opts: PipeOptions): Promise<unknown> {
  const { config } = opts.fleet;
  const uid = randomUUID();
  const body = pipeBodySchema.safeParse(rawBody);
  if (!body.success) {
    const error = new MarsRequestError(`invalid request body: ${describeZodError(body.error)}`);
    return refuse(reply, uid, error, {}, opts);
  }
  const environ = environStrings(body.data.environ);
  // The original server gave MARS the uid as request id when the client sent none.
  if (config.gatewayPipeRequestId && environ["request_id"] === undefined) environ["request_id"] = uid;
  if ((await opts.fleet.servingWorkers()).length === 0) {
    // No worker: the job would only wait. These headers send the client to its next server at once.
    return reply
      .code(503)
      .header("X-MARS-UID", uid)
      .header("X-MARS-RETRY-SAME-HOST", "0")
      .header("X-MARS-RETRY-NEXT-HOST", "1")
      .send({ error: `no MARS worker serves queue ${config.queue}`, code: "NO_WORKER" });
  }
  let job: JobHandle;
  try {
    job = await opts.fleet.submit(body.data.request, {
      requestId: uid,
      environ,
      watchResult: false, // followed by its events, from the start
      watchEvents: true,
      ...(opts.dataPath === "objectstore"
        ? { deliver: "objectstore" as const }
        : { targetDir: PIPE_DIR, targetFname: `${uid}.grib` }),
    });
  } catch (err) {
    const error = asFleetError(err);
    if (!error.retryable) return refuse(reply, uid, error, environ, opts);
    return reply.code(503).header("X-MARS-UID", uid).send({ error: error.message, code: error.code });
  }
  reply.hijack();
  const log = opts.log.child({ jobId: job.id });
  const out = new PipeReply(reply.raw, uid);
  const ac = new AbortController();
  reply.raw.on("close", () => {
    if (out.ended) return;
    ac.abort();
    log.info("client went away: cancelling its job");
    void job.cancel().catch((err: unknown) => log.warn({ err }, "could not cancel the job"));
  });
  try {
    const stream = opts.dataPath === "objectstore" ? streamFromObjectStore : streamFromShare;
    await stream(job, out, opts, ac.signal);
  } catch (err) {
    log.error({ err }, "pipe request failed");
    await out.fail(asFleetError(err).toRecord()).catch(() => reply.raw.destroy());
  }
}

/** The pipe-mode HTTP server (not yet listening). Any path works, as with the original server. */
export function pipeServer(opts: PipeOptions): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: 4 * 1024 * 1024, exposeHeadRoutes: false });

  // A body that is not JSON (or too big) is refused like any other bad request.
  app.setErrorHandler(async (err: FastifyError, _req, reply) => {
    const status = err.statusCode ?? 500;
    if (status >= 500) {
      opts.log.error({ err }, "pipe request failed");
      return reply.code(500).send({ error: err.message });
    }
    return refuse(
      reply,
      randomUUID(),
      new MarsRequestError(`invalid request body: ${err.message}`),
      {},
      opts,
    );
  });

  app.head("/*", async (_req, reply) => reply.code(204).send());

  app.post("/*", (req, reply) => runPipeRequest(req.body, reply, opts));

  app.get("/*", async (req, reply) => {
    const uid = uidOf(req.url);
    if (!uid) return reply.code(404).send();
    const job = await findJob(opts.fleet, uid);
    if (!job) return reply.code(404).send();
    const lines = await job.storedLog();
    if (lines.length === 0) return reply.code(404).send(); // never logged, or dropped by DELETE
    return reply.type("text/plain; charset=utf-8").send(lines.join("\n") + "\n");
  });

  app.delete("/*", async (req, reply) => {
    const uid = uidOf(req.url);
    if (!uid) return reply.code(404).send();
    const job = await findJob(opts.fleet, uid);
    await job?.dropLog();
    return reply.code(204).send();
  });

  return app;
}
