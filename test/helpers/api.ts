/** An HTTP client of `mars-fleet api` for tests: calls as a named key, problems checked as RFC 9457. */
import assert from "node:assert/strict";
import { problemSchema } from "../../src/api/schemas.js";

export interface CallOptions {
  as?: string;
  method?: string;
  body?: unknown;
  headers?: Record<string, string>;
}

export class ApiClient {
  constructor(
    readonly base: string,
    readonly tokens: Record<string, string>,
  ) {}

  /** A request as the key named `as` (none without it); a JSON body is sent as application/json. */
  call(path: string, opts: CallOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.as) headers["authorization"] = `Bearer ${this.tokens[opts.as]}`;
    if (opts.body !== undefined && headers["content-type"] === undefined)
      headers["content-type"] = "application/json";
    const body =
      opts.body === undefined
        ? undefined
        : typeof opts.body === "string"
          ? opts.body
          : JSON.stringify(opts.body);
    return fetch(this.base + path, {
      method: opts.method ?? "GET",
      headers,
      ...(body !== undefined && { body }),
      signal: AbortSignal.timeout(30_000),
    });
  }

  /** The answer is a problem with this status, as application/problem+json; its body. */
  async problem(
    res: Response,
    status: number,
  ): Promise<{ code: string; detail: string; errors?: Array<{ field: string }> }> {
    assert.equal(res.status, status, await res.clone().text());
    assert.match(res.headers.get("content-type") ?? "", /application\/problem\+json/);
    const body = problemSchema.parse(await res.json());
    assert.equal(body.status, status);
    return body;
  }

  /** The job's record once it has ended, or a failure after 30 s saying in which state it stayed. */
  async finished(id: string, as: string): Promise<Record<string, unknown>> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const rec = (await (await this.call(`/v1/jobs/${id}`, { as })).json()) as Record<string, unknown>;
      if (["succeeded", "failed", "cancelled"].includes(rec["state"] as string)) return rec;
      if (Date.now() > deadline) assert.fail(`job ${id} not finished after 30 s: ${rec["state"]}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
