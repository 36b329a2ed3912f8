// Hough voting on the CPU as an XLA FFI custom call: the formula of hvpose/ops/voting.py in two passes per row.
//
// XLA:CPU runs a scatter-add as a generic single-threaded loop (about 20 ns per update on a 2-core AMD EPYC,
// 1.5 million updates per 353x257 crop with 17 keypoints). Here, for each source row:
//   1. vectorised (4 lanes, GCC/clang vector extensions, so also on ARM): every vote's position x + F, its floor,
//      the fractions (x - x0) + F clipped to [0, 1] and the four bilinear weights h / (pi R^2) * G, with the flat
//      index of its top-left corner in a padded accumulator. Votes outside the crop, or with non-finite offsets,
//      get weight 0 (and a harmless index).
//   2. scalar: four adds per vote into the accumulator, which has one spare row and column on each side, so no
//      corner needs a bounds check.
// Then the accumulator's interior is the output. Tasks take whole crops, or, when crops are too few to balance,
// bands of each crop's rows, each into its own accumulator, summed at the end: there are no atomic adds. Tasks run on
// XLA's CPU thread pool (`Parallel`). R comes one
// per crop, so every operand has the batch in front. Same arithmetic as `_hough_vote_scatter` (float32), except
// multiplying by 1 / (pi R^2) instead of dividing, and the summation order: the two agree to float32 rounding.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float Floats __attribute__((vector_size(16)));
typedef int32_t Ints __attribute__((vector_size(16)));
constexpr int kLanes = 4;

inline Floats Select(Ints mask, Floats if_true, Floats if_false) {
  return reinterpret_cast<Floats>((reinterpret_cast<Ints>(if_true) & mask) |
                                  (reinterpret_cast<Ints>(if_false) & ~mask));
}

inline Floats Splat(float v) { return Floats{v, v, v, v}; }

struct Problem {
  const float* heatmaps;  // (B, H, W, K)
  const float* offsets;   // (B, H, W, K, 2), [..., 0] = x
  float* votes;           // (B, H, W, K)
  int64_t height, width, keypoints;
  const float* radius;    // (B,) R per crop
};

// One thread's buffers: the padded accumulator (H+2, W+2, K) and one source row's votes.
struct Scratch {
  std::vector<float> accumulator;
  std::vector<int32_t> corner;        // flat accumulator index of each vote's top-left corner
  std::vector<float> weight[4];       // its four bilinear weights
  std::vector<float> column, padded;  // x of each vote; the row's last partial lane group, zero-padded
  std::vector<int32_t> keypoint;

  explicit Scratch(const Problem& p) : accumulator((p.height + 2) * (p.width + 2) * p.keypoints) {
    const int64_t n = p.width * p.keypoints, rounded = (n + kLanes - 1) / kLanes * kLanes;
    corner.resize(rounded);
    for (auto& w : weight) w.resize(rounded);
    column.resize(rounded);
    keypoint.resize(rounded);
    // Lanes past the row's end (read from a zero-padded copy) sit at x = W - 1, so their arithmetic stays finite
    // and in bounds; the scatter pass stops at the row's end and never adds them.
    for (int64_t j = 0; j < rounded; ++j) {
      column[j] = static_cast<float>(std::min(j / p.keypoints, p.width - 1));
      keypoint[j] = static_cast<int32_t>(j % p.keypoints);
    }
    padded.resize(3 * kLanes);
  }
};

// Pass 1 for source row y of a crop: corner indices and weights of its W*K votes.
void RowVotes(const Problem& p, const float* heat, const float* offset, int64_t y, float inverse_normaliser,
              Scratch& s) {
  const int64_t n = p.width * p.keypoints;
  const int32_t padded_width = static_cast<int32_t>(p.width + 2), keypoints = static_cast<int32_t>(p.keypoints);
  const Floats zero = Splat(0.0f), one = Splat(1.0f), minus_one = Splat(-1.0f);
  const Floats limit_x = Splat(static_cast<float>(p.width)), limit_y = Splat(static_cast<float>(p.height));
  const Floats row = Splat(static_cast<float>(y)), scale = Splat(inverse_normaliser);
  for (int64_t j = 0; j < n; j += kLanes) {
    const float* h = heat + j;
    const float* o = offset + 2 * j;
    if (j + kLanes > n) {  // the last partial group: read zero-padded copies
      std::fill(s.padded.begin(), s.padded.end(), 0.0f);
      std::copy(heat + j, heat + n, s.padded.data());
      std::copy(offset + 2 * j, offset + 2 * n, s.padded.data() + kLanes);
      h = s.padded.data();
      o = s.padded.data() + kLanes;
    }
    Floats h4, x4;
    Ints k4;
    std::memcpy(&h4, h, sizeof h4);
    std::memcpy(&x4, s.column.data() + j, sizeof x4);
    std::memcpy(&k4, s.keypoint.data() + j, sizeof k4);
    const Floats raw_x = {o[0], o[2], o[4], o[6]}, raw_y = {o[1], o[3], o[5], o[7]};
    const Floats vote_x = x4 + raw_x, vote_y = row + raw_y;
    // The floor corner must lie in [-1, W-1] x [-1, H-1] for any part of the vote to land in the crop. NaN fails
    // every comparison and +-inf one, so non-finite offsets are dropped too. Dropped votes continue with offset 0
    // (finite arithmetic, an index inside the accumulator) and weight 0.
    const Ints inside = (vote_x >= minus_one) & (vote_x < limit_x) & (vote_y >= minus_one) & (vote_y < limit_y);
    const Floats offset_x = Select(inside, raw_x, zero), offset_y = Select(inside, raw_y, zero);
    const Floats safe_x = x4 + offset_x, safe_y = row + offset_y;
    // floor(v) for v >= -1: truncate toward zero, then one down where that rounded up.
    Floats x0 = __builtin_convertvector(__builtin_convertvector(safe_x, Ints), Floats);
    Floats y0 = __builtin_convertvector(__builtin_convertvector(safe_y, Ints), Floats);
    x0 = Select(x0 > safe_x, x0 - one, x0);
    y0 = Select(y0 > safe_y, y0 - one, y0);
    // (x - x0) is an exact integer; adding the offset last keeps the fraction exact to its own rounding. Where
    // rounding put x + F across an integer, clipping keeps the weights non-negative.
    Floats fraction_x = (x4 - x0) + offset_x, fraction_y = (row - y0) + offset_y;
    fraction_x = Select(fraction_x < zero, zero, Select(fraction_x > one, one, fraction_x));
    fraction_y = Select(fraction_y < zero, zero, Select(fraction_y > one, one, fraction_y));
    const Floats weight = Select(inside, h4 * scale, zero);
    const Ints index = ((__builtin_convertvector(y0, Ints) + 1) * padded_width +
                        __builtin_convertvector(x0, Ints) + 1) * keypoints + k4;
    const Floats top = weight * (one - fraction_y), bottom = weight * fraction_y;
    const Floats w0 = top * (one - fraction_x), w1 = top * fraction_x;
    const Floats w2 = bottom * (one - fraction_x), w3 = bottom * fraction_x;
    std::memcpy(s.corner.data() + j, &index, sizeof index);
    std::memcpy(s.weight[0].data() + j, &w0, sizeof w0);
    std::memcpy(s.weight[1].data() + j, &w1, sizeof w1);
    std::memcpy(s.weight[2].data() + j, &w2, sizeof w2);
    std::memcpy(s.weight[3].data() + j, &w3, sizeof w3);
  }
}

// Both passes for source rows [y_begin, y_end) of one crop, into the thread's zeroed accumulator.
void AccumulateRows(const Problem& p, int64_t crop, int64_t y_begin, int64_t y_end, Scratch& s) {
  const int64_t H = p.height, W = p.width, K = p.keypoints, n = W * K;
  const int64_t right = K, down = (W + 2) * K;
  std::fill(s.accumulator.begin(), s.accumulator.end(), 0.0f);
  const float* heat = p.heatmaps + crop * H * n;
  const float* offset = p.offsets + crop * H * n * 2;
  float* acc = s.accumulator.data();
  const float r = p.radius[crop], inverse_normaliser = 1.0f / (3.14159265358979323846f * r * r);
  for (int64_t y = y_begin; y < y_end; ++y) {
    RowVotes(p, heat + y * n, offset + y * n * 2, y, inverse_normaliser, s);
    const int32_t* corner = s.corner.data();
    const float *w0 = s.weight[0].data(), *w1 = s.weight[1].data(), *w2 = s.weight[2].data(),
                *w3 = s.weight[3].data();
    for (int64_t j = 0; j < n; ++j) {
      float* at = acc + corner[j];
      at[0] += w0[j];
      at[right] += w1[j];
      at[down] += w2[j];
      at[down + right] += w3[j];
    }
  }
}

// Output rows [y_begin, y_end) of one crop: the sum of the accumulators' interiors.
void WriteRows(const Problem& p, int64_t crop, int64_t y_begin, int64_t y_end, const std::vector<Scratch>& parts) {
  const int64_t W = p.width, K = p.keypoints, n = W * K;
  float* out = p.votes + crop * p.height * n;
  for (int64_t y = y_begin; y < y_end; ++y) {
    const int64_t interior = ((y + 1) * (W + 2) + 1) * K;
    std::copy(parts[0].accumulator.data() + interior, parts[0].accumulator.data() + interior + n, out + y * n);
    for (size_t part = 1; part < parts.size(); ++part) {
      const float* from = parts[part].accumulator.data() + interior;
      for (int64_t i = 0; i < n; ++i) out[y * n + i] += from[i];
    }
  }
}

// Runs task(t) for every t in [0, tasks) and waits for all: the caller claims tasks one by one from a shared counter,
// and up to `tasks - 1` helpers scheduled on XLA's own CPU thread pool claim them too. The pool is the one XLA's
// intra-op work runs on, shared by every CPU device of the process, so eight fake devices voting at once queue on
// its threads rather than starting eight times the cores. Nothing waits for a helper that has not started: once
// every task is claimed the caller only waits for the ones running, and a helper that starts late finds none left
// (the state it reads is shared, so it outlives the call). An exception in a task (an allocation failing) comes back
// as false rather than ending the process.
struct Claims {
  std::atomic<int64_t> next{0};
  int64_t finished = 0;
  bool failed = false;
  std::mutex mutex;
  std::condition_variable all_finished;
};

template <typename Task>
bool Parallel(ffi::ThreadPool& pool, int64_t tasks, const Task& task) {
  auto claims = std::make_shared<Claims>();
  // Claims and runs tasks until none is left. Only a claimed task touches `task`, and the caller returns only
  // after every claimed task has finished, so `task` (on the caller's stack) is alive whenever it is used.
  auto work = [claims, tasks, &task]() {
    for (int64_t t; (t = claims->next.fetch_add(1)) < tasks;) {
      bool ok = true;
      try {
        task(t);
      } catch (...) {
        ok = false;
      }
      std::lock_guard<std::mutex> lock(claims->mutex);
      claims->failed |= !ok;
      if (++claims->finished == tasks) claims->all_finished.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(tasks - 1, std::max<int64_t>(pool.num_threads(), 0));
  for (int64_t h = 0; h < helpers; ++h) {
    try {
      auto helper = work;  // Schedule takes its own copy (an rvalue)
      pool.Schedule(std::move(helper));
    } catch (...) {  // cannot allocate the closure: the caller does the rest
      break;
    }
  }
  work();
  std::unique_lock<std::mutex> lock(claims->mutex);
  claims->all_finished.wait(lock, [&] { return claims->finished == tasks; });
  return !claims->failed;
}

ffi::Error HoughVote(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> heatmaps, ffi::Buffer<ffi::F32> offsets,
                     ffi::Buffer<ffi::F32> radius, ffi::ResultBuffer<ffi::F32> votes, int64_t threads) {
  const auto dims = heatmaps.dimensions();
  const size_t rank = dims.size();
  if (rank < 3) return ffi::Error::InvalidArgument("heatmaps must be (..., H, W, K)");
  int64_t batch = 1;
  for (size_t i = 0; i + 3 < rank; ++i) batch *= dims[i];
  if (static_cast<int64_t>(radius.element_count()) != batch)
    return ffi::Error::InvalidArgument("radius must hold one R per crop");
  if (offsets.element_count() != 2 * heatmaps.element_count() ||
      votes->element_count() != heatmaps.element_count())
    return ffi::Error::InvalidArgument("offsets must be (..., H, W, K, 2) and votes (..., H, W, K)");
  const Problem p{heatmaps.typed_data(), offsets.typed_data(), votes->typed_data(),
                  dims[rank - 3], dims[rank - 2], dims[rank - 1], radius.typed_data()};
  if (batch == 0 || p.height * p.width * p.keypoints == 0) return ffi::Error::Success();
  if ((p.height + 2) * (p.width + 2) * p.keypoints >= (int64_t{1} << 31))
    return ffi::Error::InvalidArgument("one crop's maps are too large for int32 vote indices");
  threads = std::max<int64_t>(1, std::min(threads, p.height));
  if (batch % threads == 0 || batch >= 4 * threads) {
    // Whole crops per thread: no combining, and the crops balance (evenly, or within a quarter).
    threads = std::min(threads, batch);
    const bool done = Parallel(pool, threads, [&](int64_t t) {
      std::vector<Scratch> own;
      own.emplace_back(p);
      for (int64_t crop = t; crop < batch; crop += threads) {
        AccumulateRows(p, crop, 0, p.height, own[0]);
        WriteRows(p, crop, 0, p.height, own);
      }
    });
    return done ? ffi::Error::Success() : ffi::Error::Internal("out of memory in the voting kernel");
  }
  // Few crops: every thread takes a band of each crop's source rows into its own accumulator; then every thread
  // sums a band of output rows over the accumulators.
  try {
    std::vector<Scratch> parts;
    for (int64_t t = 0; t < threads; ++t) parts.emplace_back(p);
    for (int64_t crop = 0; crop < batch; ++crop) {
      const bool done = Parallel(pool, threads, [&](int64_t t) {
        AccumulateRows(p, crop, p.height * t / threads, p.height * (t + 1) / threads, parts[t]);
      }) && Parallel(pool, threads, [&](int64_t t) {
        WriteRows(p, crop, p.height * t / threads, p.height * (t + 1) / threads, parts);
      });
      if (!done) return ffi::Error::Internal("out of memory in the voting kernel");
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("out of memory in the voting kernel");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HvposeHoughVoteCpu, HoughVote,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()        // XLA's intra-op CPU thread pool
                                  .Arg<ffi::Buffer<ffi::F32>>()  // heatmaps (..., H, W, K)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // offsets (..., H, W, K, 2)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // radius R per crop (...)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // votes (..., H, W, K)
                                  .Attr<int64_t>("threads"));
