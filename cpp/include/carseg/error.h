#pragma once

#include <stdexcept>
#include <string>

namespace carseg {

/// Every failure libcarseg reports: "<subject>: <reason>", where the subject is the file the
/// failure is about, or the argument ("image", "logits") a call was handed.
class Error : public std::runtime_error {
 public:
  /// `detail`: the whole text of an underlying error (torch's, with its C++ backtrace), which
  /// the message leaves out; front ends show it when asked (carseg_infer --verbose).
  Error(const std::string& subject, const std::string& reason, std::string detail = {})
      : std::runtime_error(subject.empty() ? reason : subject + ": " + reason),
        file_(subject),
        reason_(reason),
        detail_(std::move(detail)) {}

  /// The file or argument the error is about ("" when none).
  [[nodiscard]] const std::string& file() const noexcept { return file_; }
  [[nodiscard]] const std::string& reason() const noexcept { return reason_; }
  [[nodiscard]] const std::string& detail() const noexcept { return detail_; }

 private:
  std::string file_;
  std::string reason_;
  std::string detail_;
};

/// A bad option value. `field()` is the option as the core names it ("device", "precision",
/// "threshold", "backend", "background"); each front end says it in its own words
/// (carseg_infer: `--precision`, the bindings: the keyword `precision=`).
class OptionError : public Error {
 public:
  OptionError(const std::string& field, const std::string& reason) : Error(field, reason) {}
  [[nodiscard]] const std::string& field() const noexcept { return file(); }
};

}  // namespace carseg
