/**
 * cads-mars-server shares mode (WebSocket) in front of the fleet: `{"cmd":"start"}` submits a job
 * whose result lands at the requested path under the shared root; log lines, heartbeats and the
 * final state come back as JSON frames; `{"cmd":"kill"}` cancels.
 */
import { basename, dirname, isAbsolute, relative, resolve } from "node:path";
import type { Logger } from "pino";
import { WebSocketServer, type WebSocket } from "ws";
import type { Fleet } from "../client/fleet.js";
import type { JobHandle } from "../client/job.js";
import { asFleetError, describeZodError } from "../core/errors.js";
import { isDirectory, resolveInside } from "../runner/target.js";
import { environStrings, returnCode, sharesCommandSchema, type SharesCommand } from "./wire.js";

/** WebSocket close code for "policy violation": cads-mars-server's answer when over capacity. */
export const CLOSE_OVER_CAPACITY = 1008;

export interface SharesOptions {
  fleet: Fleet;
  sharedRoot: string;
  heartbeatMs: number;
  /** 0 = no limit. */
  maxConnections: number;
  log: Logger;
}

type Frame = Record<string, unknown>;

/** One client connection: at most one job. */
class SharesSession {
  private job: JobHandle | undefined;
  private status: "idle" | "running" | "finished" = "idle";
  private pid: number | null = null;
  private killed = false;
  private readonly heartbeat: NodeJS.Timeout;

  constructor(
    private readonly ws: WebSocket,
    private readonly opts: SharesOptions,
  ) {
    this.heartbeat = setInterval(() => this.sendHeartbeat(), opts.heartbeatMs);
    ws.on("message", (data) => void this.onMessage(data.toString()));
    ws.on("close", () => this.onClose());
  }

  private send(frame: Frame): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(JSON.stringify(frame));
  }

  private sendHeartbeat(): void {
    this.send({
      type: "heartbeat",
      timestamp: Date.now() / 1000,
      job_status: this.status,
      job_id: this.job?.id ?? null,
      pid: this.pid,
    });
  }

  private fail(message: string): void {
    this.send({ type: "state", status: "error", error: message, job_id: this.job?.id ?? null });
    this.ws.close(1000);
  }

  private async onMessage(text: string): Promise<void> {
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      return this.fail("invalid JSON");
    }
    const parsed = sharesCommandSchema.safeParse(raw);
    if (!parsed.success) return this.fail(`invalid command: ${describeZodError(parsed.error)}`);
    const command: SharesCommand = parsed.data;
    if (command.cmd === "kill") return this.kill();
    if (this.job) return this.fail("a job is already running on this connection");
    await this.start(command).catch((err: unknown) => this.fail(asFleetError(err).message));
  }

  /** The target: absolute inside the shared root, or relative to it; its directory must exist. */
  private async resolveTarget(target: string): Promise<string> {
    const root = resolve(this.opts.sharedRoot);
    const full = resolveInside(root, isAbsolute(target) ? target : resolve(root, target));
    const dir = dirname(full);
    if (!(await isDirectory(dir))) throw new Error(`target directory ${dir} does not exist`);
    return relative(root, full);
  }

  private async start(command: Extract<SharesCommand, { cmd: "start" }>): Promise<void> {
    const target = await this.resolveTarget(command.target);
    const job = await this.opts.fleet.submit(command.requests, {
      targetDir: dirname(target),
      targetFname: basename(target),
      environ: environStrings(command.environ),
    });
    this.job = job;
    this.status = "running";
    this.send({ type: "state", status: "started", job_id: job.id });
    for await (const ev of job.events()) {
      if (ev.type === "log") this.send({ type: "log", line: ev.line });
      else if (ev.type === "heartbeat") this.pid = ev.pid;
    }
    const record = await job.status();
    this.status = "finished";
    if (record.state === "cancelled" && this.killed) {
      this.send({ type: "state", status: "killed", job_id: job.id });
    } else {
      this.send({
        type: "state",
        status: "finished",
        returncode: returnCode(record.state, record.error),
        job_id: job.id,
      });
    }
    this.ws.close(1000);
  }

  private async kill(): Promise<void> {
    if (!this.job) return this.fail("no job to kill");
    this.killed = true;
    await this.job.cancel();
  }

  private onClose(): void {
    clearInterval(this.heartbeat);
    // A client that goes away while its job runs does not want it any more.
    if (this.status === "running" && this.job) void this.job.cancel().catch(() => undefined);
  }
}

/** Start the shares-mode WebSocket server on `port`. */
export async function sharesServer(
  opts: SharesOptions,
  port: number,
  host: string,
): Promise<WebSocketServer> {
  const wss = new WebSocketServer({ port, host });
  await new Promise<void>((resolveListening, reject) => {
    wss.once("listening", resolveListening);
    wss.once("error", reject);
  });
  wss.on("connection", (ws) => {
    if (opts.maxConnections > 0 && wss.clients.size > opts.maxConnections) {
      opts.log.warn({ limit: opts.maxConnections }, "over capacity: connection refused");
      ws.close(CLOSE_OVER_CAPACITY, "over capacity");
      return;
    }
    new SharesSession(ws, opts);
  });
  return wss;
}
