/** jobTarget: the one way every entry point turns what it is given into a job's target. */
import assert from "node:assert/strict";
import { basename, isAbsolute, relative, resolve } from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import { DEFAULT_TARGET_NAME, jobTarget } from "../src/runner/target.js";

const ROOT = "/srv/cache";
/** Path pieces that try every way out: climbing, absolute paths, the root's own name, odd bytes. */
const piece = fc.constantFrom(
  "..",
  ".",
  "a",
  "b",
  "",
  "users",
  "alice",
  "srv",
  "cache",
  "x y",
  "\u0001",
  "..a",
  "...",
);
const path = fc
  .tuple(fc.boolean(), fc.array(piece, { maxLength: 6 }))
  .map(([abs, parts]) => (abs ? "/" : "") + parts.join("/"));
const file = fc.constantFrom("data.grib", "x.grib", "..", ".", "", "a/b", "q'\"", "n\u0002", "ok name.grib");

describe("jobTarget", () => {
  it("returns a path relative to the root, inside it and inside `within`, or refuses with TARGET_INVALID", () => {
    fc.assert(
      fc.property(
        fc.option(path, { nil: undefined }),
        fc.option(file, { nil: undefined }),
        fc.option(path, { nil: undefined }),
        (dir, name, within) => {
          let out: string;
          try {
            out = jobTarget(ROOT, { dir, file: name, within });
          } catch (err) {
            assert.equal((err as { code?: string }).code, "TARGET_INVALID", String(err));
            return;
          }
          assert.ok(!isAbsolute(out), out);
          assert.ok(!out.split("/").includes(".."), out);
          const full = resolve(ROOT, out);
          const rel = relative(ROOT, full);
          assert.ok(rel !== "" && !rel.startsWith("..") && !isAbsolute(rel), `${out} leaves the root`);
          if (within !== undefined) {
            const base = resolve(ROOT, within);
            assert.ok(full.startsWith(base + "/"), `${out} leaves ${within}`);
          }
          assert.equal(basename(out), name ?? DEFAULT_TARGET_NAME);
        },
      ),
      { numRuns: 3000 },
    );
  });

  it("keeps what stays inside: a plain directory, an absolute one inside the root, a user's prefix", () => {
    assert.equal(jobTarget(ROOT, {}), "data.grib");
    assert.equal(jobTarget(ROOT, { dir: "era5", file: "2t.grib" }), "era5/2t.grib");
    assert.equal(jobTarget(ROOT, { dir: `${ROOT}/era5` }), "era5/data.grib");
    assert.equal(
      jobTarget(ROOT, { dir: "api", file: "j.grib", within: "users/bob" }),
      "users/bob/api/j.grib",
    );
    for (const spec of [
      { dir: "../etc" },
      { dir: "/etc" },
      { dir: "../alice", within: "users/bob" },
      { file: "../x" },
    ])
      assert.throws(
        () => jobTarget(ROOT, spec),
        (err: { code?: string }) => err.code === "TARGET_INVALID",
        JSON.stringify(spec),
      );
  });
});
