/**
 * `npm run demo`: the fleet on one machine. Starts a local nats-server, provisions, starts two
 * workers on the MARS simulator, submits three ERA5-like requests at once, shows their live
 * (filtered) logs and progress, prints the results. Then the REST face: starts `mars-fleet api`'s
 * server, makes an API key and prints it, runs one job over HTTP (POST, its log over SSE, its
 * result). Shuts everything down, unless `-- --serve`: then the fleet, the API and the dashboard
 * stay up until Ctrl-C.
 */
import { execFile } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { createWriteStream } from "node:fs";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { LocalNatsServer } from "../src/local/server.js";
import { killOwnedOnSigterm } from "../src/core/owned.js";
import { Fleet } from "../src/client/fleet.js";
import type { JobHandle } from "../src/client/job.js";
import { LogPresenter } from "../src/client/log-filter.js";
import { ProgressDisplay, showJobEvent } from "../src/cli/output.js";
import { loadConfig } from "../src/config/load.js";
import { formatDuration } from "../src/core/time.js";
import { startWorkerProcess, type WorkerProcess } from "../src/worker/process.js";
import { ApiKeys } from "../src/api/keys.js";
import { startApi } from "../src/api/server.js";
import type { FleetConfig } from "../src/config/load.js";

const ERA5 = { class: "ea", type: "an", stream: "oper", expver: "1", grid: "0.5/0.5", area: "72/-25/30/45" };
const REQUESTS = [
  {
    name: "surface.grib",
    request: {
      ...ERA5,
      levtype: "sfc",
      param: "2t/msl/10u/10v",
      date: "20240101/to/20240103",
      time: "00:00/12:00",
    },
  },
  {
    name: "precip.grib",
    request: {
      ...ERA5,
      levtype: "sfc",
      param: "tp",
      date: "20240101/to/20240102",
      time: "06:00",
      step: "0/to/12/by/6",
    },
  },
  {
    name: "upper-air.grib",
    request: { ...ERA5, levtype: "pl", levelist: "850/500/250", param: "t/z", date: "20240101/to/20240102" },
  },
];

async function startWorker(n: number, env: NodeJS.ProcessEnv, logDir: string): Promise<WorkerProcess> {
  const log = createWriteStream(resolve(logDir, `worker-${n}.log`));
  return startWorkerProcess(`demo-worker-${n}`, env, (line) => log.write(line + "\n"));
}

async function follow(job: JobHandle, label: string, display: ProgressDisplay): Promise<void> {
  const presenter = new LogPresenter(
    { onLog: (l) => display.log(`[${label}] ${l}`) },
    { id: job.id, cancel: () => void job.cancel() },
  );
  for await (const ev of job.events()) showJobEvent(ev, presenter, display, label);
  presenter.end();
}

async function fieldCount(path: string): Promise<string> {
  try {
    const { stdout } = await promisify(execFile)("grib_count", [path]);
    return stdout.trim();
  } catch {
    return "?";
  }
}

/**
 * The REST face, as a service would use it: one job POSTed, its events over SSE to the end, its
 * result downloaded. Returns the API's address and the key it made.
 */
async function restDemo(
  fleet: Fleet,
  config: FleetConfig,
): Promise<{ base: string; token: string; close: () => Promise<void> }> {
  const api = await startApi({ config, port: 0, host: "127.0.0.1" });
  const { token } = await (
    await ApiKeys.open(fleet.connection.js, fleet.connection.authority)
  ).add("demo", "user");
  const base = `http://127.0.0.1:${api.port}`;
  const auth = { authorization: `Bearer ${token}` };
  process.stdout.write(
    `\nREST: ${base} (dashboard at /, API docs at /docs); API key of user demo: ${token}\n`,
  );
  const posted = await fetch(`${base}/v1/jobs`, {
    method: "POST",
    headers: { ...auth, "content-type": "application/json" },
    body: JSON.stringify({ request: { ...ERA5, levtype: "sfc", param: "2t", date: "20240101" } }),
  });
  const { id } = (await posted.json()) as { id: string };
  process.stdout.write(`  POST /v1/jobs → ${posted.status}, ${posted.headers.get("location")}\n`);
  const sse = await (
    await fetch(`${base}/v1/jobs/${id}/logs`, { headers: { ...auth, accept: "text/event-stream" } })
  ).text();
  const count = (type: string): number => sse.split(`event: ${type}\n`).length - 1;
  const final = /"state":"(succeeded|failed|cancelled)"/.exec(sse)?.[1] ?? "unknown";
  process.stdout.write(
    `  GET /v1/jobs/${id}/logs (text/event-stream) → ${count("log")} log lines, ${count("state")} states, ended ${final}\n`,
  );
  const result = await fetch(`${base}/v1/jobs/${id}/result`, { headers: auth });
  const bytes = (await result.arrayBuffer()).byteLength;
  process.stdout.write(`  GET /v1/jobs/${id}/result → ${result.status}, ${bytes} bytes of GRIB\n`);
  return { base, token, close: () => api.close() };
}

async function main(): Promise<void> {
  killOwnedOnSigterm();
  const outDir = resolve("out");
  const sharedRoot = resolve(outDir, "share");
  await mkdir(sharedRoot, { recursive: true });
  process.stdout.write(
    `mars-fleet demo: nats-server + 2 workers on the MARS simulator; results in ${sharedRoot}\n`,
  );
  const server = await LocalNatsServer.start();
  const workers: WorkerProcess[] = [];
  try {
    const env = {
      ...process.env,
      MARS_NATS_SERVERS: server.url,
      MARS_SHARED_ROOT: sharedRoot,
      MARS_HEARTBEAT_INTERVAL: "2s",
      MARS_WORKER_CONCURRENCY: "2",
      // Slow the simulator down so there is something to watch.
      MARS_SIM_BYTES_PER_SEC: String(150 * 1024),
    };
    const config = loadConfig({ env });
    const fleet = await Fleet.connect({ config });
    process.stdout.write(
      `nats-server ${server.url} (open, on loopback, for this demo only: a shared fleet uses per-role ` +
        `credentials and TLS, docs/SECURITY.md): created ${fleet.provisionReport.created.join(", ")}\n`,
    );
    workers.push(...(await Promise.all([startWorker(1, env, outDir), startWorker(2, env, outDir)])));
    const display = new ProgressDisplay();
    const started = Date.now();
    const jobs = await Promise.all(
      REQUESTS.map((r, i) =>
        fleet.submit(r.request, {
          targetDir: "era5",
          targetFname: r.name,
          environ: { request_id: `demo-${i + 1}`, user_id: "demo" },
        }),
      ),
    );
    await Promise.all(jobs.map((job, i) => follow(job, REQUESTS[i]!.name, display)));
    display.stop();
    process.stdout.write(`\nresults (${formatDuration(Date.now() - started)} in all):\n`);
    let failed = 0;
    for (const job of jobs) {
      const record = await job.status();
      if (record.state !== "succeeded" || !record.result) {
        failed++;
        process.stdout.write(`  ${job.id}: ${record.state} ${record.error?.message ?? ""}\n`);
        continue;
      }
      const target = resolve(sharedRoot, record.result.target);
      process.stdout.write(
        `  ${target}: ${await fieldCount(target)} fields, ${record.result.bytes} bytes, ${formatDuration(record.result.elapsedMs)} on ${record.worker}\n`,
      );
    }
    process.stdout.write(`\ninspect: grib_ls ${resolve(sharedRoot, "era5", "surface.grib")}\n`);
    const rest = await restDemo(fleet, config);
    if (process.argv.includes("--serve")) {
      process.stdout.write(
        `\nserving until Ctrl-C: open ${rest.base}/ and give it the key above; or\n` +
          `  curl -X POST ${rest.base}/v1/jobs -H "Authorization: Bearer ${rest.token}" ` +
          `-H 'content-type: application/json' -d '{"request": {"param": "2t", "date": "20240101"}}'\n`,
      );
      await new Promise<void>((done) => process.once("SIGINT", () => done()));
    } else {
      process.stdout.write("\n(npm run demo -- --serve keeps the fleet, the API and the dashboard up)\n");
    }
    await rest.close();
    await fleet.close();
    if (failed > 0) process.exitCode = 1;
  } finally {
    for (const w of workers) w.kill("SIGTERM");
    await Promise.all(workers.map((w) => w.exited));
    await server.dispose();
    process.stdout.write("workers drained, nats-server stopped.\n");
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
