// Training data: one .npy per model input (named after it) and labels.npy in a directory, or a
// small synthetic task that matches the model's inputs and can be learned. Rows are samples;
// step k of a run takes rows k·B … k·B+B−1 (wrapping at the end), or, shuffled, the same
// positions in a per-epoch permutation drawn from the seed.
#pragma once

#include "core/dtype.hpp"
#include "core/shape.hpp"
#include "graph/graph.hpp"

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace smp::train {

struct Array {
  std::string name;
  DType dtype = DType::Undefined;
  Shape sample;       // shape of one row (without the leading row axis)
  int64_t rows = 0;
  std::string bytes;  // rows × sample, row-major
  int64_t row_bytes() const { return byte_size(sample, dtype_size(dtype)); }
};

struct Dataset {
  std::vector<Array> inputs;  // in the graph's input order
  bool has_labels = false;
  Array labels;
  int64_t rows = 0;
  std::string source;  // the directory, or "synthetic ..."
};

enum class LabelKind { None, ClassIndices, Values };

// What labels the graph's (single) output needs: a one-element output is its own loss (None);
// otherwise class indices over the last axis (int64, the output's sample shape without its last
// axis) or values (float32, the output's sample shape), decided by labels.npy's dtype.
struct LabelSpec {
  Shape class_shape;   // for ClassIndices
  Shape value_shape;   // for Values
  int64_t classes = 0; // size of the last axis
  bool self_loss = false;
};
LabelSpec label_spec(const graph::Graph& g);

// Reads and checks DIR: every graph input's file must exist, with the input's dtype and
// per-row shape; labels.npy likewise (unless the output is its own loss); every file the same
// number of rows, at least `min_rows`. Bad input names the file and what is wrong.
Dataset load_dataset(const std::filesystem::path& dir, const graph::Graph& g, int64_t min_rows);

// A learnable task for the graph's inputs: token inputs (int64) count in steps through the
// vocabulary and the labels are the next token (or a function of the first token); float
// inputs are drawn around one random mean per class (a Gaussian mixture) and labelled by it.
Dataset synthetic_dataset(const graph::Graph& g, int64_t rows, uint64_t seed);

// Row indices of step `step`'s global batch of `batch` rows.
std::vector<int64_t> batch_rows(int64_t rows, int64_t step, int64_t batch, bool shuffle, uint64_t seed);
// The given rows of an array, packed as a [rows.size(), sample...] array.
std::string gather_rows(const Array& a, std::span<const int64_t> rows);

}  // namespace smp::train
