import { MarsRequestError } from "../core/index.js";
import {
  expandDates,
  expandIntegers,
  expandTimes,
  lookupParam,
  type MarsRequest,
  type ParamInfo,
} from "../mars/index.js";
import type { LatLonGrid } from "./grib.js";

/** One field the simulator will write. */
export interface FieldSpec {
  param: ParamInfo;
  date: number;
  time: number;
  step: number;
  level?: number;
  number?: number;
}

export interface RetrievalPlan {
  fields: FieldSpec[];
  /** Fields dropped because no data exists for them (future dates, wrong level type). */
  missing: number;
  grid: LatLonGrid;
  typeOfData: number;
  /** Exact size of all messages together, as announced by `Transfering N bytes`. */
  totalBytes: number;
}

const DEFAULT_GRID = [1, 1] as const;
const GLOBAL_AREA = [90, 0, -90, 359] as const;
const MAX_POINTS = 4_000_000;

function numbers(
  key: string,
  tokens: string[] | undefined,
  count: number,
  fallback: readonly number[],
): number[] {
  if (!tokens) return [...fallback];
  const values = tokens.map(Number);
  if (values.length !== count || values.some((v) => !Number.isFinite(v))) {
    throw new MarsRequestError(`invalid ${key} "${tokens.join("/")}": expected ${count} numbers`, { key });
  }
  return values;
}

/** The regular lat/lon grid asked for by `grid=dx/dy` and `area=N/W/S/E`. */
export function planGrid(req: MarsRequest): LatLonGrid {
  const gridTokens = req.params["grid"];
  const [dx, dy] = numbers(
    "grid",
    gridTokens?.length === 1 ? [gridTokens[0]!, gridTokens[0]!] : gridTokens,
    2,
    DEFAULT_GRID,
  );
  if (dx! <= 0 || dy! <= 0 || dx! > 90 || dy! > 90)
    throw new MarsRequestError(`invalid grid ${dx}/${dy}`, { key: "grid" });
  const areaTokens = req.params["area"];
  const area = areaTokens?.length === 1 && areaTokens[0]!.toLowerCase() === "global" ? undefined : areaTokens;
  const [north, west, south, eastRaw] = numbers("area", area, 4, GLOBAL_AREA);
  if (north! > 90 || south! < -90 || north! < south!) {
    throw new MarsRequestError(`invalid area ${area?.join("/")}: expected North/West/South/East`, {
      key: "area",
    });
  }
  const east = eastRaw! < west! ? eastRaw! + 360 : eastRaw!;
  const ni = Math.floor((east - west! + 1e-9) / dx!) + 1;
  const nj = Math.floor((north! - south! + 1e-9) / dy!) + 1;
  if (ni * nj > MAX_POINTS)
    throw new MarsRequestError(`grid of ${ni}x${nj} points is too large for the simulator`, { key: "grid" });
  return {
    ni,
    nj,
    north: north!,
    west: west!,
    south: north! - (nj - 1) * dy!,
    east: west! + (ni - 1) * dx!,
    dx: dx!,
    dy: dy!,
  };
}

/** Each value once, smallest first. */
function ascending(values: number[]): number[] {
  return [...new Set(values)].sort((a, b) => a - b);
}

/** Expand a retrieve request into fields (param × date × time × step × levelist × number). */
export function planRetrieval(req: MarsRequest, today: Date = new Date()): RetrievalPlan {
  const paramTokens = req.params["param"];
  if (!paramTokens) throw new MarsRequestError(`no "param" given`, { key: "param" });
  // Fields come in MARS's own order, whatever order the lists were given in: each list as a
  // sorted set (parameters by id). So reordering a list changes no byte (src/mars/request-key.ts).
  const params = [
    ...new Map(
      paramTokens.map((t) => {
        const p = lookupParam(t);
        if (!p) throw new MarsRequestError(`Ambiguous or unknown parameter: ${t}`, { key: "param" });
        return [p.paramId, p] as const;
      }),
    ).values(),
  ].sort((a, b) => a.paramId - b.paramId);
  const dates = ascending(expandDates(req.params["date"] ?? ["-1"], today));
  const times = ascending(expandTimes(req.params["time"] ?? ["0"]));
  const steps = ascending(expandIntegers("step", req.params["step"] ?? ["0"]));
  const levtype = (req.params["levtype"]?.[0] ?? "sfc").toLowerCase();
  if (levtype !== "sfc" && levtype !== "pl") {
    throw new MarsRequestError(`levtype "${levtype}" is not served by the simulator: use sfc or pl`, {
      key: "levtype",
    });
  }
  const levels =
    levtype === "pl"
      ? ascending(expandIntegers("levelist", req.params["levelist"] ?? ["1000"]))
      : [undefined];
  const members = req.params["number"]
    ? ascending(expandIntegers("number", req.params["number"]))
    : [undefined];
  const type = (req.params["type"]?.[0] ?? "an").toLowerCase();
  const typeOfData = type === "an" ? 0 : type === "fc" ? 1 : 2;
  const todayYmd = Number(today.toISOString().slice(0, 10).replaceAll("-", ""));

  const fields: FieldSpec[] = [];
  let missing = 0;
  for (const param of params)
    for (const date of dates)
      for (const time of times)
        for (const step of steps)
          for (const level of levels)
            for (const number of members) {
              if (param.levtype !== levtype || date > todayYmd) {
                missing++;
                continue;
              }
              fields.push({
                param,
                date,
                time,
                step,
                ...(level !== undefined && { level }),
                ...(number !== undefined && { number }),
              });
            }
  const grid = planGrid(req);
  const totalBytes = fields.reduce((sum, f) => sum + gribSize(grid, f.param), 0);
  return { fields, missing, grid, typeOfData, totalBytes };
}

/** Size in bytes of one encoded message on this grid. */
export function gribSize(grid: LatLonGrid, param: ParamInfo): number {
  const productLength = param.accumulated ? 58 : 34;
  return 16 + 21 + 72 + productLength + 21 + 6 + 5 + grid.ni * grid.nj * 2 + 4;
}

/** A deterministic pseudo-random phase in [0, 2π) from the field's coordinates. */
function phase(f: FieldSpec, salt: number): number {
  let h = 2166136261 ^ salt;
  for (const n of [f.param.paramId, f.date, f.time, f.step, f.level ?? 0, f.number ?? 0]) {
    h = Math.imul(h ^ n, 16777619) >>> 0;
  }
  return (h / 0xffffffff) * 2 * Math.PI;
}

/** Standard-atmosphere height (m) of a pressure level (hPa). */
function levelHeight(hPa: number): number {
  return 44330 * (1 - (hPa / 1013.25) ** 0.1903);
}

/** Plausible, deterministic values for one field: a latitude profile plus travelling waves. */
export function fieldValues(f: FieldSpec, grid: LatLonGrid): Float64Array {
  const p = f.param;
  let mean = p.mean;
  if (p.levtype === "pl" && f.level !== undefined) {
    const height = levelHeight(f.level);
    if (p.shortName === "t") mean = Math.max(216, 288 - 0.0065 * height);
    if (p.shortName === "z") mean = 9.80665 * height;
    if (p.shortName === "q") mean = p.mean * (f.level / 1000) ** 3;
  }
  const amplitude = p.shortName === "q" ? mean : p.amplitude;
  const a = phase(f, 1);
  const b = phase(f, 2);
  const stepScale = p.accumulated ? f.step / 24 : 1;
  const out = new Float64Array(grid.ni * grid.nj);
  for (let j = 0; j < grid.nj; j++) {
    const lat = ((grid.north - j * grid.dy) * Math.PI) / 180;
    const profile = Math.cos(lat) - 0.5;
    for (let i = 0; i < grid.ni; i++) {
      const lon = ((grid.west + i * grid.dx) * Math.PI) / 180;
      const wave = 0.3 * Math.sin(2 * lon + a) * Math.cos(lat) + 0.1 * Math.sin(3 * lat + b);
      let v = mean + amplitude * (profile + wave);
      if (p.accumulated || p.shortName === "q" || p.shortName === "r") v = Math.max(0, v) * stepScale;
      if (p.shortName === "r") v = Math.min(100, v);
      out[j * grid.ni + i] = v;
    }
  }
  return out;
}
