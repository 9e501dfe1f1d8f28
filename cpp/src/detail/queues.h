#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace carseg::detail {

/// A queue of at most `capacity` items between pipeline stages. close() wakes every waiter:
/// producers then drop what they push, consumers drain what is left and then get nothing.
template <class T>
class BoundedQueue {
 public:
  explicit BoundedQueue(std::size_t capacity) : capacity_(std::max<std::size_t>(1, capacity)) {}

  /// Waits for room; returns false (dropping the item) once the queue is closed, so that a
  /// producer blocked on a full queue wakes up when the consumer gives up.
  bool push(T item) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_ || closed_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }

  /// Waits for at least one item; returns up to `max` items, none once closed and drained.
  std::vector<T> pop_up_to(std::size_t max) {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] { return !items_.empty() || closed_; });
    std::vector<T> out;
    while (!items_.empty() && out.size() < max) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    not_full_.notify_all();
    return out;
  }

  void close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<T> items_;
  std::size_t capacity_;
  bool closed_ = false;
};

/// The bytes of decoded photos a pipeline may hold at once (in its queues, in inference, in
/// encoding), so that memory stays bounded whatever the photos' sizes: a decoder reserves a
/// photo's bytes before it decodes it and the encoder gives them back when it is done. A photo
/// larger than the whole budget is let through when nothing else is held, alone.
class ByteBudget {
 public:
  explicit ByteBudget(std::int64_t limit) : limit_(limit) {}
  /// Waits until `n` more bytes fit; false (nothing reserved) once closed.
  bool acquire(std::int64_t n) {
    std::unique_lock lock(mu_);
    freed_.wait(lock, [&] { return closed_ || used_ == 0 || used_ + n <= limit_; });
    if (closed_) return false;
    used_ += n;
    return true;
  }
  void release(std::int64_t n) {
    std::lock_guard lock(mu_);
    used_ -= n;
    freed_.notify_all();
  }
  void close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    freed_.notify_all();
  }
  [[nodiscard]] std::int64_t used() const {
    std::lock_guard lock(mu_);
    return used_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable freed_;
  std::int64_t limit_;
  std::int64_t used_ = 0;
  bool closed_ = false;
};

/// Pixel buffers of photos that are done, for the next decode: same-sized photos then decode
/// into memory that is already mapped instead of fresh pages the kernel must fault in and zero
/// (7 MB a 1918x1280 photo). Holds at most `capacity` buffers, none over kMaxPooledBytes (a
/// huge photo's memory goes back to the system, not into the pool).
class BufferPool {
 public:
  static constexpr std::size_t kMaxPooledBytes = 64 << 20;
  explicit BufferPool(std::size_t capacity) : capacity_(capacity) {}
  std::vector<std::uint8_t> take() {
    std::lock_guard lock(mu_);
    if (free_.empty()) return {};
    std::vector<std::uint8_t> b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void give(std::vector<std::uint8_t>&& b) {
    if (b.capacity() > kMaxPooledBytes) return;
    std::lock_guard lock(mu_);
    if (free_.size() < capacity_) free_.push_back(std::move(b));
  }

 private:
  std::mutex mu_;
  std::vector<std::vector<std::uint8_t>> free_;
  std::size_t capacity_;
};

}  // namespace carseg::detail
