/**
 * `mars-fleet api`: the fleet over HTTP for those who do not speak NATS. Stateless (any number of
 * them behind a load balancer): every answer comes from the broker. Bearer API keys (keys.ts);
 * errors as RFC 9457 problem details carrying the error's stable code; `/openapi.json` from the
 * same zod schemas that validate the requests (schemas.ts).
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { relative, resolve } from "node:path";
import send from "@fastify/send";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { Kvm, type KV } from "@nats-io/kv";
import type { Logger } from "pino";
import { z } from "zod";
import {
  API_JOBS_BUCKET,
  CALLBACKS_BUCKET,
  type JobRecord,
  publicCallback,
  readCallback,
  recentStored,
  subjects,
  TERMINAL_STATES,
  type WorkerInfo,
  DEAD_STREAM,
  deadLetterSchema,
  decode,
} from "../broker/index.js";
import { tokenFor } from "../qos/index.js";
import { accounting, Fleet, type JobHandle, jobIdFor, type MarsRequestInput } from "../client/index.js";
import { formatRequests } from "../mars/index.js";
import type { FleetConfig } from "../config/index.js";
import { formatDuration, MarsFleetError, silentLogger } from "../core/index.js";
import { resolveInside } from "../runner/index.js";
import { ApiKeys, type Principal } from "./keys.js";
import { CallbackSender, type CallbackOptions } from "./callbacks.js";
import { LiveProgress, streamLive } from "./live.js";
import { FleetHistory } from "./history.js";
import { byOrder, failuresByCode, jobMatcher, type JobFilter } from "./job-filter.js";
import { openApiDocument, docsPage } from "./openapi.js";
import {
  HttpProblem,
  problemOf,
  MAX_URL_LENGTH,
  afterCursor,
  checkUrlLength,
  clientErrorHandler,
  checkDays,
  cursorAfter,
  fastifyProblem,
  jobIdParam,
  noSuchJob,
  queriedUser,
  refuseDirectory,
  scopedRequestId,
  targetFor,
} from "./scope.js";
import { dashboardPage } from "./dashboard.js";
import { pageHeaders } from "./page-policy.js";
import {
  jobListSchema,
  listQuerySchema,
  deadQuerySchema,
  failuresQuerySchema,
  qosQuerySchema,
  submitBodySchema,
  type SubmitBody,
  usageQuerySchema,
} from "./schemas.js";

function sendProblem(reply: FastifyReply, err: unknown): void {
  const { status, body } = problemOf(err);
  void reply.code(status).type("application/problem+json").send(body);
}

function invalid(error: z.ZodError, where: string): HttpProblem {
  const fields = error.issues.map((i) => ({ field: i.path.join(".") || where, message: i.message }));
  return new HttpProblem(
    "MESSAGE_INVALID",
    `invalid ${where}: ${fields.map((f) => `${f.field}: ${f.message}`).join("; ")}`,
    fields,
  );
}

declare module "fastify" {
  interface FastifyRequest {
    principal?: Principal;
  }
}

export interface ApiOptions {
  config: FleetConfig;
  port: number;
  host?: string;
  logger?: Logger;
  /** Completion callbacks, over the configuration's callback_backoff, callback_max_age and callback_allow. */
  callbacks?: Partial<CallbackOptions>;
  /** How often the console's history (GET /v1/history) samples the fleet; 10 s. */
  historyEveryMs?: number;
}

export interface ApiServer {
  port: number;
  /** Stop listening, the callbacks and the broker connection; a second call waits for the first. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** The chart library the console loads from this server (uPlot, MIT): a file of the package, by name. */
const ASSETS: Record<string, { file: string; type: string }> = {
  "/assets/uplot.js": { file: "uplot/dist/uPlot.iife.min.js", type: "text/javascript; charset=utf-8" },
  "/assets/uplot.css": { file: "uplot/dist/uPlot.min.css", type: "text/css; charset=utf-8" },
};
const PUBLIC = new Set(["/", "/openapi.json", "/docs", ...Object.keys(ASSETS)]);

export async function startApi(opts: ApiOptions): Promise<ApiServer> {
  const log = (opts.logger ?? silentLogger()).child({ component: "api" });
  const fleet = await Fleet.connect({ config: opts.config, logger: log });
  try {
    const kvm = new Kvm(fleet.connection.js);
    const keys = await ApiKeys.open(fleet.connection.js, fleet.connection.authority);
    keys.follow(fleet.connection.nc);
    const callbacksKv = await kvm.open(CALLBACKS_BUCKET);
    const apiJobs = await kvm.open(API_JOBS_BUCKET);
    const sender = new CallbackSender(
      fleet.connection,
      callbacksKv,
      fleet,
      {
        backoffMs: opts.config.callbackBackoff,
        maxAgeMs: opts.config.callbackMaxAge,
        allow: opts.config.callbackAllow,
        ...opts.callbacks,
      },
      log,
    );
    await sender.start();
    const app = Fastify({
      logger: false,
      bodyLimit: 1024 * 1024,
      clientErrorHandler,
      // Routes take a URL as long as the API reads any (checkUrlLength answers 414 past it).
      routerOptions: { maxParamLength: MAX_URL_LENGTH },
      // The router's own refusals (a malformed URL) are problems too.
      frameworkErrors: (err, _req, reply) => sendProblem(reply, fastifyProblem(err) ?? err),
    });
    // Bodies are JSON: anything else is 415, not a string that fails validation as 400.
    app.removeContentTypeParser("text/plain");
    const live = new LiveProgress(fleet.connection.nc, log);
    const history = new FleetHistory(fleet, opts.historyEveryMs ?? 10_000, log);
    history.start();
    routes(app, fleet, keys, { callbacks: callbacksKv, apiJobs }, opts.config, log, { live, history });
    await app.listen({ port: opts.port, host: opts.host ?? "0.0.0.0" });
    const address = app.server.address();
    const port = typeof address === "object" && address ? address.port : opts.port;
    log.info({ port }, "API listening");
    let closing: Promise<void> | undefined;
    const close = (): Promise<void> =>
      (closing ??= (async () => {
        await app.close();
        live.close();
        history.close();
        keys.close();
        await sender.stop();
        await fleet.close();
      })());
    return { port, close, [Symbol.asyncDispose]: close };
  } catch (err) {
    await fleet.close();
    throw err;
  }
}

/** What every route works with. */
interface Deps {
  fleet: Fleet;
  /** Every running job's last progress, for the live view. */
  live: LiveProgress;
  /** The last hour of the fleet, for the console's charts. */
  history: FleetHistory;
  keys: ApiKeys;
  buckets: { callbacks: KV; apiJobs: KV };
  config: FleetConfig;
  log: Logger;
  sharedRoot: string;
}

function routes(
  app: FastifyInstance,
  fleet: Fleet,
  keys: ApiKeys,
  buckets: { callbacks: KV; apiJobs: KV },
  config: FleetConfig,
  log: Logger,
  { live, history }: { live: LiveProgress; history: FleetHistory },
): void {
  const deps: Deps = {
    fleet,
    live,
    history,
    keys,
    buckets,
    config,
    log,
    sharedRoot: resolve(config.sharedRoot),
  };
  guard(app, deps);
  const access = accessFor(deps);
  submitRoute(app, deps, access);
  readRoutes(app, deps, access);
  jobActionRoutes(app, deps, access);
  fleetRoutes(app, deps, access);
  pageRoutes(app);
}

/** Errors as problems, unknown routes, and the API key every route but the public ones needs. */
function guard(app: FastifyInstance, { keys, log }: Deps): void {
  app.setErrorHandler((err, _req, reply) => {
    if (problemOf(err).status >= 500) log.error({ err }, "API request failed");
    sendProblem(reply, fastifyProblem(err) ?? err);
  });
  app.setNotFoundHandler((req, reply) =>
    sendProblem(reply, new HttpProblem("JOB_NOT_FOUND", `no route ${req.method} ${req.url}`)),
  );

  app.addHook("onRequest", async (req, reply) => {
    checkUrlLength(req.url);
    if (PUBLIC.has(req.url.split("?")[0]!)) return;
    // RFC 7235: the scheme is case-insensitive.
    const bearer = /^bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
    const principal = bearer ? await keys.verify(bearer[1]!) : undefined;
    if (!principal) {
      void reply.header("WWW-Authenticate", 'Bearer realm="mars-fleet"');
      throw new HttpProblem("API_AUTH", "a valid API key is needed: Authorization: Bearer mfk_…");
    }
    req.principal = principal;
  });
}

/** What a key may see: a job (or none, as a missing one), a query's user. */
function accessFor({ fleet, buckets, config }: Deps) {
  /** The job, if this principal may see it; another user's job is "not found", as a missing one. */
  const visibleJob = async (
    req: FastifyRequest,
    idParam: string,
  ): Promise<{ job: JobHandle; record: JobRecord }> => {
    const id = jobIdParam(idParam);
    const p = req.principal!;
    const { job, record } = await fleet.lookup(id).catch(async (err: unknown) => {
      if (!(err instanceof MarsFleetError) || err.code !== "JOB_NOT_FOUND") throw err;
      // Not there: gone (its record expired) if this API took it, for this key's user.
      const took = await buckets.apiJobs.get(id);
      if (took && took.operation === "PUT" && took.length > 0) {
        const { user } = took.json<{ user: string }>();
        if (p.role === "admin" || user === p.user)
          throw new HttpProblem(
            "JOB_EXPIRED",
            `job ${id} expired: records are kept ${formatDuration(config.retention)} after their last change`,
          );
      }
      throw noSuchJob(id);
    });
    // Another user's job answers as a missing one does, to the letter.
    if (p.role !== "admin" && record.environ["user_id"] !== p.user) throw noSuchJob(id);
    return { job, record };
  };

  /** A query, validated, with `user` as this key may ask: its own for a user key, any for admin. */
  const scopedQuery = <
    S extends typeof listQuerySchema | typeof usageQuerySchema | typeof failuresQuerySchema,
  >(
    schema: S,
    req: FastifyRequest,
  ): z.infer<S> => {
    const parsed = schema.safeParse(req.query);
    if (!parsed.success) throw invalid(parsed.error, "query");
    const { user: asked, ...rest } = parsed.data;
    const user = queriedUser(req.principal!, asked);
    checkDays(rest.from, rest.to);
    return { ...rest, ...(user !== undefined && { user }) } as z.infer<S>;
  };

  return { visibleJob, scopedQuery };
}
type Access = ReturnType<typeof accessFor>;

/** A search (`q`) also finds the job the caller submitted with that requestId (ids are per user). */
function withRequestId<F extends JobFilter>(p: Principal, f: F): F {
  return f.q === undefined ? f : { ...f, qJob: jobIdFor(scopedRequestId(p, f.q)) };
}

/** What a submit through the API asks for (a new job, or a retry of one). */
interface ApiSubmit {
  requests: MarsRequestInput;
  environ?: Record<string, string>;
  target?: string;
  requestId?: string;
  callback?: SubmitBody["callback"];
  split?: string[];
  /** The job this one retries (kept in the API's own records). */
  retryOf?: string;
}

/**
 * Submit for a key: its user owns the job whatever the body says, its request ids and target are
 * its own (scope.ts), and the API remembers whose the job is (and what it retries).
 */
function apiSubmitter({ fleet, buckets, sharedRoot }: Deps) {
  return async (p: Principal, body: ApiSubmit) => {
    const environ = { ...(body.environ ?? {}), ...(p.role === "user" && { user_id: p.user }) };
    if (environ["user_id"] === undefined) environ["user_id"] = p.user;
    const requestId = scopedRequestId(p, body.requestId ?? randomUUID());
    const id = jobIdFor(requestId);
    const target = targetFor(sharedRoot, p, body.target, id);
    await refuseDirectory(sharedRoot, target);
    const remember = async (user: string | undefined, submittedAt: number): Promise<void> => {
      const entry = { user, submittedAt, ...(body.retryOf && { retryOf: body.retryOf }) };
      await buckets.apiJobs.put(id, JSON.stringify(entry));
    };
    const submitting = fleet.submit(body.requests, {
      requestId,
      environ,
      targetDir: target.dir,
      targetFname: target.file,
      ...(body.callback && { callback: body.callback }),
      ...(body.split && { split: body.split }),
      watchResult: false, // its clients follow it, not this request
    });
    // A fresh request id makes a new job of this environ's user: remembered beside the submit.
    // Should the submit fail (denied, invalid), the entry names an id that nobody is ever told,
    // and expires with the bucket.
    const [job] = await Promise.all([
      submitting,
      body.requestId === undefined ? remember(environ["user_id"], Date.now()) : undefined,
    ]);
    const record = job.submitted ?? (await job.status());
    // A known request id names this user's existing job (ids are scoped per user): remembered again.
    if (body.requestId !== undefined) await remember(record.environ["user_id"], record.submittedAt);
    return { job, record };
  };
}

function submitRoute(app: FastifyInstance, deps: Deps, { visibleJob }: Access): void {
  const submitFor = apiSubmitter(deps);
  app.post("/v1/jobs", async (req, reply) => {
    const parsed = submitBodySchema.safeParse(req.body ?? {});
    if (!parsed.success) throw invalid(parsed.error, "body");
    const { request, requests, ...rest } = parsed.data;
    const { job, record } = await submitFor(req.principal!, { ...rest, requests: requests ?? request! });
    void reply.code(202).header("Location", `/v1/jobs/${job.id}`);
    return {
      id: job.id,
      state: record.state,
      ...(rest.callback &&
        !rest.callback.secret &&
        job.callbackSecret && { callbackSecret: job.callbackSecret }),
    };
  });

  // Run an ended job again: a new job with the same requests, its own id and target, linked to
  // the one it retries (`retryOf` in its answer and its record's view).
  app.post<{ Params: { id: string } }>("/v1/jobs/:id/retry", async (req, reply) => {
    const { record } = await visibleJob(req, req.params.id);
    if (!TERMINAL_STATES.has(record.state))
      throw new HttpProblem(
        "WRONG_STATE",
        `job ${record.id} is ${record.state}: only an ended job is retried`,
      );
    const { request_id: _, ...environ } = record.environ;
    const { job, record: again } = await submitFor(req.principal!, {
      // As MARS text: the client reads it back exactly as it validated the original.
      requests: formatRequests(record.requests),
      environ,
      ...(record.split && { split: record.split.by }),
      retryOf: record.id,
    });
    void reply.code(202).header("Location", `/v1/jobs/${job.id}`);
    return { id: job.id, state: again.state, retryOf: record.id };
  });
}

function readRoutes(
  app: FastifyInstance,
  { fleet, buckets }: Deps,
  { visibleJob, scopedQuery }: Access,
): void {
  const callbacksKv = buckets.callbacks;
  app.get<{ Params: { id: string } }>("/v1/jobs/:id", async (req) => {
    const { job, record } = await visibleJob(req, req.params.id);
    const waiting =
      record.state === "queued" || record.state === "retrying" ? await fleet.explain(record.id) : [];
    const [callback, took] = await Promise.all([
      readCallback(callbacksKv, record.id),
      buckets.apiJobs.get(record.id),
    ]);
    const retryOf =
      took && took.operation === "PUT" && took.length > 0
        ? took.json<{ retryOf?: string }>().retryOf
        : undefined;
    const parts = record.split ? await job.parts() : undefined;
    return {
      ...record,
      // The request as MARS reads it (what `mars-fleet run` takes), for people to read and copy.
      requestText: formatRequests(record.requests),
      ...(parts && {
        parts: parts.map((r) => ({
          id: r.id,
          index: r.part?.index,
          state: r.state,
          attempt: r.attempt,
          worker: r.worker,
          bytes: r.result?.bytes,
          error: r.error,
        })),
      }),
      ...(retryOf && { retryOf }),
      ...(waiting.length > 0 && { waiting }),
      ...(callback && { callback: publicCallback(callback) }),
    };
  });

  app.get("/v1/jobs", async (req) => {
    const q = scopedQuery(listQuerySchema, req);
    const after = q.cursor === undefined ? () => true : afterCursor(q.cursor, q.order);
    const matches = jobMatcher(withRequestId(req.principal!, q));
    const all = (await fleet.jobs(q.state ? { state: q.state } : {}))
      .filter((r) => matches(r) && after(r))
      .sort(byOrder(q.order));
    const page = all.slice(0, q.limit);
    const out: z.infer<typeof jobListSchema> = {
      jobs: page,
      ...(all.length > q.limit && { next: cursorAfter(page[page.length - 1]!) }),
    };
    return out;
  });
}

function jobActionRoutes(app: FastifyInstance, { sharedRoot }: Deps, { visibleJob }: Access): void {
  app.delete<{ Params: { id: string } }>("/v1/jobs/:id", async (req, reply) => {
    const { job, record } = await visibleJob(req, req.params.id);
    if (TERMINAL_STATES.has(record.state))
      throw new HttpProblem("WRONG_STATE", `job ${record.id} is already ${record.state}`);
    await job.cancel();
    void reply.code(202);
    return { id: job.id, state: (await job.status()).state };
  });

  app.get<{ Params: { id: string } }>("/v1/jobs/:id/logs", async (req, reply) => {
    const { job } = await visibleJob(req, req.params.id);
    if (!(req.headers.accept ?? "").includes("text/event-stream")) {
      void reply.type("text/plain; charset=utf-8");
      const lines = await job.storedLog();
      return lines.length > 0 ? lines.join("\n") + "\n" : "";
    }
    await streamEvents(req, reply, job);
    return reply;
  });

  app.get<{ Params: { id: string } }>("/v1/jobs/:id/result", async (req, reply) => {
    const { record } = await visibleJob(req, req.params.id);
    if (record.state !== "succeeded" || !record.result)
      throw new HttpProblem("WRONG_STATE", `job ${record.id} has no result (it is ${record.state})`);
    if (record.result.object !== undefined)
      throw new HttpProblem(
        "WRONG_STATE",
        `job ${record.id}'s result is in the object store, not the shared root`,
      );
    const path = resolveInside(sharedRoot, record.result.target);
    const sent = await send(req.raw, `/${relative(sharedRoot, path)}`, {
      root: sharedRoot,
      dotfiles: "allow",
      etag: true,
      lastModified: true,
      acceptRanges: true,
    });
    if (sent.type === "error") {
      if (sent.statusCode === 416) {
        void reply.header("content-range", `bytes */${record.result.bytes}`);
        throw new HttpProblem(
          "RANGE_INVALID",
          `range ${req.headers.range} is outside the ${record.result.bytes} bytes`,
        );
      }
      if (sent.statusCode === 404)
        throw new HttpProblem("JOB_NOT_FOUND", `the result of ${record.id} is gone`);
      throw new MarsFleetError("INTERNAL", `cannot send the result (${sent.statusCode})`);
    }
    // A result is one user's (it needs a key): never kept by a shared cache.
    void reply
      .code(sent.statusCode)
      .headers({ ...sent.headers, "cache-control": "private, no-cache" })
      .type("application/octet-stream");
    return reply.send(sent.stream);
  });
}

/** How many jobs the live view lists at most (its `limit`, 50 unless asked). */
const LIVE_JOBS = 200;

/**
 * The workers and queues as a key may see them: all of them for an admin key; for a user key, its
 * own jobs on the workers and its own counts per queue, from its records (never another user's).
 * `mine`: the key's records when the caller has them already.
 */
function fleetViews(fleet: Fleet) {
  /** A user's own job records (the API tells whose a job is by its environ's user_id). */
  const recordsOf = async (user: string): Promise<JobRecord[]> =>
    (await fleet.jobs()).filter((r) => r.environ["user_id"] === user);
  return {
    async workers(p: Principal, mine?: JobRecord[], all?: WorkerInfo[]): Promise<WorkerInfo[]> {
      const workers = all ?? (await fleet.workers());
      if (p.role === "admin") return workers;
      const ids = new Set((mine ?? (await recordsOf(p.user))).map((r) => r.id));
      return workers.map((w) => ({
        ...w,
        running: w.running.filter((j) => ids.has(j)),
        ...(w.waiting && { waiting: w.waiting.filter((x) => ids.has(x.job)) }),
      }));
    },
    async queues(p: Principal, mine?: JobRecord[], all?: WorkerInfo[]) {
      const queues = await fleet.queues(all);
      if (p.role === "admin") return queues.map(({ laneCount: _, ...q }) => q);
      const own = mine ?? (await recordsOf(p.user));
      return queues.map(({ queue }) => {
        const here = own.filter((r) => r.queue === queue);
        const queued = here.filter((r) => r.state === "queued" || r.state === "retrying").length;
        return { queue, queued, running: here.filter((r) => r.state === "running").length, lanes: [] };
      });
    },
  };
}

function fleetRoutes(app: FastifyInstance, { fleet, live, history }: Deps, { scopedQuery }: Access): void {
  const views = fleetViews(fleet);
  app.get("/v1/usage", async (req) => {
    const q = scopedQuery(usageQuerySchema, req);
    return { usage: accounting(await fleet.jobs(), q) };
  });

  app.get("/v1/failures", async (req) => {
    const q = scopedQuery(failuresQuerySchema, req);
    return { failures: failuresByCode((await fleet.jobs({ state: "failed" })).filter(jobMatcher(q))) };
  });

  app.get("/v1/workers", async (req) => ({ workers: await views.workers(req.principal!) }));

  // The last hour, for the console's charts: workers for every key, queues for admin keys (a
  // queue's counts are everyone's jobs).
  app.get("/v1/history", async (req) => ({
    workers: Object.fromEntries(history.workers),
    ...(req.principal!.role === "admin" && { queues: Object.fromEntries(history.queues) }),
  }));

  // QoS now: an admin key sees it all; a user key its own lane, limits, held jobs and recent use.
  app.get("/v1/qos", async (req) => {
    const p = req.principal!;
    const q = qosQuerySchema.safeParse(req.query);
    if (!q.success) throw invalid(q.error, "query");
    const state = await fleet.qosState(q.data.queue);
    if (p.role === "admin") return state;
    const lane = tokenFor(p.user);
    const mine = new Set(
      (await fleet.jobs()).filter((r) => r.environ["user_id"] === p.user).map((r) => r.id),
    );
    return {
      rules: null,
      appliedAt: state.appliedAt,
      appliedBy: null,
      limits: state.limits
        .filter((l) => l.key.endsWith(`.${lane}`))
        .map((l) => ({ ...l, jobs: l.jobs.filter((j) => mine.has(j)) })),
      lanes: state.lanes.filter((l) => l.lane === lane),
      waiting: state.waiting.filter((w) => mine.has(w.job)),
      usage: state.usage.filter((u) => u.lane === lane),
    };
  });

  // Dead letters (admin keys): the newest, without their payloads.
  app.get("/v1/dead", async (req) => {
    const p = req.principal!;
    if (p.role !== "admin") throw new HttpProblem("API_FORBIDDEN", "dead letters are for admin keys");
    const q = deadQuerySchema.safeParse(req.query);
    if (!q.success) throw invalid(q.error, "query");
    const stored = await recentStored(fleet.connection.jsm, DEAD_STREAM, subjects.allDead, q.data.limit);
    return {
      dead: stored.reverse().flatMap((m) => {
        try {
          const {
            payloadBase64: _,
            headers: __,
            ...letter
          } = decode(deadLetterSchema, m.data, "dead letter");
          return [{ seq: m.seq, queue: m.subject.split(".").slice(2).join("."), ...letter }];
        } catch {
          // Not a dead letter of ours (published by hand): left out of the list, kept in the stream.
          return [];
        }
      }),
    };
  });
  app.get("/v1/queues", async (req) => ({ queues: await views.queues(req.principal!) }));

  // The console's live view: one stream per page, whatever runs (src/api/live.ts).
  app.get("/v1/stream", async (req, reply) => {
    const p = req.principal!;
    // The jobs list takes the filters and order of /v1/jobs (its first page, live).
    const q = scopedQuery(listQuerySchema, req);
    const matches = jobMatcher(withRequestId(p, q));
    await streamLive(req, reply, async () => {
      const records = await fleet.jobs();
      const mine = p.role === "admin" ? records : records.filter((r) => r.environ["user_id"] === p.user);
      const jobs = mine.filter(matches).sort(byOrder(q.order)).slice(0, Math.min(q.limit, LIVE_JOBS));
      const progress = Object.fromEntries(
        jobs.flatMap((j) => {
          const at = j.state === "running" ? live.of(j.id) : undefined;
          return at ? [[j.id, at]] : [];
        }),
      );
      const registry = await fleet.workers(); // read once for both views
      const [workers, queues] = await Promise.all([
        views.workers(p, mine, registry),
        views.queues(p, mine, registry),
      ]);
      return { workers, queues, jobs, progress, failures: failuresByCode(mine) };
    });
    return reply;
  });
}

/** The public pages: the OpenAPI document, its readable form, and the dashboard, each with its policy. */
function pageRoutes(app: FastifyInstance): void {
  app.get("/openapi.json", async () => openApiDocument());
  const require = createRequire(import.meta.url);
  for (const [path, { file, type }] of Object.entries(ASSETS)) {
    const body = readFileSync(require.resolve(file));
    app.get(path, async (_req, reply) =>
      reply
        .headers({
          "content-type": type,
          "cache-control": "public, max-age=86400",
          "x-content-type-options": "nosniff",
        })
        .send(body),
    );
  }
  const docs = docsPage();
  const docsHeaders = pageHeaders(docs);
  app.get("/docs", async (_req, reply) => reply.headers(docsHeaders).send(docs));
  // The dashboard: a static page; what it shows comes from the API, with the visitor's key.
  const dashboard = dashboardPage();
  const dashboardHeaders = pageHeaders(dashboard, true);
  app.get("/", async (_req, reply) => reply.headers(dashboardHeaders).send(dashboard));
}

/**
 * Server-Sent Events: the job's stored events (log, progress, state), then live ones, until its
 * final state. Each event's id is its position in the job's stored history, so `Last-Event-ID`
 * resumes after it; live heartbeats come between them without an id.
 */
async function streamEvents(req: FastifyRequest, reply: FastifyReply, job: JobHandle): Promise<void> {
  const after = Number(req.headers["last-event-id"] ?? 0);
  const skip = Number.isInteger(after) && after > 0 ? after : 0;
  const ac = new AbortController();
  req.raw.on("close", () => ac.abort());
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    connection: "keep-alive",
  });
  let n = 0;
  try {
    for await (const ev of job.events({ signal: ac.signal })) {
      const { type, ...data } = ev;
      // Heartbeats are live only (never stored): they carry no id, so ids match on a replay.
      if (type === "heartbeat") {
        if (n >= skip) res.write(`event: heartbeat\ndata: ${JSON.stringify(data)}\n\n`);
        continue;
      }
      n++;
      if (n <= skip) continue;
      res.write(`id: ${n}\nevent: ${type}\ndata: ${JSON.stringify(data)}\n\n`);
      // The final state ends the stream at once; the replay's clean-up on the server follows.
      if (ev.type === "state" && TERMINAL_STATES.has(ev.state)) {
        res.end();
        break;
      }
    }
  } catch (err) {
    // The client went away (abort) or the broker did: the stream ends either way; a client resumes
    // from its Last-Event-ID.
    if (!ac.signal.aborted && !res.writableEnded)
      res.write(`event: error\ndata: ${JSON.stringify({ message: (err as Error).message })}\n\n`);
  } finally {
    if (!res.writableEnded) res.end();
  }
}
