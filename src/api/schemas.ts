/**
 * The HTTP API's bodies and answers, as zod schemas: they validate requests, and the same schemas
 * make `/openapi.json` (zod 4 emits JSON Schema), so the document cannot drift from the behaviour.
 */
import { z } from "zod";
import {
  callbackRequestSchema,
  callbackStateSchema,
  JOB_STATES,
  jobRecordSchema,
  workerInfoSchema,
} from "../broker/index.js";
import { errorRecordSchema } from "../core/index.js";

const requestObject = z.record(
  z.string(),
  z.union([z.string(), z.number(), z.array(z.union([z.string(), z.number()])).min(1)]),
);

export const submitBodySchema = z
  .object({
    /** One MARS request: `{param: "2t", date: "20240101", ...}`, or MARS request text. */
    request: z.union([requestObject, z.string().min(1)]).optional(),
    /** Several requests, run in one MARS call (later ones inherit keys). */
    requests: z.array(requestObject).min(1).optional(),
    environ: z.record(z.string(), z.string()).optional(),
    /** Result path under the shared root (default: `api/<job id>.grib`). */
    target: z.string().min(1).optional(),
    /** Idempotency key: the same one returns the same job, never a second run. */
    requestId: z.string().min(1).max(256).optional(),
    /** POST the job's record here when it ends, signed with `secret` (see the docs). */
    callback: callbackRequestSchema.optional(),
    /** Run in parts on many workers at once (#27): `["date:month", "param"]`. */
    split: z.array(z.string().min(1).max(32)).min(1).max(8).optional(),
  })
  .strict()
  .refine((b) => (b.request === undefined) !== (b.requests === undefined), {
    message: "give request or requests (one of them)",
    path: ["request"],
  });
export type SubmitBody = z.infer<typeof submitBodySchema>;

export const acceptedSchema = z.object({
  id: z.string(),
  state: z.enum(JOB_STATES),
  /** The callback's signing secret, when the server made one (it is shown once). */
  callbackSecret: z.string().optional(),
});

const day = z.string().regex(/^\d{4}-\d{2}-\d{2}$/, "a day, YYYY-MM-DD");

/** Which jobs a list shows (src/api/job-filter.ts), for /v1/jobs and the live view. */
const jobFilterQuery = {
  state: z.enum(JOB_STATES).optional(),
  user: z.string().optional(),
  queue: z.string().max(128).optional(),
  /** A MARS dataset any of the job's requests names. */
  dataset: z.string().max(256).optional(),
  /** The error code a failed job ended with. */
  code: z.string().max(64).optional(),
  /** Part of the job's id or request id. */
  q: z.string().min(1).max(256).optional(),
  /** Submitted between these UTC days, both included. */
  from: day.optional(),
  to: day.optional(),
  /** Also list the parts of split jobs (hidden by default: a split job is one job). */
  parts: z
    .enum(["true", "false"])
    .transform((v) => v === "true")
    .optional(),
};

export const listQuerySchema = z
  .object({
    ...jobFilterQuery,
    order: z.enum(["newest", "oldest"]).default("newest"),
    limit: z.coerce.number().int().min(1).max(500).default(50),
    /** The `next` of the previous page (in the same order). */
    cursor: z.string().optional(),
  })
  .strict();

export const qosQuerySchema = z.object({ queue: z.string().max(128).optional() }).strict();
export const deadQuerySchema = z
  .object({ limit: z.coerce.number().int().min(1).max(500).default(50) })
  .strict();

export const failuresQuerySchema = z
  .object({
    user: z.string().optional(),
    queue: z.string().max(128).optional(),
    from: day.optional(),
    to: day.optional(),
  })
  .strict();
export const failuresSchema = z.object({
  failures: z.array(z.object({ code: z.string(), count: z.number().int(), jobs: z.array(z.string()) })),
});

export const jobSchema = jobRecordSchema.extend({
  /** Why a queued job waits (QoS), when it does. */
  waiting: z.array(z.string()).optional(),
  /** Its completion callback: the URL and every delivery attempt. */
  callback: callbackStateSchema.omit({ secret: true }).optional(),
  /** The request as MARS text (what `mars-fleet run` takes). */
  requestText: z.string().optional(),
  /** The job this one retries (POST /v1/jobs/{id}/retry). */
  retryOf: z.string().optional(),
  /** A split job's parts (#27), in part order. */
  parts: z
    .array(
      z.object({
        id: z.string(),
        index: z.number().int().optional(),
        state: z.enum(JOB_STATES),
        attempt: z.number().int(),
        worker: z.string().optional(),
        bytes: z.number().int().optional(),
        error: errorRecordSchema.optional(),
      }),
    )
    .optional(),
});
export const retriedSchema = acceptedSchema.extend({ retryOf: z.string() });
export const jobListSchema = z.object({ jobs: z.array(jobRecordSchema), next: z.string().optional() });
export const workersSchema = z.object({ workers: z.array(workerInfoSchema) });
/** A queue's or a lane's jobs: queued, running, and pulled but held aside by a worker for a QoS limit (admin keys). */
const jobCounts = {
  queued: z.number().int(),
  running: z.number().int(),
  heldAside: z.number().int().optional(),
};
export const queuesSchema = z.object({
  queues: z.array(
    z.object({
      queue: z.string(),
      ...jobCounts,
      lanes: z.array(z.object({ lane: z.string(), ...jobCounts })),
    }),
  ),
});

export const usageQuerySchema = z
  .object({ user: z.string().optional(), from: day.optional(), to: day.optional() })
  .strict();
export const usageSchema = z.object({
  usage: z.array(
    z.object({
      user: z.string(),
      /** UTC day the jobs finished. */
      day: z.string(),
      jobs: z.number().int(),
      succeeded: z.number().int(),
      /** Time MARS ran, over all attempts that reached the record. */
      marsSeconds: z.number(),
      bytes: z.number().int(),
      /** Jobs served from the result cache, their bytes, and the MARS time they saved. */
      cacheHits: z.number().int(),
      cacheBytes: z.number().int(),
      marsSecondsSaved: z.number(),
    }),
  ),
});

/** RFC 9457 problem details, with the error's stable code. */
export const problemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  code: z.string(),
  /** For 400: each offending field and what is wrong with it. */
  errors: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
});
export type Problem = z.infer<typeof problemSchema>;
