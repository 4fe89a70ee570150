// The graph evaluator: a GraphSink that computes instead of writing nodes.
#include "trainer/deploy/graph_eval.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

#include "search/export/cost.h"
#include "trainer/data/dataset.h"
#include "trainer/deploy/folding.h"
#include "trainer/methods/run_model.h"
#include "trainer/models/graph.h"

namespace autorep::trainer::deploy {

FixedPoint FixedPoint::parse(const std::string& text) {
  const auto dot = text.find('.');
  FixedPoint f;
  try {
    if (dot == std::string::npos) throw std::invalid_argument("no dot");
    size_t used = 0;
    f.total = std::stoi(text.substr(0, dot), &used);
    if (used != dot) throw std::invalid_argument("total");
    const std::string frac = text.substr(dot + 1);
    f.fraction = std::stoi(frac, &used);
    if (used != frac.size()) throw std::invalid_argument("fraction");
  } catch (const std::exception&) {
    throw std::runtime_error("fixed-point format \"" + text + "\": expected TOTAL.FRACTION bits, e.g. 64.13");
  }
  if (f.fraction < 0 || f.total <= f.fraction || f.total > 64 || f.total - f.fraction > 53)
    throw std::runtime_error("fixed-point format \"" + text +
                             "\": needs 0 <= FRACTION < TOTAL <= 64 and at most 53 integer bits");
  return f;
}

double FixedPoint::limit() const { return std::ldexp(1.0, total - fraction - 1); }

int integer_bits(double max_abs) {
  if (!(max_abs >= 0) || !std::isfinite(max_abs)) return 0;
  // floor(log2(|x|)) + 1 magnitude bits, plus the sign.
  return max_abs < 1 ? 1 : static_cast<int>(std::floor(std::log2(max_abs))) + 2;
}

class GraphEvaluator::Sink : public models::GraphSink {
 public:
  Sink(GraphEvaluator& owner, models::NetImpl& net, const exports::MaskExport& ex, Normalisation norm,
       std::optional<FixedPoint> format)
      : owner_(owner), net_(net), ex_(ex), norm_(std::move(norm)), format_(format) {
    const auto problems = exports::check_against_model(ex, net.sites());
    if (!problems.empty()) throw std::runtime_error("graph evaluation: the export does not fit the model: " + problems.front());
  }

  torch::Tensor forward(const torch::Tensor& images, torch::Tensor* out_of_range) {
    torch::NoGradGuard no_grad;
    values_.clear();
    site_ = 0;
    overflow_ = torch::zeros({images.size(0)}, torch::kBool);
    const int64_t c = static_cast<int64_t>(norm_.mean.size());
    std::vector<double> inv(norm_.std.size());
    for (size_t k = 0; k < inv.size(); ++k) inv[k] = static_cast<double>(1.0f / norm_.std[k]);
    torch::Tensor x = images.to(torch::kCPU, dtype());
    x = round((x - weight(torch::tensor(std::vector<double>(norm_.mean.begin(), norm_.mean.end())).view({1, c, 1, 1}))) *
              weight(torch::tensor(inv).view({1, c, 1, 1})));
    values_["input"] = x;
    const torch::Tensor logits = values_.at(net_.describe(*this, "input"));
    if (out_of_range != nullptr) *out_of_range = overflow_;
    return logits;
  }

  Value conv(const Value& x, const std::string& name, const torch::nn::Conv2dImpl& conv, const std::string&,
             const torch::nn::BatchNorm2dImpl* bn) override {
    const detail::ConvGeometry g = detail::geometry(conv, name);
    const auto [w, b] = detail::folded_conv(conv, bn);
    return put(name, torch::conv2d(get(x), weight(w), weight(b), {g.stride[0], g.stride[1]},
                                   {g.padding[0], g.padding[1]}, {g.dilation[0], g.dilation[1]}, g.groups));
  }

  Value batchnorm(const Value& x, const std::string& name, const torch::nn::BatchNorm2dImpl& bn) override {
    const auto [scale, shift] = detail::bn_affine(bn);
    return put(name, get(x) * weight(scale).view({1, -1, 1, 1}) + weight(shift).view({1, -1, 1, 1}));
  }

  Value linear(const Value& x, const std::string& name, const torch::nn::LinearImpl& fc) override {
    const torch::Tensor b = fc.options.bias() ? weight(fc.bias) : torch::Tensor();
    return put(name, torch::nn::functional::linear(get(x), weight(fc.weight), b));
  }

  Value activation(const Value& x) override {
    const size_t i = site_++;
    const exports::ExportSite& s = ex_.sites.at(i);
    const torch::Tensor in = get(x);
    torch::Tensor out;
    if (s.decision == "relu") {
      out = torch::relu(in);
    } else {
      const torch::Tensor p = detail::is_identity(s) ? in : polynomial(in, s);
      if (s.decision == "poly") {
        out = p;
      } else {
        std::vector<int64_t> shape{1};
        shape.insert(shape.end(), s.mask_shape.begin(), s.mask_shape.end());
        if (s.kind == "conv" && s.mask_shape.size() == 1) shape = {1, s.mask_shape[0], 1, 1};
        const torch::Tensor m =
            torch::tensor(std::vector<int64_t>(s.mask.begin(), s.mask.end())).to(torch::kBool).view(shape);
        out = torch::where(m, torch::relu(in), p);
      }
    }
    if (owner_.on_site) owner_.on_site(i, in, out);
    return put(s.name + "/out", out);
  }

  Value add(const Value& a, const Value& b, const std::string& name) override { return put(name, get(a) + get(b)); }

  Value max_pool(const Value& x, int64_t kernel, const std::string& name) override {
    return put(name, torch::max_pool2d(get(x), {kernel, kernel}, {kernel, kernel}));
  }

  Value global_average_pool(const Value& x, const std::string& name) override {
    return put(name, get(x).mean({2, 3}));
  }

  Value flatten(const Value& x, const std::string& name) override { return put(name, get(x).flatten(1)); }

 private:
  torch::Dtype dtype() const { return format_ ? torch::kDouble : torch::kFloat; }

  /// c0 + c1*x + c2*x*x per channel, each product rounded as an engine rounds it.
  torch::Tensor polynomial(const torch::Tensor& x, const exports::ExportSite& s) {
    std::vector<int64_t> shape{1, static_cast<int64_t>(s.c0.size())};
    if (s.kind == "conv") shape.insert(shape.end(), {1, 1});
    auto coef = [&](const std::vector<double>& v) { return weight(torch::tensor(v, torch::kDouble)).view(shape); };
    torch::Tensor y = round(x * coef(s.c1)) + coef(s.c0);
    const bool quadratic = detail::has_quadratic(s);
    if (quadratic) y = y + round(round(x * x) * coef(s.c2));
    return y;
  }

  /// A weight in the evaluation's dtype, rounded to the format.
  torch::Tensor weight(const torch::Tensor& w) const {
    return round(w.detach().to(torch::kCPU, dtype()));
  }

  torch::Tensor round(const torch::Tensor& t) const {
    if (!format_) return t;
    const double scale = std::ldexp(1.0, format_->fraction);
    return (t * scale).round() / scale;
  }

  torch::Tensor get(const Value& name) const { return values_.at(name); }

  /// Stores a computed value (rounded, its range checked) under a fresh name.
  Value put(const std::string& name, const torch::Tensor& value) {
    torch::Tensor v = round(value);
    if (format_ && v.dim() > 0 && v.size(0) == overflow_.size(0))
      overflow_ |= (v.abs() >= format_->limit()).logical_or(v.isnan()).flatten(1).any(1);
    std::string unique = name;
    for (int k = 2; values_.count(unique) != 0; ++k) unique = name + "#" + std::to_string(k);
    values_[unique] = v;
    return unique;
  }

  GraphEvaluator& owner_;
  models::NetImpl& net_;
  const exports::MaskExport& ex_;
  Normalisation norm_;
  std::optional<FixedPoint> format_;
  std::map<std::string, torch::Tensor> values_;
  size_t site_ = 0;
  torch::Tensor overflow_;
};

GraphEvaluator::GraphEvaluator(models::NetImpl& net, const exports::MaskExport& ex, Normalisation norm,
                               std::optional<FixedPoint> format)
    : sink_(std::make_unique<Sink>(*this, net, ex, std::move(norm), format)) {}

GraphEvaluator::~GraphEvaluator() = default;

torch::Tensor GraphEvaluator::forward(const torch::Tensor& images, torch::Tensor* out_of_range) {
  return sink_->forward(images, out_of_range);
}

std::vector<SiteRange> observe_ranges(models::NetImpl& net, const exports::MaskExport& ex, const Normalisation& norm,
                                      const torch::Tensor& images, int64_t batch, double percentile) {
  std::vector<AbsHistogram> in(ex.sites.size()), out(ex.sites.size());
  GraphEvaluator eval(net, ex, norm);
  eval.on_site = [&](size_t i, const torch::Tensor& x, const torch::Tensor& y) {
    in[i].add(x);
    out[i].add(y);
  };
  for (int64_t from = 0; from < images.size(0); from += batch) {
    const int64_t to = std::min(images.size(0), from + batch);
    eval.forward(images.slice(0, from, to).to(torch::kFloat).div(255.0f));
  }
  std::vector<SiteRange> ranges;
  for (size_t i = 0; i < ex.sites.size(); ++i)
    ranges.push_back({ex.sites[i].name, in[i].range(percentile), out[i].range(percentile)});
  return ranges;
}

FixedPointResult evaluate_fixed_point(const std::string& checkpoint, const FixedPoint& format,
                                      const std::string& data_path, int64_t limit) {
  methods::LoadedModel lm = methods::load_model(checkpoint);
  lm.model->to(torch::kCPU, torch::kFloat);
  lm.model->eval();
  exports::ExportInfo info;
  info.arch = lm.model->spec().name;
  info.input_shape = lm.model->spec().input_shape;
  info.classes = lm.model->spec().classes;
  const exports::MaskExport ex = exports::parse_export(
      exports::build_export(lm.model->sites(), info, exports::default_cost_table()), checkpoint);
  data::DataOptions d = data::test_split_options(lm.config.data);
  if (!data_path.empty()) d.path = data_path;
  if (limit > 0) d.limit_test = limit;
  const data::DataSplits data = methods::load_test_split(lm, d);
  const Normalisation norm{data.mean, data.std};
  GraphEvaluator as_float(*lm.model, ex, norm), as_fixed(*lm.model, ex, norm, format);
  FixedPointResult r;
  r.format = format;
  r.samples = data.test.size();
  int64_t right_float = 0, right_fixed = 0;
  for (int64_t from = 0; from < r.samples; from += 250) {
    const int64_t to = std::min(r.samples, from + 250);
    const torch::Tensor x = data.test.images.slice(0, from, to).to(torch::kFloat).div(255.0f);
    const torch::Tensor y = data.test.labels.slice(0, from, to);
    torch::Tensor outside;
    const torch::Tensor lf = as_float.forward(x).to(torch::kDouble), lq = as_fixed.forward(x, &outside);
    const torch::Tensor pf = lf.argmax(1), pq = lq.argmax(1);
    right_float += pf.eq(y).sum().item<int64_t>();
    right_fixed += (pq.eq(y) & outside.logical_not()).sum().item<int64_t>();  // out of range counts as wrong
    r.out_of_range += outside.sum().item<int64_t>();
    r.prediction_mismatches += (pf.ne(pq) | outside).sum().item<int64_t>();
    const torch::Tensor inside = outside.logical_not();
    if (inside.any().item<bool>())
      r.max_logit_diff = std::max(r.max_logit_diff, (lf - lq).index({inside}).abs().max().item<double>());
  }
  r.accuracy_float = static_cast<double>(right_float) / static_cast<double>(std::max<int64_t>(1, r.samples));
  r.accuracy_fixed = static_cast<double>(right_fixed) / static_cast<double>(std::max<int64_t>(1, r.samples));
  return r;
}

void add_ranges(exports::ExportJson& doc, const std::vector<SiteRange>& ranges, int64_t images, double percentile) {
  auto& sites = doc.at("sites");
  if (sites.size() != ranges.size()) throw std::runtime_error("ranges: site count differs from the export's");
  // JSON has no infinity: values that overflowed are written as the largest double.
  auto finite = [](double v) {
    return std::isfinite(v) ? v : (v < 0 ? -std::numeric_limits<double>::max() : std::numeric_limits<double>::max());
  };
  auto obj = [&](const ValueRange& r) {
    return exports::ExportJson{{"min", finite(r.min)}, {"max", finite(r.max)}, {"abs_percentile", finite(r.abs_percentile)}};
  };
  for (size_t i = 0; i < ranges.size(); ++i)
    sites[i]["range"] = {{"images", images}, {"percentile", percentile}, {"input", obj(ranges[i].input)},
                         {"output", obj(ranges[i].output)}};
}

}  // namespace autorep::trainer::deploy
