/**
 * Scenario 14, the REST API: `POST /v1/jobs`, then its events over SSE until the final state, against
 * the library client's `submit` + `result()` for the same jobs, interleaved, one at a time.
 */
import { Agent, request as httpRequest } from "node:http";
import { OPEN_FLEET } from "../src/broker/signing.js";
import { ApiKeys } from "../src/api/keys.js";
import { startApi } from "../src/api/server.js";
import { BenchEnv, percentile } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

/** One request with Node's own HTTP client (as curl or a Python client would): status and body. */
function call(
  agent: Agent,
  url: string,
  opts: { method?: string; headers: Record<string, string>; body?: string },
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent, method: opts.method ?? "GET", headers: opts.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}

export async function restApi(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("api");
  const settings = { queue, concurrency: 2, marsCommand: env.tinyMars };
  await Promise.all([env.worker(settings), env.worker(settings)]);
  const fleet = await env.client(settings);
  const api = await startApi({ config: env.config(settings), port: 0, host: "127.0.0.1" });
  try {
    const { token } = await (await ApiKeys.open(await env.nc(), OPEN_FLEET)).add("bench", "user");
    const headers = { authorization: `Bearer ${token}` };
    const base = `http://127.0.0.1:${api.port}`;
    const agent = new Agent({ keepAlive: true });
    /** POST the job, then follow its events over SSE to the final state, with `post` and `follow`. */
    const viaHttp = async (
      post: (body: string) => Promise<{ status: number; text: string }>,
      follow: (id: string) => Promise<string>,
    ): Promise<number> => {
      const t0 = performance.now();
      const res = await post(JSON.stringify({ request: REQUEST }));
      if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}: ${res.text}`);
      const { id } = JSON.parse(res.text) as { id: string };
      const text = await follow(id); // ends with the final state
      if (!/"state":"succeeded"/.test(text))
        throw new Error(`job ${id} did not succeed: ${text.slice(-300)}`);
      return performance.now() - t0;
    };
    const postHeaders = { ...headers, "content-type": "application/json" };
    const sseHeaders = { ...headers, accept: "text/event-stream" };
    const viaNodeHttp = (): Promise<number> =>
      viaHttp(
        (body) => call(agent, `${base}/v1/jobs`, { method: "POST", headers: postHeaders, body }),
        async (id) => (await call(agent, `${base}/v1/jobs/${id}/logs`, { headers: sseHeaders })).text,
      );
    const viaFetch = (): Promise<number> =>
      viaHttp(
        async (body) => {
          const res = await fetch(`${base}/v1/jobs`, { method: "POST", headers: postHeaders, body });
          return { status: res.status, text: await res.text() };
        },
        async (id) => (await fetch(`${base}/v1/jobs/${id}/logs`, { headers: sseHeaders })).text(),
      );
    const viaLibrary = async (): Promise<number> => {
      const t0 = performance.now();
      await (await fleet.submit(REQUEST, { targetDir: "api-bench" })).result();
      return performance.now() - t0;
    };
    for (let i = 0; i < 5; i++) await Promise.all([viaNodeHttp(), viaFetch(), viaLibrary()]); // warm-up
    const http: number[] = [];
    const withFetch: number[] = [];
    const lib: number[] = [];
    for (let i = 0; i < jobs; i++) {
      http.push(await viaNodeHttp());
      withFetch.push(await viaFetch());
      lib.push(await viaLibrary());
    }
    agent.destroy();
    const p50 = percentile(http, 50);
    const base50 = percentile(lib, 50);
    return {
      scenario: "14 REST API",
      figures: {
        "POST -> final state (SSE) p50 ms": p50,
        "p95 ms": percentile(http, 95),
        "same with fetch() p50 ms": percentile(withFetch, 50),
      },
      baseline: { "POST -> final state (SSE) p50 ms": base50, "p95 ms": percentile(lib, 95) },
      ratios: { "POST -> final state (SSE) p50 ms": p50 / base50 },
      targets: [target("REST p50 / library client p50", round(p50 / base50, 3), "x", "<=", 1.2)],
      notes: [
        `${jobs} sequential tiny-MARS jobs each way, interleaved; baseline: the library client's submit + result() in the same process`,
        "HTTP client: node:http with keep-alive (fetch() in the same run: its own figure)",
      ],
    };
  } finally {
    await api.close();
  }
}
