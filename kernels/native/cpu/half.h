// IEEE 754 half <-> float by bit manipulation, identical to src/half.ts, so the host
// (JS) and the addon round the same way and no CPU feature (F16C) is required.
#pragma once

#include <cstdint>
#include <cstring>

namespace medcluster {

inline float halfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    const float f = static_cast<float>(mant) * (1.0f / 16777216.0f);
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// Round to nearest, ties to even.
inline uint16_t floatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;  // explicit leading bit, then shift into the subnormal range
    const int shift = 14 - e;
    const uint32_t half = 1u << (shift - 1);
    const uint32_t rest = mant & ((1u << shift) - 1);
    uint32_t r = mant >> shift;
    if (rest > half || (rest == half && (r & 1u))) r += 1;
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t rest = mant & 0x1fffu;
  uint32_t r = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) r += 1;  // a carry into the exponent is still right
  return static_cast<uint16_t>(sign | r);
}

inline void halfToFloatRow(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = halfToFloat(src[i]);
}

}  // namespace medcluster
