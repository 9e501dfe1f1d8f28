#pragma once

#include <stdexcept>
#include <string>

namespace carseg {

/// Every failure libcarseg reports: "<file>: <reason>". The CLI prints what() as is.
class Error : public std::runtime_error {
 public:
  Error(const std::string& file, const std::string& reason)
      : std::runtime_error(file.empty() ? reason : file + ": " + reason),
        file_(file),
        reason_(reason) {}

  [[nodiscard]] const std::string& file() const noexcept { return file_; }
  [[nodiscard]] const std::string& reason() const noexcept { return reason_; }

 private:
  std::string file_;
  std::string reason_;
};

}  // namespace carseg
