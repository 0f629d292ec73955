/** `npm run demo`, the README's first command: the script it runs, end to end, in a scratch folder. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const DEMO = fileURLToPath(new URL("../scripts/demo.js", import.meta.url));

describe("the demo", { timeout: 120_000 }, () => {
  it("runs three jobs with the library, then one over REST with the key it prints, and stops everything", async () => {
    const cwd = await mkdtemp(join(tmpdir(), "mars-demo-"));
    try {
      const child = spawn(process.execPath, [DEMO], { cwd, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((resolve) => {
        const timer = setTimeout(() => child.kill("SIGTERM"), 100_000);
        child.on("exit", (c) => {
          clearTimeout(timer);
          resolve(c);
        });
      });
      assert.equal(code, 0, out);
      for (const name of ["surface.grib", "precip.grib", "upper-air.grib"])
        assert.match(out, new RegExp(`era5/${name.replace(".", "\\.")}: \\S+ fields, \\d+ bytes`), out);
      assert.match(out, /API key of user demo: mfk_\S+/);
      assert.match(out, /POST \/v1\/jobs → 202, \/v1\/jobs\/\S+/);
      assert.match(out, /\(text\/event-stream\) → [1-9]\d* log lines, \d+ states, ended succeeded/);
      assert.match(out, /\/result → 200, [1-9]\d* bytes of GRIB/);
      assert.match(out, /workers drained, nats-server stopped\./);
    } finally {
      await rm(cwd, { recursive: true, force: true });
    }
  });
});
