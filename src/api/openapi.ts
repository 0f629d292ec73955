/** `/openapi.json` and `/docs`, made from the zod schemas the API validates with. */
import { z } from "zod";
import {
  acceptedSchema,
  failuresSchema,
  retriedSchema,
  jobListSchema,
  jobSchema,
  listQuerySchema,
  problemSchema,
  queuesSchema,
  submitBodySchema,
  usageQuerySchema,
  usageSchema,
  workersSchema,
} from "./schemas.js";

const json = (schema: z.ZodType, io: "input" | "output" = "output"): object => ({
  "application/json": { schema: z.toJSONSchema(schema, { io, unrepresentable: "any" }) },
});

const problem = (description: string): object => ({
  description,
  content: { "application/problem+json": { schema: { $ref: "#/components/schemas/Problem" } } },
});

/** A query schema's fields as OpenAPI query parameters (all optional). */
const queryParams = (schema: z.ZodType): object[] =>
  Object.entries(
    (z.toJSONSchema(schema, { io: "input" }) as { properties: Record<string, object> }).properties,
  ).map(([name, s]) => ({ name, in: "query", required: false, schema: s }));

const idParam = { name: "id", in: "path", required: true, schema: { type: "string" } };

let cached: object | undefined;

export function openApiDocument(): object {
  cached ??= {
    openapi: "3.1.0",
    info: {
      title: "mars-fleet API",
      version: "1",
      description: "Submit MARS requests to a mars-fleet, follow them, fetch their results.",
    },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "an API key: mfk_…" } },
      schemas: { Problem: z.toJSONSchema(problemSchema) },
    },
    security: [{ bearer: [] }],
    paths: {
      "/v1/jobs": {
        post: {
          summary: "Submit a job (idempotent on requestId)",
          requestBody: { required: true, content: json(submitBodySchema, "input") },
          responses: {
            "202": { description: "queued; Location: /v1/jobs/<id>", content: json(acceptedSchema) },
            "400": problem("invalid body: each offending field in `errors`"),
            "401": problem("no valid API key"),
            "403": problem("refused by a QoS deny rule"),
          },
        },
        get: {
          summary:
            "List jobs (a user key sees its own): by state, user, queue, dataset, error code, q (part of the id or request id), submitted from/to (days); newest or oldest first; pages by cursor",
          parameters: queryParams(listQuerySchema),
          responses: {
            "200": { description: "a page of jobs", content: json(jobListSchema) },
            "400": problem("invalid query"),
          },
        },
      },
      "/v1/jobs/{id}": {
        get: {
          summary: "A job's record (with why it waits, when queued)",
          parameters: [idParam],
          responses: {
            "200": { description: "the record", content: json(jobSchema) },
            "404": problem("no such job"),
          },
        },
        delete: {
          summary: "Cancel a job",
          parameters: [idParam],
          responses: {
            "202": { description: "cancel requested", content: json(acceptedSchema) },
            "404": problem("no such job"),
            "409": problem("the job is already over"),
          },
        },
      },
      "/v1/jobs/{id}/retry": {
        post: {
          summary:
            "Run an ended job again: a new job with the same requests (its own id and default target), linked by retryOf",
          parameters: [idParam],
          responses: {
            "202": { description: "the new job", content: json(retriedSchema) },
            "404": problem("no such job"),
            "409": problem("the job has not ended"),
          },
        },
      },
      "/v1/jobs/{id}/logs": {
        get: {
          summary:
            "The job's whole log; with Accept: text/event-stream, replay then live (events log, progress, state; resumes from Last-Event-ID)",
          parameters: [idParam],
          responses: {
            "200": {
              description: "the log",
              content: {
                "text/plain": { schema: { type: "string" } },
                "text/event-stream": { schema: { type: "string" } },
              },
            },
            "404": problem("no such job"),
          },
        },
      },
      "/v1/jobs/{id}/result": {
        get: {
          summary: "The GRIB result, streamed, with Content-Length, ETag and Range",
          parameters: [idParam],
          responses: {
            "200": {
              description: "the result",
              content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } },
            },
            "206": {
              description: "the requested range",
              content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } },
            },
            "404": problem("no such job"),
            "409": problem("no result (yet)"),
            "416": problem("range outside the result"),
          },
        },
      },
      "/v1/usage": {
        get: {
          summary: "Accounting: jobs, MARS seconds and bytes per user and day (a user key sees its own)",
          parameters: queryParams(usageQuerySchema),
          responses: {
            "200": { description: "usage rows", content: json(usageSchema) },
            "400": problem("invalid query"),
          },
        },
      },
      "/v1/failures": {
        get: {
          summary:
            "Failed jobs by error code: how many and the newest five of each, most frequent first (?user= for an admin key, ?queue=, ?from=/&to= days)",
          responses: { "200": { description: "failures", content: json(failuresSchema) } },
        },
      },
      "/v1/qos": {
        get: {
          summary:
            "QoS now (?queue=): the rules, limits held, lanes (queued, running, held aside), jobs held for a limit and why, recent use; a user key sees its own lane and jobs, not the rules",
          responses: {
            "200": {
              description: "the QoS state",
              content: { "application/json": { schema: { type: "object" } } },
            },
          },
        },
      },
      "/v1/dead": {
        get: {
          summary: "Dead letters, newest first, without their payloads (?limit=; admin keys)",
          responses: {
            "200": {
              description: "dead letters",
              content: { "application/json": { schema: { type: "object" } } },
            },
            "403": problem("a user key"),
          },
        },
      },
      "/v1/workers": {
        get: {
          summary: "Live workers",
          responses: { "200": { description: "workers", content: json(workersSchema) } },
        },
      },
      "/v1/queues": {
        get: {
          summary: "Queued and running jobs per queue and lane",
          responses: { "200": { description: "queues", content: json(queuesSchema) } },
        },
      },
      "/v1/stream": {
        get: {
          summary:
            "The console's live view (text/event-stream): an `overview` event whenever it changed, at most each second, with the workers and queues (as /v1/workers and /v1/queues), the 50 newest jobs and the running ones' progress ({id: {bytes, total, at}}), scoped like them; `error` events when the broker did not answer",
          responses: {
            "200": {
              description: "the stream",
              content: { "text/event-stream": { schema: { type: "string" } } },
            },
          },
        },
      },
    },
  };
  return cached;
}

const escape = (s: string): string =>
  s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");

/** A plain page listing the operations, with a link to the document itself. */
export function docsPage(): string {
  const doc = openApiDocument() as { paths: Record<string, Record<string, { summary: string }>> };
  const rows = Object.entries(doc.paths).flatMap(([path, ops]) =>
    Object.entries(ops).map(
      ([method, op]) =>
        `<tr><td><code>${method.toUpperCase()}</code></td><td><code>${escape(path)}</code></td><td>${escape(op.summary)}</td></tr>`,
    ),
  );
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mars-fleet API</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}td{padding:.3rem .6rem;vertical-align:top}</style></head>
<body><h1>mars-fleet API</h1><p>Every call but this page and <a href="/openapi.json">/openapi.json</a> needs <code>Authorization: Bearer &lt;API key&gt;</code>. Errors are <code>application/problem+json</code> with a stable <code>code</code>.</p>
<table><thead><tr><th scope="col">method</th><th scope="col">path</th><th scope="col">what</th></tr></thead><tbody>${rows.join("")}</tbody></table></body></html>`;
}
