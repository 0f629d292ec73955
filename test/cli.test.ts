import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Journal } from "../src/worker/journal.js";
import { TestFleet } from "./helpers/fleet.js";
import { cli } from "./helpers/cli.js";

let tf: TestFleet;
let dir: string;
before(async () => {
  tf = await TestFleet.start();
  dir = await mkdtemp(join(tmpdir(), "mars-cli-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
  await tf.dispose();
});

describe("mars-fleet CLI", () => {
  it("takes every setting as a flag on some command, as the README's table says", async () => {
    const { SETTINGS, flagName } = await import("../src/config/settings.js");
    const commands = [
      ["run", "x"],
      ["worker"],
      ["gateway"],
      ["submit", "x"],
      ["broker", "init"],
      ["api"],
      ["jobs"],
    ];
    const helps = await Promise.all(commands.map(async (c) => (await cli([...c, "--help"])).stdout));
    // A flag as yargs lists it: followed by a space, a comma (an alias) or the end of the line.
    const takes = (flag: string): boolean => helps.some((h) => new RegExp(`${flag}[ ,\\n]`).test(h));
    const missing = SETTINGS.map((s) => `--${flagName(s.key)}`).filter((f) => !takes(f));
    assert.deepEqual(missing, []);
  });

  it("runs locally with exit codes scripts can use", async () => {
    await writeFile(
      join(dir, "ok.mars"),
      'retrieve, param=2t, date=20240101, grid=10/10, target="ignored.grib"',
    );
    await writeFile(join(dir, "bad.json"), JSON.stringify({ param: "nosuch", date: "20240101" }));
    await writeFile(join(dir, "inject.json"), JSON.stringify({ param: "2t\ntarget=x" }));
    const ok = await cli(["run", join(dir, "ok.mars"), "--target", join(dir, "out", "a.grib"), "--json"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(JSON.parse(ok.stdout).bytes > 0);
    const bad = await cli(["run", join(dir, "bad.json"), "--target", join(dir, "out", "b.grib")]);
    assert.equal(bad.code, 4);
    assert.match(bad.stderr, /MARS_RUNTIME_ERROR/);
    assert.equal((await cli(["run", join(dir, "inject.json"), "--target", join(dir, "c.grib")])).code, 3);
    const cfg = await cli(["run", join(dir, "ok.mars"), "--target", join(dir, "d.grib")], {
      MARS_CONFIG_FILE: "/nonexistent.yaml",
    });
    assert.equal(cfg.code, 2);
    assert.match(cfg.stderr, /CONFIG_INVALID.*does not exist/);
  });

  it("submits, follows, lists and inspects fleet jobs", async () => {
    const queue = TestFleet.queue("cli");
    const env = tf.env({ queue });
    await tf.worker({ queue });
    await writeFile(join(dir, "fleet.mars"), "retrieve, param=2t/msl, date=20240101, grid=10/10");
    const followed = await cli(
      ["submit", join(dir, "fleet.mars"), "--target", "cli/a.grib", "--follow", "--json"],
      env,
    );
    assert.equal(followed.code, 0, followed.stderr);
    const lines = followed.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const record = lines.at(-1)!;
    assert.equal(record["state"], "succeeded");
    assert.ok(lines.some((l) => l["type"] === "log"));

    await writeFile(join(dir, "fail.json"), JSON.stringify({ param: "nosuch" }));
    const failed = await cli(["submit", join(dir, "fail.json"), "--target", "cli/b.grib", "--follow"], env);
    assert.equal(failed.code, 4);

    const status = await cli(["status", String(record["id"]), "--json"], env);
    assert.equal(JSON.parse(status.stdout).state, "succeeded");
    const logs = await cli(["logs", String(record["id"])], env);
    assert.match(logs.stdout, /No errors reported/);
    const jobs = await cli(["jobs", "--state", "failed", "--json"], env);
    assert.ok((JSON.parse(jobs.stdout) as Array<{ state: string }>).every((j) => j.state === "failed"));
    const workers = await cli(["workers", "--json"], env);
    assert.ok((JSON.parse(workers.stdout) as Array<{ queue: string }>).some((w) => w.queue === queue));
    const missing = await cli(["status", "no-such-job"], env);
    assert.equal(missing.code, 9);
    const info = await cli(["broker", "info"], env);
    assert.match(info.stdout, new RegExp(`consumer workers-${queue}: 0 queued, 0 running`));
  });

  it("a worker refuses to start without its shared root or with a MARS command that cannot run", async () => {
    const noRoot = await cli(
      ["worker"],
      tf.env({ queue: "preflight", sharedRoot: join(dir, "not-mounted") }),
    );
    assert.equal(noRoot.code, 2);
    assert.match(noRoot.stderr, /CONFIG_INVALID: shared root .*not-mounted does not exist/);
    const noMars = await cli(["worker"], tf.env({ queue: "preflight", marsCommand: "/opt/no/such/mars" }));
    assert.equal(noMars.code, 2);
    assert.match(noMars.stderr, /MARS command "\/opt\/no\/such\/mars" is not found/);
  });

  it("a starting worker removes what a crashed one left behind", async () => {
    const journalDir = join(dir, "journal");
    const part = join(dir, "share", ".x.grib.job-a1.mars-part");
    await mkdir(join(dir, "share"), { recursive: true });
    await writeFile(part, "partial");
    const journal = new Journal(journalDir);
    // pid 2^22+1 is above Linux's pid_max: certainly not alive.
    await journal.add("job-a1", { workerPid: 4194305, pgid: -1, partPath: part, jobId: "job" });
    await journal.add("mine", {
      workerPid: process.pid,
      pgid: -1,
      partPath: join(dir, "keep"),
      jobId: "mine",
    });
    const recovered = await journal.recover();
    assert.deepEqual(
      recovered.map((r) => r.jobId),
      ["job"],
    );
    assert.deepEqual(await readdir(join(dir, "share")), []);
    assert.deepEqual(await readdir(journalDir), ["mine.json"]);
  });
});
