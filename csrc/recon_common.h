// Helpers shared by the CPU (csrc/recon.cpp) and CUDA (kernels/recon_cuda.cu) kernels of the
// negative sampler and the fused reconstruction loss. Everything here is header-only and
// callable from host and device, so both backends draw the same samples for the same seed.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DC_HD __host__ __device__ __forceinline__
#else
#define DC_HD inline
#endif

namespace deepclust {

#if !defined(__CUDACC__) && !defined(__HIPCC__)
using std::exp;
using std::fabs;
using std::log1p;
#endif

// splitmix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
DC_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

// The i-th output of the splitmix64 stream keyed by `seed`: a counter-based generator, so sample
// i is the same whatever the thread count, the launch shape or the device.
DC_HD uint64_t counter_random(uint64_t seed, uint64_t i) {
  const uint64_t key = mix64(seed ^ 0x6A09E667F3BCC909ULL);
  return mix64(key + (i + 1) * 0x9E3779B97F4A7C15ULL);
}

// floor(h * m / 2^64): a uniform integer in [0, m) from 64 random bits (bias <= m / 2^64).
DC_HD uint64_t mul_high(uint64_t h, uint64_t m) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(h, m);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * m) >> 64);
#endif
}

// Number of entries of the non-decreasing array g[0..n) that are <= k (std::upper_bound).
DC_HD int64_t upper_bound_count(const int64_t* g, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + ((hi - lo) >> 1);
    if (g[mid] <= k) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Negative sample number i. Ordered pairs (u, v), u != v, are ranked by the key
// u * (N - 1) + v' with v' = v - (v > u). `gaps[e] = keys[e] - e` for the sorted unique keys of
// the edges, i.e. the number of non-edges ranked before edge e. The k-th non-edge (k uniform in
// [0, num_non_edges)) has key k + #{e : gaps[e] <= k}: an exact, rejection-free draw.
DC_HD void draw_negative(uint64_t seed, int64_t i, const int64_t* gaps, int64_t n_edges,
                         int64_t num_nodes, int64_t num_non_edges, int64_t* u_out,
                         int64_t* v_out) {
  const uint64_t h = counter_random(seed, static_cast<uint64_t>(i));
  const int64_t k = static_cast<int64_t>(mul_high(h, static_cast<uint64_t>(num_non_edges)));
  const int64_t key = k + upper_bound_count(gaps, n_edges, k);
  const int64_t u = key / (num_nodes - 1);
  const int64_t vp = key - u * (num_nodes - 1);
  *u_out = u;
  *v_out = vp + (vp >= u ? 1 : 0);
}

// Numerically stable softplus(x) = log(1 + exp(x)) and logistic sigmoid.
template <typename T>
DC_HD T softplus(T x) {
  return (x > T(0) ? x : T(0)) + log1p(exp(-fabs(x)));
}

template <typename T>
DC_HD T sigmoid(T x) {
  if (x >= T(0)) {
    return T(1) / (T(1) + exp(-x));
  }
  const T e = exp(x);
  return e / (T(1) + e);
}

// Accumulation type: fp32 for fp16, bf16 and fp32 inputs, fp64 for fp64.
template <typename scalar_t>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

}  // namespace deepclust
