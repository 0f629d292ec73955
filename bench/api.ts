/**
 * Scenario 14, the REST API: `POST /v1/jobs`, then its events over SSE until the final state, against
 * the library client's `submit` + `result()` for the same jobs, interleaved, one at a time.
 */
import { Kvm } from "@nats-io/kv";
import { API_KEYS_BUCKET, ApiKeys } from "../src/api/keys.js";
import { startApi } from "../src/api/server.js";
import { BenchEnv, percentile } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

export async function restApi(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("api");
  const settings = { queue, concurrency: 2, marsCommand: env.tinyMars };
  await Promise.all([env.worker(settings), env.worker(settings)]);
  const fleet = await env.client(settings);
  const api = await startApi({ config: env.config(settings), port: 0, host: "127.0.0.1" });
  try {
    const { token } = await new ApiKeys(await new Kvm(await env.nc()).open(API_KEYS_BUCKET)).add(
      "bench",
      "user",
    );
    const headers = { authorization: `Bearer ${token}` };
    const base = `http://127.0.0.1:${api.port}`;
    const viaHttp = async (): Promise<number> => {
      const t0 = performance.now();
      const res = await fetch(`${base}/v1/jobs`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ request: REQUEST }),
      });
      if (res.status !== 202) throw new Error(`POST /v1/jobs answered ${res.status}: ${await res.text()}`);
      const { id } = (await res.json()) as { id: string };
      const sse = await fetch(`${base}/v1/jobs/${id}/logs`, {
        headers: { ...headers, accept: "text/event-stream" },
      });
      const text = await sse.text(); // ends with the final state
      if (!/"state":"succeeded"/.test(text))
        throw new Error(`job ${id} did not succeed: ${text.slice(-300)}`);
      return performance.now() - t0;
    };
    const viaLibrary = async (): Promise<number> => {
      const t0 = performance.now();
      await (await fleet.submit(REQUEST, { targetDir: "api-bench" })).result();
      return performance.now() - t0;
    };
    for (let i = 0; i < 5; i++) await Promise.all([viaHttp(), viaLibrary()]); // warm-up
    const http: number[] = [];
    const lib: number[] = [];
    for (let i = 0; i < jobs; i++) {
      http.push(await viaHttp());
      lib.push(await viaLibrary());
    }
    const p50 = percentile(http, 50);
    const base50 = percentile(lib, 50);
    return {
      scenario: "14 REST API",
      figures: { "POST -> final state (SSE) p50 ms": p50, "p95 ms": percentile(http, 95) },
      baseline: { "POST -> final state (SSE) p50 ms": base50, "p95 ms": percentile(lib, 95) },
      ratios: { "POST -> final state (SSE) p50 ms": p50 / base50 },
      targets: [target("REST p50 / library client p50", round(p50 / base50, 3), "x", "<=", 1.2)],
      notes: [
        `${jobs} sequential tiny-MARS jobs each way, interleaved; baseline: the library client's submit + result() in the same process`,
      ],
    };
  } finally {
    await api.close();
  }
}
