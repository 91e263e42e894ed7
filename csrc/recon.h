// Declarations of the recon ops (CPU implementations and the input checks that the CUDA
// implementations share). The operators themselves are reached through the dispatcher as
// torch.ops.deepclust.{negative_sampling, recon_loss_fwd, recon_loss_bwd}.
#pragma once

#include <ATen/core/Tensor.h>

namespace deepclust {

void check_edge_index(const at::Tensor& e, const char* name);
void check_sampler_args(const at::Tensor& edge_index, int64_t num_nodes, int64_t num_neg_samples);
void check_loss_args(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg);

at::Tensor negative_sampling_cpu(const at::Tensor& edge_index, int64_t num_nodes,
                                 int64_t num_neg_samples, int64_t seed);
at::Tensor recon_loss_fwd_cpu(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg);
at::Tensor recon_loss_bwd_cpu(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& pos,
                              const at::Tensor& neg);

}  // namespace deepclust
