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

/**
 * Scenario 16, the console's listing: `records` jobs queued (no worker), then `GET /v1/jobs` as the
 * console's live view asks it each second. The first listing reads every record; later ones read
 * only those heard to change (RecordIndex) and are compared with a fresh client's full read, which
 * is what each listing cost before.
 */
export async function consoleListing(env: BenchEnv, records: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("listing");
  const settings = { queue };
  const fleet = await env.client(settings);
  for (let i = 0; i < records; i += 200)
    await Promise.all(
      Array.from({ length: Math.min(200, records - i) }, (_, j) =>
        fleet.submit(REQUEST, { targetDir: "listing", environ: { user_id: `u${(i + j) % 50}` } }),
      ),
    );
  const api = await startApi({ config: env.config(settings), port: 0, host: "127.0.0.1" });
  try {
    const { token } = await (await ApiKeys.open(await env.nc(), OPEN_FLEET)).add("bench", "admin");
    const agent = new Agent({ keepAlive: true });
    const list = async (): Promise<number> => {
      const t0 = performance.now();
      const res = await call(agent, `http://127.0.0.1:${api.port}/v1/jobs?limit=50`, {
        headers: { authorization: `Bearer ${token}` },
      });
      if (res.status !== 200) throw new Error(`GET /v1/jobs answered ${res.status}: ${res.text}`);
      return performance.now() - t0;
    };
    const first = await list();
    const cpu0 = process.cpuUsage();
    const warm: number[] = [];
    for (let i = 0; i < 20; i++) warm.push(await list());
    const cpu = process.cpuUsage(cpu0);
    const warmCpu = (cpu.user + cpu.system) / 1000 / warm.length;
    agent.destroy();
    // Before: every listing read every record, as a fresh client's first listing does.
    const full: number[] = [];
    for (let i = 0; i < 3; i++) {
      const fresh = await env.client(settings);
      const t0 = performance.now();
      const all = await fresh.jobs();
      full.push(performance.now() - t0);
      if (all.length < records) throw new Error(`a full listing found ${all.length} of ${records} records`);
    }
    const p50 = percentile(warm, 50);
    const full50 = percentile(full, 50);
    return {
      scenario: "16 console listing",
      figures: {
        "listing p50 ms": p50,
        "first listing ms": first,
        "API CPU per listing ms": warmCpu,
      },
      baseline: { "listing p50 ms": full50 },
      ratios: { "listing p50 ms": p50 / full50 },
      targets: [target("listing p50 / full read p50", round(p50 / full50, 3), "x", "<=", 0.1)],
      notes: [
        `${records} records in the jobs bucket; 20 listings (GET /v1/jobs?limit=50, admin key) after the first`,
        "baseline: a fresh client's listing, which reads every record (what each listing did before)",
      ],
    };
  } finally {
    await api.close();
  }
}
