// Pieces shared by the invalidation sources.
#include <sys/eventfd.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <odp/error.hpp>

#include "source.hpp"

namespace odp::detail {

void Source::inject(Range /*range*/, InvalidationReason /*reason*/) {
    throw Error(EINVAL, "Mirror::inject: the " + std::string(to_string(kind())) +
                            " source takes no injected events (use MonitorKind::Fake in tests)");
}

void Source::inject_overflow() {
    throw Error(EINVAL, "Mirror::inject_overflow: the " + std::string(to_string(kind())) +
                            " source takes no injected events (use MonitorKind::Fake in tests)");
}

EventRing::EventRing(std::size_t capacity)
    : slots_(std::bit_ceil(capacity < 2 ? std::size_t{2} : capacity)), mask_(slots_.size() - 1) {}

bool EventRing::try_push(const Event& event) noexcept {
    const std::uint64_t head = head_.load(std::memory_order_relaxed);
    if (head - tail_.load(std::memory_order_acquire) >= slots_.size()) {
        return false;
    }
    slots_[head & mask_] = event;
    head_.store(head + 1, std::memory_order_release);
    return true;
}

bool EventRing::try_pop(Event& event) noexcept {
    const std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail == head_.load(std::memory_order_acquire)) {
        return false;
    }
    event = slots_[tail & mask_];
    tail_.store(tail + 1, std::memory_order_release);
    return true;
}

void deliver_queued(EventRing& ring, std::atomic<bool>& overflow, EventSink& sink) {
    if (overflow.exchange(false, std::memory_order_acq_rel)) {
        sink.deliver_overflow();
    }
    Event event;
    while (ring.try_pop(event)) {
        sink.deliver(event);
    }
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
        UniqueFd old(fd_);
        fd_ = other.release();
    }
    return *this;
}

UniqueFd::~UniqueFd() {
    if (fd_ >= 0 && ::close(fd_) != 0) {
        log_error("close(" + std::to_string(fd_) + ") failed: " + std::strerror(errno));
    }
}

int UniqueFd::release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
}

WakeFd::WakeFd() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (fd_.get() < 0) {
        throw_errno("eventfd() for the mirror's wake-ups (check RLIMIT_NOFILE)");
    }
}

void WakeFd::signal() const noexcept {
    const std::uint64_t one = 1;
    // Only fails when the counter would overflow, which still leaves it readable.
    [[maybe_unused]] const ssize_t written = ::write(fd_.get(), &one, sizeof one);
}

void WakeFd::clear() const noexcept {
    std::uint64_t value = 0;
    [[maybe_unused]] const ssize_t got = ::read(fd_.get(), &value, sizeof value);
}

std::uintptr_t page_size() noexcept {
    static const auto size = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    return size;
}

Range page_align(Range range) noexcept {
    const std::uintptr_t mask = page_size() - 1;
    const std::uintptr_t end = range.end > ~mask ? ~mask : (range.end + mask) & ~mask;
    return Range{range.begin & ~mask, end};
}

std::string describe(Range range) {
    return "[" + format_address(range.begin) + ", " + format_address(range.end) + ")";
}

}  // namespace odp::detail
