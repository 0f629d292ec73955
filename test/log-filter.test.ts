import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LogFilter, LogPresenter } from "../src/client/log-filter.js";

describe("log filter", () => {
  it("shows only important lines", () => {
    const f = new LogFilter();
    assert.deepEqual(f.push("mars - INFO   - 20240101.000000 - Welcome to MARS"), []);
    assert.equal(f.push("mars - ERROR  - 20240101.000000 - Exception: boom").length, 1);
    assert.equal(f.push("Download 50% done").length, 1);
  });

  it("collapses runs of identical lines after the second", () => {
    const f = new LogFilter();
    const shown = [...Array(5)].flatMap(() => f.push("warning: slow")).concat(f.push("error: x"), f.end());
    assert.deepEqual(shown, [
      "warning: slow",
      "warning: slow",
      "... (message repeated 3 more times)",
      "error: x",
    ]);
  });

  it("passes everything when disabled", () => {
    assert.deepEqual(new LogFilter(false).push("anything"), ["anything"]);
  });

  it("lets a custom handler rewrite, drop and cancel", () => {
    const shown: string[] = [];
    let cancelled = 0;
    const p = new LogPresenter(
      {
        logHandler: (line, job) => {
          if (line === "stop") job.cancel();
          return line.startsWith("keep") ? line.toUpperCase() : undefined;
        },
        onLog: (l) => shown.push(l),
      },
      { id: "j", cancel: () => cancelled++ },
    );
    for (const l of ["keep me", "drop me", "stop"]) p.line(l);
    assert.deepEqual(shown, ["KEEP ME"]);
    assert.equal(cancelled, 1);
  });
});
