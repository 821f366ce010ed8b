// Half-precision storage on the host: the bits the GPU kernels read and write (codegen/storage.ts)
// for f16 and bf16 tensors. Conversions start from the f32 value, as the kernels' do, and round
// to nearest even; overflow gives ±inf and NaN stays NaN.
import type { DType } from './types.ts';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE binary16 bits of x (x first rounded to f32). */
export function f16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112; // rebias 127 → 15
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // A subnormal half: m·2⁻²⁴ with m = (1.mant)·2^(e−1)·2¹⁰, rounded.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent, up to inf: still the right rounding.
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

export function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** bfloat16 bits of x: the top half of its f32, rounded to nearest even. */
export function bf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x40;
  return Math.floor((b + 0x7fff + ((b >>> 16) & 1)) / 0x10000) & 0xffff;
}

export function bf16Value(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

export function isHalf(dtype: DType | string): dtype is 'f16' | 'bf16' {
  return dtype === 'f16' || dtype === 'bf16';
}

/** x as stored in `dtype` and read back (f32 and i32 as the GPU stores them). */
export function roundTo(dtype: DType, x: number): number {
  if (dtype === 'f16') return f16Value(f16Bits(x));
  if (dtype === 'bf16') return bf16Value(bf16Bits(x));
  if (dtype === 'i32') return Math.trunc(x);
  return Math.fround(x);
}

/** The bytes of `data` in half storage, padded to a whole number of 4-byte words. */
export function toHalf(dtype: 'f16' | 'bf16', data: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(Math.max(2, Math.ceil(data.length / 2) * 2));
  const bits = dtype === 'f16' ? f16Bits : bf16Bits;
  for (let i = 0; i < data.length; i++) out[i] = bits(data[i]);
  return out;
}

export function fromHalf(dtype: 'f16' | 'bf16', bits: Uint16Array, n = bits.length): Float32Array {
  const out = new Float32Array(n);
  const value = dtype === 'f16' ? f16Value : bf16Value;
  for (let i = 0; i < n; i++) out[i] = value(bits[i]);
  return out;
}

/** The bytes a GPU buffer of `dtype` holds for `data` (i32, f32, or half padded to whole words). */
export function toDevice(dtype: DType, data: ArrayLike<number>): Int32Array | Float32Array | Uint16Array {
  return isHalf(dtype) ? toHalf(dtype, data) : dtype === 'i32' ? Int32Array.from(data) : Float32Array.from(data);
}

/** Bytes to read back for n values stored as `dtype` (whole words, at least one). */
export function deviceBytes(dtype: DType, n: number): number {
  return Math.max(4, Math.ceil((n * (isHalf(dtype) ? 2 : 4)) / 4) * 4);
}

/** n values of `dtype` from a GPU buffer's bytes (half widened to f32). */
export function fromDevice(dtype: DType, raw: ArrayBuffer, n: number): Int32Array | Float32Array {
  if (isHalf(dtype)) return fromHalf(dtype, new Uint16Array(raw), n);
  return dtype === 'i32' ? new Int32Array(raw, 0, n) : new Float32Array(raw, 0, n);
}
