// Fused gather-GEMV for batch-1 decode on CPU: read only the kept rows of a row-major weight.
//   gather_gemv(W [R, D], rows [k], x [D])            -> y [k] = W[rows] @ x
//   gather_transposed_gemv(Wt [R, D], rows [k], a [k]) -> y [D] = sum_j a[j] * Wt[rows[j]]
// Neither copies W[rows]: each kept row is streamed once. fp32; the kept rows are split
// between torch's intra-op threads; the transposed form sums per-thread partial outputs.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

torch::Tensor gather_gemv(torch::Tensor weight, torch::Tensor rows, torch::Tensor x) {
  TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == torch::kFloat32, "weight: contiguous float32");
  auto xc = x.contiguous();
  auto idx = rows.to(torch::kLong).contiguous();
  const int64_t k = idx.numel(), d = weight.size(1);
  auto out = torch::empty({k}, x.options());
  const float* w = weight.data_ptr<float>();
  const float* xp = xc.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  // four kept rows per pass share each load of x; 8-wide partial sums vectorise without -ffast-math
  at::parallel_for(0, (k + 3) / 4, 4, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t j0 = block * 4, n = std::min<int64_t>(4, k - j0);
      const float* r[4];
      for (int64_t i = 0; i < 4; ++i) r[i] = w + ip[j0 + std::min<int64_t>(i, n - 1)] * d;
      float acc[4][8] = {};
      int64_t c = 0;
      for (; c + 8 <= d; c += 8)
        for (int64_t i = 0; i < 4; ++i)
#pragma omp simd
          for (int64_t l = 0; l < 8; ++l) acc[i][l] += r[i][c + l] * xp[c + l];
      for (int64_t i = 0; i < n; ++i) {
        float sum = 0.f;
        for (int64_t l = 0; l < 8; ++l) sum += acc[i][l];
        for (int64_t t = c; t < d; ++t) sum += r[i][t] * xp[t];
        op[j0 + i] = sum;
      }
    }
  });
  return out;
}

torch::Tensor gather_transposed_gemv(torch::Tensor weight_t, torch::Tensor rows, torch::Tensor a) {
  TORCH_CHECK(weight_t.is_contiguous() && weight_t.scalar_type() == torch::kFloat32, "weight: contiguous float32");
  auto ac = a.contiguous();
  auto idx = rows.to(torch::kLong).contiguous();
  const int64_t k = idx.numel(), d = weight_t.size(1);
  const int threads = at::get_num_threads();
  std::vector<float> partial(static_cast<size_t>(threads) * d, 0.f);
  const float* w = weight_t.data_ptr<float>();
  const float* ap = ac.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t chunk = (k + threads - 1) / threads;
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      float* acc = partial.data() + t * d;
      for (int64_t j = t * chunk; j < std::min(k, (t + 1) * chunk); ++j) {
        const float* row = w + ip[j] * d;
        const float s = ap[j];
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) acc[c] += s * row[c];
      }
    }
  });
  auto out = torch::zeros({d}, a.options());
  float* op = out.data_ptr<float>();
  for (int t = 0; t < threads; ++t)
    for (int64_t c = 0; c < d; ++c) op[c] += partial[t * d + c];
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_gemv", &gather_gemv, "y = W[rows] @ x without copying W[rows]");
  m.def("gather_transposed_gemv", &gather_transposed_gemv, "y = a @ Wt[rows] without copying Wt[rows]");
}
