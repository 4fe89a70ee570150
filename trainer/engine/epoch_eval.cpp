#include "trainer/engine/epoch_eval.h"

#include <iomanip>
#include <sstream>

#include "trainer/engine/class_report.h"

namespace autorep::trainer::engine {

std::string EpochEvaluator::set_reference(models::NetImpl& reference) {
  if (data_.val.size() > 0) ref_val_ = evaluate(reference, data_, data_.val, device_, batch_size_, group_);
  ref_test_ = evaluate(reference, data_, data_.test, device_, batch_size_, group_);
  std::ostringstream s;
  s << "teacher: test accuracy " << std::fixed << std::setprecision(2) << 100.0 * ref_test_->accuracy << "%, "
    << class_summary(class_report(*ref_test_, data_));
  return s.str();
}

nlohmann::json EpochEvaluator::reference_report() const {
  return ref_test_ ? class_report(*ref_test_, data_) : nlohmann::json(nullptr);
}

EpochEvaluator::Outcome EpochEvaluator::run(models::NetImpl& model) const {
  Outcome o;
  o.has_val = data_.val.size() > 0;
  if (o.has_val) o.val = evaluate(model, data_, data_.val, device_, batch_size_, group_);
  o.test = evaluate(model, data_, data_.test, device_, batch_size_, group_);
  o.test_report = class_report(o.test, data_, ref_test_ ? &*ref_test_ : nullptr);
  o.fields = {{"test_accuracy", o.test.accuracy},
              {"test_loss", o.test.loss},
              {"test_nonfinite", o.test.nonfinite},
              {"test_per_class", o.test_report}};
  std::ostringstream line;
  line << std::fixed << std::setprecision(2);
  if (o.has_val) {
    o.fields["val_accuracy"] = o.val.accuracy;
    o.fields["val_loss"] = o.val.loss;
    o.fields["val_nonfinite"] = o.val.nonfinite;
    o.fields["val_per_class"] = class_report(o.val, data_, ref_val_ ? &*ref_val_ : nullptr);
    line << " | val acc " << 100.0 * o.val.accuracy << "%";
  }
  line << " | test loss " << std::setprecision(4) << o.test.loss << " acc " << std::setprecision(2)
       << 100.0 * o.test.accuracy << "%";
  if (o.test.nonfinite > 0) line << " (" << o.test.nonfinite << " with non-finite logits, counted wrong)";
  const auto& worst = o.test_report.at("worst_class");
  if (!worst.is_null())
    line << ", worst class " << worst.get<std::string>() << " "
         << 100.0 * o.test_report.at("worst_class_accuracy").get<double>() << "%";
  o.text = line.str();
  return o;
}

}  // namespace autorep::trainer::engine
