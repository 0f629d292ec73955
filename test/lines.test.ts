import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LineSplitter } from "../src/runner/lines.js";

/** Feed `chunks` one by one; every line that came out, the unfinished last one included. */
function split(chunks: Array<string | Buffer>): string[] {
  const s = new LineSplitter();
  const out = chunks.flatMap((c) => s.push(typeof c === "string" ? Buffer.from(c) : c));
  return [...out, ...s.end()];
}

describe("line splitter (as a terminal shows output)", { timeout: 5000 }, () => {
  it("ends lines at \\n, \\r\\n and a lone \\r", () => {
    assert.deepEqual(split(["a\nb\r\nc\rd"]), ["a", "b", "c", "d"]);
    assert.deepEqual(split(["10%\r20%\r30%\r\n"]), ["10%", "20%", "30%"]);
  });

  it("takes \\r\\n split across chunks as one line end, and a lone \\r at a chunk end at once", () => {
    const s = new LineSplitter();
    assert.deepEqual(s.push(Buffer.from("one\r")), ["one"]);
    assert.deepEqual(s.push(Buffer.from("\ntwo\r")), ["two"]);
    assert.deepEqual(s.push(Buffer.from("\n")), []);
    assert.deepEqual(s.push(Buffer.from("\n")), [""]);
    assert.deepEqual(s.end(), []);
  });

  it("keeps multi-byte characters whole across chunks", () => {
    const bytes = Buffer.from("température 20°C\n");
    assert.deepEqual(split([bytes.subarray(0, 5), bytes.subarray(5, 6), bytes.subarray(6)]), [
      "température 20°C",
    ]);
  });
});
