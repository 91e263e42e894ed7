// Declarations of the recon ops (CPU implementations and the input checks that the CUDA
// implementations share). The operators themselves are reached through the dispatcher as
// torch.ops.deepclust.{negative_sampling, recon_loss, recon_loss_backward}.
#pragma once

#include <ATen/core/Tensor.h>

namespace deepclust {

void check_edge_index(const at::Tensor& e, const char* name);
void check_sampler_args(const at::Tensor& edge_index, int64_t num_nodes, int64_t num_neg_samples);
void check_loss_args(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg);

// The loss operators' inputs after check_loss_args: contiguous z (N, d) and edge lists (2, Ep),
// (2, En). The node-index range is not checked here (the CPU kernels add that check).
struct LossInputs {
  at::Tensor z, pos, neg;
  int64_t N, d, Ep, En;
};
LossInputs loss_inputs(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg);

at::Tensor negative_sampling_cpu(const at::Tensor& edge_index, int64_t num_nodes,
                                 int64_t num_neg_samples, int64_t seed);
at::Tensor recon_loss_cpu(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg);
at::Tensor recon_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& pos,
                                   const at::Tensor& neg);

}  // namespace deepclust
