/**
 * `npm run bench [-- --quick] [-- --json FILE] [-- --only 1,3] [-- --peers]`: what the fleet costs over running
 * MARS directly, each scenario against a baseline measured in the same run.
 */
import { writeFile } from "node:fs/promises";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { BenchEnv, machine } from "./env.js";
import { formatTable, type ScenarioResult } from "./report.js";
import { backlog, failover, footprint, logStreaming } from "./resilience.js";
import { gatewayScenario, gatewayThroughput } from "./gateway.js";
import { heavyMars } from "./heavy.js";
import { brokerCapacity, dispatchLatency, perJobOverhead } from "./throughput.js";
import { fairShare, heavyWithRules, manyUsers, qosDispatch } from "./qos.js";
import { consoleListing, restApi } from "./api.js";
import { resultCache } from "./cache.js";
import { splitScenario } from "./split.js";
import { manyUsersAcrossHosts } from "./cluster.js";
import { killOwnedOnSigterm } from "../src/core/owned.js";

async function main(): Promise<void> {
  killOwnedOnSigterm();
  const args = await yargs(hideBin(process.argv))
    .option("quick", { type: "boolean", default: false, describe: "smaller counts, under a minute" })
    .option("json", { type: "string", describe: "write every figure to this JSON file" })
    .option("only", { type: "string", describe: "comma-separated scenario numbers (1-19)" })
    .option("peers", {
      type: "boolean",
      default: false,
      describe:
        "also run the capacity and heavy-MARS workloads on BullMQ + Redis (bench/peers; needs redis-server)",
    })
    .strict()
    .parseAsync();
  const q = args.quick;
  // BENCH_MANY=N: scenario 15, quick, with N jobs from one user and from N users.
  const many = Number(process.env["BENCH_MANY"] ?? 0);
  const only = args.only ? new Set(args.only.split(",").map(Number)) : undefined;
  const scenarios: Array<[number, string, (env: BenchEnv) => Promise<ScenarioResult>]> = [
    [1, "dispatch latency", (env) => dispatchLatency(env, q ? 60 : 300)],
    [2, "per-job overhead", (env) => perJobOverhead(env, q ? 60 : 500)],
    [3, "broker capacity", (env) => brokerCapacity(env, q ? 400 : 2000, args.peers)],
    [4, "log streaming", (env) => logStreaming(env, q ? 50_000 : 200_000)],
    [5, "failover", (env) => failover(env, !q)],
    [6, "backlog", (env) => backlog(env, q ? 2000 : 10_000)],
    [7, "footprint", (env) => footprint(env, 32)],
    [8, "gateway", (env) => gatewayScenario(env, q ? 10 : 50)],
    [9, "heavy MARS", (env) => heavyMars(env, 200, args.peers)],
    [10, "gateway load", (env) => gatewayThroughput(env, q ? 100 : 200)],
    [11, "QoS dispatch", (env) => qosDispatch(env, q ? 60 : 200)],
    [12, "fair share", (env) => fairShare(env, q ? 300 : 1000)],
    [13, "heavy MARS with rules", (env) => heavyWithRules(env, q ? 100 : 200)],
    [14, "REST API", (env) => restApi(env, q ? 100 : 200)],
    [
      15,
      "many users",
      (env) =>
        q
          ? many
            ? manyUsers(env, many, [1, many])
            : manyUsers(env, 1000, [1, 100, 1000])
          : manyUsers(env, 20_000, [1, 1000, 20_000]),
    ],
    [16, "console listing", (env) => consoleListing(env, q ? 2000 : 10_000)],
    [17, "result cache", (env) => resultCache(env, q ? 600 : 3000, q ? 60 : 300)],
    [18, "split fan-out and fan-in", (env) => splitScenario(env, q)],
    [19, "many users across hosts", (env) => manyUsersAcrossHosts(env, q ? 300 : 1000)],
  ];
  const results: ScenarioResult[] = [];
  const started = Date.now();
  for (const [n, name, run] of scenarios) {
    if (only && !only.has(n)) continue;
    process.stderr.write(`bench: ${n} ${name}...\n`);
    const env = await BenchEnv.start();
    try {
      results.push(await run(env));
    } finally {
      await env.dispose();
    }
  }
  const report = { machine: await machine(), quick: q, seconds: (Date.now() - started) / 1000, results };
  process.stdout.write(formatTable(results) + `\n\n${report.seconds.toFixed(0)} s in all\n`);
  if (args.json) await writeFile(args.json, JSON.stringify(report, null, 2) + "\n");
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
