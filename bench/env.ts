/** The benchmark's world: a nats-server, worker processes, a near-zero MARS command, measurements. */
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { NATS_SERVER_BIN, type LocalNatsServer } from "../src/local/server.js";
import { TERMINAL_STATES, type JobState } from "../src/broker/schemas.js";
import { eventKind } from "../src/broker/subjects.js";
import { lookupParam } from "../src/mars/params.js";
import { encodeGrib2 } from "../src/sim/grib.js";
import { fieldValues } from "../src/sim/fields.js";
import { LocalFleet } from "../src/local/fleet.js";

export class BenchEnv extends LocalFleet {
  private core: NatsConnection | undefined;

  private constructor(
    server: LocalNatsServer,
    sharedRoot: string,
    /**
     * A MARS command that costs next to nothing: prints when it started, copies one small GRIB
     * message to the target. A compiled C program when `cc` exists, else a shell script.
     */
    readonly tinyMars: string,
  ) {
    super(server, sharedRoot, {}, "info");
  }

  /**
   * A MARS stand-in that costs about 20 ms of CPU per run the way shell wrappers around the real
   * client do: by spawning short processes (100 here), then writing one small GRIB message. The
   * shell reads the target from the request itself. A warm-up request (`param=msl`, WARM_REQUEST)
   * skips the spawning: warming a fleet up runs the same path through the fleet at a fraction of
   * the cost.
   */
  async heavyMars(spawns = 100): Promise<string> {
    const path = join(this.sharedRoot, ".heavy-mars.sh");
    await writeFile(
      path,
      [
        "#!/bin/sh",
        'echo "mars - INFO   - 00000000.000000 - Welcome to the heavy stand-in"',
        `n=${spawns}`,
        'while IFS= read -r line; do case "$line" in',
        '  *target=*) target=${line#*target=\\"}; target=${target%%\\"*} ;;',
        "  *param=msl*) n=0 ;;",
        'esac; done < "$1"',
        "i=0; while [ $i -lt $n ]; do /bin/true; i=$((i+1)); done",
        `cat "${join(this.sharedRoot, ".tiny.grib")}" > "$target"`,
        'echo "mars - INFO   - 00000000.000000 - Transfering 116 bytes"',
        'echo "mars - INFO   - 00000000.000000 - No errors reported"',
        "",
      ].join("\n"),
      { mode: 0o755 },
    );
    return path;
  }

  static async start(): Promise<BenchEnv> {
    const [server, sharedRoot] = await LocalFleet.resources();
    const grib = join(sharedRoot, ".tiny.grib");
    const grid = { ni: 4, nj: 3, north: 10, west: 0, south: 0, east: 15, dx: 5, dy: 5 };
    const param = lookupParam("2t")!;
    const field = { param, date: 20240101, time: 0, step: 0 };
    await writeFile(grib, encodeGrib2({ ...field, typeOfData: 0, grid, values: fieldValues(field, grid) }));
    const compiled = await compileTinyMars(sharedRoot);
    if (compiled) return new BenchEnv(server, sharedRoot, `${compiled} ${grib}`);
    const tinyMars = join(sharedRoot, ".tiny-mars.sh");
    await writeFile(
      tinyMars,
      [
        "#!/bin/sh",
        'echo "mars - INFO   - 00000000.000000 - started $(date +%s%N)"',
        `target=$(sed -n 's/^ *target="\\(.*\\)".*$/\\1/p' "$1")`,
        `cat "${grib}" > "$target"`,
        'echo "mars - INFO   - 00000000.000000 - Transfering 0 bytes"',
        'echo "mars - INFO   - 00000000.000000 - No errors reported"',
        "",
      ].join("\n"),
      { mode: 0o755 },
    );
    return new BenchEnv(server, sharedRoot, tinyMars);
  }

  /** A plain connection for wildcard subscriptions (the way an observer sees the fleet). */
  async nc(): Promise<NatsConnection> {
    this.core ??= await connect({ servers: this.server.url });
    return this.core;
  }

  override async dispose(): Promise<void> {
    await this.core?.close();
    await super.dispose();
  }
}

/** Compile bench/tiny-mars.c when a C compiler is there (fewer processes per job than the shell script). */
async function compileTinyMars(dir: string): Promise<string | undefined> {
  const source = fileURLToPath(new URL("../../bench/tiny-mars.c", import.meta.url));
  const out = join(dir, ".tiny-mars");
  try {
    await promisify(execFile)("cc", ["-O2", "-o", out, source]);
    return out;
  } catch {
    return undefined;
  }
}

/** Watches `mars.job.*.state` and `mars.job.*.log` (core) and resolves per-job milestones. */
export class FleetObserver {
  readonly firstLineAt = new Map<string, number>();
  readonly firstLine = new Map<string, string>();
  private readonly done = new Map<string, { resolve: (s: JobState) => void; promise: Promise<JobState> }>();
  private readonly stateAt = new Map<string, Map<string, number>>();
  private readonly subs: Subscription[] = [];

  static async start(nc: NatsConnection): Promise<FleetObserver> {
    const o = new FleetObserver();
    const decoder = new TextDecoder();
    o.subs.push(
      nc.subscribe("mars.job.*.*", {
        callback: (_err, msg) => {
          const at = Date.now();
          const id = msg.subject.split(".")[2]!;
          const kind = eventKind(msg.subject);
          if (kind === "log" && !o.firstLineAt.has(id)) {
            o.firstLineAt.set(id, at);
            o.firstLine.set(id, (JSON.parse(decoder.decode(msg.data)) as { lines: string[] }).lines[0] ?? "");
          } else if (kind === "state") {
            const { state } = JSON.parse(decoder.decode(msg.data)) as { state: JobState };
            const times = o.stateAt.get(id) ?? new Map<string, number>();
            if (!times.has(state)) times.set(state, at);
            o.stateAt.set(id, times);
            if (TERMINAL_STATES.has(state)) o.entry(id).resolve(state);
          }
        },
      }),
    );
    await nc.flush();
    return o;
  }

  private entry(id: string): { resolve: (s: JobState) => void; promise: Promise<JobState> } {
    let e = this.done.get(id);
    if (!e) {
      let resolve!: (s: JobState) => void;
      const promise = new Promise<JobState>((r) => (resolve = r));
      e = { resolve, promise };
      this.done.set(id, e);
    }
    return e;
  }

  finished(id: string): Promise<JobState> {
    return this.entry(id).promise;
  }

  stateTime(id: string, state: string): number | undefined {
    return this.stateAt.get(id)?.get(state);
  }

  stop(): void {
    for (const s of this.subs) s.unsubscribe();
  }
}

/** Resident set size of a process in MB, from /proc. */
export async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

/** Fields of /proc/<pid>/stat after the command name (index 11 = utime, 12 = stime, 13/14 = children's). */
async function statFields(pid: number): Promise<string[]> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/**
 * Jobs run through a fleet (and runs through a direct pool) before a CPU-bound scenario measures
 * it. Workers are long-lived daemons: what a job costs them is what it costs once V8 has compiled
 * the code every job runs. A fresh Node process is still compiling for its first couple of thousand
 * jobs (traced: 239 functions optimised during a worker's first 1,000 jobs, 14 during its sixth),
 * and a measurement of those jobs alone charges that once-per-process cost to every job. The
 * scenarios report what the warm-up jobs cost too.
 */
export const WARM_JOBS = 3000;
/** What warm-up jobs ask for: the heavy stand-in skips its spawning for it (BenchEnv.heavyMars). */
export const WARM_REQUEST = { param: "msl", date: "20240101", grid: "10/10" };

const TICK_MS = 1000 / 100; // USER_HZ is 100 on Linux

/** CPU time (user + system) of a process in milliseconds, from /proc. */
export async function cpuMs(pid: number): Promise<number> {
  const f = await statFields(pid);
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
}

/** CPU time of a process's children that it has reaped (with theirs), in milliseconds. */
export async function childrenCpuMs(pid: number): Promise<number> {
  const f = await statFields(pid);
  return (Number(f[13]) + Number(f[14])) * TICK_MS;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Run `fn` over `items` with at most `limit` at once. */
export async function pool<T, R>(
  items: T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i]!, i);
      }
    }),
  );
  return results;
}

export async function machine(): Promise<Record<string, unknown>> {
  const natsVersion = await promisify(execFile)(NATS_SERVER_BIN, ["--version"]).then(
    (r) => r.stdout.trim(),
    () => "unknown",
  );
  return {
    cores: cpus().length,
    cpuModel: cpus()[0]?.model,
    memoryGb: Math.round(totalmem() / 1024 ** 3),
    node: process.version,
    natsServer: natsVersion,
    date: new Date().toISOString(),
  };
}

/** CPU time used by the fleet's parts between start() and stop(), per job, from /proc. */
export class CpuMeter {
  private constructor(
    private readonly pids: { workers: number[]; server: number },
    private readonly before: { workers: number; server: number; client: NodeJS.CpuUsage },
  ) {}

  static async start(workerPids: number[], serverPid: number): Promise<CpuMeter> {
    const workers = (await Promise.all(workerPids.map(cpuMs))).reduce((a, b) => a + b, 0);
    return new CpuMeter(
      { workers: workerPids, server: serverPid },
      { workers, server: await cpuMs(serverPid), client: process.cpuUsage() },
    );
  }

  /** Milliseconds of CPU per job: workers (their own, not MARS's), the client (this process), nats-server. */
  async perJob(jobs: number): Promise<{ worker: number; client: number; server: number; total: number }> {
    const client = process.cpuUsage(this.before.client);
    const workers = (await Promise.all(this.pids.workers.map(cpuMs))).reduce((a, b) => a + b, 0);
    const server = await cpuMs(this.pids.server);
    const out = {
      worker: (workers - this.before.workers) / jobs,
      client: (client.user + client.system) / 1000 / jobs,
      server: (server - this.before.server) / jobs,
    };
    return { ...out, total: out.worker + out.client + out.server };
  }
}

/** Consumers on the fleet's streams other than the work queues' own (`workers-<queue>`). */
export async function strayConsumers(nc: NatsConnection): Promise<number> {
  const jsm = await jetstreamManager(nc);
  let count = 0;
  for await (const name of jsm.streams.names()) {
    for await (const c of jsm.consumers.list(name)) if (!c.name.startsWith("workers-")) count++;
  }
  return count;
}
