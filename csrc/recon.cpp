// Negative sampling and the fused reconstruction loss of graph autoencoders (DAEGC, GAE):
// operator schemas (TORCH_LIBRARY) and the CPU kernels. The CUDA kernels are in
// kernels/recon_cuda.cu. Autograd, fake-tensor and autocast rules are registered in
// deepclust/ops/recon.py.
//
//   negative_sampling(edge_index, num_nodes, num_neg_samples, seed) -> (2, S) int64
//   recon_loss(z, pos, neg) -> 0-d loss
//       mean_e softplus(-z_u . z_v) over pos + mean_e softplus(z_u . z_v) over neg
//   recon_loss_backward(grad, z, pos, neg) -> dz (N, d); recomputes the scores (nothing is
//       saved besides z and the edge lists).
//
// CPU kernels: the sampler sorts the edge keys with a parallel LSD radix sort and finds each
// draw through a bucket index over the gaps (draws identical to draw_negative); the loss reads
// rows of z with prefetching and fixed-order vectorisable dot products; the backward groups the
// incidences by node with a stable parallel counting sort and sums each dz row in edge order,
// computing the scores from the rows it gathers (one random row read per incidence).
// Every result is independent of the thread count.
#include "recon.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

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

LossInputs loss_inputs(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg) {
  check_loss_args(z, pos, neg);
  return LossInputs{z.contiguous(), pos.contiguous(), neg.contiguous(), z.size(0), z.size(1),
                    pos.size(1), neg.size(1)};
}

// loss_inputs, plus the node-index range check of both edge lists (a host read of CPU memory).
static LossInputs loss_inputs_cpu(const at::Tensor& z, const at::Tensor& pos, const at::Tensor& neg) {
  LossInputs in = loss_inputs(z, pos, neg);
  check_index_range_cpu(in.pos, in.N, "pos_edge_index");
  check_index_range_cpu(in.neg, in.N, "neg_edge_index");
  return in;
}

// ------------------------------------------------------------------------------ sampler (CPU)
// Edge ranges for the parallel passes below: one per thread (fewer for small inputs). The
// results never depend on it.
static int64_t num_ranges(int64_t n, int64_t min_per_range) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / min_per_range));
}

// Sorts the non-negative keys a[0..n), all <= max_key, ascending: a parallel LSD radix sort
// (<= 12-bit digits, as many passes as max_key needs) for large n, std::sort otherwise.
static void sort_keys(std::vector<int64_t>& a, uint64_t max_key) {
  const int64_t n = static_cast<int64_t>(a.size());
  int bits = 0;
  while (bits < 64 && (max_key >> bits) != 0) ++bits;
  if (n < (1 << 16) || bits == 0) {
    std::sort(a.begin(), a.end());
    return;
  }
  const int passes = (bits + 11) / 12;
  const int width = (bits + passes - 1) / passes;
  const int64_t R = int64_t(1) << width;
  const int64_t T = num_ranges(n, 1 << 15);
  auto lo = [&](int64_t t) { return n * t / T; };
  std::vector<int64_t> tmp(n);
  std::vector<int64_t> hist(T * R);
  int64_t* in = a.data();
  int64_t* out = tmp.data();
  for (int p = 0; p < passes; ++p) {
    const int shift = p * width;
    std::fill(hist.begin(), hist.end(), 0);
    at::parallel_for(0, T, 1, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) {
        int64_t* h = hist.data() + t * R;
        for (int64_t i = lo(t); i < lo(t + 1); ++i) ++h[(static_cast<uint64_t>(in[i]) >> shift) & (R - 1)];
      }
    });
    int64_t run = 0;  // stable: digit-major, then range order
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t c = hist[t * R + r];
        hist[t * R + r] = run;
        run += c;
      }
    }
    at::parallel_for(0, T, 1, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) {
        int64_t* h = hist.data() + t * R;
        for (int64_t i = lo(t); i < lo(t + 1); ++i) {
          const int64_t v = in[i];
          out[h[(static_cast<uint64_t>(v) >> shift) & (R - 1)]++] = v;
        }
      }
    });
    std::swap(in, out);
  }
  if (in != a.data()) std::copy(in, in + n, a.data());
}

// Sorted unique keys u * (N - 1) + v' of the non-self-loop edges, turned into gaps[e] =
// keys[e] - e (see draw_negative). Returns the number of non-edges N (N - 1) - #unique edges.
static int64_t build_gaps_cpu(const at::Tensor& edge_index, int64_t n, std::vector<int64_t>& gaps) {
  const int64_t E = edge_index.size(1);
  auto ei = edge_index.contiguous();
  const int64_t* src = ei.data_ptr<int64_t>();
  const int64_t* dst = src + E;
  // keys of the edges that are not self-loops, in edge order (a parallel compaction)
  const int64_t T = num_ranges(E, 1 << 15);
  auto lo = [&](int64_t t) { return E * t / T; };
  std::vector<int64_t> kept(T + 1, 0);
  at::parallel_for(0, T, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      int64_t c = 0;
      for (int64_t i = lo(t); i < lo(t + 1); ++i) c += (src[i] != dst[i]);
      kept[t + 1] = c;
    }
  });
  for (int64_t t = 0; t < T; ++t) kept[t + 1] += kept[t];
  gaps.resize(kept[T]);
  int64_t* k = gaps.data();
  at::parallel_for(0, T, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      int64_t o = kept[t];
      for (int64_t i = lo(t); i < lo(t + 1); ++i) {
        const int64_t u = src[i], v = dst[i];
        if (u != v) k[o++] = u * (n - 1) + v - (v > u ? 1 : 0);
      }
    }
  });
  if (n >= 2) sort_keys(gaps, static_cast<uint64_t>(n) * static_cast<uint64_t>(n - 1) - 1);
  gaps.erase(std::unique(gaps.begin(), gaps.end()), gaps.end());
  const int64_t m = static_cast<int64_t>(gaps.size());
  at::parallel_for(0, m, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) k[i] -= i;
  });
  return n < 2 ? 0 : n * (n - 1) - m;
}

// Bucket index over the gaps, so that a draw needs one short search instead of a binary search
// over all of them: with bucket b = k >> shift, start[b] = #{e : gaps[e] < b << shift}, and the
// count #{e : gaps[e] <= k} lies in [start[b], start[b + 1]]. About one gap per bucket.
struct GapIndex {
  int shift = 0;
  std::vector<int64_t> start;
};

static GapIndex build_gap_index(const std::vector<int64_t>& gaps, int64_t non_edges) {
  GapIndex ix;
  const int64_t m = static_cast<int64_t>(gaps.size());
  while ((non_edges >> ix.shift) > std::max<int64_t>(m, 1)) ++ix.shift;
  // k < non_edges and gaps[e] <= non_edges, so buckets 0 .. (non_edges >> shift) (+1 for the end)
  const int64_t B = (non_edges >> ix.shift) + 2;
  ix.start.assign(B, m);
  int64_t* st = ix.start.data();
  const int64_t* g = gaps.data();
  const int shift = ix.shift;
  at::parallel_for(0, m, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      // gaps[i] is the first gap >= bucket_b << shift for the buckets in (bucket(i-1), bucket(i)]
      const int64_t from = i == 0 ? 0 : (g[i - 1] >> shift) + 1;
      for (int64_t bk = from; bk <= (g[i] >> shift); ++bk) st[bk] = i;
    }
  });
  return ix;
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
  const GapIndex ix = build_gap_index(gaps, non_edges);
  int64_t* ou = out.data_ptr<int64_t>();
  int64_t* ov = ou + num_neg_samples;
  const int64_t* g = gaps.data();
  const int64_t* st = ix.start.data();
  const int shift = ix.shift;
  const uint64_t s = static_cast<uint64_t>(seed);
  const int64_t n1 = num_nodes - 1;
  at::parallel_for(0, num_neg_samples, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      // draw_negative (recon_common.h) with the bucketed search: the same pairs
      const uint64_t h = counter_random(s, static_cast<uint64_t>(i));
      const int64_t k = static_cast<int64_t>(mul_high(h, static_cast<uint64_t>(non_edges)));
      const int64_t bk = k >> shift;
      const int64_t first = st[bk];
      const int64_t key = k + first + upper_bound_count(g + first, st[bk + 1] - first, k);
      const int64_t u = key / n1;
      const int64_t vp = key - u * n1;
      ou[i] = u;
      ov[i] = vp + (vp >= u ? 1 : 0);
    }
  });
  return out;
}

// ------------------------------------------------------------------------------ loss (CPU)
constexpr int64_t kChunk = 1024;  // edges per partial sum: fixed, so the result is thread-count independent
constexpr int64_t kPrefetch = 12;  // rows fetched ahead in the gather loops (random rows of z)

// Hint the cache to load `bytes` bytes at p (one row of z); a no-op where unsupported.
static inline void prefetch_row(const void* p, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 1);
#else
  (void)p;
  (void)bytes;
#endif
}

// z_a . z_b in acc_t with a fixed summation order (kLanes interleaved partial sums, then a
// pairwise tree), which the compiler vectorises; the order depends only on d.
template <typename scalar_t, typename acc_t>
static inline acc_t dot_row(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t d) {
  constexpr int kLanes = 16;
  acc_t lane[kLanes];
  for (int k = 0; k < kLanes; ++k) lane[k] = acc_t(0);
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      lane[k] += static_cast<acc_t>(a[j + k]) * static_cast<acc_t>(b[j + k]);
    }
  }
  acc_t tail = acc_t(0);
  for (; j < d; ++j) tail += static_cast<acc_t>(a[j]) * static_cast<acc_t>(b[j]);
  for (int w = kLanes / 2; w >= 1; w /= 2) {
    for (int k = 0; k < w; ++k) lane[k] += lane[k + w];
  }
  return lane[0] + tail;
}

template <typename scalar_t>
static double edge_softplus_sum(const scalar_t* z, int64_t d, const at::Tensor& edges, bool positive) {
  using acc_t = typename AccOf<scalar_t>::type;
  const int64_t E = edges.size(1);
  const int64_t* src = edges.data_ptr<int64_t>();
  const int64_t* dst = src + E;
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t n_chunks = (E + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);
  at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double acc = 0.0;
      const int64_t e_end = std::min(E, (c + 1) * kChunk);
      for (int64_t e = c * kChunk; e < e_end; ++e) {
        if (e + kPrefetch < E) {
          prefetch_row(z + src[e + kPrefetch] * d, row_bytes);
          prefetch_row(z + dst[e + kPrefetch] * d, row_bytes);
        }
        const acc_t s = dot_row<scalar_t, acc_t>(z + src[e] * d, z + dst[e] * d, d);
        acc += static_cast<double>(softplus<acc_t>(positive ? -s : s));
      }
      partial[c] = acc;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

at::Tensor recon_loss_cpu(const at::Tensor& z_in, const at::Tensor& pos_in, const at::Tensor& neg_in) {
  const LossInputs in = loss_inputs_cpu(z_in, pos_in, neg_in);
  const at::Tensor& z = in.z;
  double loss = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    loss = edge_softplus_sum<scalar_t>(zp, in.d, in.pos, true) / static_cast<double>(in.Ep) +
           edge_softplus_sum<scalar_t>(zp, in.d, in.neg, false) / static_cast<double>(in.En);
  });
  return at::scalar_tensor(loss, z.options().dtype(at::kDouble)).to(z.scalar_type());
}

// dz[n] = sum over the incidences (e, other) of n of dL/ds_e * z[other], where dL/ds is
// -sigmoid(-s) * grad / E_pos on positive and sigmoid(s) * grad / E_neg on negative edges.
//
// The incidences are grouped by node with a stable parallel counting sort of the edges of
// [pos; neg] (T edge ranges, per-range counts, prefix sums, fill), so every node sums its terms
// in edge order whatever the thread count. An incidence is 2 * other + [positive]. Then the
// nodes are summed in parallel, each row written once; the score s_e = z[n] . z[other] is
// computed there, from the row of z that the sum reads anyway (once from each end of an edge,
// with the same value: the dot product is symmetric, term by term).
template <typename scalar_t, typename idx_t>
static void recon_backward_kernel(const scalar_t* zp, scalar_t* dzp, int64_t N, int64_t d, const int64_t* ps,
                             int64_t Ep, const int64_t* ns, int64_t En, double g) {
  using acc_t = typename AccOf<scalar_t>::type;
  const int64_t Et = Ep + En;
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(scalar_t));
  const acc_t scale_pos = static_cast<acc_t>(g / static_cast<double>(Ep));
  const acc_t scale_neg = static_cast<acc_t>(g / static_cast<double>(En));

  // Edge ranges of the counting sort: one per thread, fewer when N is large next to E (the
  // per-range counts take T * N entries).
  int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), Et / 4096));
  T = std::max<int64_t>(1, std::min<int64_t>(T, std::max<int64_t>(4 * Et, int64_t(1) << 22) / std::max<int64_t>(N, 1)));
  auto range_begin = [&](int64_t c) { return Et * c / T; };
  // Calls f(u, v, positive) for the edges e in [b, e_end) of [pos; neg].
  auto for_edges = [&](int64_t b, int64_t e_end, auto&& f) {
    for (int64_t e = b; e < std::min(e_end, Ep); ++e) f(ps[e], ps[Ep + e], true);
    for (int64_t e = std::max(b, Ep); e < e_end; ++e) f(ns[e - Ep], ns[En + e - Ep], false);
  };

  std::vector<int64_t> cursor(static_cast<size_t>(T * N), 0);  // counts, then fill positions
  at::parallel_for(0, T, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      int64_t* cnt = cursor.data() + c * N;
      for_edges(range_begin(c), range_begin(c + 1), [&](int64_t u, int64_t v, bool) {
        ++cnt[u];
        ++cnt[v];
      });
    }
  });
  std::vector<int64_t> rowptr(N + 1, 0);
  at::parallel_for(0, N, 1 << 14, [&](int64_t b, int64_t e_end) {
    for (int64_t n = b; n < e_end; ++n) {
      int64_t t = 0;
      for (int64_t c = 0; c < T; ++c) t += cursor[c * N + n];
      rowptr[n + 1] = t;
    }
  });
  for (int64_t n = 0; n < N; ++n) rowptr[n + 1] += rowptr[n];
  at::parallel_for(0, N, 1 << 14, [&](int64_t b, int64_t e_end) {
    for (int64_t n = b; n < e_end; ++n) {
      int64_t off = rowptr[n];
      for (int64_t c = 0; c < T; ++c) {
        const int64_t k = cursor[c * N + n];
        cursor[c * N + n] = off;
        off += k;
      }
    }
  });

  std::vector<idx_t> inc(static_cast<size_t>(2 * Et));
  idx_t* ip = inc.data();
  at::parallel_for(0, T, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      int64_t* pos_of = cursor.data() + c * N;
      for_edges(range_begin(c), range_begin(c + 1), [&](int64_t u, int64_t v, bool positive) {
        const idx_t flag = positive ? 1 : 0;
        ip[pos_of[u]++] = (static_cast<idx_t>(v) << 1) | flag;
        ip[pos_of[v]++] = (static_cast<idx_t>(u) << 1) | flag;
      });
    }
  });
  std::vector<int64_t>().swap(cursor);

  const int64_t* rp = rowptr.data();
  const int64_t n_inc = 2 * Et;
  at::parallel_for(0, N, 64, [&](int64_t b, int64_t e_end) {
    std::vector<acc_t> acc_buf(d);
    acc_t* __restrict__ acc = acc_buf.data();
    for (int64_t node = b; node < e_end; ++node) {
      for (int64_t j = 0; j < d; ++j) acc[j] = acc_t(0);
      const scalar_t* zn = zp + node * d;
      for (int64_t t = rp[node]; t < rp[node + 1]; ++t) {
        if (t + kPrefetch < n_inc) prefetch_row(zp + static_cast<int64_t>(ip[t + kPrefetch] >> 1) * d, row_bytes);
        const idx_t x = ip[t];
        const scalar_t* __restrict__ zo = zp + static_cast<int64_t>(x >> 1) * d;
        const acc_t s = dot_row<scalar_t, acc_t>(zn, zo, d);
        const acc_t c = (x & 1) ? -sigmoid<acc_t>(-s) * scale_pos : sigmoid<acc_t>(s) * scale_neg;
        for (int64_t j = 0; j < d; ++j) acc[j] += c * static_cast<acc_t>(zo[j]);
      }
      scalar_t* out = dzp + node * d;
      for (int64_t j = 0; j < d; ++j) out[j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

at::Tensor recon_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& pos_in,
                                   const at::Tensor& neg_in) {
  const LossInputs in = loss_inputs_cpu(z_in, pos_in, neg_in);
  TORCH_CHECK_VALUE(grad.numel() == 1, "grad must hold one element, got shape ", grad.sizes());
  const at::Tensor& z = in.z;
  const int64_t N = in.N, d = in.d, Ep = in.Ep, En = in.En;
  const double g = grad.item<double>();
  auto dz = at::empty_like(z, at::MemoryFormat::Contiguous);
  const int64_t* ps = in.pos.data_ptr<int64_t>();
  const int64_t* ns = in.neg.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "recon_loss_backward_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    if (N <= std::numeric_limits<int32_t>::max()) {  // 2 * other + 1 fits in 32 bits
      recon_backward_kernel<scalar_t, uint32_t>(zp, dzp, N, d, ps, Ep, ns, En, g);
    } else {
      recon_backward_kernel<scalar_t, uint64_t>(zp, dzp, N, d, ps, Ep, ns, En, g);
    }
  });
  return dz;
}

}  // namespace deepclust

TORCH_LIBRARY(deepclust, m) {
  m.def("negative_sampling(Tensor edge_index, int num_nodes, int num_neg_samples, int seed) -> Tensor");
  m.def("recon_loss(Tensor z, Tensor pos, Tensor neg) -> Tensor");
  m.def("recon_loss_backward(Tensor grad, Tensor z, Tensor pos, Tensor neg) -> Tensor");
}

TORCH_LIBRARY_IMPL(deepclust, CPU, m) {
  m.impl("negative_sampling", &deepclust::negative_sampling_cpu);
  m.impl("recon_loss", &deepclust::recon_loss_cpu);
  m.impl("recon_loss_backward", &deepclust::recon_loss_backward_cpu);
}
