/**
 * Scenario 9, heavy MARS: a stand-in that costs ~20 ms of CPU per run by spawning short processes,
 * 200 jobs through 2 workers x 2 slots with the library client (`submit` then `result()`), against a
 * direct pool of 4 runners of the same stand-in, on the same cores. What the fleet spends per job
 * (worker, client, nats-server, from /proc) competes with MARS itself, so it shows in throughput.
 */
import { WARM_JOBS, type BenchEnv } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";
import { coldFigures, fleetVsPool } from "./throughput.js";
import { bullmqPeer, peerFigures, peerNotes } from "./peers.js";

export async function heavyMars(env: BenchEnv, jobs: number, peers: boolean): Promise<ScenarioResult> {
  const command = await env.heavyMars();
  const {
    fleetMs,
    directMs,
    cpu,
    coldCpu,
    consumersLeft: stray,
    marsCpuMs: marsCpu,
  } = await fleetVsPool(env, "heavy", jobs, 2, 2, command, { warm: WARM_JOBS });
  const fleetRate = jobs / (fleetMs / 1000);
  const directRate = jobs / (directMs / 1000);
  const ratio = fleetRate / directRate;
  const peer = peers ? await bullmqPeer(command, env.sharedRoot, jobs, 2, 2) : undefined;
  return {
    scenario: "9 heavy MARS",
    figures: {
      "jobs/s": fleetRate,
      "worker cpu ms/job": cpu.worker,
      "client cpu ms/job": cpu.client,
      "nats-server cpu ms/job": cpu.server,
      "fleet cpu ms/job": cpu.total,
      ...coldFigures(coldCpu),
      "consumers left": stray,
      ...peerFigures(peer, fleetRate, directRate),
    },
    baseline: { "jobs/s": directRate, "MARS cpu ms/job": marsCpu },
    ratios: { "jobs/s": ratio },
    targets: [
      target("throughput / direct pool", round(ratio, 3), "x", ">=", 0.93),
      target("consumers left after the client closed", stray, "", "<=", 0),
      ...(peer?.result
        ? [target("fleet throughput / BullMQ's", round(fleetRate / peer.result.jobsPerSec, 3), "x", ">=", 1)]
        : []),
    ],
    notes: [
      `${jobs} jobs, 2 workers x 2 slots, library client (submit + result()) vs a local pool of 4 runners, each after ${WARM_JOBS} warm-up jobs (the stand-in without its spawning); the stand-in costs ${round(marsCpu, 1)} ms of CPU per run`,
      ...peerNotes(peer),
    ],
  };
}
