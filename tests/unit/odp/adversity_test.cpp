// Trust under adversity: a change under a lease or an exposure is never
// missed, whatever it races with (events still queued in the source, a Region
// dropped while leased, invalidations in the middle of expose() or of a
// fault), and the last release never touches a region that close() freed.
// The races are opened on purpose with the library's test hooks.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <odp/device.hpp>
#include <odp/mirror.hpp>
#include <odp/region.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace odp {
namespace {

using namespace std::chrono_literals;
using test::MiB;

constexpr Access remote = Access::LocalWrite | Access::RemoteWrite;

// Holds the mirror's dispatcher inside a callback: events recorded meanwhile
// stay queued in the source, not delivered. Opens when told, or on its own
// once `open_after` was called and its patience ran out (so that a release()
// that waits for delivery can finish); nothing else opens it before the test
// says so, however slowly the test runs (a minute only bounds a hang).
class DispatcherGate final : public InvalidationListener {
  public:
    void on_invalidate(Range /*range*/, InvalidationReason /*reason*/) noexcept override {
        std::unique_lock lock(mutex_);
        entered_ = true;
        opens_at_ = std::min(opens_at_, std::chrono::steady_clock::now() + std::chrono::minutes(1));
        changed_.notify_all();
        while (!open_ && std::chrono::steady_clock::now() < opens_at_) {
            changed_.wait_until(lock, opens_at_);
        }
    }
    void on_invalidate_all(InvalidationReason reason) noexcept override {
        on_invalidate(Range{}, reason);
    }
    void wait_until_holding() {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return entered_; });
    }
    void open_after(std::chrono::milliseconds patience) {
        const std::lock_guard lock(mutex_);
        opens_at_ = std::min(opens_at_, std::chrono::steady_clock::now() + patience);
        changed_.notify_all();
    }
    void open() {
        const std::lock_guard lock(mutex_);
        open_ = true;
        changed_.notify_all();
    }

  private:
    std::chrono::steady_clock::time_point opens_at_ = std::chrono::steady_clock::time_point::max();
    std::mutex mutex_;
    std::condition_variable changed_;
    bool entered_ = false;
    bool open_ = false;
};

class Adversity : public ::testing::Test {
  protected:
    void SetUp() override {
        MirrorOptions options;
        options.kind = MonitorKind::Fake;
        mirror = Mirror::acquire(options);
    }

    Region make_region() {
        RegionOptions options = test::emulated();
        options.mirror = mirror;
        return dev.device->register_region(buffer.data(), buffer.size(), remote, options);
    }
    Range page(std::size_t offset = 0) const {
        return Range::from_length(buffer.address() + offset, 4096);
    }
    Range chunk(std::size_t index) const {
        return Range::from_length(buffer.address() + index * 2 * MiB, 2 * MiB);
    }
    // Parks the dispatcher in `gate` (a watch on memory outside the region).
    Mirror::Watch park_dispatcher(DispatcherGate& gate) {
        Mirror::Watch watch = mirror->watch(elsewhere_range(), gate);
        mirror->inject(elsewhere_range(), InvalidationReason::Clear);
        gate.wait_until_holding();
        return watch;
    }
    Range elsewhere_range() const { return Range::from_length(elsewhere.address(), 4096); }

    std::shared_ptr<Mirror> mirror;
    test::FakeDevice dev = test::make_device();
    test::Mapping buffer{8 * MiB};
    test::Mapping elsewhere{2 * MiB};
};

// Item 0: the munmap returned, its event is recorded but the dispatcher has
// not delivered it yet when the lease is released.
TEST_F(Adversity, LeaseReleaseSeesAnEventRecordedButNotYetDelivered) {
    Region region = make_region();
    Lease lease = region.translate(buffer.data(), 4096);
    DispatcherGate gate;
    const Mirror::Watch parked = park_dispatcher(gate);
    mirror->inject(page(), InvalidationReason::Unmap);
    ASSERT_FALSE(mirror->up_to_date()) << "the event must still be queued";
    gate.open_after(200ms);
    const bool changed = lease.release();
    gate.open();
    EXPECT_TRUE(changed) << "a change recorded before release() was missed";
}

TEST_F(Adversity, ExposureReleaseSeesAnEventRecordedButNotYetDelivered) {
    Region region = make_region();
    std::atomic<int> calls{0};
    Exposure exposure =
        region.expose(buffer.data(), MiB, [&](Range, InvalidationReason) { ++calls; });
    DispatcherGate gate;
    const Mirror::Watch parked = park_dispatcher(gate);
    mirror->inject(page(), InvalidationReason::Unmap);
    ASSERT_FALSE(mirror->up_to_date());
    gate.open_after(200ms);
    const bool changed = exposure.release();
    gate.open();
    EXPECT_TRUE(changed);
    EXPECT_EQ(calls.load(), 1) << "the callback runs before release() returns";
}

// The other side of item 0: a change that returned before expose() was
// called is behind the exposure (its pages are the ones leased), so its event,
// still undelivered when expose() starts, must neither run the callback nor
// make release() report a change. (Listing the exposure before catching up
// did both: every coherence case in the guests failed.)
TEST_F(Adversity, AnEventRecordedBeforeExposeIsNotAChangeUnderIt) {
    Region region = make_region();
    DispatcherGate gate;
    const Mirror::Watch parked = park_dispatcher(gate);
    mirror->inject(page(), InvalidationReason::Unmap);
    ASSERT_FALSE(mirror->up_to_date());
    gate.open_after(200ms);
    std::atomic<int> calls{0};
    Exposure exposure =
        region.expose(buffer.data(), MiB, [&](Range, InvalidationReason) { ++calls; });
    gate.open();
    mirror->synchronize();
    EXPECT_EQ(calls.load(), 0) << "the change happened before expose()";
    EXPECT_FALSE(exposure.release()) << "nothing changed while exposed";
}

// Item 4a: the exposure (and a plain lease) outlive their Region handle; the
// mapping under them changes afterwards.
TEST_F(Adversity, ExposureOfADroppedRegionHearsTheUnmap) {
    Region region = make_region();
    std::atomic<int> calls{0};
    Exposure exposure =
        region.expose(buffer.data(), MiB, [&](Range, InvalidationReason) { ++calls; });
    region = Region{};
    mirror->inject(Range::from_length(buffer.address(), MiB), InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_EQ(calls.load(), 1);
    EXPECT_TRUE(exposure.release());
}

TEST_F(Adversity, LeaseOfADroppedRegionHearsTheUnmap) {
    Region region = make_region();
    Lease lease = region.translate(buffer.data(), 4 * MiB);
    region = Region{};
    mirror->inject(page(2 * MiB), InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_TRUE(lease.release());
    EXPECT_EQ(dev.fake->live_registrations().size(), 0U);
    EXPECT_EQ(mirror->stats().watches, 0U) << "the last release ends the region's watch";
}

// Item 4b: an invalidation between translate() and the exposure's listing.
TEST_F(Adversity, InvalidationWhileExposingRunsTheCallback) {
    Region region = make_region();
    const test::ScopedTestHook hook([&](detail::HookPoint point) {
        if (point == detail::HookPoint::ExposeTranslated) {
            region.invalidate(page(), InvalidationReason::Unmap);
        }
    });
    std::atomic<int> calls{0};
    Exposure exposure =
        region.expose(buffer.data(), MiB, [&](Range, InvalidationReason) { ++calls; });
    EXPECT_EQ(calls.load(), 1) << "the change was recorded but the callback never ran";
    EXPECT_TRUE(exposure.release());
}

// Item 4c: the pages of a fault were invalidated while it registered them;
// another thread must not lease the doomed pin before the fault re-checks.
TEST_F(Adversity, NoLeaseOfAFaultsPinBeforeItsRecheck) {
    Region region = make_region();
    int registrations = 0;
    dev.fake->set_on_register([&](Range) {
        if (++registrations == 1) {
            region.invalidate(chunk(0), InvalidationReason::Unmap);
        }
    });
    std::future<Exposure> racing;
    bool raced = false;
    const test::ScopedTestHook hook([&](detail::HookPoint point) {
        if (point != detail::HookPoint::FaultPublished || std::exchange(raced, true)) {
            return;
        }
        racing = std::async(std::launch::async, [&] {
            return region.expose(buffer.data(), 4096, [](Range, InvalidationReason) {});
        });
        // Long enough for a lock-free lease; a thread that has to wait for
        // the fault (as it should) waits on.
        racing.wait_for(300ms);
    });
    Lease lease = region.translate(buffer.data(), 4096);
    Exposure exposure = racing.get();
    dev.fake->set_on_register({});
    EXPECT_EQ(registrations, 2);
    EXPECT_EQ(exposure.segments()[0].rkey, lease.rkeys()[0])
        << "the exposure holds the registration the fault dropped as stale";
    EXPECT_FALSE(exposure.release());
    EXPECT_FALSE(lease.release());
}

// Item 3: the last release of a stale pin and close() of its region: close
// runs between the release's decrement and its claim of the pin.
TEST_F(Adversity, LastReleaseRacingRegionCloseFreesNothingInUse) {
    Region region = make_region();
    Lease lease = region.translate(buffer.data(), 4096);
    region.invalidate(page(), InvalidationReason::Unmap);
    bool closed = false;
    const test::ScopedTestHook hook([&](detail::HookPoint point) {
        if (point == detail::HookPoint::LastLeaseReleased && !std::exchange(closed, true)) {
            region = Region{};
        }
    });
    EXPECT_TRUE(lease.release());
    EXPECT_TRUE(closed);
    EXPECT_EQ(dev.fake->live_registrations().size(), 0U);
    EXPECT_EQ(dev.fake->counters().deregistrations, 1U);
    EXPECT_EQ(dev.device->pinned_bytes(), 0U);
}

// A chunk registered around a hole is registered again once memory is mapped
// into the hole; a lease still holding the old registration must still hear
// a later change of its own pages (the old pin is no longer in its slot).
TEST_F(Adversity, LeaseOfAChunkReregisteredOverAFilledHoleHearsLaterChanges) {
    Region region = make_region();
    const std::size_t page_size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    ASSERT_EQ(munmap(buffer.data() + MiB, page_size), 0);
    Lease held = region.translate(buffer.data(), 4096);
    void* back = mmap(buffer.data() + MiB, page_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    ASSERT_NE(back, MAP_FAILED);
    Lease filled = region.translate(buffer.data() + MiB, page_size);
    ASSERT_NE(filled.sges()[0].lkey, held.sges()[0].lkey) << "the chunk was registered again";
    region.invalidate(page(), InvalidationReason::Unmap);
    EXPECT_TRUE(held.release()) << "the unmap under the held (old) registration was missed";
    EXPECT_TRUE(filled.release());
}

// Item 0 in flight: threads change a page they lease (the event goes through
// the mirror's queue and thread) and release at once, while other threads
// lease the same chunks and the dispatcher is busy. Every release after a
// change must report it. Run under ThreadSanitizer too.
TEST_F(Adversity, EveryChangeBeforeAReleaseIsReportedUnderLoad) {
    Region region = make_region();
    constexpr int changers = 3;
    constexpr int rounds = 300;
    std::atomic<int> missed{0};
    std::atomic<int> reported{0};
    std::atomic<bool> done{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < changers; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < rounds; ++i) {
                const std::size_t offset =
                    (static_cast<std::size_t>(t) * rounds + static_cast<std::size_t>(i)) % 2048 *
                    4096;
                Lease lease;
                while (!lease.held()) {
                    try {
                        lease = region.translate(buffer.data() + offset, 4096);
                    } catch (const Error& error) {
                        // EAGAIN: the chunk changed during every fault (the
                        // other threads' events); anything else is a failure.
                        if (error.errno_value() != EAGAIN) {
                            missed.fetch_add(1);
                            return;
                        }
                    }
                }
                mirror->inject(page(offset), InvalidationReason::Unmap);
                (lease.release() ? reported : missed).fetch_add(1);
            }
        });
    }
    std::thread reader([&] {
        while (!done.load()) {
            try {
                Lease lease = region.translate(buffer.data(), buffer.size());
                (void)lease.release();
            } catch (const Error& error) {
                EXPECT_EQ(error.errno_value(), EAGAIN) << error.what();
            }
        }
    });
    for (std::thread& thread : threads) {
        thread.join();
    }
    done = true;
    reader.join();
    EXPECT_EQ(missed.load(), 0) << "releases that missed a change made before them";
    EXPECT_EQ(reported.load(), changers * rounds);
}

// Retries what an application retries: EAGAIN, a chunk that changed during
// every one of its faults. Under TSan on a loaded machine a registration can
// outlast the injector's pace several times in a row (CI saw 8).
template <typename Operation>
auto retry_while_changing(Operation&& operation) {
    for (int attempt = 1;; ++attempt) {
        try {
            return operation();
        } catch (const Error& error) {
            if (error.errno_value() != EAGAIN || attempt == 1000) {
                throw;
            }
        }
    }
}

// Region handles dropped while leases are held and events keep arriving:
// nothing is touched after it is freed, nothing leaks.
TEST_F(Adversity, RegionsDroppedWhileLeasedAndChanging) {
    std::atomic<bool> done{false};
    std::thread injector([&] {
        std::size_t offset = 0;
        while (!done.load()) {
            mirror->inject(page(offset), InvalidationReason::Unmap);
            offset = (offset + 3 * 4096) % buffer.size();
            std::this_thread::sleep_for(20us);
        }
    });
    std::optional<Error> failed;
    try {
        for (int round = 0; round < 50; ++round) {
            Region region = make_region();
            std::vector<Lease> leases;
            for (std::size_t chunk_index = 0; chunk_index < 4; ++chunk_index) {
                leases.push_back(retry_while_changing(
                    [&] { return region.translate(buffer.data() + chunk_index * 2 * MiB, 4096); }));
            }
            Exposure exposure =
                retry_while_changing([&] { return region.expose(buffer.data(), MiB); });
            region = Region{};
            for (Lease& lease : leases) {
                (void)lease.release();
            }
            (void)exposure.release();
        }
    } catch (const Error& error) {
        failed = error;
    }
    done = true;
    injector.join();
    ASSERT_FALSE(failed) << failed->what();
    mirror->synchronize();
    EXPECT_EQ(dev.fake->live_registrations().size(), 0U);
    EXPECT_EQ(dev.device->pinned_bytes(), 0U);
    EXPECT_EQ(mirror->stats().watches, 0U);
}

}  // namespace
}  // namespace odp
