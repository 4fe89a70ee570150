#pragma once
/// The ReLU-reduction methods (autorep, snl, uniform, random): a gate at every site, a teacher
/// to start from and distil, masks brought to an exact budget, a finetune with masks frozen.

#include <memory>

#include "layers/gate.h"
#include "trainer/config.h"
#include "trainer/method.h"

namespace autorep::trainer {

/// GateOptions (shape left empty) from the `gate` config section.
layers::GateOptions gate_options(const GateConfig& config);

/// The reduction method named by config.method; nullptr when it is not one.
std::unique_ptr<Method> make_reduction_method(const Config& config);

/// The network weights of a gated model: every parameter that is not a gate's aux, c0, c1, c2.
std::vector<torch::Tensor> weight_parameters(NetImpl& model);

/// Loads the teacher checkpoint of a reduction run and checks it matches the student spec.
/// Throws naming search.teacher for a missing, unreadable or incompatible checkpoint.
Net load_teacher(const Config& config, const ModelSpec& student);

/// The network that computes the KD targets (search.kd.teacher_dtype): `teacher` itself for
/// "float32", an eval-mode bfloat16 copy of it on `device` for "bfloat16".
Net kd_teacher(const Net& teacher, const std::string& dtype, const torch::Device& device);

/// The teacher's logits for `x` as float32, without autograd (`x` is cast to the teacher's dtype).
torch::Tensor teacher_logits(NetImpl& teacher, const torch::Tensor& x);

/// True when this CPU computes bfloat16 natively (AVX512-BF16; AMX CPUs have it too), so a bfloat16 teacher is
/// faster than a float32 one; without it the bfloat16 forward is emulated and slower.
bool cpu_has_native_bf16();

}  // namespace autorep::trainer
