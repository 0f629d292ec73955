/** The canonical request key (src/mars/request-key.ts): property tests over rewritings of requests. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { normaliseRequests, type MarsRequestObject } from "../src/mars/request.js";
import { requestKey } from "../src/mars/request-key.js";

const TODAY = new Date(Date.UTC(2026, 11, 6));
const key = (req: MarsRequestObject | MarsRequestObject[]): string | undefined =>
  requestKey(normaliseRequests(req), TODAY);

/** A request in one plain spelling, as its parts, so that each can be written other ways. */
interface Parts {
  params: string[];
  days: number[]; // consecutive days from 2024-01-01
  times: number[]; // hours
  steps: number[];
  grid: number;
  extra: Record<string, string>;
}

const PARAM_SPELLINGS: Record<string, string[]> = {
  "2t": ["2t", "2T", "167", "167.128"],
  msl: ["msl", "MSL", "151", "151.128"],
  "10u": ["10u", "165"],
  tp: ["tp", "228"],
};

const parts = fc.record({
  params: fc.uniqueArray(fc.constantFrom(...Object.keys(PARAM_SPELLINGS)), { minLength: 1, maxLength: 4 }),
  days: fc.uniqueArray(fc.integer({ min: 0, max: 40 }), { minLength: 1, maxLength: 6 }),
  times: fc.uniqueArray(fc.constantFrom(0, 6, 12, 18), { minLength: 1, maxLength: 4 }),
  steps: fc.uniqueArray(fc.integer({ min: 0, max: 48 }), { minLength: 1, maxLength: 4 }),
  grid: fc.constantFrom(0.25, 0.5, 1, 10),
  extra: fc.constantFrom<Record<string, string>>({}, { class: "ea" }, { stream: "enda", class: "ea" }),
});

const ymd = (day: number): string => new Date(Date.UTC(2024, 0, 1 + day)).toISOString().slice(0, 10);

/** The plain spelling. */
function plain(p: Parts): MarsRequestObject {
  return {
    param: p.params.join("/"),
    date: p.days.map((d) => ymd(d).replaceAll("-", "")).join("/"),
    time: p.times.map((t) => String(t * 100).padStart(4, "0")).join("/"),
    step: p.steps.join("/"),
    grid: `${p.grid}/${p.grid}`,
    levtype: "sfc",
    target: "out.grib",
    ...p.extra,
  };
}

/** Another spelling MARS reads the same way, chosen by `seed`. */
function rewritten(p: Parts, seed: number): MarsRequestObject {
  const pick = <T>(xs: T[], i: number): T => xs[(seed >> i) % xs.length]!;
  const shuffle = <T>(xs: T[]): T[] =>
    [...xs].sort((a, b) => ((seed * 31 + String(a).length * 7 + Number(String(b).length)) % 3) - 1);
  const days = [...p.days].sort((a, b) => a - b);
  const consecutive = days.every((d, i) => i === 0 || d === days[i - 1]! + 1);
  const dateSpelling =
    consecutive && days.length > 1 && seed % 2 === 0
      ? `${ymd(days[0]!)}/to/${ymd(days.at(-1)!)}`
      : shuffle(p.days)
          .map((d) => (seed % 3 === 0 ? ymd(d) : ymd(d).replaceAll("-", "")))
          .join("/");
  const out: MarsRequestObject = {
    // Abbreviated and upper-case keywords, values in other orders and spellings.
    PARAM: shuffle(p.params)
      .map((x) => pick(PARAM_SPELLINGS[x]!, 1))
      .join("/"),
    DATE: dateSpelling,
    TIME: shuffle(p.times)
      .map((t) => pick([`${String(t).padStart(2, "0")}:00`, String(t * 100), String(t)], 2))
      .join("/"),
    step: shuffle(p.steps)
      .map((s) => (seed % 5 === 0 ? String(s).padStart(3, "0") : String(s)))
      .join("/"),
    grid: [`${p.grid}`, `${p.grid}`].map((g) => (seed % 7 === 0 ? Number(g).toFixed(2) : g)),
    target: `elsewhere-${seed}.grib`,
    ...p.extra,
  };
  // An abbreviated keyword, and defaults given or left out.
  out[pick(["levt", "LEVTYPE", "levtype"], 3)] = pick(["sfc", "SFC"], 4);
  if (seed % 4 === 0) out["expver"] = "1";
  if (seed % 4 === 1 && !p.extra["class"]) out["class"] = "OD";
  return out;
}

describe("canonical request key", { timeout: 60_000 }, () => {
  it("gives every rewriting of a request that MARS reads the same way the same key", () => {
    fc.assert(
      fc.property(parts, fc.nat(1 << 16), (p, seed) => {
        assert.equal(key(rewritten(p, seed)), key(plain(p)), JSON.stringify(rewritten(p, seed)));
      }),
      { numRuns: 2000 },
    );
  });

  it("changes when any value that bears data changes", () => {
    fc.assert(
      fc.property(
        parts,
        fc.constantFrom("param", "date", "time", "step", "grid", "class", "levtype"),
        (p, what) => {
          const base = plain(p);
          const changed = { ...base };
          const missing = Object.keys(PARAM_SPELLINGS).find((x) => !p.params.includes(x));
          if (what === "param")
            changed.param = missing ? `${base.param as string}/${missing}` : p.params.slice(1).join("/");
          if (what === "date") changed.date = `${base.date as string}/20250101`;
          if (what === "time") changed.time = `${base.time as string}/0300`;
          if (what === "step") changed.step = `${base.step as string}/99`;
          if (what === "grid") changed.grid = `${p.grid * 2}/${p.grid * 2}`;
          if (what === "class") changed.class = base.class === "ea" ? "od" : "ea";
          if (what === "levtype") changed.levtype = "pl";
          if (what === "levtype" && p.extra["class"]) delete changed.levtype; // left out: MARS's default is pl
          assert.notEqual(key(changed), key(base), `${what}: ${JSON.stringify(changed)}`);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it("resolves relative dates against today, and keys only retrieve requests", () => {
    const yesterday = key({ param: "2t", date: "-1" });
    assert.equal(yesterday, key({ param: "2t", date: "20261205" }));
    assert.equal(yesterday, key({ param: "2t" }), "date defaults to yesterday");
    assert.notEqual(
      yesterday,
      requestKey(normaliseRequests({ param: "2t", date: "-1" }), new Date(Date.UTC(2026, 11, 7))),
    );
    assert.equal(key({ verb: "list", param: "2t" }), undefined);
    assert.equal(key({ param: "2t", date: "20240230" }), undefined, "a date MARS refuses");
  });

  it("keeps a job's several requests in their order", () => {
    const a = { param: "2t", date: "20240101" };
    const b = { param: "msl", date: "20240102" };
    assert.notEqual(key([a, b]), key([b, a]));
    assert.equal(
      key([a, b]),
      key([
        { ...a, target: "x" },
        { ...b, target: "y" },
      ]),
    );
  });
});
