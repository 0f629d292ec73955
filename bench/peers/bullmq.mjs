// The benchmark's BullMQ peer: the same workload as the fleet's heavy-MARS scenario on BullMQ and
// Redis, so every run compares the two on the same machine.
//
//   node bullmq.mjs worker <redis port> <queue> <concurrency> <MARS command> <scratch dir>
//     runs jobs until SIGTERM: writes the request file, spawns the command, reads its output
//   node bullmq.mjs client <redis port> <queue> <jobs> <target dir>
//     adds the jobs, waits until every one completed, prints {"ms": ..., "cpuMs": ...}
import { spawn } from "node:child_process";
import { writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { Queue, QueueEvents, Worker } from "bullmq";

const [mode, port, queueName, ...rest] = process.argv.slice(2);
const connection = { host: "127.0.0.1", port: Number(port), maxRetriesPerRequest: null };

function runMars(command, requestFile, target) {
  writeFileSync(requestFile, `retrieve,\n  param=2t,\n  date=20240101,\n  target="${target}"\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(command, [requestFile], { stdio: ["ignore", "pipe", "pipe"] });
    let lines = 0;
    const count = (chunk) => {
      for (const b of chunk) if (b === 10) lines++;
    };
    child.stdout.on("data", count);
    child.stderr.on("data", count);
    child.once("error", reject);
    child.once("close", (code) => {
      rmSync(requestFile, { force: true });
      if (code === 0) resolve(lines);
      else reject(new Error(`MARS exited ${code}`));
    });
  });
}

if (mode === "worker") {
  const [concurrency, command, scratch] = rest;
  const worker = new Worker(
    queueName,
    async (job) => runMars(command, join(scratch, `${job.id}.${process.pid}.mars`), job.data.target),
    { connection, concurrency: Number(concurrency) },
  );
  await worker.waitUntilReady();
  process.stdout.write("ready\n");
  process.once("SIGTERM", () => void worker.close().then(() => process.exit(0)));
} else if (mode === "client") {
  const [jobs, targetDir] = rest;
  const queue = new Queue(queueName, { connection });
  queue.setMaxListeners(Number(jobs) + 10); // every add in flight listens for the queue closing
  const events = new QueueEvents(queueName, { connection });
  await events.waitUntilReady();
  const cpu0 = process.cpuUsage();
  const t0 = Date.now();
  const handles = await Promise.all(
    Array.from({ length: Number(jobs) }, (_, i) =>
      queue.add("mars", { target: join(targetDir, `${i}.grib`) }, { removeOnComplete: true }),
    ),
  );
  await Promise.all(handles.map((job) => job.waitUntilFinished(events)));
  const ms = Date.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(JSON.stringify({ ms, cpuMs: (cpu.user + cpu.system) / 1000 }) + "\n");
  await events.close();
  await queue.close();
} else {
  process.stderr.write("usage: bullmq.mjs worker|client ...\n");
  process.exit(2);
}
