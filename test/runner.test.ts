import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { executeMarsLocally } from "../src/client/execute.js";
import { MarsFleetError } from "../src/core/errors.js";
import { normaliseRequests } from "../src/mars/request.js";
import { startMars, type RunEvent } from "../src/runner/runner.js";
import { attemptRunId, earlierAttemptParts, partPathFor } from "../src/runner/target.js";
import { gribLs } from "./helpers/grib.js";
import { childrenMatching, eventually, groupMembers, helperPids, processAlive } from "./helpers/proc.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mars-runner-test-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const small = { param: "2t", date: "20240101/to/20240104", grid: "5/5" };
const slow = { MARS_SIM_FIELD_DELAY_MS: "400", MARS_SIM_SPAWN_CHILD: "1" };

async function collect(run: ReturnType<typeof startMars>): Promise<RunEvent[]> {
  const events: RunEvent[] = [];
  for await (const e of run.events()) events.push(e);
  return events;
}

async function noPartFiles(): Promise<void> {
  const names = await readdir(dir);
  assert.deepEqual(
    names.filter((n) => n.endsWith(".mars-part")),
    [],
  );
}

/**
 * A separate process runs a slow MARS job; `meanwhile` acts on it, then the process is killed with
 * SIGKILL and MARS (its helper child) must die with it.
 */
async function runVictim(meanwhile: (victim: ChildProcess) => Promise<void>): Promise<void> {
  const script = join(dir, "victim.mjs");
  const runnerUrl = new URL("../src/runner/runner.js", import.meta.url).href;
  const requestUrl = new URL("../src/mars/request.js", import.meta.url).href;
  await writeFile(
    script,
    `import { startMars } from ${JSON.stringify(runnerUrl)};
     import { normaliseRequests } from ${JSON.stringify(requestUrl)};
     const run = startMars({ requests: normaliseRequests(${JSON.stringify(small)}), targetPath: ${JSON.stringify(join(dir, "victim.grib"))},
       env: ${JSON.stringify({ ...slow, MARS_SIM_FIELD_DELAY_MS: "1000" })} });
     for await (const e of run.events()) if (e.type === "log") console.log(e.line);`,
  );
  const victim = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  const helper = await new Promise<number>((resolve) =>
    victim.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const [pid] = helperPids(out.split("\n"));
      if (pid) resolve(pid);
    }),
  );
  assert.ok(processAlive(helper));
  await meanwhile(victim);
  assert.ok(processAlive(helper), "MARS ended before its runner was killed");
  victim.kill("SIGKILL");
  assert.ok(await eventually(() => !processAlive(helper), 5000), "MARS survived its runner");
}

describe("runner", () => {
  it("succeeds, streams lines in order with time stamps and progress, commits the target", async () => {
    const target = join(dir, "ok.grib");
    const run = startMars({ requests: normaliseRequests(small), targetPath: target, progressIntervalMs: 20 });
    const events = await collect(run);
    const outcome = await run.outcome;
    assert.equal(outcome.status, "succeeded");
    const logs = events.filter((e) => e.type === "log");
    assert.deepEqual(
      logs.map((e) => e.seq),
      logs.map((_, i) => i + 1),
    );
    assert.ok(logs.every((e) => e.at > 0));
    const last = events.filter((e) => e.type === "progress").at(-1);
    assert.ok(
      last && last.type === "progress" && last.bytes === outcome.bytes && last.total === outcome.bytes,
    );
    assert.equal((await gribLs(target, ["shortName"])).length, 4);
    await noPartFiles();
  });

  it("passes the environ as MARS_ENVIRON_* variables", async () => {
    const script = join(dir, "env-mars.sh");
    await writeFile(
      script,
      '#!/bin/sh\necho "origin=$MARS_ENVIRON_REQUEST_ID/$MARS_ENVIRON_USER_ID"\nexit 3\n',
      { mode: 0o755 },
    );
    const run = startMars({
      requests: normaliseRequests(small),
      targetPath: join(dir, "env.grib"),
      command: [script],
      environ: { request_id: "req-1", user_id: "alice" },
    });
    const lines = (await collect(run)).flatMap((e) => (e.type === "log" ? [e.line] : []));
    assert.deepEqual(lines, ["origin=req-1/alice"]);
    assert.equal((await run.outcome).status, "mars_error");
  });

  it("classifies exits: user error, no data, killed, cannot start", async () => {
    const cases: Array<[object, Record<string, string>, string, string | undefined]> = [
      [{ param: "bogus" }, {}, "mars_error", "MARS_RUNTIME_ERROR"],
      [{ param: "2t", date: "20990101" }, {}, "no_data", "MARS_NO_DATA"],
      [small, { MARS_SIM_KILL_AFTER_BYTES: "1000" }, "killed", "MARS_KILLED"],
      [
        small,
        { MARS_SIM_KILL_AFTER_BYTES: "1000", MARS_SIM_KILL_SIGNAL: "SIGTERM" },
        "killed",
        "MARS_KILLED",
      ],
    ];
    for (const [request, env, status, code] of cases) {
      const run = startMars({ requests: normaliseRequests(request), targetPath: join(dir, "c.grib"), env });
      await collect(run);
      const outcome = await run.outcome;
      assert.equal(outcome.status, status);
      try {
        await executeMarsLocally(request as never, { targetDir: dir, targetFname: "c.grib", env });
        assert.fail("expected an error");
      } catch (err) {
        assert.ok(err instanceof MarsFleetError);
        assert.equal(err.code, code);
        if (code === "MARS_RUNTIME_ERROR")
          assert.match(err.message, /mars - ERROR .*unknown parameter: bogus/);
        // SIGKILL is an operator's (or the OOM killer's) final word; TERM is worth another host.
        if (code === "MARS_KILLED") assert.equal(err.retryable, env["MARS_SIM_KILL_SIGNAL"] === "SIGTERM");
      }
    }
    const missing = startMars({
      requests: normaliseRequests(small),
      targetPath: join(dir, "m.grib"),
      command: ["/no/such/mars"],
    });
    await collect(missing);
    assert.equal((await missing.outcome).status, "spawn_failed");
    await noPartFiles();
  });

  it("explains a target directory that does not exist, and refuses a target that is a directory", async () => {
    const noDir = startMars({
      requests: normaliseRequests(small),
      targetPath: join(dir, "absent", "x.grib"),
    });
    await collect(noDir);
    const outcome = await noDir.outcome;
    assert.equal(outcome.status, "spawn_failed");
    assert.equal(outcome.message, `target directory ${join(dir, "absent")} does not exist`);
    await mkdir(join(dir, "adir.grib"));
    const onDir = startMars({ requests: normaliseRequests(small), targetPath: join(dir, "adir.grib") });
    assert.deepEqual(
      (await collect(onDir)).filter((e) => e.type === "spawned"),
      [],
      "MARS started for a directory target",
    );
    const refused = await onDir.outcome;
    assert.equal(refused.status, "rejected");
    assert.equal(refused.error?.code, "TARGET_INVALID");
  });

  it("reads what the command writes on stderr, in order with its stdout", async () => {
    const script = join(dir, "both-streams.sh");
    await writeFile(script, "#!/bin/sh\necho one\necho two >&2\necho three\necho four >&2\nexit 3\n", {
      mode: 0o755,
    });
    const run = startMars({
      requests: normaliseRequests(small),
      targetPath: join(dir, "s.grib"),
      command: [script],
    });
    const lines = (await collect(run)).flatMap((e) => (e.type === "log" ? [e.line] : []));
    assert.deepEqual(lines, ["one", "two", "three", "four"]);
    assert.equal((await run.outcome).exitCode, 3);
  });

  it("leaves no partial file at the target path after a failure", async () => {
    const target = join(dir, "atomic.grib");
    await assert.rejects(
      executeMarsLocally(small, {
        targetDir: dir,
        targetFname: "atomic.grib",
        env: { MARS_SIM_FAIL_AFTER_BYTES: "3000" },
      }),
      (err: MarsFleetError) => err.code === "MARS_RUNTIME_ERROR",
    );
    await assert.rejects(readdir(target));
    assert.ok(!(await readdir(dir)).includes("atomic.grib"));
    await noPartFiles();
  });

  for (const how of ["cancel", "timeout"] as const) {
    it(`${how} kills the whole process group`, async () => {
      const ac = new AbortController();
      const run = startMars({
        requests: normaliseRequests(small),
        targetPath: join(dir, `${how}.grib`),
        env: slow,
        killGraceMs: 300,
        ...(how === "cancel" ? { signal: ac.signal } : { timeoutMs: 700 }),
      });
      const lines: string[] = [];
      for await (const e of run.events()) {
        if (e.type !== "log") continue;
        lines.push(e.line);
        if (how === "cancel" && helperPids(lines).length > 0) ac.abort();
      }
      const outcome = await run.outcome;
      assert.equal(outcome.status, how === "cancel" ? "cancelled" : "timeout");
      const [helper] = helperPids(lines);
      assert.ok(helper, "the simulator started its helper");
      assert.ok(
        await eventually(() => !processAlive(helper) && groupMembers(run.processGroup).length === 0, 3000),
      );
      await noPartFiles();
    });
  }

  it("replaces a killed watchdog, so MARS still dies with its runner", async () => {
    await runVictim(async (victim) => {
      const watchdogs = childrenMatching(victim.pid!, "mars-watchdog");
      assert.equal(watchdogs.length, 1, "one watchdog per runner process");
      process.kill(watchdogs[0]!, "SIGKILL");
      const replaced = await eventually(
        () => childrenMatching(victim.pid!, "mars-watchdog").some((pid) => pid !== watchdogs[0]),
        3000,
      );
      assert.ok(replaced, "no new watchdog");
    });
  });

  it("kills the MARS group when the runner's own process is killed with SIGKILL", async () => {
    await runVictim(async () => undefined);
  });
});

describe("part files of a job's attempts", () => {
  it("counts as a dead attempt's leftovers only the parts of attempts numbered below one's own", () => {
    const target = "/share/era5/2t.grib";
    const names = [
      ".2t.grib.job-a1.mars-part",
      ".2t.grib.job-a2.mars-part",
      ".2t.grib.job-a3.mars-part", // a later attempt: it has the job now, its part is not ours to delete
      ".2t.grib.job-a10.mars-part",
      ".2t.grib.job-ab.mars-part",
      ".2t.grib.other-a1.mars-part",
      ".2t.grib.job-a1.mars-part.tmp",
      "2t.grib",
    ];
    assert.deepEqual(earlierAttemptParts(names, target, "job", 3), [
      ".2t.grib.job-a1.mars-part",
      ".2t.grib.job-a2.mars-part",
    ]);
    assert.deepEqual(earlierAttemptParts(names, target, "job", 1), []);
    assert.deepEqual(earlierAttemptParts(names, target, "job", 11), [
      ".2t.grib.job-a1.mars-part",
      ".2t.grib.job-a2.mars-part",
      ".2t.grib.job-a3.mars-part",
      ".2t.grib.job-a10.mars-part",
    ]);
    assert.equal(partPathFor(target, attemptRunId("job", 2)), "/share/era5/.2t.grib.job-a2.mars-part");
  });
});
