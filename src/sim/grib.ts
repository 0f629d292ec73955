/**
 * A small GRIB edition 2 encoder: regular lat/lon grid (template 3.0), analysis/forecast at a point
 * in time (4.0) or accumulated from the start (4.8), simple packing (5.0), no bitmap.
 */
import type { ParamInfo } from "../mars/index.js";

/** A regular lat/lon grid, scanning west to east then north to south. Degrees. */
export interface LatLonGrid {
  ni: number;
  nj: number;
  north: number;
  west: number;
  south: number;
  east: number;
  dx: number;
  dy: number;
}

export interface GribField {
  param: ParamInfo;
  /** YYYYMMDD and HHMM of the reference time. */
  date: number;
  time: number;
  /** Forecast step in hours. */
  step: number;
  /** Pressure level in hPa for `pl` params. */
  level?: number;
  /** 0 analysis, 1 forecast, 2 both (code table 1.4). */
  typeOfData: number;
  grid: LatLonGrid;
  values: Float64Array;
}

const ECMWF_CENTRE = 98;
const MASTER_TABLES_VERSION = 5;
const BITS_PER_VALUE = 16;
const MICRO = 1_000_000;
const MISSING_U32 = 0xffffffff;

class ByteWriter {
  private readonly buf: Buffer;
  private offset = 0;
  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }
  u8(v: number): this {
    this.buf.writeUInt8(v, this.offset);
    this.offset += 1;
    return this;
  }
  u16(v: number): this {
    this.buf.writeUInt16BE(v, this.offset);
    this.offset += 2;
    return this;
  }
  u32(v: number): this {
    this.buf.writeUInt32BE(v >>> 0, this.offset);
    this.offset += 4;
    return this;
  }
  u64(v: number): this {
    this.buf.writeBigUInt64BE(BigInt(v), this.offset);
    this.offset += 8;
    return this;
  }
  /** GRIB signed integers are sign and magnitude, not two's complement. */
  s16(v: number): this {
    return this.u16(v < 0 ? 0x8000 | -v : v);
  }
  s32(v: number): this {
    return this.u32(v < 0 ? (0x80000000 | -v) >>> 0 : v);
  }
  f32(v: number): this {
    this.buf.writeFloatBE(v, this.offset);
    this.offset += 4;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.buf.set(b, this.offset);
    this.offset += b.length;
    return this;
  }
  ascii(s: string): this {
    this.offset += this.buf.write(s, this.offset, "latin1");
    return this;
  }
  done(): Buffer {
    if (this.offset !== this.buf.length)
      throw new Error(`GRIB section size mismatch: ${this.offset} != ${this.buf.length}`);
    return this.buf;
  }
}

function microDegrees(deg: number): number {
  return Math.round(deg * MICRO);
}

function longitude360(deg: number): number {
  return ((deg % 360) + 360) % 360;
}

function section1(f: GribField): Buffer {
  const year = Math.floor(f.date / 10000);
  const month = Math.floor(f.date / 100) % 100;
  const day = f.date % 100;
  return new ByteWriter(21)
    .u32(21)
    .u8(1)
    .u16(ECMWF_CENTRE)
    .u16(0)
    .u8(MASTER_TABLES_VERSION)
    .u8(0)
    .u8(1) // significance of reference time: start of forecast
    .u16(year)
    .u8(month)
    .u8(day)
    .u8(Math.floor(f.time / 100))
    .u8(f.time % 100)
    .u8(0)
    .u8(0) // production status: operational
    .u8(f.typeOfData)
    .done();
}

function section3(g: LatLonGrid): Buffer {
  return new ByteWriter(72)
    .u32(72)
    .u8(3)
    .u8(0)
    .u32(g.ni * g.nj)
    .u8(0)
    .u8(0)
    .u16(0)
    .u8(6) // shape of the earth: sphere of radius 6,371,229 m
    .u8(0)
    .u32(0)
    .u8(0)
    .u32(0)
    .u8(0)
    .u32(0)
    .u32(g.ni)
    .u32(g.nj)
    .u32(0)
    .u32(MISSING_U32) // basic angle and subdivisions: micro-degrees
    .s32(microDegrees(g.north))
    .u32(microDegrees(longitude360(g.west)))
    .u8(0x30) // i and j direction increments given
    .s32(microDegrees(g.south))
    .u32(microDegrees(longitude360(g.east)))
    .u32(microDegrees(g.dx))
    .u32(microDegrees(g.dy))
    .u8(0) // scanning: +i, -j, rows consecutive
    .done();
}

function fixedSurface(w: ByteWriter, f: GribField): void {
  const p = f.param;
  if (p.levtype === "pl") {
    w.u8(p.surfaceType)
      .u8(0)
      .u32(Math.round((f.level ?? 1000) * 100));
  } else if (p.surfaceLevel !== undefined) {
    w.u8(p.surfaceType).u8(0).u32(p.surfaceLevel);
  } else {
    w.u8(p.surfaceType).u8(0xff).u32(MISSING_U32);
  }
  w.u8(0xff).u8(0xff).u32(MISSING_U32); // no second surface
}

function addHours(date: number, time: number, hours: number): Date {
  const start = Date.UTC(
    Math.floor(date / 10000),
    (Math.floor(date / 100) % 100) - 1,
    date % 100,
    Math.floor(time / 100),
    time % 100,
  );
  return new Date(start + hours * 3_600_000);
}

function section4(f: GribField): Buffer {
  const accumulated = f.param.accumulated === true;
  const length = accumulated ? 58 : 34;
  const w = new ByteWriter(length)
    .u32(length)
    .u8(4)
    .u16(0)
    .u16(accumulated ? 8 : 0)
    .u8(f.param.category)
    .u8(f.param.number)
    .u8(2) // generating process: forecast
    .u8(0xff)
    .u8(0xff)
    .u16(0)
    .u8(0)
    .u8(1) // unit of time: hour
    .u32(accumulated ? 0 : f.step);
  fixedSurface(w, f);
  if (accumulated) {
    const end = addHours(f.date, f.time, f.step);
    w.u16(end.getUTCFullYear())
      .u8(end.getUTCMonth() + 1)
      .u8(end.getUTCDate())
      .u8(end.getUTCHours())
      .u8(end.getUTCMinutes())
      .u8(0)
      .u8(1)
      .u32(0) // one time range, no missing values
      .u8(1) // statistical process: accumulation
      .u8(2) // successive times, same reference time
      .u8(1)
      .u32(f.step) // unit hour, length of the range
      .u8(0xff)
      .u32(0); // no increment
  }
  return w.done();
}

/** Simple packing: Y = (R + X * 2^E) / 10^D with 16-bit X. */
function pack(
  values: Float64Array,
  decimals: number,
): { reference: number; binaryScale: number; data: Buffer } {
  const factor = 10 ** decimals;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    const s = v * factor;
    if (s < min) min = s;
    if (s > max) max = s;
  }
  if (values.length === 0) min = max = 0;
  const reference = Math.fround(min);
  const range = max - reference;
  const maxPacked = 2 ** BITS_PER_VALUE - 1;
  const binaryScale = range > 0 ? Math.ceil(Math.log2(range / maxPacked)) : 0;
  const step = 2 ** binaryScale;
  const data = Buffer.alloc(values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const x = Math.round((values[i]! * factor - reference) / step);
    data.writeUInt16BE(Math.min(maxPacked, Math.max(0, x)), i * 2);
  }
  return { reference, binaryScale, data };
}

/** Encode one field as a complete GRIB2 message. */
export function encodeGrib2(f: GribField): Buffer {
  const n = f.grid.ni * f.grid.nj;
  if (f.values.length !== n) throw new Error(`expected ${n} values, got ${f.values.length}`);
  const packed = pack(f.values, f.param.decimals);
  const s5 = new ByteWriter(21)
    .u32(21)
    .u8(5)
    .u32(n)
    .u16(0)
    .f32(packed.reference)
    .s16(packed.binaryScale)
    .s16(f.param.decimals)
    .u8(BITS_PER_VALUE)
    .u8(0)
    .done();
  const s6 = new ByteWriter(6).u32(6).u8(6).u8(255).done();
  const s7 = new ByteWriter(5 + packed.data.length)
    .u32(5 + packed.data.length)
    .u8(7)
    .bytes(packed.data)
    .done();
  const body = [section1(f), section3(f.grid), section4(f), s5, s6, s7];
  const total = 16 + body.reduce((sum, b) => sum + b.length, 0) + 4;
  const s0 = new ByteWriter(16).ascii("GRIB").u16(0).u8(f.param.discipline).u8(2).u64(total).done();
  return Buffer.concat([s0, ...body, Buffer.from("7777", "latin1")], total);
}
