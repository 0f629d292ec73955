import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SIMULATOR_SCRIPT } from "../src/sim/command.js";
import { gribLs } from "./helpers/grib.js";

let dir: string;

interface SimResult {
  code: number | null;
  signal: string | null;
  lines: string[];
}

async function sim(request: string, env: Record<string, string> = {}, viaStdin = false): Promise<SimResult> {
  const file = join(dir, `req-${Math.random().toString(36).slice(2)}.mars`);
  await writeFile(file, request);
  const child = spawn(process.execPath, viaStdin ? [SIMULATOR_SCRIPT] : [SIMULATOR_SCRIPT, file], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "inherit"],
  });
  if (viaStdin) child.stdin.end(request);
  else child.stdin.end();
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const [code, signal] = await new Promise<[number | null, string | null]>((r) =>
    child.on("close", (c, s) => r([c, s])),
  );
  return { code, signal, lines: out.split("\n").filter(Boolean) };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "mars-sim-test-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("MARS simulator", () => {
  it("writes GRIB2 that ecCodes decodes with the requested keys", async () => {
    const r = await sim(`retrieve, class=ea, type=an, date=20240101/20240102, time=00:00/12,
      param=2t/msl/10u/10v/tp, step=0/6, grid=5/5, area=60/-10/30/20, target="sfc.grib"`);
    assert.equal(r.code, 0);
    const rows = await gribLs(join(dir, "sfc.grib"), [
      "shortName",
      "dataDate",
      "dataTime",
      "step",
      "gridType",
      "Ni",
      "Nj",
      "editionNumber",
    ]);
    assert.equal(rows.length, 5 * 2 * 2 * 2);
    const seen = new Set(rows.map((m) => `${m["shortName"]}|${m["dataDate"]}|${m["dataTime"]}|${m["step"]}`));
    for (const p of ["2t", "msl", "10u", "10v", "tp"])
      for (const d of ["20240101", "20240102"])
        for (const t of ["0", "1200"])
          for (const s of ["0", "6"])
            assert.ok(seen.has(`${p}|${d}|${t}|${s}`), `missing ${p} ${d} ${t} ${s}`);
    for (const m of rows) {
      assert.equal(m["gridType"], "regular_ll");
      assert.equal(m["editionNumber"], "2");
      assert.equal(m["Ni"], "7");
      assert.equal(m["Nj"], "7");
    }
    const announced = r.lines.map((l) => /Transfering (\d+) bytes/.exec(l)?.[1]).find(Boolean);
    assert.equal(Number(announced), (await stat(join(dir, "sfc.grib"))).size);
    assert.ok(r.lines.some((l) => l.endsWith("No errors reported")));
  });

  it("encodes pressure levels and plausible values", async () => {
    const r = await sim(
      `retrieve, levtype=pl, levelist=850/500, param=t/u/v/z/q/r, date=2024-03-01, grid=10/10, target="pl.grib"`,
    );
    assert.equal(r.code, 0);
    const rows = await gribLs(join(dir, "pl.grib"), ["shortName", "level", "typeOfLevel", "min", "max"]);
    assert.equal(rows.length, 12);
    const t850 = rows.find((m) => m["shortName"] === "t" && m["level"] === "850")!;
    assert.equal(t850["typeOfLevel"], "isobaricInhPa");
    assert.ok(
      Number(t850["min"]) > 200 && Number(t850["max"]) < 320,
      `t850 range ${t850["min"]}..${t850["max"]}`,
    );
    const r500 = rows.find((m) => m["shortName"] === "r" && m["level"] === "500")!;
    assert.ok(Number(r500["min"]) >= 0 && Number(r500["max"]) <= 100);
  });

  it("reads the request on stdin and is deterministic", async () => {
    const req = `retrieve, param=2t, date=20240101, grid=10/10, target="a.grib"`;
    assert.equal((await sim(req, {}, true)).code, 0);
    const first = await readFile(join(dir, "a.grib"));
    assert.equal((await sim(req)).code, 0);
    assert.deepEqual(await readFile(join(dir, "a.grib")), first);
  });

  it("exits non-zero below 128 with an ERROR line for bad requests", async () => {
    for (const req of [
      `retrieve, param=notaparam, target="x.grib"`,
      `retrieve, param=2t, date=20240231, target="x.grib"`,
      `retrieve, param=2t, target="x.grib", oops`,
    ]) {
      const r = await sim(req);
      assert.ok(r.code !== null && r.code > 0 && r.code < 128, `exit ${r.code} for ${req}`);
      assert.ok(
        r.lines.some((l) => /^mars - ERROR  - \d{8}\.\d{6} - /.test(l)),
        req,
      );
    }
  });

  it("exits 0 and writes nothing when there is no data", async () => {
    const r = await sim(`retrieve, param=2t, date=20990101, target="none.grib"`);
    assert.equal(r.code, 0);
    await assert.rejects(stat(join(dir, "none.grib")));
  });

  it("kills itself after N bytes and fails after N bytes on request", async () => {
    const req = `retrieve, param=2t, date=20240101/to/20240105, grid=2/2, target="k.grib"`;
    const killed = await sim(req, { MARS_SIM_KILL_AFTER_BYTES: "50000" });
    assert.equal(killed.signal, "SIGKILL");
    const failed = await sim(req, { MARS_SIM_FAIL_AFTER_BYTES: "50000" });
    assert.ok(failed.code !== null && failed.code > 0 && failed.code < 128);
    assert.ok(failed.lines.some((l) => l.includes("ERROR") && l.includes("Write error")));
  });

  it("prints extra log lines and rejects bad knobs", async () => {
    const r = await sim(`retrieve, param=2t, date=20240101, grid=10/10, target="l.grib"`, {
      MARS_SIM_LOG_LINES: "1000",
    });
    assert.equal(r.lines.filter((l) => l.includes("Simulated progress message")).length, 1000);
    const bad = await sim(`retrieve, param=2t, target="l.grib"`, { MARS_SIM_FIELD_DELAY_MS: "soon" });
    assert.equal(bad.code, 1);
    assert.ok(bad.lines.some((l) => l.includes("MARS_SIM_")));
  });
});
