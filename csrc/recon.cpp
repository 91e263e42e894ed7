// Negative sampling and the fused reconstruction loss of graph autoencoders (DAEGC, GAE):
// operator schemas (TORCH_LIBRARY) and the CPU kernels. The CUDA kernels are in
// kernels/recon_cuda.cu. Autograd and fake-tensor rules are registered in
// deepclust/ops/recon.py.
//
//   negative_sampling(edge_index, num_nodes, num_neg_samples, seed) -> (2, S) int64
//   recon_loss_fwd(z, pos, neg) -> 0-d loss
//       mean_e softplus(-z_u . z_v) over pos + mean_e softplus(z_u . z_v) over neg
//   recon_loss_bwd(grad, z, pos, neg) -> dz (N, d); recomputes the scores (nothing is saved
//       besides z and the edge lists).
#include "recon.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#if defined(_OPENMP) && defined(__GNUC__) && !defined(__clang__)
#include <parallel/algorithm>
#define DC_PARALLEL_SORT 1
#endif

#include "recon_common.h"

namespace deepclust {

// Largest N for which N * (N - 1) fits in int64.
constexpr int64_t kMaxNodes = 3037000499LL;

void check_edge_index(const at::Tensor& e, const char* name) {
  TORCH_CHECK_TYPE(e.scalar_type() == at::kLong, name, " must be an int64 tensor, got ", e.scalar_type());
  TORCH_CHECK_VALUE(e.dim() == 2 && e.size(0) == 2, name, " must have shape (2, E), got ", e.sizes());
}

void check_index_range_cpu(const at::Tensor& e, int64_t num_nodes, const char* name) {
  if (e.numel() == 0) return;
  auto mm = at::aminmax(e);
  const int64_t lo = std::get<0>(mm).item<int64_t>();
  const int64_t hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < num_nodes, name, " has node indices in [", lo, ", ", hi,
              "], outside [0, ", num_nodes, ")");
}

void check_sampler_args(const at::Tensor& edge_index, int64_t num_nodes, int64_t num_neg_samples) {
  check_edge_index(edge_index, "edge_index");
  TORCH_CHECK_VALUE(num_nodes >= 0 && num_nodes <= kMaxNodes, "num_nodes must be in [0, ", kMaxNodes,
              "], got ", num_nodes);
  TORCH_CHECK_VALUE(num_neg_samples >= 0, "num_neg_samples must be >= 0, got ", num_neg_samples);
}

void check_loss_args(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg) {
  TORCH_CHECK_VALUE(z.dim() == 2, "z must be 2-D (N, d), got shape ", z.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(z.scalar_type()), "z must be floating point, got ", z.scalar_type());
  check_edge_index(pos, "pos_edge_index");
  check_edge_index(neg, "neg_edge_index");
  TORCH_CHECK_VALUE(pos.size(1) > 0, "pos_edge_index must hold at least one edge");
  TORCH_CHECK_VALUE(neg.size(1) > 0, "neg_edge_index must hold at least one edge");
  TORCH_CHECK_VALUE(pos.device() == z.device() && neg.device() == z.device(),
              "z, pos_edge_index and neg_edge_index must be on one device, got ", z.device(), ", ",
              pos.device(), ", ", neg.device());
}

// ------------------------------------------------------------------------------ sampler (CPU)
// Sorted unique keys u * (N - 1) + v' of the non-self-loop edges, turned into gaps[e] =
// keys[e] - e (see draw_negative). Returns the number of non-edges N (N - 1) - #unique edges.
static int64_t build_gaps_cpu(const at::Tensor& edge_index, int64_t n, std::vector<int64_t>& gaps) {
  const int64_t E = edge_index.size(1);
  auto ei = edge_index.contiguous();
  const int64_t* src = ei.data_ptr<int64_t>();
  const int64_t* dst = src + E;
  gaps.resize(E);
  int64_t* k = gaps.data();
  at::parallel_for(0, E, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t u = src[i], v = dst[i];
      // self-loops get a sentinel that sorts last and is dropped below
      k[i] = (u == v) ? INT64_MAX : u * (n - 1) + v - (v > u ? 1 : 0);
    }
  });
#ifdef DC_PARALLEL_SORT
  if (E > (1 << 16) && at::get_num_threads() > 1) {
    __gnu_parallel::sort(gaps.begin(), gaps.end());
  } else {
    std::sort(gaps.begin(), gaps.end());
  }
#else
  std::sort(gaps.begin(), gaps.end());
#endif
  auto last = std::unique(gaps.begin(), gaps.end());
  if (last != gaps.begin() && *(last - 1) == INT64_MAX) --last;
  gaps.erase(last, gaps.end());
  const int64_t m = static_cast<int64_t>(gaps.size());
  at::parallel_for(0, m, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) k[i] -= i;
  });
  return n < 2 ? 0 : n * (n - 1) - m;
}

at::Tensor negative_sampling_cpu(const at::Tensor& edge_index, int64_t num_nodes,
                                 int64_t num_neg_samples, int64_t seed) {
  check_sampler_args(edge_index, num_nodes, num_neg_samples);
  TORCH_CHECK(edge_index.device().is_cpu(), "edge_index must be a CPU tensor here");
  check_index_range_cpu(edge_index, num_nodes, "edge_index");
  auto out = at::empty({2, num_neg_samples}, edge_index.options());
  if (num_neg_samples == 0) return out;
  std::vector<int64_t> gaps;
  const int64_t non_edges = build_gaps_cpu(edge_index, num_nodes, gaps);
  TORCH_CHECK_VALUE(non_edges > 0, "no negative pair exists: every ordered pair (u, v), u != v, of the ",
              num_nodes, " nodes is an edge (complete graph)");
  int64_t* ou = out.data_ptr<int64_t>();
  int64_t* ov = ou + num_neg_samples;
  const int64_t* g = gaps.data();
  const int64_t m = static_cast<int64_t>(gaps.size());
  const uint64_t s = static_cast<uint64_t>(seed);
  at::parallel_for(0, num_neg_samples, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      draw_negative(s, i, g, m, num_nodes, non_edges, ou + i, ov + i);
    }
  });
  return out;
}

// ------------------------------------------------------------------------------ loss (CPU)
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

constexpr int64_t kChunk = 1024;  // edges per partial sum: fixed, so the result is thread-count independent

template <typename scalar_t>
static double edge_softplus_sum(const scalar_t* z, int64_t d, const at::Tensor& edges, bool positive) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t E = edges.size(1);
  const int64_t* src = edges.data_ptr<int64_t>();
  const int64_t* dst = src + E;
  const int64_t n_chunks = (E + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);
  at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double acc = 0.0;
      const int64_t e_end = std::min(E, (c + 1) * kChunk);
      for (int64_t e = c * kChunk; e < e_end; ++e) {
        const scalar_t* zu = z + src[e] * d;
        const scalar_t* zv = z + dst[e] * d;
        acc_t s = 0;
        for (int64_t j = 0; j < d; ++j) s += static_cast<acc_t>(zu[j]) * static_cast<acc_t>(zv[j]);
        acc += static_cast<double>(softplus<acc_t>(positive ? -s : s));
      }
      partial[c] = acc;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

at::Tensor recon_loss_fwd_cpu(const at::Tensor& z_in, const at::Tensor& pos_in, const at::Tensor& neg_in) {
  check_loss_args(z_in, pos_in, neg_in);
  const int64_t N = z_in.size(0), d = z_in.size(1);
  check_index_range_cpu(pos_in, N, "pos_edge_index");
  check_index_range_cpu(neg_in, N, "neg_edge_index");
  auto z = z_in.contiguous();
  auto pos = pos_in.contiguous();
  auto neg = neg_in.contiguous();
  double loss = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_fwd_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    loss = edge_softplus_sum<scalar_t>(zp, d, pos, true) / static_cast<double>(pos.size(1)) +
           edge_softplus_sum<scalar_t>(zp, d, neg, false) / static_cast<double>(neg.size(1));
  });
  return at::scalar_tensor(loss, z.options().dtype(at::kDouble)).to(z.scalar_type());
}

// dL/ds for every edge of [pos; neg]: -sigmoid(-s) * grad / E_pos and sigmoid(s) * grad / E_neg.
template <typename scalar_t, typename acc_t>
static void edge_coefficients(const scalar_t* z, int64_t d, const int64_t* src, const int64_t* dst,
                              int64_t E, bool positive, acc_t scale, acc_t* coef) {
  at::parallel_for(0, E, 2048, [&](int64_t b, int64_t e_end) {
    for (int64_t e = b; e < e_end; ++e) {
      const scalar_t* zu = z + src[e] * d;
      const scalar_t* zv = z + dst[e] * d;
      acc_t s = 0;
      for (int64_t j = 0; j < d; ++j) s += static_cast<acc_t>(zu[j]) * static_cast<acc_t>(zv[j]);
      coef[e] = positive ? -sigmoid<acc_t>(-s) * scale : sigmoid<acc_t>(s) * scale;
    }
  });
}

at::Tensor recon_loss_bwd_cpu(const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& pos_in,
                              const at::Tensor& neg_in) {
  check_loss_args(z_in, pos_in, neg_in);
  TORCH_CHECK_VALUE(grad.numel() == 1, "grad must hold one element, got shape ", grad.sizes());
  const int64_t N = z_in.size(0), d = z_in.size(1);
  check_index_range_cpu(pos_in, N, "pos_edge_index");
  check_index_range_cpu(neg_in, N, "neg_edge_index");
  auto z = z_in.contiguous();
  auto pos = pos_in.contiguous();
  auto neg = neg_in.contiguous();
  const int64_t Ep = pos.size(1), En = neg.size(1), Et = Ep + En;
  const double g = grad.item<double>();
  auto dz = at::empty_like(z, at::MemoryFormat::Contiguous);

  // Incidence lists by node (a stable counting sort, so sums run in a fixed order): entry
  // 2 * e + side means edge e of [pos; neg], seen from its source (side 0) or target (side 1).
  const int64_t* ps = pos.data_ptr<int64_t>();
  const int64_t* ns = neg.data_ptr<int64_t>();
  auto src_of = [&](int64_t e) { return e < Ep ? ps[e] : ns[e - Ep]; };
  auto dst_of = [&](int64_t e) { return e < Ep ? ps[Ep + e] : ns[En + e - Ep]; };
  std::vector<int64_t> rowptr(N + 1, 0);
  for (int64_t e = 0; e < Et; ++e) {
    ++rowptr[src_of(e) + 1];
    ++rowptr[dst_of(e) + 1];
  }
  for (int64_t i = 0; i < N; ++i) rowptr[i + 1] += rowptr[i];
  std::vector<int64_t> inc(2 * Et);
  {
    std::vector<int64_t> fill(rowptr.begin(), rowptr.end() - 1);
    for (int64_t e = 0; e < Et; ++e) {
      inc[fill[src_of(e)]++] = 2 * e;
      inc[fill[dst_of(e)]++] = 2 * e + 1;
    }
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_bwd_cpu", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    std::vector<acc_t> coef(Et);
    edge_coefficients<scalar_t, acc_t>(zp, d, ps, ps + Ep, Ep, true, static_cast<acc_t>(g / Ep), coef.data());
    edge_coefficients<scalar_t, acc_t>(zp, d, ns, ns + En, En, false, static_cast<acc_t>(g / En),
                                       coef.data() + Ep);
    const acc_t* cf = coef.data();
    const int64_t* ip = inc.data();
    const int64_t* rp = rowptr.data();
    at::parallel_for(0, N, 256, [&](int64_t b, int64_t e_end) {
      std::vector<acc_t> acc(d);
      for (int64_t node = b; node < e_end; ++node) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t t = rp[node]; t < rp[node + 1]; ++t) {
          const int64_t e = ip[t] >> 1;
          const int64_t other = (ip[t] & 1) ? src_of(e) : dst_of(e);
          const acc_t c = cf[e];
          const scalar_t* zo = zp + other * d;
          for (int64_t j = 0; j < d; ++j) acc[j] += c * static_cast<acc_t>(zo[j]);
        }
        scalar_t* out = dzp + node * d;
        for (int64_t j = 0; j < d; ++j) out[j] = static_cast<scalar_t>(acc[j]);
      }
    });
  });
  return dz;
}

}  // namespace deepclust

TORCH_LIBRARY(deepclust, m) {
  m.def("negative_sampling(Tensor edge_index, int num_nodes, int num_neg_samples, int seed) -> Tensor");
  m.def("recon_loss_fwd(Tensor z, Tensor pos, Tensor neg) -> Tensor");
  m.def("recon_loss_bwd(Tensor grad, Tensor z, Tensor pos, Tensor neg) -> Tensor");
}

TORCH_LIBRARY_IMPL(deepclust, CPU, m) {
  m.impl("negative_sampling", &deepclust::negative_sampling_cpu);
  m.impl("recon_loss_fwd", &deepclust::recon_loss_fwd_cpu);
  m.impl("recon_loss_bwd", &deepclust::recon_loss_bwd_cpu);
}
