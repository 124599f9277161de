// Batch-1 decode on the CPU in float32: row kernels, and consecutive decoder layers in one call.
//   gather_gemv(W [R, D], rows [k] | None, x [D])             -> W[rows] @ x       [k]
//   gather_transposed_gemv(Wt [R, D], rows [k] | None, a [k]) -> a @ Wt[rows]      [D]
//   neuron_major_mlp(mlp [I, parts, D], rows [k] | None, h [D], activation) -> the MLP's output [D]
//   decode_layers(x [1, D], packs, ...)                        -> (x' [1, D], last context, MLP input)
//   top_k_rows(scores [R, U], keep)                            -> each row's top-k positions [R, keep]
// rows None reads every row; a weight's rows may be strided (views of the neuron-major MLP).
// No kernel copies W[rows]: each kept row is streamed once, split between torch's intra-op
// threads. decode_layers runs one token through consecutive Llama-family or pre-LayerNorm
// OPT layers without returning to Python. Each block of a layer runs in the layout of the
// point its selection is made at (a LayerPack says which):
//   attention, rows: q rows of the kept heads (q_rows), k/v rows of every cached group,
//     attention, o over the kept heads' rows of its transposed weight;
//   attention, input: the attention input's kept channels (rule attention_input) select rows of
//     the transposed [D, (H + 2 KV) d] q/k/v block; every head attends; the context's kept
//     channels (rule head_context) select rows of o's transposed weight;
//   MLP, rows: per kept neuron its up/gate dots, activation and down row in one pass over the
//     neuron-major MLP [N, parts, D];
//   MLP, gate: the gate [I, D] dense, act(gate), the kept neurons (rule neuron_activation on
//     act(gate)), then their up and down rows [I, 2, D] (OPT: fc1 dense, then kept down rows);
//   MLP, input: the MLP input's kept channels (rule mlp_input) select rows of the transposed
//     [D, 2 I] gate/up block (OPT: fc1 [D, I]); the activation's kept entries (rule
//     neuron_activation) select rows of down's transposed weight [I, D].
// A rule keeps the entries whose score |x_i| * scale_i (scale: WINA's column norms, or 1)
// exceeds its threshold, or each token's top `keep` scores; an inactive rule keeps every entry.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using MaybeTensor = c10::optional<torch::Tensor>;

// The rows a gather reads: rows[j], or j itself when every row is read (no index).
struct Gather {
  torch::Tensor index;  // keeps `rows` alive when they come from a tensor
  const int64_t* rows;
  int64_t count;
  int64_t operator()(int64_t j) const { return rows ? rows[j] : j; }
};

Gather gather_of(const MaybeTensor& rows, int64_t all) {
  if (!rows.has_value()) return {torch::Tensor(), nullptr, all};
  auto index = rows->to(torch::kLong).contiguous();
  return {index, index.data_ptr<int64_t>(), index.numel()};
}

const float* float_data(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat32, name, ": contiguous float32");
  return t.data_ptr<float>();
}

// A weight [R, D] whose rows are contiguous but may lie `stride` elements apart.
const float* row_data(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1 && t.scalar_type() == torch::kFloat32, name,
              ": float32 [R, D] with contiguous rows");
  return t.data_ptr<float>();
}

const float* maybe_data(const MaybeTensor& t, const char* name) {
  return t.has_value() ? float_data(*t, name) : nullptr;
}

// Software prefetch: while a row is read, the same cache lines of the row `ahead` rows later
// are requested, spread over the pass (a burst of a whole row's prefetches at once overflows
// the core's miss queue): about PREFETCH_BYTES in flight ahead of the reads.
constexpr int64_t PREFETCH_BYTES = 24576;
constexpr int64_t FLOATS_PER_LINE = 16;

int64_t rows_ahead(int64_t row_floats) {
  return std::max<int64_t>(1, PREFETCH_BYTES / (row_floats * static_cast<int64_t>(sizeof(float))));
}

// row . x [d] in a 32-wide accumulator (vectorises without -ffast-math); prefetches the same
// span of `later` (a row read later, or nullptr).
float dot(const float* row, const float* x, int64_t d, const float* later) {
  float acc[32] = {};
  int64_t c = 0;
  for (; c + 32 <= d; c += 32) {
    if (later) {
      __builtin_prefetch(later + c);
      __builtin_prefetch(later + c + FLOATS_PER_LINE);
    }
#pragma omp simd
    for (int64_t l = 0; l < 32; ++l) acc[l] += row[c + l] * x[c + l];
  }
  float sum = 0.f;
  for (int64_t l = 0; l < 32; ++l) sum += acc[l];
  for (; c < d; ++c) sum += row[c] * x[c];
  return sum;
}

// acc [d] += s * row, prefetching the same span of `later` (or nullptr).
void add_scaled(float* acc, float s, const float* row, int64_t d, const float* later) {
  int64_t c = 0;
  for (; c + FLOATS_PER_LINE <= d; c += FLOATS_PER_LINE) {
    if (later) __builtin_prefetch(later + c);
#pragma omp simd
    for (int64_t l = 0; l < FLOATS_PER_LINE; ++l) acc[c + l] += s * row[c + l];
  }
  for (; c < d; ++c) acc[c] += s * row[c];
}

// Rows summed into acc [d] four at a time, acc += s0 r0 + s1 r1 + s2 r2 + s3 r3: one load and
// store of the accumulator per four rows (one per row bounds the loop below the rows' stream:
// 17-25 against 40 GB/s for dot products, measured here), each row's `later` span prefetched.
struct RowSum {
  float* acc;
  int64_t d;
  float scales[4] = {};
  const float* rows[4] = {};
  const float* later[4] = {};
  int held = 0;

  void add(float scale, const float* row, const float* later_row) {
    scales[held] = scale;
    rows[held] = row;
    later[held] = later_row;
    if (++held == 4) flush();
  }

  void flush() {
    if (held == 4) {
      const float* r0 = rows[0];
      const float* r1 = rows[1];
      const float* r2 = rows[2];
      const float* r3 = rows[3];
      const float s0 = scales[0];
      const float s1 = scales[1];
      const float s2 = scales[2];
      const float s3 = scales[3];
      int64_t c = 0;
      for (; c + FLOATS_PER_LINE <= d; c += FLOATS_PER_LINE) {
        for (int k = 0; k < 4; ++k)
          if (later[k]) __builtin_prefetch(later[k] + c);
#pragma omp simd
        for (int64_t l = 0; l < FLOATS_PER_LINE; ++l)
          acc[c + l] += s0 * r0[c + l] + s1 * r1[c + l] + s2 * r2[c + l] + s3 * r3[c + l];
      }
      for (; c < d; ++c) acc[c] += s0 * r0[c] + s1 * r1[c] + s2 * r2[c] + s3 * r3[c];
    } else {
      for (int k = 0; k < held; ++k) add_scaled(acc, scales[k], rows[k], d, later[k]);
    }
    held = 0;
  }
};

// One matrix-vector product of a gemv call: out[j] = W[rows(j)] . x (+ bias[rows(j)]).
struct Product {
  const float* weight;
  int64_t stride;  // elements from one row to the next
  const Gather* rows;
  const float* bias;
  float* out;
};

// Several products over the same x [d] in one parallel region (q, k, v; up, gate): the kept
// rows of all of them are split between the threads as one range; the row `rows_ahead`
// later in the same product is prefetched while a row is summed.
void gemv(const std::vector<Product>& products, int64_t d, const float* x) {
  std::vector<int64_t> starts{0};
  for (const auto& p : products) starts.push_back(starts.back() + p.rows->count);
  const int64_t ahead = rows_ahead(d);
  at::parallel_for(0, starts.back(), 16, [&](int64_t begin, int64_t end) {
    size_t part = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (int64_t global = begin; global < end; ++global) {
      while (global >= starts[part + 1]) ++part;
      const Product& p = products[part];
      const int64_t j = global - starts[part];
      const float* later = j + ahead < p.rows->count ? p.weight + (*p.rows)(j + ahead) * p.stride : nullptr;
      const float sum = dot(p.weight + (*p.rows)(j) * p.stride, x, d, later);
      p.out[j] = p.bias ? sum + p.bias[(*p.rows)(j)] : sum;
    }
  });
}

// out [D] = bias (or 0) + the sum over k rows of add_rows's contributions: each thread runs
// add_rows(begin, end, sum) for its contiguous share of the rows into its own partial output (a
// RowSum over acc [D]), then the partials are added.
template <typename AddRows>
void sum_rows_by_thread(int64_t k, int64_t d, const float* bias, float* out, AddRows add_rows) {
  const int threads = at::get_num_threads();
  std::vector<float> partial(static_cast<size_t>(threads) * d, 0.f);
  const int64_t chunk = (k + threads - 1) / threads;
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      RowSum sum{partial.data() + t * d, d};
      add_rows(std::min(k, t * chunk), std::min(k, (t + 1) * chunk), sum);
      sum.flush();
    }
  });
  for (int64_t c = 0; c < d; ++c) out[c] = bias ? bias[c] : 0.f;
  for (int t = 0; t < threads; ++t)
    for (int64_t c = 0; c < d; ++c) out[c] += partial[t * d + c];
}

// out [D] = sum_j a_j * Wt[rows(j)] (+ bias [D]); a_j = a[j] (a compacted to the kept rows) or,
// with `a_by_row`, a[rows(j)] (a over every row: an input whose kept channels pick the rows).
void transposed_gemv(const float* w, int64_t d, int64_t stride, const Gather& rows, const float* a, const float* bias,
                     float* out, bool a_by_row = false) {
  const int64_t ahead = rows_ahead(d);
  sum_rows_by_thread(rows.count, d, bias, out, [&](int64_t begin, int64_t end, RowSum& sum) {
    for (int64_t j = begin; j < end; ++j) {
      const float* later = j + ahead < end ? w + rows(j + ahead) * stride : nullptr;
      sum.add(a_by_row ? a[rows(j)] : a[j], w + rows(j) * stride, later);
    }
  });
}

// Activation codes (decode/families.py ACTIVATIONS): 0 silu, 1 relu, 2 gelu (erf), 3 gelu (tanh).
float activate(float v, int64_t activation) {
  switch (activation) {
    case 0: return v / (1.f + std::exp(-v));
    case 1: return v > 0.f ? v : 0.f;
    case 2: return 0.5f * v * (1.f + std::erf(v * static_cast<float>(M_SQRT1_2)));
    default: {
      const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      return 0.5f * v * (1.f + std::tanh(inner));
    }
  }
}

// The MLP over kept neurons of a neuron-major mlp [I, parts, D] (parts: up, gate, down^T; or
// up, down^T): out [D] = sum_j act(gate_j . h) (up_j . h + up_bias_j) down_j (+ down_bias),
// or act(up_j . h + up_bias_j) without gate. One pass per kept neuron over its parts x D
// contiguous elements; each thread sums its share into its own partial output.
void neuron_major_mlp(const float* mlp, int64_t parts, int64_t d, const Gather& neurons, const float* h,
                      const float* up_bias, const float* down_bias, int64_t activation, float* out) {
  const int64_t ahead = rows_ahead(parts * d);
  sum_rows_by_thread(neurons.count, d, down_bias, out, [&](int64_t begin, int64_t end, RowSum& sum) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t neuron = neurons(j);
      const float* rows = mlp + neuron * parts * d;
      const float* later = j + ahead < end ? mlp + neurons(j + ahead) * parts * d : nullptr;
      const auto later_part = [&](int64_t part) { return later ? later + part * d : nullptr; };
      const float up = dot(rows, h, d, later_part(0)) + (up_bias ? up_bias[neuron] : 0.f);
      const float a = parts == 3 ? activate(dot(rows + d, h, d, later_part(1)), activation) * up
                                 : activate(up, activation);
      sum.add(a, rows + (parts - 1) * d, later_part(parts - 1));
    }
  });
}

// RMSNorm (kind 0): x / sqrt(mean(x^2) + eps) * w; LayerNorm (kind 1): (x - mean) / sqrt(var + eps) * w + b.
void normalize(const float* x, int64_t n, const float* w, const float* b, double eps, int64_t kind, float* out) {
  double mean = 0.0;
  if (kind == 1) {
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= n;
  }
  double square = 0.0;
  for (int64_t i = 0; i < n; ++i) square += (x[i] - mean) * (x[i] - mean);
  const float inverse = static_cast<float>(1.0 / std::sqrt(square / n + eps));
  for (int64_t i = 0; i < n; ++i) {
    const float y = (x[i] - static_cast<float>(mean)) * inverse * w[i];
    out[i] = b ? y + b[i] : y;
  }
}

// HF's rotate-half rotary embedding of `heads` vectors of d: v*cos + rotate_half(v)*sin.
void rotate(float* v, int64_t heads, int64_t d, const float* cos, const float* sin) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* u = v + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float first = u[i];
      const float second = u[i + half];
      u[i] = first * cos[i] - second * sin[i];
      u[i + half] = second * cos[i + half] + first * sin[i + half];
    }
  }
}

// Softmax attention of each query head over its K/V group's first `length` cache slots.
void attend(const float* q, const int64_t* groups, int64_t heads, const float* keys, const float* values,
            int64_t kv_groups, int64_t length, int64_t d, float scale, float* context) {
  at::parallel_for(0, heads, 1, [&](int64_t first, int64_t last) {
    std::vector<float> scores(length);
    for (int64_t h = first; h < last; ++h) {
      const float* qh = q + h * d;
      const int64_t g = groups[h];
      float top = -INFINITY;
      for (int64_t s = 0; s < length; ++s) {
        const float* key = keys + (s * kv_groups + g) * d;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < d; ++i) dot += qh[i] * key[i];
        scores[s] = dot * scale;
        top = std::max(top, scores[s]);
      }
      float total = 0.f;
      for (int64_t s = 0; s < length; ++s) {
        scores[s] = std::exp(scores[s] - top);
        total += scores[s];
      }
      float* out = context + h * d;
      std::fill(out, out + d, 0.f);
      for (int64_t s = 0; s < length; ++s) {
        const float* value = values + (s * kv_groups + g) * d;
        const float p = scores[s] / total;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) out[i] += p * value[i];
      }
    }
  });
}

// An unsigned key with the order of the floats: NaN highest (as torch.topk ranks it), -0 as +0.
uint32_t order_key(float v) {
  if (std::isnan(v)) return UINT32_MAX;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if (v == 0.f) bits = 0;
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// The `keep` highest of scores [units] -> their positions, ascending, into out [keep]. Ranked by
// (score descending, position ascending): at the threshold equal scores go to lower positions.
// Branch-free (scores are data the branch predictor cannot learn): the keep-th highest key bit
// by bit from counts over the row, then one ascending pass. `keys`: scratch of `units`.
void top_k_row(const float* scores, int64_t units, int64_t keep, int64_t* out, uint32_t* keys) {
  if (keep == 0) return;
  for (int64_t u = 0; u < units; ++u) keys[u] = order_key(scores[u]);
  uint32_t threshold = 0;  // the largest key with at least `keep` keys >= it
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t candidate = threshold | (1u << bit);
    int32_t at_least = 0;  // int32 lanes: the count vectorises
#pragma omp simd reduction(+ : at_least)
    for (int64_t u = 0; u < units; ++u) at_least += keys[u] >= candidate;
    if (at_least >= keep) threshold = candidate;
  }
  int32_t above = 0;
#pragma omp simd reduction(+ : above)
  for (int64_t u = 0; u < units; ++u) above += keys[u] > threshold;
  int64_t ties_left = keep - above;
  int64_t written = 0;
  for (int64_t u = 0; u < units && written < keep; ++u) {
    const bool tie = keys[u] == threshold && ties_left > 0;
    out[written] = u;
    written += (keys[u] > threshold) | tie;
    ties_left -= tie;
  }
}

// How a step keeps the entries of one of its own tensors (selectors/rules.py ChannelRule).
struct Rule {
  bool active = false;  // false: every entry kept
  double threshold = 0.0;  // kept: score > threshold (as float32, as the masked path compares)
  int64_t keep = -1;  // >= 0: each token's top `keep` scores instead
  MaybeTensor scale;  // [U]: score_i = |x_i| * scale_i; None: |x_i|
};

// The entries of x [n] a rule keeps, ascending, written into `kept` (a Gather over it); an
// inactive rule gathers every entry.
Gather select(const Rule& rule, const float* x, int64_t n, std::vector<int64_t>& kept) {
  if (!rule.active) return {torch::Tensor(), nullptr, n};
  const float* scale = maybe_data(rule.scale, "rule scale");
  std::vector<float> scores(n);
  for (int64_t i = 0; i < n; ++i) scores[i] = scale ? std::fabs(x[i]) * scale[i] : std::fabs(x[i]);
  if (rule.keep >= 0) {
    const int64_t keep = std::min(rule.keep, n);
    kept.resize(keep);
    std::vector<uint32_t> keys(n);
    top_k_row(scores.data(), n, keep, kept.data(), keys.data());
  } else {
    const float threshold = static_cast<float>(rule.threshold);
    kept.resize(n);
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      kept[count] = i;
      count += scores[i] > threshold;
    }
    kept.resize(count);
  }
  return {torch::Tensor(), kept.data(), static_cast<int64_t>(kept.size())};
}

// A selection ahead that the step runs itself (selectors/rules.py StepNetwork): scores =
// MLP(min-max(x)) of one token's state, head columns then neuron columns; heads summed per group
// of `head_group` query heads and the `head_keep` highest groups kept whole, the `neuron_keep`
// highest neurons kept (a keep < 0: that block not chosen).
struct StepNetwork {
  bool active = false;
  std::vector<torch::Tensor> weights;  // [in, out] per network layer
  std::vector<torch::Tensor> biases;  // [out]
  std::vector<bool> relu;
  int64_t heads = 0;
  int64_t neurons = 0;
  int64_t head_group = 1;
  int64_t head_keep = -1;
  int64_t neuron_keep = -1;
};

// The units a step chose itself (a StepNetwork), as the rows the kernels read.
struct Chosen {
  bool heads = false;
  bool neurons = false;
  std::vector<int64_t> q_rows;  // rows of q and o of the kept heads
  std::vector<int64_t> kv_groups;  // each kept head's K/V group
  std::vector<int64_t> neuron_rows;
};

// x [n] through the network -> the units it keeps, into `chosen`.
void run_network(const StepNetwork& net, const float* x, int64_t n, int64_t head_dim, int64_t queries_per_kv,
                 Chosen& chosen) {
  float low = x[0];
  float high = x[0];
  for (int64_t i = 1; i < n; ++i) {
    low = std::min(low, x[i]);
    high = std::max(high, x[i]);
  }
  const float span = (high - low) + 1e-8f;
  std::vector<float> z(n);
  for (int64_t i = 0; i < n; ++i) z[i] = (x[i] - low) / span;
  for (size_t k = 0; k < net.weights.size(); ++k) {
    const auto& weight = net.weights[k];
    TORCH_CHECK(weight.dim() == 2 && weight.size(0) == static_cast<int64_t>(z.size()), "network: weight [in, out]");
    const int64_t width = weight.size(1);
    std::vector<float> out(width);
    const auto all = gather_of(c10::nullopt, weight.size(0));
    transposed_gemv(float_data(weight, "network weight"), width, width, all, z.data(),
                    float_data(net.biases[k], "network bias"), out.data());
    if (net.relu[k])
      for (auto& v : out) v = v > 0.f ? v : 0.f;
    z.swap(out);
  }
  if (net.head_keep >= 0) {
    const int64_t groups = net.heads / net.head_group;
    std::vector<float> scores(groups, 0.f);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t q = 0; q < net.head_group; ++q) scores[g] += z[g * net.head_group + q];
    std::vector<int64_t> kept(net.head_keep);
    std::vector<uint32_t> keys(groups);
    top_k_row(scores.data(), groups, net.head_keep, kept.data(), keys.data());
    chosen.heads = true;
    for (const int64_t g : kept) {
      for (int64_t q = 0; q < net.head_group; ++q) {
        const int64_t head = g * net.head_group + q;
        chosen.kv_groups.push_back(head / queries_per_kv);
        for (int64_t r = 0; r < head_dim; ++r) chosen.q_rows.push_back(head * head_dim + r);
      }
    }
  }
  if (net.neuron_keep >= 0) {
    chosen.neurons = true;
    chosen.neuron_rows.resize(net.neuron_keep);
    std::vector<uint32_t> keys(net.neurons);
    top_k_row(z.data() + net.heads, net.neurons, net.neuron_keep, chosen.neuron_rows.data(), keys.data());
  }
}

}  // namespace

torch::Tensor gather_gemv(torch::Tensor weight, MaybeTensor rows, torch::Tensor x) {
  auto xc = x.contiguous();
  const auto gather = gather_of(rows, weight.size(0));
  auto out = torch::empty({gather.count}, x.options());
  gemv({{row_data(weight, "weight"), weight.stride(0), &gather, nullptr, out.data_ptr<float>()}}, weight.size(1),
       float_data(xc, "x"));
  return out;
}

torch::Tensor gather_transposed_gemv(torch::Tensor weight_t, MaybeTensor rows, torch::Tensor a) {
  auto ac = a.contiguous();
  const auto gather = gather_of(rows, weight_t.size(0));
  auto out = torch::empty({weight_t.size(1)}, a.options());
  transposed_gemv(row_data(weight_t, "weight"), weight_t.size(1), weight_t.stride(0), gather, float_data(ac, "a"),
                  nullptr, out.data_ptr<float>());
  return out;
}

// Each row's `keep` highest scores [R, U] -> their positions, ascending [R, keep] (top_k_row;
// rows split between threads).
torch::Tensor top_k_rows(torch::Tensor scores, int64_t keep) {
  TORCH_CHECK(scores.dim() == 2, "top_k_rows: scores [R, U]");
  TORCH_CHECK(keep >= 0 && keep <= scores.size(1) && scores.size(1) < INT32_MAX, "top_k_rows: keep in [0, U]");
  auto sc = scores.contiguous();
  const float* data = float_data(sc, "scores");
  const int64_t units = sc.size(1);
  auto out = torch::empty({sc.size(0), keep}, sc.options().dtype(torch::kLong));
  int64_t* positions = out.data_ptr<int64_t>();
  at::parallel_for(0, sc.size(0), 1, [&](int64_t first, int64_t last) {
    std::vector<uint32_t> keys(units);
    for (int64_t r = first; r < last; ++r) top_k_row(data + r * units, units, keep, positions + r * keep, keys.data());
  });
  return out;
}

torch::Tensor mlp_rows(torch::Tensor mlp, MaybeTensor rows, torch::Tensor h, int64_t activation) {
  TORCH_CHECK(mlp.dim() == 3 && (mlp.size(1) == 2 || mlp.size(1) == 3), "mlp: [I, parts, D], parts 2 or 3");
  auto hc = h.contiguous();
  const auto gather = gather_of(rows, mlp.size(0));
  auto out = torch::empty({mlp.size(2)}, h.options());
  neuron_major_mlp(float_data(mlp, "mlp"), mlp.size(1), mlp.size(2), gather, float_data(hc, "h"), nullptr, nullptr,
                   activation, out.data_ptr<float>());
  return out;
}

// One layer's tensors and selection for decode_layers (None where absent; the header says
// which layout each block runs in). `counts` (int64 [5], optional) receives the kept counts of
// the call: attention-input channels, head-context channels, MLP-input channels, neurons, and
// the K/V groups the attending heads read.
struct LayerPack {
  MaybeTensor attention_norm, attention_norm_bias, mlp_norm, mlp_norm_bias;
  MaybeTensor q, q_bias, k, k_bias, v, v_bias;  // rows [R, D] (q: every head, or a sliced copy)
  MaybeTensor o, o_bias;  // o transposed [H d, D]
  MaybeTensor q_rows;  // rows of q and o the kept heads own (None: every row)
  MaybeTensor kv_groups;  // [heads attending] each query head's K/V group in the cache
  MaybeTensor qkv_t;  // input layout: [D, (H + 2 KV) d]
  Rule attention_input, head_context;
  MaybeTensor mlp, up_bias, down_bias, neuron_rows;  // rows layout: neuron-major [I, parts, D]
  MaybeTensor gate, gate_rest;  // gate layout: [I, D] (OPT: fc1) and [I, parts - 1, D] (up, down^T)
  MaybeTensor gate_up_t, down_t;  // input layout: [D, 2 I] (OPT: [D, I]) and [I, D]
  Rule mlp_input, neuron_activation;
  MaybeTensor cache_k, cache_v;  // [max_len, groups, d]
  StepNetwork network_at_input, network_at_mlp;  // chosen ahead inside the step: before the layer, its MLP
  int64_t queries_per_kv = 1;
  MaybeTensor counts;
};

namespace {

// Seconds spent per part of a step, accumulated into timings [PARTS] (float64) when given:
// 0 attention weights (q/k/v and o products, input selections), 1 attention over the cache
// (rotary, softmax, values), 2 MLP weights (up/gate/down rows, input selections), 3 the dense
// gate product and its selection (the gate point), 4 norms and residuals, 5 step networks.
constexpr int PARTS = 6;

struct PartClock {
  double* seconds;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void lap(int part) {
    if (!seconds) return;
    const auto now = std::chrono::steady_clock::now();
    seconds[part] += std::chrono::duration<double>(now - last).count();
    last = now;
  }
};

// What one-token steps share across layers: rotary cos/sin [d] (or none), the position
// written in every cache, the attention scale, the norms' epsilon and kind, the activation.
struct StepSettings {
  const float* cos;
  const float* sin;
  int64_t position;
  int64_t head_dim;
  float scale;
  double eps;
  int64_t norm_kind;
  int64_t activation;
};

const torch::Tensor& need(const MaybeTensor& t, const char* name) {
  TORCH_CHECK(t.has_value(), "decode_layers: the pack has no ", name);
  return *t;
}

void record(const LayerPack& pack, int slot, int64_t count) {
  if (pack.counts.has_value()) pack.counts->data_ptr<int64_t>()[slot] = count;
}

// The K/V groups some attending head reads (counts' last column).
int64_t distinct_groups(const int64_t* groups, int64_t heads, int64_t all) {
  std::vector<char> read(all, 0);
  for (int64_t h = 0; h < heads; ++h) read[groups[h]] = 1;
  return std::count(read.begin(), read.end(), 1);
}

// residual [D] -> y [D] = residual + attention(norm(residual)); returns the context [heads d].
// With `chosen.heads` (a network of the pack chose them) its rows replace the pack's q_rows.
torch::Tensor attention_block(const LayerPack& pack, const StepSettings& step, const float* residual, float* y,
                              int64_t dim, const Chosen& chosen, PartClock& clock) {
  const int64_t d = step.head_dim;
  const auto& cache_k = need(pack.cache_k, "cache_k");
  const auto& cache_v = need(pack.cache_v, "cache_v");
  TORCH_CHECK(step.position < cache_k.size(0), "decode_layers: position past the cache");
  TORCH_CHECK(cache_k.is_contiguous() && cache_v.is_contiguous(), "decode_layers: contiguous caches");
  const int64_t groups = cache_k.size(1);
  auto groups_index = chosen.heads ? torch::Tensor() : need(pack.kv_groups, "kv_groups").to(torch::kLong).contiguous();
  const int64_t* head_groups = chosen.heads ? chosen.kv_groups.data() : groups_index.data_ptr<int64_t>();
  const int64_t heads = chosen.heads ? static_cast<int64_t>(chosen.kv_groups.size()) : groups_index.numel();
  record(pack, 4, distinct_groups(head_groups, heads, groups));
  std::vector<float> h(dim);
  normalize(residual, dim, float_data(need(pack.attention_norm, "attention_norm"), "norm"),
            maybe_data(pack.attention_norm_bias, "norm bias"), step.eps, step.norm_kind, h.data());
  clock.lap(4);
  std::vector<float> query(heads * d);
  float* keys = cache_k.data_ptr<float>() + step.position * groups * d;
  float* values = cache_v.data_ptr<float>() + step.position * groups * d;
  const auto& o = need(pack.o, "o");
  auto context = torch::empty({1, heads * d}, cache_k.options());
  float* ctx = context.data_ptr<float>();
  std::vector<int64_t> kept_input;
  std::vector<int64_t> kept_context;
  Gather q_gather = chosen.heads ? Gather{torch::Tensor(), chosen.q_rows.data(), heads * d}
                                 : gather_of(pack.q_rows, heads * d);
  if (pack.qkv_t.has_value()) {  // input layout: columns of the kept input channels
    const auto& qkv_t = *pack.qkv_t;
    const int64_t width = qkv_t.size(1);
    TORCH_CHECK(width == (heads + 2 * groups) * d, "decode_layers: qkv_t [D, (H + 2 KV) d]");
    const Gather inputs = select(pack.attention_input, h.data(), dim, kept_input);
    record(pack, 0, inputs.count);
    std::vector<float> qkv(width);
    transposed_gemv(float_data(qkv_t, "qkv_t"), width, width, inputs, h.data(), nullptr, qkv.data(), true);
    const float* biases[3] = {maybe_data(pack.q_bias, "q bias"), maybe_data(pack.k_bias, "k bias"),
                              maybe_data(pack.v_bias, "v bias")};
    float* parts[3] = {query.data(), keys, values};
    const int64_t sizes[3] = {heads * d, groups * d, groups * d};
    const float* source = qkv.data();
    for (int p = 0; p < 3; ++p) {
      for (int64_t i = 0; i < sizes[p]; ++i) parts[p][i] = source[i] + (biases[p] ? biases[p][i] : 0.f);
      source += sizes[p];
    }
  } else {  // rows layout: the kept heads' q rows, k/v rows of every cached group
    record(pack, 0, dim);
    const auto kv_all = gather_of(c10::nullopt, need(pack.k, "k").size(0));
    TORCH_CHECK(q_gather.count == heads * d && pack.k->size(0) == groups * d,
                "decode_layers: q rows of the attending heads, k/v rows of the cached groups");
    gemv({{float_data(need(pack.q, "q"), "q"), dim, &q_gather, maybe_data(pack.q_bias, "q bias"), query.data()},
          {float_data(*pack.k, "k"), dim, &kv_all, maybe_data(pack.k_bias, "k bias"), keys},
          {float_data(need(pack.v, "v"), "v"), dim, &kv_all, maybe_data(pack.v_bias, "v bias"), values}},
         dim, h.data());
  }
  clock.lap(0);
  if (step.cos) {
    rotate(query.data(), heads, d, step.cos, step.sin);
    rotate(keys, groups, d, step.cos, step.sin);
  }
  attend(query.data(), head_groups, heads, cache_k.data_ptr<float>(), cache_v.data_ptr<float>(), groups,
         step.position + 1, d, step.scale, ctx);
  clock.lap(1);
  const float* o_bias = maybe_data(pack.o_bias, "o bias");
  if (pack.qkv_t.has_value()) {
    const Gather channels = select(pack.head_context, ctx, heads * d, kept_context);
    record(pack, 1, channels.count);
    transposed_gemv(float_data(o, "o"), dim, dim, channels, ctx, o_bias, y, true);
  } else {
    record(pack, 1, q_gather.count);
    transposed_gemv(float_data(o, "o"), dim, dim, q_gather, ctx, o_bias, y);
  }
  clock.lap(0);
  for (int64_t i = 0; i < dim; ++i) y[i] += residual[i];
  clock.lap(4);
  return context;
}

// The gate layout: gate [I, D] dense, act, the kept neurons, then their rest rows [I, parts, D]
// (gated: up, down^T; OPT: down^T, the gate being fc1 with up_bias as its bias).
void gate_mlp(const LayerPack& pack, const StepSettings& step, const float* h, float* out, int64_t dim,
              PartClock& clock) {
  const auto& gate = need(pack.gate, "gate");
  const auto& rest = need(pack.gate_rest, "gate_rest");
  const int64_t neurons = gate.size(0);
  const int64_t parts = rest.size(1);
  const bool gated = parts == 2;
  const float* up_bias = maybe_data(pack.up_bias, "up bias");
  std::vector<float> act(neurons);
  const auto all = gather_of(c10::nullopt, neurons);
  gemv({{float_data(gate, "gate"), dim, &all, gated ? nullptr : up_bias, act.data()}}, dim, h);
  for (int64_t j = 0; j < neurons; ++j) act[j] = activate(act[j], step.activation);
  std::vector<int64_t> kept_storage;
  const Gather kept = select(pack.neuron_activation, act.data(), neurons, kept_storage);
  record(pack, 3, kept.count);
  clock.lap(3);
  const float* rows = float_data(rest, "gate_rest");
  const int64_t ahead = rows_ahead(parts * dim);
  sum_rows_by_thread(kept.count, dim, maybe_data(pack.down_bias, "down bias"), out,
                     [&](int64_t begin, int64_t end, RowSum& sum) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t neuron = kept(j);
      const float* own = rows + neuron * parts * dim;
      const float* later = j + ahead < end ? rows + kept(j + ahead) * parts * dim : nullptr;
      float a = act[neuron];
      if (gated) a *= dot(own, h, dim, later) + (up_bias ? up_bias[neuron] : 0.f);
      sum.add(a, own + (parts - 1) * dim, later ? later + (parts - 1) * dim : nullptr);
    }
  });
}

// The input layout: the kept MLP-input channels' rows of gate/up transposed, the activation,
// its kept entries' rows of down transposed.
void input_mlp(const LayerPack& pack, const StepSettings& step, const float* h, float* out, int64_t dim) {
  const auto& gate_up_t = need(pack.gate_up_t, "gate_up_t");
  const auto& down_t = need(pack.down_t, "down_t");
  const int64_t neurons = down_t.size(0);
  const int64_t width = gate_up_t.size(1);
  const bool gated = width == 2 * neurons;
  std::vector<int64_t> kept_input;
  const Gather inputs = select(pack.mlp_input, h, dim, kept_input);
  record(pack, 2, inputs.count);
  std::vector<float> products(width);
  transposed_gemv(float_data(gate_up_t, "gate_up_t"), width, width, inputs, h, nullptr, products.data(), true);
  const float* up_bias = maybe_data(pack.up_bias, "up bias");
  std::vector<float> act(neurons);
  for (int64_t j = 0; j < neurons; ++j) {
    const float b = up_bias ? up_bias[j] : 0.f;
    act[j] = gated ? activate(products[j], step.activation) * (products[neurons + j] + b)
                   : activate(products[j] + b, step.activation);
  }
  std::vector<int64_t> kept_storage;
  const Gather kept = select(pack.neuron_activation, act.data(), neurons, kept_storage);
  record(pack, 3, kept.count);
  transposed_gemv(float_data(down_t, "down_t"), dim, dim, kept, act.data(), maybe_data(pack.down_bias, "down bias"),
                  out, true);
}

// y [D] += the MLP of norm(y), in the layout the pack holds.
// With `chosen.neurons` (a network of the pack chose them, before the layer or here on the MLP
// input) their rows replace the pack's neuron_rows.
void mlp_block(const LayerPack& pack, const StepSettings& step, float* y, int64_t dim, float* h, Chosen& chosen,
               PartClock& clock) {
  normalize(y, dim, float_data(need(pack.mlp_norm, "mlp_norm"), "norm"), maybe_data(pack.mlp_norm_bias, "norm bias"),
            step.eps, step.norm_kind, h);
  clock.lap(4);
  if (pack.network_at_mlp.active) {
    run_network(pack.network_at_mlp, h, dim, step.head_dim, pack.queries_per_kv, chosen);
    clock.lap(5);
  }
  std::vector<float> out(dim);
  if (pack.gate.has_value()) {
    record(pack, 2, dim);
    gate_mlp(pack, step, h, out.data(), dim, clock);
  } else if (pack.gate_up_t.has_value()) {
    input_mlp(pack, step, h, out.data(), dim);
  } else {
    const auto& mlp = need(pack.mlp, "mlp");
    TORCH_CHECK(mlp.dim() == 3 && mlp.size(2) == dim, "decode_layers: mlp [I, parts, D]");
    const auto neurons = chosen.neurons
                             ? Gather{torch::Tensor(), chosen.neuron_rows.data(),
                                      static_cast<int64_t>(chosen.neuron_rows.size())}
                             : gather_of(pack.neuron_rows, mlp.size(0));
    record(pack, 2, dim);
    record(pack, 3, neurons.count);
    neuron_major_mlp(float_data(mlp, "mlp"), mlp.size(1), dim, neurons, h, maybe_data(pack.up_bias, "up bias"),
                     maybe_data(pack.down_bias, "down bias"), step.activation, out.data());
  }
  clock.lap(2);
  for (int64_t i = 0; i < dim; ++i) y[i] += out[i];
  clock.lap(4);
}

}  // namespace

// One token x [1, D] through consecutive layers (one pack each) without returning to Python:
// (x' [1, D], the last attention block's head context [1, heads d], the last MLP input [1, D]).
// `start_at_mlp`: the first layer's attention block already ran (x is its output); `stop_before_mlp`:
// the last layer stops after its attention block (the MLP input returned is the one it would read).
// `timings` (float64 [PARTS], optional): seconds per part added (PartClock).
std::vector<torch::Tensor> decode_layers(torch::Tensor x, std::vector<LayerPack> layers, MaybeTensor cos,
                                         MaybeTensor sin, int64_t position, int64_t head_dim, double scale, double eps,
                                         int64_t norm_kind, int64_t activation, bool start_at_mlp,
                                         bool stop_before_mlp, MaybeTensor timings) {
  TORCH_CHECK(!layers.empty(), "decode_layers: no layer");
  TORCH_CHECK(!timings.has_value() || (timings->scalar_type() == torch::kFloat64 && timings->numel() == PARTS &&
                                       timings->is_contiguous()), "decode_layers: timings float64 [", PARTS, "]");
  PartClock clock{timings.has_value() ? timings->data_ptr<double>() : nullptr};
  TORCH_CHECK(cos.has_value() == sin.has_value(), "decode_layers: cos and sin together");
  const StepSettings step{maybe_data(cos, "cos"), maybe_data(sin, "sin"), position, head_dim,
                          static_cast<float>(scale), eps, norm_kind, activation};
  const int64_t dim = x.numel();
  auto current = x.contiguous().clone().view({1, dim});
  float_data(current, "x");
  auto next = torch::empty_like(current);
  auto mlp_input = torch::empty_like(current);
  torch::Tensor context = torch::empty({1, 0}, current.options());
  const size_t count = layers.size();
  for (size_t i = 0; i < count; ++i) {
    const auto& pack = layers[i];
    Chosen chosen;
    if (pack.network_at_input.active && !(i == 0 && start_at_mlp)) {
      run_network(pack.network_at_input, current.data_ptr<float>(), dim, step.head_dim, pack.queries_per_kv, chosen);
      clock.lap(5);
    }
    if (!(i == 0 && start_at_mlp)) {
      context = attention_block(pack, step, current.data_ptr<float>(), next.data_ptr<float>(), dim, chosen, clock);
      std::swap(current, next);
    }
    if (i + 1 == count && stop_before_mlp) {
      normalize(current.data_ptr<float>(), dim, float_data(need(pack.mlp_norm, "mlp_norm"), "norm"),
                maybe_data(pack.mlp_norm_bias, "norm bias"), step.eps, step.norm_kind, mlp_input.data_ptr<float>());
      clock.lap(4);
      break;
    }
    mlp_block(pack, step, current.data_ptr<float>(), dim, mlp_input.data_ptr<float>(), chosen, clock);
  }
  return {current, context, mlp_input};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Rule>(m, "Rule")
      .def(pybind11::init<>())
      .def_readwrite("active", &Rule::active)
      .def_readwrite("threshold", &Rule::threshold)
      .def_readwrite("keep", &Rule::keep)
      .def_readwrite("scale", &Rule::scale);
  pybind11::class_<StepNetwork>(m, "StepNetwork")
      .def(pybind11::init<>())
      .def_readwrite("active", &StepNetwork::active)
      .def_readwrite("weights", &StepNetwork::weights)
      .def_readwrite("biases", &StepNetwork::biases)
      .def_readwrite("relu", &StepNetwork::relu)
      .def_readwrite("heads", &StepNetwork::heads)
      .def_readwrite("neurons", &StepNetwork::neurons)
      .def_readwrite("head_group", &StepNetwork::head_group)
      .def_readwrite("head_keep", &StepNetwork::head_keep)
      .def_readwrite("neuron_keep", &StepNetwork::neuron_keep);
  auto pack = pybind11::class_<LayerPack>(m, "LayerPack").def(pybind11::init<>());
#define FIELD(name) pack.def_readwrite(#name, &LayerPack::name)
  FIELD(attention_norm); FIELD(attention_norm_bias); FIELD(mlp_norm); FIELD(mlp_norm_bias);
  FIELD(q); FIELD(q_bias); FIELD(k); FIELD(k_bias); FIELD(v); FIELD(v_bias); FIELD(o); FIELD(o_bias);
  FIELD(q_rows); FIELD(kv_groups); FIELD(qkv_t); FIELD(attention_input); FIELD(head_context);
  FIELD(mlp); FIELD(up_bias); FIELD(down_bias); FIELD(neuron_rows); FIELD(gate); FIELD(gate_rest);
  FIELD(gate_up_t); FIELD(down_t); FIELD(mlp_input); FIELD(neuron_activation); FIELD(cache_k); FIELD(cache_v);
  FIELD(network_at_input); FIELD(network_at_mlp); FIELD(queries_per_kv); FIELD(counts);
#undef FIELD
  m.def("gather_gemv", &gather_gemv, "y = W[rows] @ x without copying W[rows]");
  m.def("gather_transposed_gemv", &gather_transposed_gemv, "y = a @ Wt[rows] without copying Wt[rows]");
  m.def("neuron_major_mlp", &mlp_rows, "the MLP over kept neurons of a neuron-major [I, parts, D] weight");
  m.def("top_k_rows", &top_k_rows, "each row's keep highest scores' positions, ascending");
  m.def("decode_layers", &decode_layers, "one token through consecutive decoder layers: (x', context, MLP input)",
        pybind11::arg("x"), pybind11::arg("layers"), pybind11::arg("cos"), pybind11::arg("sin"),
        pybind11::arg("position"), pybind11::arg("head_dim"), pybind11::arg("scale"), pybind11::arg("eps"),
        pybind11::arg("norm_kind"), pybind11::arg("activation"), pybind11::arg("start_at_mlp"),
        pybind11::arg("stop_before_mlp"), pybind11::arg("timings") = pybind11::none());
}
