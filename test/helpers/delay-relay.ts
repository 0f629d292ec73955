/**
 * A TCP relay that delays every byte by a fixed time each way, for the multi-host tests: this
 * kernel has no `netem` queueing discipline (`tc qdisc add … netem` answers "unknown"), so the
 * latency between namespaced hosts is added here instead, in front of each nats-server.
 *
 *   node delay-relay.js <delayMs> <listenHost:port>=<targetHost:port> [...]
 *
 * Order is kept (every chunk waits the same time), and each side's backpressure pauses the other.
 * A refused or lost upstream closes the client's connection, as a host with nothing listening would.
 * Prints "relay ready" on stderr once every listener is bound.
 */
import { createServer, connect, type Socket } from "node:net";

const [delayArg, ...pairs] = process.argv.slice(2);
const delayMs = Number(delayArg);
if (!Number.isFinite(delayMs) || pairs.length === 0) {
  process.stderr.write("usage: delay-relay <delayMs> <listen host:port>=<target host:port> ...\n");
  process.exit(2);
}

function hostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(":");
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

/** Copy `from` to `to`, each chunk `delayMs` later; end `to` (after the delay) when `from` ends. */
function pipeDelayed(from: Socket, to: Socket): void {
  from.on("data", (chunk: Buffer) => {
    setTimeout(() => {
      if (to.destroyed) return;
      if (!to.write(chunk)) {
        from.pause();
        to.once("drain", () => from.resume());
      }
    }, delayMs);
  });
  from.on("end", () => setTimeout(() => to.end(), delayMs));
  from.on("close", () => setTimeout(() => to.destroy(), delayMs));
  // A reset or a refused connect: the other side is closed above, by "close".
  from.on("error", () => undefined);
}

let bound = 0;
for (const pair of pairs) {
  const [listen, target] = pair.split("=") as [string, string];
  const l = hostPort(listen);
  const t = hostPort(target);
  const server = createServer((client) => {
    const upstream = connect(t.port, t.host);
    pipeDelayed(client, upstream);
    pipeDelayed(upstream, client);
  });
  server.listen(l.port, l.host, () => {
    if (++bound === pairs.length) process.stderr.write("relay ready\n");
  });
}
process.on("SIGTERM", () => process.exit(0));
