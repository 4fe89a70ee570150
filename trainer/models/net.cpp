#include "trainer/models/net.h"

#include <torch/torch.h>

#include <sstream>
#include <stdexcept>

namespace autorep::trainer::models {

torch::nn::AnyModule NetImpl::add_site(torch::nn::Module& parent, const std::string& local_name,
                                       const std::string& path, const std::vector<int64_t>& shape,
                                       const layers::ActivationFactory& factory) {
  torch::nn::AnyModule act = factory(path, shape);
  parent.register_module(local_name, act.ptr());
  sites_.push_back(layers::Site{path, shape, act.ptr()});
  return act;
}

nlohmann::json spec_to_json(const ModelSpec& spec) {
  return {{"arch", spec.name}, {"input_shape", spec.input_shape}, {"classes", spec.classes}, {"stem_relu", spec.stem_relu}};
}

ModelSpec spec_from_json(const nlohmann::json& j) {
  ModelSpec spec;
  spec.name = j.at("arch").get<std::string>();
  spec.input_shape = j.at("input_shape").get<std::vector<int64_t>>();
  spec.classes = j.at("classes").get<int64_t>();
  spec.stem_relu = j.value("stem_relu", true);
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
