// CUDA kernels of the recon ops: the rejection-free negative sampler (the counter-based draws of
// csrc/recon_common.h, as the CPU kernel, so one seed gives the same samples on both devices) and
// the fused reconstruction loss, one warp per edge, scores recomputed in the backward pass and
// scattered into dz with atomicAdd (fp32 accumulation for fp16/bf16/fp32, fp64 for fp64).
// Needs only the CUDA runtime and cuda_fp16/cuda_bf16: no torch header, so plain nvcc compiles it
// (bench/nvcc_gate.py). The torch-facing launcher is kernels/recon_cuda.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
#include <cstdint>

#include "../csrc/recon_common.h"
#include "recon_kernels.cuh"

// Checked in release builds too, as torch's CUDA_KERNEL_ASSERT. A failed device assert ends the
// kernel; saying so (__builtin_unreachable) spares the registers that ptxas would otherwise keep
// alive across the call (with torch's macro the forward kernel spilled 4-8 bytes).
#define DC_KERNEL_ASSERT(cond)                                                     \
  if (__builtin_expect(!(cond), 0)) {                                              \
    __assert_fail(#cond, __FILE__, static_cast<unsigned int>(__LINE__), __func__); \
    __builtin_unreachable();                                                       \
  }

namespace deepclust {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

// Grid size: enough blocks for the work, at most 32 per SM (the kernels loop grid-stride).
unsigned int num_blocks(int64_t work_items, int64_t items_per_block, int sm_count) {
  const int64_t want = (work_items + items_per_block - 1) / items_per_block;
  const int64_t cap = static_cast<int64_t>(sm_count > 0 ? sm_count : 1) * 32;
  return static_cast<unsigned int>(want < 1 ? 1 : (want < cap ? want : cap));
}

// Storage type -> accumulation type, explicit so that torch's -D__CUDA_NO_HALF_CONVERSIONS__
// and -D__CUDA_NO_BFLOAT16_CONVERSIONS__ do not matter.
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(float x) {
  return static_cast<acc_t>(x);
}
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(double x) {
  return static_cast<acc_t>(x);
}
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(__half x) {
  return static_cast<acc_t>(__half2float(x));
}
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(__nv_bfloat16 x) {
  return static_cast<acc_t>(__bfloat162float(x));
}

// ------------------------------------------------------------------------------ sampler
__global__ void __launch_bounds__(kThreads)
    negative_sampling_kernel(const int64_t* __restrict__ gaps, int64_t n_gaps, int64_t num_nodes,
                             int64_t non_edges, uint64_t seed, int64_t num_samples,
                             int64_t* __restrict__ out_u, int64_t* __restrict__ out_v) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < num_samples;
       i += stride) {
    draw_negative(seed, i, gaps, n_gaps, num_nodes, non_edges, out_u + i, out_v + i);
  }
}

// ------------------------------------------------------------------------------ loss
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t warp_dot(const scalar_t* __restrict__ zu,
                                          const scalar_t* __restrict__ zv, int64_t d, int lane) {
  acc_t s = acc_t(0);
  for (int64_t j = lane; j < d; j += 32) {
    s += to_acc<acc_t>(zu[j]) * to_acc<acc_t>(zv[j]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;  // every lane holds the full sum
}

// sum[0] += sum_e softplus(sign * z_u . z_v), sign = -1 for positive edges, +1 for negatives.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    recon_fwd_kernel(const scalar_t* __restrict__ z, int64_t num_nodes, int64_t d,
                     const int64_t* __restrict__ src, const int64_t* __restrict__ dst, int64_t E,
                     bool positive, double* __restrict__ sum) {
  __shared__ double block_part[kWarpsPerBlock];
  const int lane = threadIdx.x & 31;
  const int warp_in_block = threadIdx.x >> 5;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t n_warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  double local = 0.0;
  for (int64_t e = warp; e < E; e += n_warps) {
    const int64_t u = src[e], v = dst[e];
    DC_KERNEL_ASSERT(u >= 0 && u < num_nodes && v >= 0 && v < num_nodes);
    const acc_t s = warp_dot<scalar_t, acc_t>(z + u * d, z + v * d, d, lane);
    if (lane == 0) local += static_cast<double>(softplus<acc_t>(positive ? -s : s));
  }
  if (lane == 0) block_part[warp_in_block] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) t += block_part[w];
    atomicAdd(sum, t);
  }
}

// dz[u] += c_e z_v, dz[v] += c_e z_u with c_e = -sigmoid(-s) g / E (pos) or sigmoid(s) g / E (neg).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    recon_bwd_kernel(const scalar_t* __restrict__ z, int64_t num_nodes, int64_t d,
                     const int64_t* __restrict__ src, const int64_t* __restrict__ dst, int64_t E,
                     bool positive, const acc_t* __restrict__ grad, acc_t inv_count,
                     acc_t* __restrict__ dz) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t n_warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const acc_t g = grad[0] * inv_count;
  for (int64_t e = warp; e < E; e += n_warps) {
    const int64_t u = src[e], v = dst[e];
    DC_KERNEL_ASSERT(u >= 0 && u < num_nodes && v >= 0 && v < num_nodes);
    const scalar_t* zu = z + u * d;
    const scalar_t* zv = z + v * d;
    const acc_t s = warp_dot<scalar_t, acc_t>(zu, zv, d, lane);
    const acc_t c = positive ? -sigmoid<acc_t>(-s) * g : sigmoid<acc_t>(s) * g;
    for (int64_t j = lane; j < d; j += 32) {
      atomicAdd(dz + u * d + j, c * to_acc<acc_t>(zv[j]));
      atomicAdd(dz + v * d + j, c * to_acc<acc_t>(zu[j]));
    }
  }
}

}  // namespace

// ------------------------------------------------------------------------------ launchers
cudaError_t launch_negative_sampling(const int64_t* gaps, int64_t n_gaps, int64_t num_nodes,
                                     int64_t non_edges, uint64_t seed, int64_t num_samples,
                                     int64_t* out_u, int64_t* out_v, int sm_count,
                                     cudaStream_t stream) {
  negative_sampling_kernel<<<num_blocks(num_samples, kThreads, sm_count), kThreads, 0, stream>>>(
      gaps, n_gaps, num_nodes, non_edges, seed, num_samples, out_u, out_v);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_recon_fwd(const scalar_t* z, int64_t num_nodes, int64_t d, const int64_t* src,
                             const int64_t* dst, int64_t E, bool positive, double* sum,
                             int sm_count, cudaStream_t stream) {
  using acc_t = typename AccOf<scalar_t>::type;
  recon_fwd_kernel<scalar_t, acc_t>
      <<<num_blocks(E, kWarpsPerBlock, sm_count), kThreads, 0, stream>>>(z, num_nodes, d, src,
                                                                         dst, E, positive, sum);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_recon_bwd(const scalar_t* z, int64_t num_nodes, int64_t d, const int64_t* src,
                             const int64_t* dst, int64_t E, bool positive,
                             const typename AccOf<scalar_t>::type* grad,
                             typename AccOf<scalar_t>::type inv_count,
                             typename AccOf<scalar_t>::type* dz, int sm_count, cudaStream_t stream) {
  using acc_t = typename AccOf<scalar_t>::type;
  recon_bwd_kernel<scalar_t, acc_t><<<num_blocks(E, kWarpsPerBlock, sm_count), kThreads, 0, stream>>>(
      z, num_nodes, d, src, dst, E, positive, grad, inv_count, dz);
  return cudaGetLastError();
}

#define DC_INSTANTIATE(T)                                                                          \
  template cudaError_t launch_recon_fwd<T>(const T*, int64_t, int64_t, const int64_t*,            \
                                           const int64_t*, int64_t, bool, double*, int,            \
                                           cudaStream_t);                                          \
  template cudaError_t launch_recon_bwd<T>(const T*, int64_t, int64_t, const int64_t*,            \
                                           const int64_t*, int64_t, bool,                          \
                                           const typename AccOf<T>::type*,                         \
                                           typename AccOf<T>::type, typename AccOf<T>::type*, int, \
                                           cudaStream_t);
DC_INSTANTIATE(float)
DC_INSTANTIATE(double)
DC_INSTANTIATE(__half)
DC_INSTANTIATE(__nv_bfloat16)
#undef DC_INSTANTIATE

}  // namespace cuda
}  // namespace deepclust
