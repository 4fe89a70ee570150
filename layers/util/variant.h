#pragma once
/// LibTorch's module options hold c10::variant (1.13) or std::variant (2.x): one accessor for both.

#include <variant>
#if __has_include(<c10/util/variant.h>)
#include <c10/util/variant.h>  // LibTorch 1.x's own variant (later ones use std::variant)
#endif

namespace c10 {}  // declared for the using-directive below where the header above is absent

namespace autorep::util {

/// The alternative T of `v`, or nullptr.
template <typename T, typename V>
const T* alternative(const V& v) {
  using namespace c10;
  using namespace std;
  return get_if<T>(&v);
}

}  // namespace autorep::util
