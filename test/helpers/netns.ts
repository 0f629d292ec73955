/**
 * Several hosts on one machine, for the multi-host tests: each host is a Linux network namespace
 * (`ip netns`) with one veth into a bridge that lives in a namespace of its own (the "switch"), and
 * an address of 10.77.0.0/24, which exists only inside these namespaces. Faults:
 * - `partition(host)`: its port on the switch goes down, so it reaches nobody and nobody reaches it
 *   (connections hang, as across a real partition, rather than being reset);
 * - `cut(from, to)`: a blackhole route in `from` for `to`'s address, so those two cannot talk while
 *   both reach everyone else.
 *
 * Latency: this kernel has no `netem` (`tc qdisc add … netem`: "unknown qdisc"), so each nats-server
 * listens on its namespace's loopback behind a relay that delays every byte (delay-relay.ts).
 *
 * Namespaces are named `mf<pid>-<host>`. `dispose()` kills every process in them and deletes them,
 * and is called on failure too; a lab whose test process died is swept by the next one.
 */
import { spawn, execFile, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { own } from "../../src/core/owned.js";
import { NATS_SERVER_BIN } from "../../src/local/server.js";

const run = promisify(execFile);
const SUBNET = "10.77.0";
const PREFIX = "mf";
const RELAY = fileURLToPath(new URL("./delay-relay.js", import.meta.url));

/** The address of each host kind: nodes .1–.9, workers .11–.19, clients .21–.29. */
function addressOf(host: string): string {
  const m = /^([nwc])(\d)$/.exec(host);
  if (!m) throw new Error(`host names are n1-n9, w1-w9, c1-c9: ${host}`);
  const base = { n: 0, w: 10, c: 20 }[m[1] as "n" | "w" | "c"];
  return `${SUBNET}.${base + Number(m[2])}`;
}

async function ip(...args: string[]): Promise<string> {
  return (await run("ip", args)).stdout;
}

/** Lines a child prints, kept, with a wait for one that matches. */
export class Lines {
  readonly all: string[] = [];
  private partial = "";
  private waiters: Array<() => void> = [];

  constructor(stream: NodeJS.ReadableStream) {
    stream.on("data", (d: Buffer) => {
      const parts = (this.partial + d.toString()).split("\n");
      this.partial = parts.pop()!;
      this.all.push(...parts.filter(Boolean));
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Resolve with the first line that matches; fail after `timeoutMs`, saying what was awaited. */
  async waitFor(match: (line: string) => boolean, timeoutMs: number, what: string): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.all.find(match);
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`waited ${timeoutMs} ms for ${what}; last lines: ${this.all.slice(-5).join(" | ")}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), sleep(Math.min(left, 500))]);
    }
  }

  /** The JSON lines, parsed (others skipped). */
  json<T = Record<string, unknown>>(): T[] {
    const out: T[] = [];
    for (const l of this.all) {
      try {
        out.push(JSON.parse(l) as T);
      } catch {
        // Not JSON (a warning from node): not one of the driver's records.
      }
    }
    return out;
  }
}

/** Why the lab cannot run here (not root, no iproute2), or undefined when it can. */
export async function netLabUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "network namespaces need root";
  const probe = `${PREFIX}probe${process.pid}`;
  try {
    await ip("netns", "add", probe);
    await ip("netns", "del", probe);
    return undefined;
  } catch (err) {
    return `cannot make a network namespace: ${(err as Error).message}`;
  }
}

export class NetLab {
  private readonly procs: ChildProcess[] = [];

  private constructor(
    readonly hosts: string[],
    private readonly tag: string,
  ) {}

  /** Namespaces for these hosts (n1…, w1…, c1…) and the switch between them. */
  static async create(hosts: string[]): Promise<NetLab> {
    await NetLab.sweep();
    const lab = new NetLab(hosts, `${PREFIX}${process.pid}`);
    // The test runner may end this process (a file over its time limit) before dispose() runs: the
    // namespaces go with it, synchronously, on the way out.
    process.on("exit", lab.onExit);
    try {
      const sw = lab.ns("sw");
      await ip("netns", "add", sw);
      await ip("-n", sw, "link", "add", "br0", "type", "bridge");
      await ip("-n", sw, "link", "set", "br0", "up");
      for (const host of hosts) {
        const ns = lab.ns(host);
        await ip("netns", "add", ns);
        await ip("-n", ns, "link", "set", "lo", "up");
        await ip(
          "link",
          "add",
          "eth0",
          "netns",
          ns,
          "type",
          "veth",
          "peer",
          "name",
          `p-${host}`,
          "netns",
          sw,
        );
        await ip("-n", ns, "addr", "add", `${addressOf(host)}/24`, "dev", "eth0");
        await ip("-n", ns, "link", "set", "eth0", "up");
        await ip("-n", sw, "link", "set", `p-${host}`, "master", "br0", "up");
      }
    } catch (err) {
      await lab.dispose();
      throw err;
    }
    return lab;
  }

  /** Delete the namespaces of labs whose test process is gone (killed before it could clean up). */
  private static async sweep(): Promise<void> {
    const names = (await ip("netns", "list")).split("\n").map((l) => l.split(" ")[0] ?? "");
    for (const name of names) {
      const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
      if (!m || Number(m[1]) === process.pid) continue;
      try {
        process.kill(Number(m[1]), 0);
        continue; // another live test process's lab
      } catch {
        await NetLab.deleteNamespace(name);
      }
    }
  }

  private static async deleteNamespace(ns: string): Promise<void> {
    const pids = await ip("netns", "pids", ns).catch(() => "");
    for (const pid of pids.split("\n").filter(Boolean)) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        // Gone already: nothing to kill.
      }
    }
    await ip("netns", "del", ns).catch(() => undefined); // never made, or deleted already
  }

  ns(host: string): string {
    return `${this.tag}-${host}`;
  }

  address(host: string): string {
    return addressOf(host);
  }

  /** The command prefix that runs a program in `host`'s namespace (`ip netns exec` execs it in place). */
  wrap(host: string): string[] {
    return ["ip", "netns", "exec", this.ns(host)];
  }

  /** Run `argv` in `host`'s namespace; killed by dispose() and when this process ends. */
  spawn(host: string, argv: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const proc = spawn("ip", ["netns", "exec", this.ns(host), ...argv], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    own(proc);
    this.procs.push(proc);
    return proc;
  }

  /** Take `host` off the switch: it reaches nobody, nobody reaches it. */
  async partition(host: string): Promise<void> {
    await ip("-n", this.ns("sw"), "link", "set", `p-${host}`, "down");
  }

  async heal(host: string): Promise<void> {
    await ip("-n", this.ns("sw"), "link", "set", `p-${host}`, "up");
  }

  /** `from` can no longer reach `to` (nor hear back from it); both still reach everyone else. */
  async cut(from: string, to: string): Promise<void> {
    await ip("-n", this.ns(from), "route", "add", "blackhole", `${addressOf(to)}/32`);
  }

  async uncut(from: string, to: string): Promise<void> {
    await ip("-n", this.ns(from), "route", "del", "blackhole", `${addressOf(to)}/32`);
  }

  async dispose(): Promise<void> {
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    for (const host of [...this.hosts, "sw"]) await NetLab.deleteNamespace(this.ns(host));
    process.off("exit", this.onExit);
  }

  private readonly onExit = (): void => {
    for (const host of [...this.hosts, "sw"]) {
      try {
        const pids = execFileSync("ip", ["netns", "pids", this.ns(host)], { encoding: "utf8" });
        for (const pid of pids.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGKILL");
        execFileSync("ip", ["netns", "del", this.ns(host)]);
      } catch {
        // Deleted already, or never made: nothing left of it.
      }
    }
  };
}

/** A JetStream cluster with one node per namespace, each behind a delay relay. */
export class NetCluster {
  private readonly servers = new Map<string, ChildProcess>();

  private constructor(
    private readonly lab: NetLab,
    readonly nodes: string[],
    private readonly dir: string,
    private readonly delayMs: number,
  ) {}

  /** Client URLs of every node (what a process in any namespace connects to). */
  get urls(): string[] {
    return this.nodes.map((n) => `nats://${this.lab.address(n)}:4222`);
  }

  /** The nats-server name of `node` (stream info names leaders by it). */
  static serverName(node: string): string {
    return node;
  }

  static async start(lab: NetLab, nodes: string[], delayMs: number): Promise<NetCluster> {
    const dir = await mkdtemp(join(tmpdir(), "mars-netns-"));
    const cluster = new NetCluster(lab, nodes, dir, delayMs);
    for (const node of nodes) {
      const me = lab.address(node);
      const routes = nodes
        .filter((n) => n !== node)
        .map((n) => `"nats-route://${lab.address(n)}:6222"`)
        .join(", ");
      await writeFile(
        join(dir, `${node}.conf`),
        [
          `server_name: ${node}`,
          `listen: 127.0.0.1:4222`,
          `client_advertise: "${me}:4222"`,
          `jetstream { store_dir: "${join(dir, node)}" }`,
          `cluster { name: mars-netns, listen: 127.0.0.1:6222, advertise: "${me}:6222", routes: [${routes}] }`,
        ].join("\n") + "\n",
      );
    }
    await Promise.all(nodes.map((n) => cluster.startNode(n)));
    return cluster;
  }

  /** Start (or start again, with its store) `node`'s nats-server and its relay. */
  async startNode(node: string): Promise<void> {
    const me = this.lab.address(node);
    if (!this.servers.has(`${node}-relay`)) {
      const relay = this.lab.spawn(node, [
        process.execPath,
        RELAY,
        String(this.delayMs),
        `${me}:4222=127.0.0.1:4222`,
        `${me}:6222=127.0.0.1:6222`,
      ]);
      this.servers.set(`${node}-relay`, relay);
      await new Lines(relay.stderr!).waitFor((l) => l === "relay ready", 10_000, `${node}'s relay`);
    }
    const server = this.lab.spawn(node, [NATS_SERVER_BIN, "-c", join(this.dir, `${node}.conf`)]);
    this.servers.set(node, server);
    await new Lines(server.stderr!).waitFor(
      (l) => l.includes("Server is ready"),
      15_000,
      `nats-server ${node}`,
    );
  }

  /** Process ids of the nodes' nats-servers, not of their relays (what the bench meters). */
  get serverPids(): number[] {
    return this.nodes.flatMap((n) => this.servers.get(n)?.pid ?? []);
  }

  /** Kill `node`'s nats-server (SIGKILL): its relay stays, refusing as a host with nothing listening. */
  async killNode(node: string): Promise<void> {
    const p = this.servers.get(node);
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once("exit", r));
    p.kill("SIGKILL");
    await exited;
  }

  async dispose(): Promise<void> {
    for (const p of this.servers.values())
      if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    await rm(this.dir, { recursive: true, force: true });
  }
}
