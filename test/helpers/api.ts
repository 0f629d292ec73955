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

/** What /v1/stream sends as an `overview` event. */
export interface Overview {
  workers: Array<{ id: string; running: string[] }>;
  queues: Array<{ queue: string; queued: number; running: number }>;
  jobs: Array<{ id: string; state: string; environ: Record<string, string> }>;
  progress: Record<string, { bytes: number; total: number }>;
}

/**
 * The first `overview` event of /v1/stream, as the key `as` sees it, that `wanted` accepts; the
 * stream is closed after it. Fails after `timeoutMs`, saying what it waited for.
 */
export async function liveOverview(
  client: ApiClient,
  as: string,
  wanted: (o: Overview) => boolean = () => true,
  timeoutMs = 20_000,
): Promise<Overview> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  let last: Overview | undefined;
  try {
    const res = await fetch(`${client.base}/v1/stream`, {
      headers: { authorization: `Bearer ${client.tokens[as]}`, accept: "text/event-stream" },
      signal: ac.signal,
    });
    if (res.status !== 200) throw new Error(`/v1/stream answered ${res.status} to ${as}`);
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of res.body!) {
      buf += decoder.decode(chunk as Uint8Array, { stream: true });
      let cut: number;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = /^event: overview\ndata: (.*)$/m.exec(block)?.[1];
        if (data === undefined) continue;
        last = JSON.parse(data) as Overview;
        if (wanted(last)) return last;
      }
    }
    throw new Error(`/v1/stream ended before the overview ${as} waited for`);
  } catch (err) {
    if (ac.signal.aborted)
      throw new Error(
        `no overview for ${as} as wanted within ${timeoutMs} ms; last: ${JSON.stringify(last)}`,
        {
          cause: err,
        },
      );
    throw err;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
}
