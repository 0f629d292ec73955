/**
 * Scenarios 11-13, QoS: dispatch latency with rules in force and many users, fair share (one
 * user's backlog against a newcomer), and the heavy-MARS throughput with rules against without.
 */
import { Kvm } from "@nats-io/kv";
import { jetstreamManager } from "@nats-io/jetstream";
import { JOBS_STREAM, QOS_BUCKET, laneOfAdvisory, laneOfConsumer, subjects } from "../src/broker/subjects.js";
import { parseRules } from "../src/qos/rules.js";
import { writeRules } from "../src/qos/store.js";
import { OPEN_FLEET } from "../src/broker/signing.js";
import { BenchEnv, CpuMeter, FleetObserver, percentile, pool, rssMb } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";
import { fleetVsPool, spawnedAt } from "./throughput.js";

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

/**
 * Ten rules of the kinds a data store writes. A typical job matches the per-user limit and a
 * priority rule; the others (a dataset cap, a paused class, a guest throttle, two denials) test
 * every job without matching it.
 */
export const BENCH_RULES = `fairShare: user
rules:
  - name: per-user
    limit: 8
    per: user
  - name: era5-complete
    match: { dataset: reanalysis-era5-complete }
    limit: 100
  - name: guest-od
    match: { user: guest, class: od }
    limit: 1
  - name: paused
    match: { class: rd }
    limit: 0
  - name: per-namespace
    match: { environ.namespace: [cams, cerra, seasonal] }
    limit: 50
    per: environ.namespace
  - name: small-first
    match: { fields: { max: 4 } }
    priority: 10
  - name: big-last
    match: { fields: { min: 1000 } }
    priority: -5
  - name: vip
    match: { user: [u0, u1] }
    priority: 5
  - name: closed
    match: { environ.namespace: closed }
    deny: this dataset is closed
  - name: too-large
    match: { fields: { min: 100001 } }
    deny: at most 100000 fields per request
`;

async function applyRules(env: BenchEnv, text: string): Promise<void> {
  const kv = await new Kvm(await env.nc()).open(QOS_BUCKET);
  await writeRules(kv, OPEN_FLEET, { text, rules: parseRules(text), appliedAt: Date.now() });
}

const user = (i: number, users: number): Record<string, string> => ({ user_id: `u${i % users}` });

/** Sequential submit → MARS start, without rules, then with the ten rules and jobs from 50 users. */
export async function qosDispatch(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("qosdispatch");
  const settings = { queue, concurrency: 2, marsCommand: env.tinyMars };
  await Promise.all([env.worker(settings), env.worker(settings)]);
  const fleet = await env.client(settings);
  const observer = await FleetObserver.start(await env.nc());
  // Warm-up: every user has had a job, so each lane exists (as for a data store's active users).
  const measure = async (tag: string, users: number): Promise<number[]> => {
    const out: number[] = [];
    const warm = Math.max(10, users);
    for (let i = 0; i < jobs + warm; i++) {
      const t0 = Date.now();
      const job = await fleet.submit(REQUEST, {
        targetDir: "qosdispatch",
        targetFname: `${tag}-${i}.grib`,
        environ: user(i, users),
      });
      await observer.finished(job.id);
      if (i >= warm) out.push(spawnedAt(observer.firstLine.get(job.id)) - t0);
    }
    return out;
  };
  const plain = await measure("plain", 1);
  await applyRules(env, BENCH_RULES);
  // Rules reach the workers within a round trip; wait out a second anyway.
  await new Promise((r) => setTimeout(r, 1000));
  const ruled = await measure("ruled", 50);
  observer.stop();
  await applyRules(env, "rules: []\n");
  const p50 = percentile(ruled, 50);
  const base = percentile(plain, 50);
  return {
    scenario: "11 QoS dispatch",
    figures: {
      "submit->spawn p50 ms": p50,
      "submit->spawn p95 ms": percentile(ruled, 95),
    },
    baseline: { "submit->spawn p50 ms": base, "submit->spawn p95 ms": percentile(plain, 95) },
    ratios: { "submit->spawn p50 ms": p50 / base },
    targets: [target("dispatch p50 with 10 rules and 50 users", round(p50, 2), "ms", "<=", 5)],
    notes: [
      `${jobs} sequential jobs from 50 users under 10 rules (each takes a per-user limit slot) vs the same with no rules, 2 workers x 2 slots, tiny MARS`,
    ],
  };
}

/**
 * User A queues a backlog, then user B submits 20 at once. B's wait (submitted → started) against
 * the mean job duration × (slots ÷ active users): B gets its share at once, not after A's backlog.
 */
export async function fairShare(env: BenchEnv, backlog: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("fair");
  const workers = 2;
  const slots = 4;
  const settings = { queue, concurrency: slots };
  const knobs = { MARS_SIM_FIELD_DELAY_MS: "40" };
  await Promise.all(Array.from({ length: workers }, () => env.worker(settings, knobs)));
  const fleet = await env.client(settings);
  const a = await pool(
    Array.from({ length: backlog }, (_, i) => i),
    64,
    (i) =>
      fleet.submit(REQUEST, { targetDir: "fair", targetFname: `a-${i}.grib`, environ: { user_id: "a" } }),
  );
  const bStart = Date.now();
  const b = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      fleet.submit(REQUEST, { targetDir: "fair", targetFname: `b-${i}.grib`, environ: { user_id: "b" } }),
    ),
  );
  await Promise.all(b.map((j) => j.result()));
  const bEnd = Date.now();
  await Promise.all(a.map((j) => j.result()));
  const [aRecs, bRecs] = await Promise.all([
    Promise.all(a.map((j) => j.status())),
    Promise.all(b.map((j) => j.status())),
  ]);
  const waits = bRecs.map((r) => r.startedAt! - r.submittedAt);
  const durations = [...aRecs, ...bRecs].map((r) => r.finishedAt! - r.startedAt!);
  const meanMs = durations.reduce((x, y) => x + y, 0) / durations.length;
  const bound = meanMs * ((workers * slots) / 2);
  const inWindow = (r: { finishedAt?: number }): boolean => r.finishedAt! >= bStart && r.finishedAt! <= bEnd;
  const aDone = aRecs.filter(inWindow).length;
  const bDone = bRecs.filter(inWindow).length;
  const p50 = percentile(waits, 50);
  const aStarts = aRecs.map((r) => r.startedAt!).sort((x, y) => x - y);
  const lastA = aStarts[aStarts.length - 1]!;
  return {
    scenario: "12 fair share",
    figures: {
      "B wait p50 ms": p50,
      "B wait max ms": Math.max(...waits),
      "B share while active": bDone / Math.max(1, aDone + bDone),
      "A share while B active": aDone / Math.max(1, aDone + bDone),
    },
    baseline: {
      "B wait p50 ms": bound,
      "mean job ms": meanMs,
      "A backlog drained ms after B's submit": lastA - bStart,
    },
    ratios: { "B wait p50 ms": p50 / bound },
    targets: [target("B's p50 wait / (mean job × slots ÷ users)", round(p50 / bound, 3), "x", "<=", 1)],
    notes: [
      `A queued ${backlog} jobs, then B 20; ${workers} workers x ${slots} slots, jobs of ~${round(meanMs, 0)} ms; in arrival order B would wait for A's whole backlog (${round(lastA - bStart, 0)} ms here)`,
    ],
  };
}

const mean = (xs: number[]): number => xs.reduce((x, y) => x + y, 0) / xs.length;
type CpuPerJob = { worker: number; client: number; server: number; total: number };
const cpuOf = (runs: CpuPerJob[]): Record<string, number> => ({
  "worker cpu ms/job": mean(runs.map((c) => c.worker)),
  "client cpu ms/job": mean(runs.map((c) => c.client)),
  "nats-server cpu ms/job": mean(runs.map((c) => c.server)),
  "fleet cpu ms/job": mean(runs.map((c) => c.total)),
});

/** The heavy-MARS run (scenario 9's workload) with the ten rules and 50 users, against the same without rules. */
export async function heavyWithRules(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const command = await env.heavyMars();
  // In the order plain, ruled, ruled, plain, plain, ruled: each run leaves the server's streams a little larger,
  // and a later run pays for it, so both sides take the early and the late turns alike.
  const plainMs: number[] = [];
  const ruledMs: number[] = [];
  const plainCpu: CpuPerJob[] = [];
  const ruledCpu: CpuPerJob[] = [];
  const runMs: number[] = [];
  for (const [turn, ruled] of [false, true, true, false, false, true].entries()) {
    const run = await fleetVsPool(env, `heavy${ruled ? "ruled" : "plain"}${turn}`, jobs, 2, 2, command, {
      environ: (i) => user(i, 50),
      prepare: () => applyRules(env, ruled ? BENCH_RULES : "rules: []\n"),
      noDirect: true,
    });
    (ruled ? ruledMs : plainMs).push(run.fleetMs);
    runMs.push(run.fleetMs);
    (ruled ? ruledCpu : plainCpu).push(run.cpu);
  }
  const rate = (ms: number[]): number => (jobs * ms.length) / (ms.reduce((x, y) => x + y, 0) / 1000);
  const ratio = rate(ruledMs) / rate(plainMs);
  // Each turn beside its neighbour of the other kind (plain|ruled, ruled|plain, plain|ruled): how
  // far one pair's ratio strays from another's is the noise the aggregate ratio carries.
  const pairs = [
    runMs[0]! / runMs[1]!, // plain, then ruled
    runMs[3]! / runMs[2]!, // ruled, then plain
    runMs[4]! / runMs[5]!,
  ];
  return {
    scenario: "13 heavy MARS with rules",
    figures: { "jobs/s": rate(ruledMs), ...cpuOf(ruledCpu) },
    baseline: { "jobs/s": rate(plainMs), ...cpuOf(plainCpu) },
    ratios: {
      "jobs/s": ratio,
      "jobs/s, lowest pair": Math.min(...pairs),
      "jobs/s, highest pair": Math.max(...pairs),
    },
    targets: [target("throughput with rules / without", round(ratio, 3), "x", ">=", 0.97)],
    notes: [
      `${jobs} heavy jobs from 50 users, 2 workers x 2 slots, three times each way (plain, ruled, ruled, plain, plain, ruled)`,
      `with / without rules, each pair of neighbouring runs: ${pairs.map((p) => round(p, 3)).join(", ")}`,
    ],
  };
}

/** A JetStream API request's kind from its subject: `CONSUMER.CREATE`, `CONSUMER.MSG.NEXT`, `STREAM.INFO`... */
function apiKind(subject: string): string {
  const t = subject.split(".").slice(2); // after `$JS.API`
  const long = (t[0] === "CONSUMER" || t[0] === "STREAM") && (t[1] === "MSG" || t[1] === "DURABLE");
  return t.slice(0, long ? 3 : 2).join(".");
}

/** Lanes on the server (consumers of MARS_JOBS named for a lane of `queue`). */
async function laneConsumerCount(env: BenchEnv, queue: string): Promise<number> {
  const jsm = await jetstreamManager(await env.nc());
  let n = 0;
  for await (const c of jsm.consumers.list(JOBS_STREAM)) {
    // A consumer removed while the list is read comes as null.
    const lane = c ? laneOfConsumer(queue, c.name) : undefined;
    if (lane !== undefined && lane !== "") n++;
  }
  return n;
}

/**
 * Many users (#26): the same jobs from one user, then from more and more distinct users (one job
 * each at the last count), open loop, tiny MARS, 2 workers x 4 slots, each count on a server and queue of
 * its own. Then, once the lanes went idle, jobs one at a time from users not seen before (each pays
 * for a new lane): submit -> MARS start. What the server holds afterwards: a lane consumer per user
 * with work, none once the lanes have been idle for MARS_LANE_IDLE.
 */
export async function manyUsers(first: BenchEnv, jobs: number, counts: number[]): Promise<ScenarioResult> {
  const idleMs = 3000;
  const run = async (env: BenchEnv, users: number) => {
    const observer = await FleetObserver.start(await env.nc());
    const queue = BenchEnv.queue(`users${users}`);
    const settings = {
      queue,
      concurrency: 4,
      marsCommand: env.tinyMars,
      heartbeatInterval: "1s",
      // BENCH_LANE_IDLE=0: lanes kept for ever, as before MARS_LANE_IDLE (the comparison in PERFORMANCE.md).
      laneIdle: process.env["BENCH_LANE_IDLE"] ?? `${idleMs}ms`,
    };
    const workers = await Promise.all([0, 1].map(() => env.worker(settings)));
    // BENCH_MANY_RULES: QoS rules in force during the runs (for example `usage: {window: 24h,
    // weight: 1}`: fair share by recent use, whose every user's record the workers follow).
    const rulesText = process.env["BENCH_MANY_RULES"];
    if (rulesText) await applyRules(env, rulesText);
    const fleet = await env.client(settings);
    const meter = await CpuMeter.start(
      workers.map((w) => w.proc.pid!),
      env.server.pid!,
    );
    // Lane consumers made during the run (the server's advisories): one per user at best; more
    // when a lane made ahead went idle before its job was reached, and was made again.
    const nc = await env.nc();
    let made = 0;
    const madeSub = nc.subscribe(subjects.consumersCreated, {
      callback: (_err, msg) => {
        const lane = laneOfAdvisory(queue, msg.subject);
        if (lane !== undefined && lane !== "") made++;
      },
    });
    // The JetStream API requests the run makes, by kind (what the server's CPU per job goes to).
    const api = new Map<string, number>();
    const apiSub = nc.subscribe("$JS.API.>", {
      callback: (_err, msg) => {
        const kind = apiKind(msg.subject);
        api.set(kind, (api.get(kind) ?? 0) + 1);
      },
    });
    const t0 = Date.now();
    const handles = await pool(
      Array.from({ length: jobs }, (_, i) => i),
      64,
      (i) =>
        fleet.submit(REQUEST, {
          targetDir: `users${users}`,
          targetFname: `${i}.grib`,
          environ: { user_id: `u${i % users}` },
        }),
    );
    await Promise.all(handles.map((h) => h.result()));
    const rate = jobs / ((Date.now() - t0) / 1000);
    madeSub.unsubscribe();
    apiSub.unsubscribe();
    const cpu = await meter.perJob(jobs);
    const after = await laneConsumerCount(env, queue);
    const rss = await rssMb(env.server.pid!);
    const deadline = Date.now() + idleMs + 10_000;
    let idle = after;
    while (Date.now() < deadline && (idle = await laneConsumerCount(env, queue)) > 0)
      await new Promise((r) => setTimeout(r, 250));
    const dispatch: number[] = [];
    for (let i = 0; i < 30; i++) {
      const t = Date.now();
      const job = await fleet.submit(REQUEST, {
        targetDir: `users${users}`,
        targetFname: `new-${i}.grib`,
        environ: { user_id: `new${i}` },
      });
      await observer.finished(job.id);
      dispatch.push(spawnedAt(observer.firstLine.get(job.id)) - t);
    }
    await env.killWorkers();
    observer.stop();
    return { users, rate, after, idle, rss, cpu, made, api, dispatch: percentile(dispatch, 50) };
  };
  // Each count on a server of its own, as an operator would try it: on one server, each run's
  // memory and stored data stay for the next (the same one-user run twice read 66 then 79 MB).
  const results = [];
  for (const [i, users] of counts.entries()) {
    const env = i === 0 ? first : await BenchEnv.start();
    try {
      results.push(await run(env, users));
    } finally {
      if (env !== first) await env.dispose();
    }
  }
  const one = results[0]!;
  const last = results.at(-1)!;
  const figures: Record<string, number> = {};
  const ratios: Record<string, number> = {};
  for (const r of results.slice(1)) {
    figures[`jobs/s, ${r.users} users`] = r.rate;
    ratios[`jobs/s, ${r.users} users`] = r.rate / one.rate;
    figures[`lane consumers after the run, ${r.users} users`] = r.after;
    figures[`nats-server RSS MB after the run, ${r.users} users`] = r.rss;
    figures[`dispatch p50 ms (a new user's job), after ${r.users} users`] = r.dispatch;
    figures[`fleet CPU ms/job, ${r.users} users`] = r.cpu.total;
    figures[`nats-server CPU ms/job, ${r.users} users`] = r.cpu.server;
    figures[`lane consumers made per user, ${r.users} users`] = r.made / r.users;
    for (const [kind, n] of r.api) figures[`${kind} requests per job, ${r.users} users`] = n / jobs;
    ratios[`fleet CPU ms/job, ${r.users} users`] = r.cpu.total / one.cpu.total;
  }
  return {
    scenario: "15 many users",
    figures,
    baseline: {
      "jobs/s, one user": one.rate,
      "nats-server RSS MB after the run, one user": one.rss,
      "dispatch p50 ms (a new user's job), after one user": one.dispatch,
      "fleet CPU ms/job, one user": one.cpu.total,
      "nats-server CPU ms/job, one user": one.cpu.server,
      ...Object.fromEntries(
        [...one.api].map(([kind, n]) => [`${kind} requests per job, one user`, n / jobs]),
      ),
    },
    ratios,
    targets: [
      target(`jobs/s, ${last.users} users / one user`, round(last.rate / one.rate, 2), "x", ">=", 0.9),
      target(
        `dispatch p50, a new user's job after ${last.users} users`,
        round(last.dispatch, 1),
        "ms",
        "<=",
        10,
      ),
      // At most 10 plus the active users (#26), and none of these users has work any more. A pull
      // the server forgot no longer keeps a lane's consumer (PROTOCOL.md, pulls).
      target(`lane consumers left once idle, ${last.users} users`, last.idle, "", "<=", 10),
      target(`nats-server RSS, ${last.users} users / one user`, round(last.rss / one.rss, 2), "x", "<=", 1.5),
    ],
    notes: [
      `${jobs} tiny-MARS jobs, open loop (64 submits in flight), 2 workers x 4 slots, from ${counts.join(", ")} users (a fresh server each); MARS_LANE_IDLE ${idleMs} ms; then 30 jobs one at a time from new users`,
    ],
  };
}
