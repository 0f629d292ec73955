/** GRIB2 identification of a parameter and how the simulator makes plausible values for it. */
export interface ParamInfo {
  shortName: string;
  paramId: number;
  name: string;
  units: string;
  /** `sfc` params live on a fixed surface; `pl` params on pressure levels (levelist in hPa). */
  levtype: "sfc" | "pl";
  discipline: number;
  category: number;
  number: number;
  /** Fixed surface for sfc params: type, and level in metres where the type needs one. */
  surfaceType: number;
  surfaceLevel?: number;
  /** Accumulated from the start of the forecast (product template 4.8). */
  accumulated?: boolean;
  /** Values: mean + amplitude * shape(lat, lon, time), packed with this many decimal digits. */
  mean: number;
  amplitude: number;
  decimals: number;
}

const PRESSURE_SURFACE = 100;
const MSL_SURFACE = 101;
const HEIGHT_SURFACE = 103;
const GROUND_SURFACE = 1;

/** Facts from ecCodes' grib2 shortName.def / paramId.def (read there, not copied). */
export const PARAMS: readonly ParamInfo[] = [
  {
    shortName: "2t",
    paramId: 167,
    name: "2 metre temperature",
    units: "K",
    levtype: "sfc",
    discipline: 0,
    category: 0,
    number: 0,
    surfaceType: HEIGHT_SURFACE,
    surfaceLevel: 2,
    mean: 278,
    amplitude: 30,
    decimals: 2,
  },
  {
    shortName: "msl",
    paramId: 151,
    name: "Mean sea level pressure",
    units: "Pa",
    levtype: "sfc",
    discipline: 0,
    category: 3,
    number: 0,
    surfaceType: MSL_SURFACE,
    mean: 101325,
    amplitude: 2500,
    decimals: 0,
  },
  {
    shortName: "10u",
    paramId: 165,
    name: "10 metre U wind component",
    units: "m s**-1",
    levtype: "sfc",
    discipline: 0,
    category: 2,
    number: 2,
    surfaceType: HEIGHT_SURFACE,
    surfaceLevel: 10,
    mean: 0,
    amplitude: 12,
    decimals: 2,
  },
  {
    shortName: "10v",
    paramId: 166,
    name: "10 metre V wind component",
    units: "m s**-1",
    levtype: "sfc",
    discipline: 0,
    category: 2,
    number: 3,
    surfaceType: HEIGHT_SURFACE,
    surfaceLevel: 10,
    mean: 0,
    amplitude: 10,
    decimals: 2,
  },
  {
    shortName: "tp",
    paramId: 228,
    name: "Total precipitation",
    units: "kg m**-2",
    levtype: "sfc",
    discipline: 0,
    category: 1,
    number: 52,
    surfaceType: GROUND_SURFACE,
    accumulated: true,
    mean: 2,
    amplitude: 2,
    decimals: 3,
  },
  {
    shortName: "t",
    paramId: 130,
    name: "Temperature",
    units: "K",
    levtype: "pl",
    discipline: 0,
    category: 0,
    number: 0,
    surfaceType: PRESSURE_SURFACE,
    mean: 250,
    amplitude: 25,
    decimals: 2,
  },
  {
    shortName: "u",
    paramId: 131,
    name: "U component of wind",
    units: "m s**-1",
    levtype: "pl",
    discipline: 0,
    category: 2,
    number: 2,
    surfaceType: PRESSURE_SURFACE,
    mean: 8,
    amplitude: 20,
    decimals: 2,
  },
  {
    shortName: "v",
    paramId: 132,
    name: "V component of wind",
    units: "m s**-1",
    levtype: "pl",
    discipline: 0,
    category: 2,
    number: 3,
    surfaceType: PRESSURE_SURFACE,
    mean: 0,
    amplitude: 15,
    decimals: 2,
  },
  {
    shortName: "z",
    paramId: 129,
    name: "Geopotential",
    units: "m**2 s**-2",
    levtype: "pl",
    discipline: 0,
    category: 3,
    number: 4,
    surfaceType: PRESSURE_SURFACE,
    mean: 50000,
    amplitude: 3000,
    decimals: 0,
  },
  {
    shortName: "q",
    paramId: 133,
    name: "Specific humidity",
    units: "kg kg**-1",
    levtype: "pl",
    discipline: 0,
    category: 1,
    number: 0,
    surfaceType: PRESSURE_SURFACE,
    mean: 0.004,
    amplitude: 0.004,
    decimals: 6,
  },
  {
    shortName: "r",
    paramId: 157,
    name: "Relative humidity",
    units: "%",
    levtype: "pl",
    discipline: 0,
    category: 1,
    number: 1,
    surfaceType: PRESSURE_SURFACE,
    mean: 60,
    amplitude: 35,
    decimals: 1,
  },
];

/** Resolve `2t`, `167`, `167.128` (any case) to a parameter, or undefined. */
export function lookupParam(token: string): ParamInfo | undefined {
  const t = token.trim().toLowerCase();
  const m = /^(\d+)(?:\.128)?$/.exec(t);
  if (m) return PARAMS.find((p) => p.paramId === Number(m[1]));
  return PARAMS.find((p) => p.shortName === t);
}
