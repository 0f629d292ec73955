/**
 * `npm run demo`: a sample ERA5-like retrieval on the bundled simulator, with live filtered logs,
 * a progress bar and a summary; the GRIB lands in ./out/.
 */
import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { executeMarsLocally } from "../src/client/execute.js";
import { ProgressDisplay } from "../src/cli/output.js";
import { formatDuration } from "../src/core/time.js";

const REQUEST = {
  class: "ea",
  type: "an",
  stream: "oper",
  expver: "1",
  levtype: "sfc",
  param: "2t/msl/10u/10v",
  date: "20240101/to/20240103",
  time: "00:00/12:00",
  step: "0",
  grid: "0.5/0.5",
  area: "72/-25/30/45",
};

async function main(): Promise<void> {
  const outDir = resolve("out");
  process.stdout.write(
    `mars-fleet demo: ERA5-like retrieval on the MARS simulator -> ${outDir}/era5-demo.grib\n`,
  );
  const display = new ProgressDisplay();
  const result = await executeMarsLocally(REQUEST, {
    targetDir: outDir,
    targetFname: "era5-demo.grib",
    environ: { request_id: "demo-1", user_id: "demo" },
    env: { MARS_SIM_BYTES_PER_SEC: String(160 * 1024) },
    onLog: (line) => display.log(line),
    onProgress: (p) => display.update("era5-demo.grib", p.bytes, p.total),
  });
  display.stop();
  const { stdout } = await promisify(execFile)("grib_ls", [
    "-p",
    "shortName,dataDate,dataTime,step,Ni,Nj",
    result.target,
  ]).catch(() => ({ stdout: "(grib_ls not installed: apt-get install libeccodes-tools)\n" }));
  const fields = stdout.split("\n").filter((l) => /^\S+\s+\d{8}/.test(l.trim())).length;
  process.stdout.write(stdout);
  process.stdout.write(
    `\nsummary: ${fields} fields, ${result.bytes} bytes, ${formatDuration(result.elapsedMs)}, ${result.log.length} log lines -> ${result.target}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
