#include "trainer/models/net.h"

#include <torch/torch.h>

#include <sstream>
#include <stdexcept>

namespace autorep::trainer::models {

torch::nn::AnyModule NetImpl::add_site(torch::nn::Module& parent, const std::string& local_name,
                                       const std::string& path, const std::vector<int64_t>& shape,
                                       const layers::ActivationFactory& factory, Thinning thinning) {
  torch::nn::AnyModule act = factory(path, shape);
  parent.register_module(local_name, act.ptr());
  sites_.push_back(layers::Site{path, shape, act.ptr()});
  if (!explicit_stages_) stages_.push_back(Stage{path, {}, {}});
  TORCH_CHECK(!stages_.empty(), "model ", spec_.name, ": site ", path, " added before the first begin_stage");
  Stage& stage = stages_.back();
  const bool dropped = thinning == Thinning::alternate ? stage.sites.size() % 2 == 1 : thinning == Thinning::drop;
  stage.sites.push_back(sites_.size() - 1);
  stage.thinned.push_back(dropped);
  return act;
}

void NetImpl::begin_stage(const std::string& name) {
  stages_.push_back(Stage{name, {}, {}});
  explicit_stages_ = true;
}

nlohmann::json spec_to_json(const ModelSpec& spec) {
  nlohmann::json j = {
      {"arch", spec.name}, {"input_shape", spec.input_shape}, {"classes", spec.classes}, {"stem_relu", spec.stem_relu}};
  if (spec.width != 1.0) j["width"] = spec.width;
  if (spec.stem_stride != 1) j["stem_stride"] = spec.stem_stride;
  return j;
}

ModelSpec spec_from_json(const nlohmann::json& j) {
  ModelSpec spec;
  spec.name = j.at("arch").get<std::string>();
  spec.input_shape = j.at("input_shape").get<std::vector<int64_t>>();
  spec.classes = j.at("classes").get<int64_t>();
  spec.stem_relu = j.value("stem_relu", true);
  spec.width = j.value("width", 1.0);
  spec.stem_stride = j.value("stem_stride", int64_t{1});
  return spec;
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, 'x')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(part, &used);
      if (used != part.size() || v <= 0) throw std::invalid_argument(part);
      shape.push_back(v);
    } catch (const std::exception&) {
      throw std::runtime_error("malformed shape \"" + text + "\": expected CxHxW with positive integers, e.g. 3x32x32");
    }
  }
  if (shape.size() != 3)
    throw std::runtime_error("malformed shape \"" + text + "\": expected CxHxW, e.g. 3x32x32");
  return shape;
}

}  // namespace autorep::trainer::models
