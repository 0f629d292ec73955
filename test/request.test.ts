import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { MarsFleetError } from "../src/core/errors.js";
import { expandDates, expandIntegers, expandTimes } from "../src/mars/expand.js";
import { normaliseRequest, normaliseRequests, type MarsRequest } from "../src/mars/request.js";
import { formatRequests, parseRequests } from "../src/mars/text.js";

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof MarsFleetError ? err.code : "not a MarsFleetError";
  }
  return undefined;
}

describe("request language", () => {
  it("normalises keys, lists and the default verb", () => {
    const req = normaliseRequest({ CLASS: "ea", Param: "2t/msl", step: [0, 6], levt: "sfc", date: 20240101 });
    assert.deepEqual(req, {
      verb: "retrieve",
      params: { class: ["ea"], param: ["2t", "msl"], step: ["0", "6"], levtype: ["sfc"], date: ["20240101"] },
    });
  });

  it("rejects ambiguous abbreviations and unknown verbs", () => {
    assert.equal(
      codeOf(() => normaliseRequest({ lev: "sfc" })),
      "MARS_REQUEST_INVALID",
    );
    assert.equal(
      codeOf(() => normaliseRequest({ verb: "delete", param: "2t" })),
      "MARS_REQUEST_INVALID",
    );
  });

  for (const [what, value] of [
    ["newline", "2t\ntarget=/etc/passwd"],
    ["carriage return", "2t\rtarget=x"],
    ["control character", "2t\u0007"],
    ["both kinds of quote", `it's "x"`],
  ] as const) {
    it(`rejects a value with a ${what}, naming the key`, () => {
      try {
        normaliseRequest({ param: value });
        assert.fail("expected a rejection");
      } catch (err) {
        assert.ok(err instanceof MarsFleetError);
        assert.equal(err.code, "MARS_REQUEST_INVALID");
        assert.equal(err.details["key"], "param");
        assert.match(err.message, /param/);
      }
    });
  }

  it("quotes values with , = ' \" and \\ so they stay one value and inject nothing", () => {
    for (const value of ["2t, target=/etc/passwd", "a=b", "it's", 'say "x"', "back\\slash", "x\\"]) {
      const req = normaliseRequest({ param: "2t", note: value });
      const text = formatRequests([req]);
      const back = parseRequests(text);
      assert.deepEqual(back, [req], text);
      assert.deepEqual(Object.keys(back[0]!.params), ["param", "note"], text);
      assert.equal(back.length, 1);
    }
    assert.match(formatRequests([normaliseRequest({ note: "it's" })]), /note="it's"/);
    assert.match(formatRequests([normaliseRequest({ note: 'say "x"' })]), /note='say "x"'/);
  });

  it("checks every key and value again when writing, whatever built the request", () => {
    const forged = (params: Record<string, string[]>): string | undefined =>
      codeOf(() => formatRequests([{ verb: "retrieve", params }]));
    assert.equal(forged({ "param=2t,\ntarget": ["x"] }), "MARS_REQUEST_INVALID");
    assert.equal(forged({ param: ["2t\nretrieve,target=/x"] }), "MARS_REQUEST_INVALID");
    assert.equal(forged({ target: [`a'b"c`] }), "MARS_REQUEST_INVALID");
    assert.equal(forged({ param: [] }), "MARS_REQUEST_INVALID");
    assert.equal(
      codeOf(() => formatRequests([{ verb: "delete" as never, params: {} }])),
      "MARS_REQUEST_INVALID",
    );
  });

  it("quotes targets and keeps slashes in them", () => {
    const req = normaliseRequest({ param: "2t", target: "/data/out dir/x,y=1.grib" });
    const text = formatRequests([req]);
    assert.match(text, /target="\/data\/out dir\/x,y=1.grib"/);
    assert.deepEqual(parseRequests(text), [req]);
    assert.match(formatRequests([normaliseRequest({ target: 'a"b' })]), /target='a"b'/);
    assert.equal(
      codeOf(() => normaliseRequest({ target: `a"b'c` })),
      "MARS_REQUEST_INVALID",
    );
  });

  it("parses text with comments, quotes, several requests and inheritance", () => {
    const text = `# ERA5
      RETRIEVE, class = ea, date=20240101/to/20240103/by/1, # comment
        param = 2t/167.128, target = "out.grib"
      retrieve, param=msl`;
    const reqs = parseRequests(text);
    assert.equal(reqs.length, 2);
    assert.deepEqual(reqs[0]!.params["date"], ["20240101", "to", "20240103", "by", "1"]);
    assert.deepEqual(reqs[1]!.params, { ...reqs[0]!.params, param: ["msl"] });
  });

  it("reports syntax errors with a position", () => {
    assert.throws(() => parseRequests('retrieve, target="unterminated'), /line 1.*unbalanced/);
    assert.throws(() => parseRequests("retrieve, param"), /expected "="/);
    assert.throws(() => parseRequests(""), /no request/);
  });

  it("inherits keys across a list of objects", () => {
    const reqs = normaliseRequests([{ param: "2t", date: "20240101" }, { date: "20240102" }]);
    assert.deepEqual(reqs[1]!.params, { param: ["2t"], date: ["20240102"] });
  });

  it("round-trips any valid request through text (property)", () => {
    const token = fc.stringMatching(/^[A-Za-z0-9_.:+-]{1,8}$/);
    // Values that need quoting: blanks, commas, `=`, one kind of quote, backslashes.
    const spaced = fc
      .stringMatching(/^[A-Za-z0-9,='"\\][A-Za-z0-9 ,='"\\]{0,6}[A-Za-z0-9,='"\\]$/)
      .filter((s) => !(s.includes('"') && s.includes("'")));
    const keys = ["class", "date", "param", "step", "grid", "area", "expver", "levelist", "time"];
    const request = fc.record({
      verb: fc.constantFrom("retrieve", "list"),
      params: fc.dictionary(
        fc.constantFrom(...keys),
        fc.array(fc.oneof(token, spaced), { minLength: 1, maxLength: 4 }),
      ),
      target: fc.option(
        fc.stringMatching(/^[A-Za-z0-9 /._,=-]{1,20}$/).filter((s) => s.trim() === s && s.trim() !== ""),
      ),
    });
    fc.assert(
      fc.property(request, ({ verb, params, target }) => {
        const req: MarsRequest = { verb: verb as MarsRequest["verb"], params: { ...params } };
        if (target !== null) req.params["target"] = [target];
        assert.deepEqual(parseRequests(formatRequests([req])), [req]);
      }),
      { numRuns: 300 },
    );
  });
});

describe("value expansion", () => {
  it("expands date ranges, relative dates and ISO dates", () => {
    assert.deepEqual(expandDates(["20240130", "to", "20240202"]), [20240130, 20240131, 20240201, 20240202]);
    assert.deepEqual(
      expandDates(["2024-01-01", "to", "2024-01-05", "by", "2"]),
      [20240101, 20240103, 20240105],
    );
    assert.deepEqual(expandDates(["-1"], new Date("2024-03-01T12:00:00Z")), [20240229]);
    assert.throws(() => expandDates(["20240230"]), /no such day/);
  });

  it("expands times and steps", () => {
    assert.deepEqual(expandTimes(["00:00", "0600", "12", "1800"]), [0, 600, 1200, 1800]);
    assert.deepEqual(expandTimes(["0", "to", "18", "by", "6"]), [0, 600, 1200, 1800]);
    assert.deepEqual(expandIntegers("step", ["0", "to", "24", "by", "6"]), [0, 6, 12, 18, 24]);
    assert.throws(() => expandIntegers("step", ["0", "to"]), /without an end/);
  });
});
