// Hopper's warpgroup MMA (wgmma, sm_90a) as the AWQ wgmma kernel uses it: A (64 x 16 f16) from
// registers, B (16 x N f16) from shared memory through a matrix descriptor, D (64 x N) fp32 in
// registers. The four warps of a warpgroup issue each instruction together; warp w of the group
// holds rows 16w .. 16w + 15 of A and D in the layout of mma.m16n8k16's A and C fragments
// (mma.cuh), repeated for each 8 columns of D.
//
// The instructions are asynchronous: wgmmaFence() before the first one whose A or D registers were
// written by ordinary instructions, wgmmaCommit() to close a group, wgmmaWait<n>() until at most n
// groups are in flight (then their registers, and the shared memory B was read from, are free).
// Compiled for sm_90a only (the arch-specific target); elsewhere they trap, and launchers pick
// them only on a compute capability 9.0 device.
#pragma once

#include <cstdint>

namespace medcluster {
namespace cuda {

__device__ __forceinline__ void wgmmaFence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmmaCommit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wgmmaWait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}

// A warpgroup's registers per thread moved to `R` (a multiple of 8, 24..256): every warp of the
// warpgroup executes it. A producer warpgroup gives registers back, its consumers take them, so
// a block's consumers can hold more than the launch's per-thread share.
template <int R> __device__ __forceinline__ void warpgroupRegistersDown() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
#endif
}
template <int R> __device__ __forceinline__ void warpgroupRegistersUp() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
#endif
}

// The descriptor of a K-major B operand in the 128-byte swizzle (what a 2-D tensor copy with
// CU_TENSOR_MAP_SWIZZLE_128B writes): rows of 128 bytes (64 f16 of k), the swizzle's 8-row atoms
// 1024 bytes apart (the stride byte offset), the leading byte offset unused (one k step of 16
// elements stays inside a 128-byte row). `atom` is 1024-byte aligned; k step j (16 elements, 32
// bytes) of its rows starts `32 j` bytes in, which the swizzle applies to like any address.
// (Host-callable: kernels/gpu/layout-test.cu reads B back through it.)
// Its high word is the same for every operand (bits 32-45: the stride byte offset, 1024 / 16; bits
// 62-63: the 128-byte swizzle), and adding bytes to its low word cannot carry into it (below): the
// MMAs take the low word alone, one 32-bit add per instruction instead of 64-bit adds and moves.
constexpr uint32_t kWgmmaDescHi = (1024u >> 4) | (1u << 30);
__host__ __device__ __forceinline__ uint64_t wgmmaDescK128(uint32_t atomSmemAddr, int kStep) {
  const uint64_t start = ((atomSmemAddr + 32u * static_cast<uint32_t>(kStep)) & 0x3FFFFu) >> 4;
  return start | (uint64_t{1} << 16) | (uint64_t{kWgmmaDescHi} << 32);
}

// The same descriptor for an operand `bytes` further on: the start address field (bits 0-13,
// address / 16) advanced, which cannot carry into the next field while the address stays below
// 2^18 (every shared-memory address does). wgmmaDescK128(a, 0) + wgmmaDescAdvance(b) is
// wgmmaDescK128(a + b, 0), without the address arithmetic per instruction.
__host__ __device__ constexpr uint64_t wgmmaDescAdvance(int bytes) { return static_cast<uint64_t>(bytes) >> 4; }

// D (64 x N, fp32) += A (64 x 16, f16 registers) B (16 x N, f16 in shared memory, K-major), B's
// descriptor given by its low word (the high word is kWgmmaDescHi).
template <int N> __device__ __forceinline__ void wgmmaRegA(float (&d)[N / 2], const uint32_t (&a)[4], uint32_t descLo);

template <> __device__ __forceinline__ void wgmmaRegA<8>(float (&d)[4], const uint32_t (&a)[4], uint32_t descLo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{ .reg .pred acc; .reg .b64 desc; mov.b64 desc, {%8, %9}; setp.ne.b32 acc, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {"
      "%0,%1,%2,%3"
      "}, {%4,%5,%6,%7}, desc, acc, 1, 1, 0; }"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(descLo), "r"(kWgmmaDescHi), "r"(1));
#else
  __trap();
#endif
}
template <> __device__ __forceinline__ void wgmmaRegA<16>(float (&d)[8], const uint32_t (&a)[4], uint32_t descLo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{ .reg .pred acc; .reg .b64 desc; mov.b64 desc, {%12, %13}; setp.ne.b32 acc, %14, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7"
      "}, {%8,%9,%10,%11}, desc, acc, 1, 1, 0; }"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(descLo), "r"(kWgmmaDescHi), "r"(1));
#else
  __trap();
#endif
}
template <> __device__ __forceinline__ void wgmmaRegA<32>(float (&d)[16], const uint32_t (&a)[4], uint32_t descLo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{ .reg .pred acc; .reg .b64 desc; mov.b64 desc, {%20, %21}; setp.ne.b32 acc, %22, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
      "}, {%16,%17,%18,%19}, desc, acc, 1, 1, 0; }"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(descLo), "r"(kWgmmaDescHi), "r"(1));
#else
  __trap();
#endif
}
template <> __device__ __forceinline__ void wgmmaRegA<64>(float (&d)[32], const uint32_t (&a)[4], uint32_t descLo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{ .reg .pred acc; .reg .b64 desc; mov.b64 desc, {%36, %37}; setp.ne.b32 acc, %38, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
      "}, {%32,%33,%34,%35}, desc, acc, 1, 1, 0; }"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(descLo), "r"(kWgmmaDescHi), "r"(1));
#else
  __trap();
#endif
}
template <> __device__ __forceinline__ void wgmmaRegA<128>(float (&d)[64], const uint32_t (&a)[4], uint32_t descLo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{ .reg .pred acc; .reg .b64 desc; mov.b64 desc, {%68, %69}; setp.ne.b32 acc, %70, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
      "}, {%64,%65,%66,%67}, desc, acc, 1, 1, 0; }"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(descLo), "r"(kWgmmaDescHi), "r"(1));
#else
  __trap();
#endif
}

template <> __device__ __forceinline__ void wgmmaRegA<256>(float (&d)[128], const uint32_t (&a)[4], uint32_t descLo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{ .reg .pred acc; .reg .b64 desc; mov.b64 desc, {%132, %133}; setp.ne.b32 acc, %134, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"
      "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"
      "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"
      "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"
      "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
      "}, {%128,%129,%130,%131}, desc, acc, 1, 1, 0; }"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(descLo), "r"(kWgmmaDescHi), "r"(1));
#else
  __trap();
#endif
}
}  // namespace cuda
}  // namespace medcluster
