// C++ unit test of the recon operators (no test framework: a plain main() with checks).
// Built and run by CMakeLists.txt through ctest.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>

#include "recon.h"
#include "recon_common.h"

static int failures = 0;

#define EXPECT(cond)                                                     \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

template <typename F>
static bool throws(F&& f) {
  try {
    f();
  } catch (const c10::Error&) {
    return true;
  }
  return false;
}

static at::Tensor edges(std::initializer_list<std::pair<int64_t, int64_t>> list) {
  auto t = at::empty({2, static_cast<int64_t>(list.size())}, at::kLong);
  int64_t i = 0;
  for (auto& p : list) {
    t[0][i] = p.first;
    t[1][i] = p.second;
    ++i;
  }
  return t;
}

static void test_rng() {
  // counter-based: the same (seed, i) always gives the same bits, neighbours differ
  EXPECT(deepclust::counter_random(1, 5) == deepclust::counter_random(1, 5));
  EXPECT(deepclust::counter_random(1, 5) != deepclust::counter_random(1, 6));
  EXPECT(deepclust::counter_random(1, 5) != deepclust::counter_random(2, 5));
  EXPECT(deepclust::mul_high(~0ULL, 10) == 9);
  EXPECT(deepclust::mul_high(0, 10) == 0);
}

static void test_sampler() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("deepclust::negative_sampling", "")
                .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t)>();
  // 4 nodes, all ordered pairs except (1, 3) and (3, 0); a self-loop and a duplicate on top
  std::set<std::pair<int64_t, int64_t>> missing = {{1, 3}, {3, 0}};
  std::vector<std::pair<int64_t, int64_t>> list;
  for (int64_t u = 0; u < 4; ++u)
    for (int64_t v = 0; v < 4; ++v)
      if (u != v && !missing.count({u, v})) list.push_back({u, v});
  auto ei = at::empty({2, static_cast<int64_t>(list.size()) + 2}, at::kLong);
  for (size_t i = 0; i < list.size(); ++i) {
    ei[0][i] = list[i].first;
    ei[1][i] = list[i].second;
  }
  ei[0][list.size()] = 2;
  ei[1][list.size()] = 2;
  ei[0][list.size() + 1] = 0;
  ei[1][list.size() + 1] = 1;
  auto out = op.call(ei, 4, 1000, 42);
  EXPECT(out.size(0) == 2 && out.size(1) == 1000);
  int64_t count13 = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    const int64_t u = out[0][i].item<int64_t>(), v = out[1][i].item<int64_t>();
    EXPECT(missing.count({u, v}) == 1);
    count13 += (u == 1 && v == 3);
  }
  EXPECT(count13 > 400 && count13 < 600);
  EXPECT(at::equal(out, op.call(ei, 4, 1000, 42)));
  EXPECT(!at::equal(out, op.call(ei, 4, 1000, 43)));
  // complete graph, bad indices, bad shape, bad dtype
  auto full = edges({{0, 1}, {1, 0}});
  EXPECT(throws([&] { op.call(full, 2, 3, 0); }));
  EXPECT(op.call(full, 2, 0, 0).size(1) == 0);
  EXPECT(throws([&] { op.call(edges({{0, 5}}), 3, 3, 0); }));
  EXPECT(throws([&] { op.call(at::zeros({3, 2}, at::kLong), 3, 3, 0); }));
  EXPECT(throws([&] { op.call(at::zeros({2, 2}, at::kInt), 3, 3, 0); }));
}

static void test_loss() {
  // z = [[1, 0], [0, 2], [1, 1]]; pos (0, 2): s = 1; neg (1, 2): s = 2
  auto z = at::tensor({1.0, 0.0, 0.0, 2.0, 1.0, 1.0}, at::kDouble).view({3, 2});
  auto pos = edges({{0, 2}});
  auto neg = edges({{1, 2}});
  auto loss = deepclust::recon_loss_cpu(z, pos, neg).item<double>();
  const double expected = std::log1p(std::exp(-1.0)) + std::log1p(std::exp(2.0));
  EXPECT(std::fabs(loss - expected) < 1e-12);
  // backward: dL/dz0 = -sigmoid(-1) z2, dL/dz1 = sigmoid(2) z2,
  //           dL/dz2 = -sigmoid(-1) z0 + sigmoid(2) z1
  auto dz = deepclust::recon_loss_backward_cpu(at::scalar_tensor(1.0, at::kDouble), z, pos, neg);
  const double a = -1.0 / (1.0 + std::exp(1.0)), b = 1.0 / (1.0 + std::exp(-2.0));
  auto expect = at::tensor({a, a, b, b, a, 2.0 * b}, at::kDouble).view({3, 2});
  EXPECT(at::allclose(dz, expect, 1e-12, 1e-12));
  // float32 agrees with float64
  auto l32 = deepclust::recon_loss_cpu(z.to(at::kFloat), pos, neg);
  EXPECT(l32.scalar_type() == at::kFloat);
  EXPECT(std::fabs(l32.item<double>() - expected) < 1e-5);
  // bad input
  EXPECT(throws([&] { deepclust::recon_loss_cpu(z.view({6}), pos, neg); }));
  EXPECT(throws([&] { deepclust::recon_loss_cpu(z, edges({{0, 3}}), neg); }));
  EXPECT(throws([&] { deepclust::recon_loss_cpu(z, at::zeros({2, 0}, at::kLong), neg); }));
  EXPECT(throws([&] { deepclust::recon_loss_cpu(z.to(at::kLong), pos, neg); }));
}

int main() {
  test_rng();
  test_sampler();
  test_loss();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("all recon checks passed\n");
  return EXIT_SUCCESS;
}
