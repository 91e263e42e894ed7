// Host interface of the recon device kernels (kernels/recon_kernels.cu): raw pointers, a stream
// and the SM count in, a cudaError_t out. It needs only the CUDA runtime API, so the kernels
// compile with plain nvcc (no torch headers); kernels/recon_cuda.cu wraps them for torch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../csrc/recon_common.h"  // AccOf, shared with the CPU kernels

namespace deepclust {
namespace cuda {

// Threads per block of every recon kernel (also its __launch_bounds__).
constexpr int kThreads = 256;

// out_u[i], out_v[i] = draw_negative(seed, i, ...) for i < num_samples (csrc/recon_common.h).
cudaError_t launch_negative_sampling(const int64_t* gaps, int64_t n_gaps, int64_t num_nodes,
                                     int64_t non_edges, uint64_t seed, int64_t num_samples,
                                     int64_t* out_u, int64_t* out_v, int sm_count,
                                     cudaStream_t stream);

// sum[0] += sum_e softplus(sign * z_u . z_v) over the E edges (src[e], dst[e]), sign = -1 if
// `positive`. scalar_t is float, double, __half or __nv_bfloat16.
template <typename scalar_t>
cudaError_t launch_recon_fwd(const scalar_t* z, int64_t num_nodes, int64_t d, const int64_t* src,
                             const int64_t* dst, int64_t E, bool positive, double* sum,
                             int sm_count, cudaStream_t stream);

// dz[u] += c_e z_v, dz[v] += c_e z_u over the E edges, c_e = -sigmoid(-s) g / E (positive) or
// sigmoid(s) g / E (negative), g = grad[0] * inv_count, dz in the accumulation type.
template <typename scalar_t>
cudaError_t launch_recon_bwd(const scalar_t* z, int64_t num_nodes, int64_t d, const int64_t* src,
                             const int64_t* dst, int64_t E, bool positive,
                             const typename AccOf<scalar_t>::type* grad,
                             typename AccOf<scalar_t>::type inv_count,
                             typename AccOf<scalar_t>::type* dz, int sm_count, cudaStream_t stream);

}  // namespace cuda
}  // namespace deepclust
