// Losses applied to the last stage's output. Each returns the loss value and the gradient of
// (scale * loss) with respect to the output; `scale` is the microbatch's share of the minibatch
// (its label positions / the minibatch's), so that the microbatch losses add up to the
// minibatch's loss and the accumulated gradients to its gradient.
#pragma once

#include "runtime/backend.hpp"
#include "runtime/collectives.hpp"

namespace smp::runtime {

struct LossResult {
  double loss = 0;   // unscaled: the mean over this microbatch
  Tensor grad;       // d(scale * loss) / d(output), the output's shape
};

// Cross-entropy on integer class labels over the last axis: logits [N, C] or [N, T, C] (f32),
// labels [N] or [N, T] (i64; i32 accepted); mean over all label positions.
LossResult cross_entropy(Backend& be, const Tensor& logits, const Tensor& labels, float scale = 1.0f);
// Megatron's vocabulary-parallel cross-entropy: the logits' last axis is split over the ranks of
// `group`, this rank holding classes [vocab_begin, vocab_begin + C) of vocab_total. Two
// reductions over the group (the row maxima; the sums of exponentials with the target logits)
// give every rank the loss of the whole rows; the gradient is this rank's columns of it.
LossResult cross_entropy_vocab_parallel(Backend& be, const Tensor& logits, const Tensor& labels, int64_t vocab_begin,
                                        int64_t vocab_total, Collectives& group, float scale = 1.0f);
// Mean squared error over all elements, float labels of the prediction's shape.
LossResult mean_squared_error(Backend& be, const Tensor& pred, const Tensor& target, float scale = 1.0f);
// The output is a scalar (one element) and is its own loss.
LossResult scalar_loss(Backend& be, const Tensor& out, float scale = 1.0f);

enum class LossKind { CrossEntropy, MeanSquaredError, Scalar };
// Chooses by the output and label dtypes: one-element output -> Scalar; integer labels ->
// CrossEntropy; float labels -> MeanSquaredError.
LossKind choose_loss(const Shape& output, DType label_dtype);
LossResult apply_loss(LossKind kind, Backend& be, const Tensor& out, const Tensor& labels, float scale = 1.0f);

}  // namespace smp::runtime
