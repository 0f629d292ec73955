import assert from "node:assert/strict";
import { describe, it } from "node:test";

describe("package entry", () => {
  it("exports what the README imports from 'mars-fleet'", async () => {
    const api = (await import("mars-fleet")) as Record<string, unknown>;
    for (const name of [
      "executeMars",
      "Fleet",
      "Worker",
      "Gateway",
      "MarsRuntimeError",
      "JobCancelledError",
      "loadConfig",
    ]) {
      assert.equal(typeof api[name], "function", `${name} is not exported`);
    }
  });
});
