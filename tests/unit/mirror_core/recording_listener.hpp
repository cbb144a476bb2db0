// A listener that records what it is told, for the Mirror tests.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <odp/listener.hpp>
#include <thread>
#include <vector>

namespace odp::test {

struct Heard {
    Range range;
    InvalidationReason reason;
    bool all;  // on_invalidate_all
    std::thread::id thread;
};

class RecordingListener final : public InvalidationListener {
  public:
    // Runs inside on_invalidate / on_invalidate_all before recording.
    std::function<void()> hook;

    void on_invalidate(Range range, InvalidationReason reason) noexcept override {
        record(Heard{range, reason, false, std::this_thread::get_id()});
    }
    void on_invalidate_all(InvalidationReason reason) noexcept override {
        record(Heard{Range{}, reason, true, std::this_thread::get_id()});
    }

    [[nodiscard]] std::vector<Heard> heard() const {
        const std::lock_guard lock(mutex_);
        return heard_;
    }
    [[nodiscard]] std::size_t count() const {
        const std::lock_guard lock(mutex_);
        return heard_.size();
    }
    // Waits until at least `n` calls were recorded; `timeout` only bounds a
    // hang (generous: a loaded machine can stall the dispatcher for seconds).
    bool wait_for_count(std::size_t n,
                        std::chrono::milliseconds timeout = std::chrono::seconds(60)) const {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, timeout, [&] { return heard_.size() >= n; });
    }
    // Waits until a call matching `match` was recorded.
    template <typename Match>
    bool wait_for(const Match& match,
                  std::chrono::milliseconds timeout = std::chrono::seconds(60)) const {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, timeout, [&] {
            for (const Heard& h : heard_) {
                if (match(h)) {
                    return true;
                }
            }
            return false;
        });
    }
    void clear() {
        const std::lock_guard lock(mutex_);
        heard_.clear();
    }

  private:
    void record(const Heard& heard) {
        if (hook) {
            hook();
        }
        // Notify under the lock: a waiter may destroy this listener as soon as
        // it sees the record (e.g. after the watch was destroyed in the hook).
        const std::lock_guard lock(mutex_);
        heard_.push_back(heard);
        cv_.notify_all();
    }

    mutable std::mutex mutex_;
    mutable std::condition_variable cv_;
    std::vector<Heard> heard_;
};

}  // namespace odp::test
