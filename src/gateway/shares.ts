/**
 * cads-mars-server shares mode (WebSocket) in front of the fleet: `{"cmd":"start"}` submits a job
 * whose result lands at the client's target joined onto the shared root; log lines, heartbeats and
 * the final state come back as JSON frames; `{"cmd":"kill"}` cancels.
 */
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { Duplex } from "node:stream";
import { basename, dirname, isAbsolute, relative, resolve } from "node:path";
import type { Logger } from "pino";
import { WebSocketServer, type WebSocket } from "ws";
import type { Fleet, JobHandle } from "../client/index.js";
import { asFleetError, TargetError } from "../core/index.js";
import type { JobMarsEnv } from "../mars/index.js";
import { isDirectory, jobTarget, prepareTargetDir, resolveInside } from "../runner/index.js";
import { environStrings, parseSharesCommand, returnCode, type SharesStart } from "./wire.js";

/** WebSocket close code for "policy violation": cads-mars-server's answer when over capacity. */
export const CLOSE_OVER_CAPACITY = 1008;
/** `returncode` after a kill: the original stopped MARS with SIGTERM. */
const KILLED_RETURN_CODE = -15;

export interface SharesOptions {
  fleet: Fleet;
  sharedRoot: string;
  heartbeatMs: number;
  /** 0 = no limit. */
  maxConnections: number;
  /** MARS settings for every job of this mode (the original set MARS_AUTO_SPLIT_BY_DATES=1). */
  marsEnv: JobMarsEnv;
  log: Logger;
}

type Frame = Record<string, unknown>;

/**
 * The server path of a client's target, relative to the shared root: the target is an absolute path
 * as the client host sees it, joined onto the root (root `/cache`, target `/jobs/j1/data.grib` →
 * `/cache/jobs/j1/data.grib`). Its directory must exist; climbing out with `..` is refused.
 */
export async function sharesTarget(sharedRoot: string, target: string): Promise<string> {
  if (!isAbsolute(target)) throw new TargetError(`Target ${target} is not an absolute path`, { target });
  const root = resolve(sharedRoot);
  const rel = target.replace(/^\/+/, "");
  const full = resolveInside(root, jobTarget(root, { dir: dirname(rel), file: basename(rel) }));
  const dir = dirname(full);
  if (!(await isDirectory(dir))) throw new TargetError(`Workdir ${dir} does not exist`, { target });
  await prepareTargetDir(root, full); // no symbolic link may lead out of the root
  return relative(root, full);
}

/** One client connection: at most one job. */
class SharesSession {
  private job: JobHandle | undefined;
  /** The environ's request_id: what the original reports as `job_id`. */
  private jobId: string | null = null;
  /** `idle` until MARS starts (the job may wait in the queue), as the original's heartbeats say. */
  private status: "idle" | "running" | "finished" = "idle";
  private pid: number | null = null;
  private killed = false;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly log: Logger;

  constructor(
    private readonly ws: WebSocket,
    private readonly opts: SharesOptions,
  ) {
    this.log = opts.log.child({ mode: "shares" });
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
      job_id: this.jobId,
      pid: this.pid,
    });
  }

  /** An error frame; the connection stays open for another command, as with the original. */
  private error(message: string): void {
    this.send({ type: "state", status: "error", error: message, ...(this.jobId && { job_id: this.jobId }) });
  }

  private async onMessage(text: string): Promise<void> {
    const command = parseSharesCommand(text);
    if ("error" in command) return this.error(command.error);
    if (command.cmd === "kill") return this.kill();
    if (this.job) return this.error("A job is already running on this connection");
    await this.start(command).catch((err: unknown) => {
      const error = asFleetError(err);
      if (error.code === "INTERNAL") this.log.error({ err }, "shares job failed");
      this.error(error.message);
    });
  }

  private async start(command: SharesStart): Promise<void> {
    const target = await sharesTarget(this.opts.sharedRoot, command.target);
    const requests = Array.isArray(command.requests) ? command.requests : [command.requests];
    const environ = environStrings(command.environ);
    const job = await this.opts.fleet.submit(requests, {
      targetDir: dirname(target),
      targetFname: basename(target),
      environ,
      marsEnv: this.opts.marsEnv,
      watchResult: false, // followed by its events, from the start
      watchEvents: true,
    });
    this.job = job;
    this.jobId = environ["request_id"] ?? job.id;
    const log = this.log.child({ jobId: job.id });
    log.info({ target }, "shares job submitted");
    for await (const ev of job.events()) {
      if (ev.type === "log") this.send({ type: "log", line: ev.line });
      else if (ev.type === "heartbeat") this.pid = ev.pid;
      else if (ev.type === "state" && ev.state === "running" && this.status === "idle") {
        // MARS started: only now is the job `started`, and the first heartbeat carries its pid.
        this.status = "running";
        this.pid = ev.pid ?? null;
        this.send({ type: "state", status: "started", job_id: this.jobId });
        this.sendHeartbeat();
      }
    }
    const record = await job.status();
    this.status = "finished";
    const returncode = this.killed ? KILLED_RETURN_CODE : returnCode(record.state, record.error);
    this.send({ type: "state", status: "finished", returncode, job_id: this.jobId });
    this.ws.close(1000);
  }

  private async kill(): Promise<void> {
    if (!this.job || this.status === "finished") return this.error("No running job");
    this.killed = true;
    await this.job.cancel();
    // As the original: `killed` at once, then `finished` with returncode -15 when the job has ended.
    this.send({ type: "state", status: "killed", job_id: this.jobId });
  }

  private onClose(): void {
    clearInterval(this.heartbeat);
    // A client that goes away while its job is queued or running does not want it any more.
    if (this.job && this.status !== "finished") {
      void this.job.cancel().catch((err: unknown) => this.log.warn({ err }, "could not cancel the job"));
    }
  }
}

/** Answer an upgrade request with a plain HTTP status instead of a WebSocket. */
function refuseUpgrade(socket: Duplex, status: number, reason: string, message: string): void {
  const body = JSON.stringify({ error: message });
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/** The shares-mode WebSocket server, listening on `port`. */
export class SharesServer {
  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly http: Server;

  private constructor(private readonly opts: SharesOptions) {
    this.http = createServer((_req, res) => res.writeHead(426).end());
    this.http.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      void this.upgrade(req, socket, head).catch((err: unknown) => {
        opts.log.error({ err }, "WebSocket upgrade failed");
        socket.destroy();
      });
    });
  }

  static async listen(opts: SharesOptions, port: number, host: string): Promise<SharesServer> {
    const server = new SharesServer(opts);
    await new Promise<void>((resolveListening, reject) => {
      server.http.once("error", reject);
      server.http.listen(port, host, () => resolveListening());
    });
    return server;
  }

  get port(): number {
    const address = this.http.address();
    return typeof address === "object" && address ? address.port : 0;
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if ((await this.opts.fleet.servingWorkers()).length === 0) {
      // As a server that is down: the client moves on to its next server at once.
      const message = `no MARS worker serves queue ${this.opts.fleet.config.queue}`;
      this.opts.log.warn("no worker: WebSocket connection refused");
      return refuseUpgrade(socket, 503, "Service Unavailable", message);
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      if (this.opts.maxConnections > 0 && this.wss.clients.size > this.opts.maxConnections) {
        this.opts.log.warn({ limit: this.opts.maxConnections }, "over capacity: connection refused");
        ws.close(CLOSE_OVER_CAPACITY, "over capacity");
        return;
      }
      new SharesSession(ws, this.opts);
    });
  }

  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    await new Promise<void>((r) => this.wss.close(() => r()));
    await new Promise<void>((r) => this.http.close(() => r()));
  }
}
