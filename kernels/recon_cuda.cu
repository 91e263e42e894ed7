// CUDA kernels of the recon ops (schemas in csrc/recon.cpp): the rejection-free negative
// sampler (same counter-based draws as the CPU kernel, so one seed gives the same samples on
// both devices) and the fused reconstruction loss, one warp per edge, scores recomputed in the
// backward pass and scattered into dz with atomicAdd (fp32 accumulation for fp16/bf16 inputs,
// fp64 for fp64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../csrc/recon.h"
#include "../csrc/recon_common.h"

namespace deepclust {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

int64_t num_blocks(int64_t work_items, int64_t items_per_block) {
  const int64_t want = (work_items + items_per_block - 1) / items_per_block;
  const int64_t cap =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return std::max<int64_t>(1, std::min(want, cap));
}

template <typename acc_t>
struct CudaAcc {
  using type = float;
};
template <>
struct CudaAcc<double> {
  using type = double;
};

// ------------------------------------------------------------------------------ sampler
__global__ void negative_sampling_kernel(const int64_t* __restrict__ gaps, int64_t n_gaps,
                                         int64_t num_nodes, int64_t non_edges, uint64_t seed,
                                         int64_t num_samples, int64_t* __restrict__ out_u,
                                         int64_t* __restrict__ out_v) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < num_samples;
       i += stride) {
    draw_negative(seed, i, gaps, n_gaps, num_nodes, non_edges, out_u + i, out_v + i);
  }
}

at::Tensor negative_sampling_cuda(const at::Tensor& edge_index, int64_t num_nodes,
                                  int64_t num_neg_samples, int64_t seed) {
  check_sampler_args(edge_index, num_nodes, num_neg_samples);
  TORCH_CHECK(edge_index.is_cuda(), "edge_index must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(edge_index.device());
  auto out = at::empty({2, num_neg_samples}, edge_index.options());
  if (num_neg_samples == 0) return out;

  const int64_t E = edge_index.size(1);
  at::Tensor gaps = at::empty({0}, edge_index.options());
  if (E > 0) {
    auto mm = at::aminmax(edge_index);
    const int64_t lo = std::get<0>(mm).item<int64_t>();
    const int64_t hi = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < num_nodes, "edge_index has node indices in [", lo, ", ", hi,
                "], outside [0, ", num_nodes, ")");
    auto src = edge_index.select(0, 0);
    auto dst = edge_index.select(0, 1);
    const int64_t nm1 = std::max<int64_t>(num_nodes - 1, 1);
    auto keys = src * nm1 + dst - at::gt(dst, src).to(at::kLong);
    keys = at::where(at::eq(src, dst), at::scalar_tensor(INT64_MAX, keys.options()), keys);
    keys = std::get<0>(at::sort(keys));
    keys = std::get<0>(at::unique_consecutive(keys));
    const int64_t n_keys = keys.numel();
    if (n_keys > 0 && keys.select(0, n_keys - 1).item<int64_t>() == INT64_MAX) {
      keys = keys.slice(0, 0, n_keys - 1);
    }
    gaps = (keys - at::arange(keys.numel(), keys.options())).contiguous();
  }
  const int64_t m = gaps.numel();
  const int64_t non_edges = num_nodes < 2 ? 0 : num_nodes * (num_nodes - 1) - m;
  TORCH_CHECK_VALUE(non_edges > 0, "no negative pair exists: every ordered pair (u, v), u != v, of the ",
              num_nodes, " nodes is an edge (complete graph)");

  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks = num_blocks(num_neg_samples, kThreads);
  int64_t* ou = out.data_ptr<int64_t>();
  negative_sampling_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      gaps.data_ptr<int64_t>(), m, num_nodes, non_edges, static_cast<uint64_t>(seed),
      num_neg_samples, ou, ou + num_neg_samples);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ------------------------------------------------------------------------------ loss
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t warp_dot(const scalar_t* __restrict__ zu,
                                          const scalar_t* __restrict__ zv, int64_t d, int lane) {
  acc_t s = acc_t(0);
  for (int64_t j = lane; j < d; j += 32) {
    s += static_cast<acc_t>(zu[j]) * static_cast<acc_t>(zv[j]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;  // every lane holds the full sum
}

// sums[0] += sum_e softplus(sign * z_u . z_v), sign = -1 for positive edges, +1 for negatives.
template <typename scalar_t, typename acc_t>
__global__ void recon_fwd_kernel(const scalar_t* __restrict__ z, int64_t num_nodes, int64_t d,
                                 const int64_t* __restrict__ src, const int64_t* __restrict__ dst,
                                 int64_t E, bool positive, double* __restrict__ sum) {
  __shared__ double block_part[kWarpsPerBlock];
  const int lane = threadIdx.x & 31;
  const int warp_in_block = threadIdx.x >> 5;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t n_warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  double local = 0.0;
  for (int64_t e = warp; e < E; e += n_warps) {
    const int64_t u = src[e], v = dst[e];
    CUDA_KERNEL_ASSERT(u >= 0 && u < num_nodes && v >= 0 && v < num_nodes);
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
__global__ void recon_bwd_kernel(const scalar_t* __restrict__ z, int64_t num_nodes, int64_t d,
                                 const int64_t* __restrict__ src, const int64_t* __restrict__ dst,
                                 int64_t E, bool positive, const acc_t* __restrict__ grad,
                                 acc_t inv_count, acc_t* __restrict__ dz) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t n_warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const acc_t g = grad[0] * inv_count;
  for (int64_t e = warp; e < E; e += n_warps) {
    const int64_t u = src[e], v = dst[e];
    CUDA_KERNEL_ASSERT(u >= 0 && u < num_nodes && v >= 0 && v < num_nodes);
    const scalar_t* zu = z + u * d;
    const scalar_t* zv = z + v * d;
    const acc_t s = warp_dot<scalar_t, acc_t>(zu, zv, d, lane);
    const acc_t c = positive ? -sigmoid<acc_t>(-s) * g : sigmoid<acc_t>(s) * g;
    for (int64_t j = lane; j < d; j += 32) {
      atomicAdd(dz + u * d + j, c * static_cast<acc_t>(zv[j]));
      atomicAdd(dz + v * d + j, c * static_cast<acc_t>(zu[j]));
    }
  }
}

at::Tensor recon_loss_fwd_cuda(const at::Tensor& z_in, const at::Tensor& pos_in,
                               const at::Tensor& neg_in) {
  check_loss_args(z_in, pos_in, neg_in);
  TORCH_CHECK(z_in.is_cuda(), "z must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(z_in.device());
  auto z = z_in.contiguous();
  auto pos = pos_in.contiguous();
  auto neg = neg_in.contiguous();
  const int64_t N = z.size(0), d = z.size(1);
  const int64_t Ep = pos.size(1), En = neg.size(1);
  auto sums = at::zeros({2}, z.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_fwd_cuda", [&] {
    using acc_t = typename CudaAcc<scalar_t>::type;
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ps = pos.data_ptr<int64_t>();
    const int64_t* ns = neg.data_ptr<int64_t>();
    double* sp = sums.data_ptr<double>();
    recon_fwd_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(num_blocks(Ep, kWarpsPerBlock)), kThreads, 0, stream>>>(
            zp, N, d, ps, ps + Ep, Ep, true, sp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    recon_fwd_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(num_blocks(En, kWarpsPerBlock)), kThreads, 0, stream>>>(
            zp, N, d, ns, ns + En, En, false, sp + 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto loss = sums.select(0, 0) / static_cast<double>(Ep) + sums.select(0, 1) / static_cast<double>(En);
  return loss.to(z.scalar_type());
}

at::Tensor recon_loss_bwd_cuda(const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& pos_in,
                               const at::Tensor& neg_in) {
  check_loss_args(z_in, pos_in, neg_in);
  TORCH_CHECK(z_in.is_cuda(), "z must be a CUDA tensor here");
  TORCH_CHECK_VALUE(grad.numel() == 1, "grad must hold one element, got shape ", grad.sizes());
  TORCH_CHECK(grad.device() == z_in.device(), "grad must be on the device of z");
  const c10::cuda::CUDAGuard guard(z_in.device());
  auto z = z_in.contiguous();
  auto pos = pos_in.contiguous();
  auto neg = neg_in.contiguous();
  const int64_t N = z.size(0), d = z.size(1);
  const int64_t Ep = pos.size(1), En = neg.size(1);
  const auto acc_type = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto dz_acc = at::zeros({N, d}, z.options().dtype(acc_type));
  auto g = grad.reshape({1}).to(acc_type).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_bwd_cuda", [&] {
    using acc_t = typename CudaAcc<scalar_t>::type;
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const int64_t* ps = pos.data_ptr<int64_t>();
    const int64_t* ns = neg.data_ptr<int64_t>();
    const acc_t* gp = g.data_ptr<acc_t>();
    acc_t* dzp = dz_acc.data_ptr<acc_t>();
    recon_bwd_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(num_blocks(Ep, kWarpsPerBlock)), kThreads, 0, stream>>>(
            zp, N, d, ps, ps + Ep, Ep, true, gp, acc_t(1.0 / static_cast<double>(Ep)), dzp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    recon_bwd_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(num_blocks(En, kWarpsPerBlock)), kThreads, 0, stream>>>(
            zp, N, d, ns, ns + En, En, false, gp, acc_t(1.0 / static_cast<double>(En)), dzp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dz_acc.scalar_type() == z.scalar_type() ? dz_acc : dz_acc.to(z.scalar_type());
}

}  // namespace
}  // namespace deepclust

TORCH_LIBRARY_IMPL(deepclust, CUDA, m) {
  m.impl("negative_sampling", &deepclust::negative_sampling_cuda);
  m.impl("recon_loss_fwd", &deepclust::recon_loss_fwd_cuda);
  m.impl("recon_loss_bwd", &deepclust::recon_loss_bwd_cuda);
}
