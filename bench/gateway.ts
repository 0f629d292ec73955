/** Scenario 8: the cads-mars-server gateway. Pipe-mode streaming rate, shares-mode job overhead. */
import { createReadStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import WebSocket from "ws";
import { executeMarsLocally } from "../src/client/execute.js";
import { Gateway } from "../src/gateway/gateway.js";
import { BenchEnv, WARM_JOBS, WARM_REQUEST, pool } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";

const LARGE = { param: "2t/msl", date: "20240101/to/20240105", grid: "0.25/0.25" };
const SMALL = { param: "2t", date: "20240101", grid: "10/10" };

/** POST a pipe-mode request; bytes of data received and the time from the first byte to the end. */
function pipeDownload(port: number, body: unknown): Promise<{ bytes: number; firstToEndMs: number }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { port, host: "127.0.0.1", method: "POST", path: "/", headers: { "Content-Type": "application/json" } },
      (res) => {
        let bytes = 0;
        let first = 0;
        res.on("data", (d: Buffer) => {
          first ||= Date.now();
          bytes += d.length;
        });
        res.on("end", () => resolve({ bytes: bytes - 4, firstToEndMs: Date.now() - first })); // minus ENDR
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

async function diskRate(path: string): Promise<number> {
  const t0 = Date.now();
  let bytes = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 256 * 1024 }))
    bytes += (chunk as Buffer).length;
  return bytes / Math.max(1, Date.now() - t0) / 1000; // MB/s
}

export function sharesJob(
  port: number,
  target: string,
  request: Record<string, string> = SMALL,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const ws = new WebSocket(`ws://127.0.0.1:${port}`);
    // As cads-mars-server's client: an absolute target (joined onto the root) and the five environ fields.
    const environ = {
      request_id: target,
      user_id: "bench",
      namespace: "bench",
      host: null,
      username: "bench",
    };
    ws.on("open", () => ws.send(JSON.stringify({ cmd: "start", requests: [request], environ, target })));
    ws.on("message", (data) => {
      const frame = JSON.parse(data.toString()) as { status?: string; returncode?: number };
      if (frame.status === "finished") resolve(Date.now() - t0);
      if (frame.status === "error") reject(new Error(JSON.stringify(frame)));
    });
    ws.on("error", reject);
  });
}

export async function gatewayScenario(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("gateway");
  const settings = { queue, concurrency: 2 };
  await env.worker(settings);
  // Port 0: the system picks free ports, read back from the gateways.
  const [pipePort, sharesPort, objPipePort, objSharesPort] = [0, 0, 0, 0];
  const shared = await Gateway.start({
    config: env.config({ ...settings, pipePort, sharesPort, gatewayHost: "127.0.0.1" }),
  });
  const viaObjects = await Gateway.start({
    config: env.config({
      ...settings,
      pipePort: objPipePort,
      sharesPort: objSharesPort,
      gatewayHost: "127.0.0.1",
      gatewayData: "objectstore",
    }),
  });
  try {
    const reference = await executeMarsLocally(LARGE, {
      targetDir: join(env.sharedRoot, "reference"),
      targetFname: "large.grib",
    });
    const disk = await diskRate(reference.target);
    const share = await pipeDownload(shared.pipePort, { request: LARGE, environ: {} });
    const objects = await pipeDownload(viaObjects.pipePort, { request: LARGE, environ: {} });
    if (share.bytes !== reference.bytes || objects.bytes !== reference.bytes) {
      throw new Error(`pipe mode sent ${share.bytes}/${objects.bytes} bytes, expected ${reference.bytes}`);
    }
    const mbps = (r: { bytes: number; firstToEndMs: number }): number =>
      r.bytes / Math.max(1, r.firstToEndMs) / 1000;

    await mkdir(join(env.sharedRoot, "ws"), { recursive: true });
    const fleet = await env.client(settings);
    let wsMs = 0;
    let fleetMs = 0;
    for (let i = 0; i < jobs; i++) {
      wsMs += await sharesJob(shared.sharesPort, `/ws/${i}.grib`);
      const t0 = Date.now();
      await (await fleet.submit(SMALL, { targetDir: "ws", targetFname: `f${i}.grib` })).result();
      fleetMs += Date.now() - t0;
    }
    return {
      scenario: "8 gateway",
      figures: {
        "pipe (shared root) MB/s": mbps(share),
        "pipe (object store) MB/s": mbps(objects),
        "shares job ms": wsMs / jobs,
      },
      baseline: {
        "pipe (shared root) MB/s": disk,
        "pipe (object store) MB/s": disk,
        "shares job ms": fleetMs / jobs,
      },
      ratios: {
        "pipe (shared root) MB/s": mbps(share) / disk,
        "pipe (object store) MB/s": mbps(objects) / disk,
        "shares job ms": wsMs / fleetMs,
      },
      targets: [],
      notes: [
        `pipe: a ${(reference.bytes / 1e6).toFixed(1)} MB result, first byte to ENDR, vs reading the same file from disk; with the shared root the rate is MARS's (streamed while written)`,
        `shares: ${jobs} sequential small jobs over WebSocket vs the fleet client (submit + result)`,
      ],
    };
  } finally {
    await shared.close();
    await viaObjects.close();
  }
}

/**
 * Scenario 10: throughput through the gateways with the heavy-MARS stand-in, each protocol driven
 * the way cads-mars-server's Python clients drive it (a closed loop: 4 requests in flight, the next
 * sent when one finishes), against the library client in the same closed loop, same fleet.
 */
export async function gatewayThroughput(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const command = await env.heavyMars();
  const queue = BenchEnv.queue("gwload");
  const settings = { queue, concurrency: 2, marsCommand: command };
  await Promise.all([env.worker(settings), env.worker(settings)]);
  const gateway = await Gateway.start({
    config: env.config({ ...settings, pipePort: 0, sharesPort: 0, gatewayHost: "127.0.0.1" }),
  });
  try {
    const fleet = await env.client(settings);
    await mkdir(join(env.sharedRoot, "gwload"), { recursive: true });
    const rate = async (run: (i: number) => Promise<unknown>): Promise<number> => {
      const t0 = Date.now();
      await pool(
        Array.from({ length: jobs }, (_, i) => i),
        IN_FLIGHT,
        run,
      );
      return jobs / ((Date.now() - t0) / 1000);
    };
    const viaClient = async (i: number, request: Record<string, string> = SMALL): Promise<void> => {
      await (await fleet.submit(request, { targetDir: "gwload", targetFname: `c${i}.grib` })).result();
    };
    const viaShares = (i: number, request: Record<string, string> = SMALL): Promise<number> =>
      sharesJob(gateway.sharesPort, `/gwload/s${i}.grib`, request);
    const viaPipe = async (i: number, request: Record<string, string> = SMALL): Promise<void> => {
      const r = await pipeDownload(gateway.pipePort, {
        request,
        environ: { request_id: `p${i}`, user_id: "bench" },
      });
      if (r.bytes <= 0) throw new Error("pipe mode sent no data");
    };
    // Warm-up (bench/env.ts WARM_JOBS, shared by the three paths): the workers, and each path's
    // own code in this process, before any of them is measured.
    const paths: Array<(i: number, request: Record<string, string>) => Promise<unknown>> = [
      viaClient,
      viaShares,
      viaPipe,
    ];
    for (const path of paths) {
      await pool(
        Array.from({ length: Math.round(WARM_JOBS / 3) }, (_, i) => -1 - i),
        16,
        (i) => path(i, WARM_REQUEST),
      );
    }
    const client = await rate((i) => viaClient(i));
    const shares = await rate((i) => viaShares(i));
    const pipe = await rate((i) => viaPipe(i));
    return {
      scenario: "10 gateway load",
      figures: { "shares jobs/s": shares, "pipe jobs/s": pipe },
      baseline: { "shares jobs/s": client, "pipe jobs/s": client },
      ratios: { "shares jobs/s": shares / client, "pipe jobs/s": pipe / client },
      targets: [
        target("shares (WebSocket) / library client", round(shares / client, 3), "x", ">=", 0.9),
        target("pipe (HTTP) / library client", round(pipe / client, 3), "x", ">=", 0.9),
      ],
      notes: [
        `${jobs} heavy-MARS jobs per protocol, ${IN_FLIGHT} in flight (closed loop), 2 workers x 2 slots, after ${WARM_JOBS} warm-up jobs over the three paths; baseline: the library client in the same loop (${round(client, 1)} jobs/s)`,
      ],
    };
  } finally {
    await gateway.close();
  }
}

const IN_FLIGHT = 4;
