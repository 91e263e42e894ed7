// Torch-facing launchers of the recon CUDA kernels (schemas in csrc/recon.cpp): argument checks,
// the sampler's gap table, allocation and dtype dispatch, then the kernels of
// kernels/recon_kernels.cu (same counter-based draws as the CPU kernel; fp32 accumulation for
// fp16/bf16, fp64 for fp64). Needs torch's own headers and the CUDA runtime only: the current
// stream from c10/cuda/CUDAStream.h, the SM count from cudaDeviceGetAttribute (not
// ATen/cuda/CUDAContext.h, which pulls in cuBLAS, cuSPARSE and cuSOLVER headers).
// Per-operator ATen headers (not ATen/ATen.h) keep this file quick to compile.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eq.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../csrc/recon.h"
#include "recon_kernels.cuh"

namespace deepclust {
namespace {

// torch's storage types -> the CUDA types the kernels are instantiated for (same layout).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
static_assert(sizeof(c10::Half) == sizeof(__half) && sizeof(c10::BFloat16) == sizeof(__nv_bfloat16),
              "torch's and CUDA's 16-bit floats must share a layout");

int sm_count(const at::Device& device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device.index()));
  return n;
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
    auto keys = src.mul(nm1).add(dst).sub(at::gt(dst, src).to(at::kLong));
    keys = at::where(at::eq(src, dst), at::scalar_tensor(INT64_MAX, keys.options()), keys);
    keys = std::get<0>(at::sort(keys));
    keys = std::get<0>(at::unique_consecutive(keys));
    const int64_t n_keys = keys.numel();
    if (n_keys > 0 && keys.select(0, n_keys - 1).item<int64_t>() == INT64_MAX) {
      keys = keys.slice(0, 0, n_keys - 1);
    }
    gaps = keys.sub(at::arange(keys.numel(), keys.options())).contiguous();
  }
  const int64_t m = gaps.numel();
  const int64_t non_edges = num_nodes < 2 ? 0 : num_nodes * (num_nodes - 1) - m;
  TORCH_CHECK_VALUE(non_edges > 0, "no negative pair exists: every ordered pair (u, v), u != v, of the ",
              num_nodes, " nodes is an edge (complete graph)");

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  int64_t* ou = out.data_ptr<int64_t>();
  C10_CUDA_CHECK(cuda::launch_negative_sampling(gaps.data_ptr<int64_t>(), m, num_nodes, non_edges,
                                                static_cast<uint64_t>(seed), num_neg_samples, ou,
                                                ou + num_neg_samples, sm_count(out.device()), stream));
  return out;
}

// loss_inputs (csrc/recon.cpp) for the CUDA kernels: the same checks, on CUDA tensors.
LossInputs loss_inputs_cuda(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg) {
  LossInputs in = loss_inputs(z, pos, neg);
  TORCH_CHECK(in.z.is_cuda(), "z must be a CUDA tensor here");
  return in;
}

at::Tensor recon_loss_cuda(const at::Tensor& z_in, const at::Tensor& pos_in,
                           const at::Tensor& neg_in) {
  const LossInputs in = loss_inputs_cuda(z_in, pos_in, neg_in);
  const c10::cuda::CUDAGuard guard(in.z.device());
  const at::Tensor &z = in.z, &pos = in.pos, &neg = in.neg;
  const int64_t N = in.N, d = in.d, Ep = in.Ep, En = in.En;
  auto sums = at::zeros({2}, z.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = sm_count(z.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_cuda", [&] {
    using cuda_t = typename CudaType<scalar_t>::type;
    const cuda_t* zp = reinterpret_cast<const cuda_t*>(z.data_ptr<scalar_t>());
    const int64_t* ps = pos.data_ptr<int64_t>();
    const int64_t* ns = neg.data_ptr<int64_t>();
    double* sp = sums.data_ptr<double>();
    C10_CUDA_CHECK(cuda::launch_recon_fwd<cuda_t>(zp, N, d, ps, ps + Ep, Ep, true, sp, sms, stream));
    C10_CUDA_CHECK(cuda::launch_recon_fwd<cuda_t>(zp, N, d, ns, ns + En, En, false, sp + 1, sms, stream));
  });
  auto loss = sums.select(0, 0).div(static_cast<double>(Ep)).add(sums.select(0, 1).div(static_cast<double>(En)));
  return loss.to(z.scalar_type());
}

at::Tensor recon_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& z_in,
                                    const at::Tensor& pos_in, const at::Tensor& neg_in) {
  const LossInputs in = loss_inputs_cuda(z_in, pos_in, neg_in);
  TORCH_CHECK_VALUE(grad.numel() == 1, "grad must hold one element, got shape ", grad.sizes());
  TORCH_CHECK(grad.device() == z_in.device(), "grad must be on the device of z");
  const c10::cuda::CUDAGuard guard(in.z.device());
  const at::Tensor &z = in.z, &pos = in.pos, &neg = in.neg;
  const int64_t N = in.N, d = in.d, Ep = in.Ep, En = in.En;
  const auto acc_type = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto dz_acc = at::zeros({N, d}, z.options().dtype(acc_type));
  auto g = grad.reshape({1}).to(acc_type).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = sm_count(z.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_backward_cuda", [&] {
    using cuda_t = typename CudaType<scalar_t>::type;
    using acc_t = typename AccOf<cuda_t>::type;
    const cuda_t* zp = reinterpret_cast<const cuda_t*>(z.data_ptr<scalar_t>());
    const int64_t* ps = pos.data_ptr<int64_t>();
    const int64_t* ns = neg.data_ptr<int64_t>();
    const acc_t* gp = g.data_ptr<acc_t>();
    acc_t* dzp = dz_acc.data_ptr<acc_t>();
    C10_CUDA_CHECK(cuda::launch_recon_bwd<cuda_t>(zp, N, d, ps, ps + Ep, Ep, true, gp,
                                                  acc_t(1.0 / static_cast<double>(Ep)), dzp, sms, stream));
    C10_CUDA_CHECK(cuda::launch_recon_bwd<cuda_t>(zp, N, d, ns, ns + En, En, false, gp,
                                                  acc_t(1.0 / static_cast<double>(En)), dzp, sms, stream));
  });
  return dz_acc.scalar_type() == z.scalar_type() ? dz_acc : dz_acc.to(z.scalar_type());
}

}  // namespace
}  // namespace deepclust

TORCH_LIBRARY_IMPL(deepclust, CUDA, m) {
  m.impl("negative_sampling", &deepclust::negative_sampling_cuda);
  m.impl("recon_loss", &deepclust::recon_loss_cuda);
  m.impl("recon_loss_backward", &deepclust::recon_loss_backward_cuda);
}
