// MonitorKind::Fake: events come from Mirror::inject() (tests). They travel
// through the same bounded queue and dispatch path as userfaultfd's, so a
// full queue reports an overflow exactly like the real reader.
#include <mutex>
#include <odp/error.hpp>

#include "source.hpp"

namespace odp::detail {
namespace {

class FakeSource final : public Source {
  public:
    explicit FakeSource(const MirrorOptions& options)
        : ring_(options.event_capacity), unwatchable_(options.fake_unwatchable) {}

    [[nodiscard]] MonitorKind kind() const noexcept override { return MonitorKind::Fake; }
    [[nodiscard]] std::string_view description() const noexcept override {
        return "fake: sees only the events a test injects with Mirror::inject(); for tests "
               "without a kernel monitor.";
    }
    [[nodiscard]] int ready_fd() const noexcept override { return wake_.get(); }
    [[nodiscard]] std::uint64_t recorded() const noexcept override {
        return recorded_.load(std::memory_order_acquire);
    }

    std::uint64_t drain(EventSink& sink) override {
        wake_.clear();
        const std::uint64_t through = recorded_.load(std::memory_order_acquire);
        deliver_queued(ring_, overflow_, sink);
        return through;
    }

    std::vector<Unwatched> add(std::uint64_t /*id*/, Range range) override {
        return overlapping(range);
    }
    void remove(std::uint64_t /*id*/) noexcept override {}
    std::vector<Range> arm(std::uint64_t /*id*/, Range sub) override {
        const std::vector<Unwatched> bad = overlapping(sub);
        if (!bad.empty()) {
            throw Error(EINVAL, "cannot watch " + describe(bad.front().range) +
                                    " (fake source): " + bad.front().why);
        }
        return {sub};
    }

    void inject(Range range, InvalidationReason reason) override {
        if (range.empty()) {
            throw Error(EINVAL, "Mirror::inject: empty range " + describe(range));
        }
        {
            const std::lock_guard lock(producer_mutex_);
            if (!ring_.try_push(Event{range, reason, 0})) {
                overflow_.store(true, std::memory_order_release);
            }
            recorded_.fetch_add(1, std::memory_order_acq_rel);
        }
        wake_.signal();
    }

    void inject_overflow() override {
        {
            const std::lock_guard lock(producer_mutex_);
            overflow_.store(true, std::memory_order_release);
            recorded_.fetch_add(1, std::memory_order_acq_rel);
        }
        wake_.signal();
    }

  private:
    [[nodiscard]] std::vector<Unwatched> overlapping(Range range) const {
        std::vector<Unwatched> result;
        for (const Unwatched& bad : unwatchable_) {
            if (bad.range.overlaps(range)) {
                result.push_back(
                    Unwatched{bad.range.intersect(range), bad.why, bad.error, bad.mapping});
            }
        }
        return result;
    }

    EventRing ring_;
    const std::vector<Unwatched> unwatchable_;
    WakeFd wake_;
    std::mutex producer_mutex_;  // inject() may come from any thread; the ring has one producer
    std::atomic<std::uint64_t> recorded_{0};
    std::atomic<bool> overflow_{false};
};

}  // namespace

std::unique_ptr<Source> make_fake_source(const MirrorOptions& options) {
    return std::make_unique<FakeSource>(options);
}

}  // namespace odp::detail
