// odp::Mirror with the fake source (no kernel involved).
// Boost.Asio's fenced blocks use std::atomic_thread_fence, which GCC warns
// about under -fsanitize=thread (-Wtsan); the fences are correct, TSan just
// cannot model them. Before every include, so that it covers the headers.
#if defined(__SANITIZE_THREAD__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wtsan"
#endif
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <future>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <optional>

#include "recording_listener.hpp"

namespace odp {
namespace {

using namespace std::chrono_literals;
using test::Heard;
using test::RecordingListener;

MirrorOptions fake_options() {
    MirrorOptions options;
    options.kind = MonitorKind::Fake;
    return options;
}

// A gate a callback can wait at, opened by the test.
class Gate {
  public:
    void open() {
        {
            const std::lock_guard lock(mutex_);
            open_ = true;
        }
        cv_.notify_all();
    }
    void wait() {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return open_; });
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool open_ = false;
};

template <typename Call>
int errno_of(const Call& call) {
    try {
        call();
    } catch (const Error& error) {
        return error.errno_value();
    }
    return 0;
}

// Each test starts and ends without a Mirror in the process.
class MirrorTest : public ::testing::Test {
  protected:
    void SetUp() override { ASSERT_EQ(Mirror::current(), nullptr) << "a previous test leaked"; }
    void TearDown() override {
        // A Mirror released on its dispatcher thread finishes there (60 s
        // bounds a hang; a loaded machine can stall a thread for seconds).
        for (int i = 0; i < 30000 && Mirror::current() != nullptr; ++i) {
            std::this_thread::sleep_for(2ms);
        }
        EXPECT_EQ(Mirror::current(), nullptr) << "the test kept a Mirror alive";
    }
};

using MirrorLifetime = MirrorTest;
using MirrorRouting = MirrorTest;
using MirrorOverflow = MirrorTest;
using MirrorWatch = MirrorTest;
using MirrorErrors = MirrorTest;
using MirrorSync = MirrorTest;
using MirrorIoContext = MirrorTest;

TEST_F(MirrorLifetime, OnePerProcessFreedByTheLastReference) {
    std::shared_ptr<Mirror> first = Mirror::acquire(fake_options());
    std::shared_ptr<Mirror> second = Mirror::acquire();  // Auto: whatever is there
    EXPECT_EQ(first, second);
    EXPECT_EQ(Mirror::current(), first);
    EXPECT_EQ(first->kind(), MonitorKind::Fake);
    EXPECT_FALSE(first->description().empty());

    const std::weak_ptr<Mirror> observer = first;
    first.reset();
    EXPECT_FALSE(observer.expired());
    second.reset();
    EXPECT_TRUE(observer.expired());
    EXPECT_EQ(Mirror::current(), nullptr);
}

TEST_F(MirrorLifetime, WatchKeepsTheMirrorAlive) {
    RecordingListener listener;
    Mirror::Watch watch = Mirror::acquire(fake_options())->watch(Range{0x1000, 0x3000}, listener);
    ASSERT_NE(Mirror::current(), nullptr);
    watch.mirror()->inject(Range{0x2000, 0x4000}, InvalidationReason::Unmap);
    watch.mirror()->synchronize();
    ASSERT_EQ(listener.count(), 1U);
    EXPECT_EQ(listener.heard()[0].range, (Range{0x2000, 0x3000}));
    watch.reset();
    EXPECT_EQ(Mirror::current(), nullptr);
}

TEST_F(MirrorLifetime, AnotherKindWhileOneIsAliveIsRefused) {
    const auto mirror = Mirror::acquire(fake_options());
    MirrorOptions none;
    none.kind = MonitorKind::None;
    try {
        (void)Mirror::acquire(none);
        FAIL() << "acquire(None) while a fake Mirror lives must throw";
    } catch (const Error& error) {
        EXPECT_EQ(error.errno_value(), EBUSY);
        EXPECT_NE(std::string(error.what()).find("one per process"), std::string::npos)
            << error.what();
    }
    boost::asio::io_context io;
    MirrorOptions with_io = fake_options();
    with_io.io_context = &io;
    EXPECT_EQ(errno_of([&] { (void)Mirror::acquire(with_io); }), EBUSY);
}

// Threads acquire, watch, inject, check delivery and release as fast as they
// can; every Mirror they get must be fully alive (its dispatcher delivers),
// and while one thread holds a reference every acquire returns that one.
TEST_F(MirrorLifetime, ConcurrentAcquireReleaseNeverHandsOutADyingMirror) {
    constexpr int threads = 4;
    std::atomic<int> failures{0};
    std::atomic<long> rounds{0};
    const auto deadline = std::chrono::steady_clock::now() + 400ms;
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            const Range mine{0x100000 * static_cast<std::uintptr_t>(t + 1),
                             0x100000 * static_cast<std::uintptr_t>(t + 1) + 0x1000};
            // 400 ms, and at least two rounds each however slow the machine.
            for (int mine_done = 0; mine_done < 2 || std::chrono::steady_clock::now() < deadline;
                 ++mine_done) {
                RecordingListener listener;
                std::shared_ptr<Mirror> mirror = Mirror::acquire(fake_options());
                {
                    Mirror::Watch watch = mirror->watch(mine, listener);
                    mirror->inject(mine, InvalidationReason::Clear);
                    mirror->synchronize();
                    const std::vector<Heard> heard = listener.heard();
                    // Only this thread's range overlaps this watch.
                    if (heard.size() != 1 || heard[0].range != mine) {
                        failures.fetch_add(1);
                    }
                }
                mirror.reset();
                rounds.fetch_add(1);
            }
        });
    }
    for (std::thread& worker : workers) {
        worker.join();
    }
    EXPECT_EQ(failures.load(), 0);
    EXPECT_GT(rounds.load(), threads);

    // With a holder, everybody shares the holder's Mirror.
    const std::shared_ptr<Mirror> holder = Mirror::acquire(fake_options());
    std::vector<std::future<bool>> same;
    for (int t = 0; t < threads; ++t) {
        same.push_back(std::async(std::launch::async, [&] {
            for (int i = 0; i < 200; ++i) {
                if (Mirror::acquire(fake_options()) != holder) {
                    return false;
                }
            }
            return true;
        }));
    }
    for (auto& result : same) {
        EXPECT_TRUE(result.get());
    }
}

TEST_F(MirrorLifetime, AfterTheLastReferenceAFreshMirrorIsCreated) {
    std::shared_ptr<Mirror> first = Mirror::acquire(fake_options());
    first->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    first->synchronize();
    EXPECT_EQ(first->stats().events, 1U);
    first.reset();
    const std::shared_ptr<Mirror> second = Mirror::acquire(fake_options());
    EXPECT_EQ(second->stats().events, 0U) << "a released Mirror must not come back";
}

TEST_F(MirrorRouting, OnlyOverlappingWatchesHearTheirClippedRange) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener a, b, c;
    const Mirror::Watch wa = mirror->watch(Range{0x10000, 0x20000}, a);
    const Mirror::Watch wb = mirror->watch(Range{0x18000, 0x30000}, b);
    const Mirror::Watch wc = mirror->watch(Range{0x40000, 0x50000}, c);

    mirror->inject(Range{0x1c000, 0x22000}, InvalidationReason::Clear);
    mirror->synchronize();

    ASSERT_EQ(a.count(), 1U);
    EXPECT_EQ(a.heard()[0].range, (Range{0x1c000, 0x20000}));
    EXPECT_EQ(a.heard()[0].reason, InvalidationReason::Clear);
    EXPECT_FALSE(a.heard()[0].all);
    ASSERT_EQ(b.count(), 1U);
    EXPECT_EQ(b.heard()[0].range, (Range{0x1c000, 0x22000}));
    EXPECT_EQ(c.count(), 0U);

    // Touching the end of a range exactly is no overlap.
    mirror->inject(Range{0x30000, 0x40000}, InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_EQ(b.count(), 1U);
    EXPECT_EQ(c.count(), 0U);

    const MirrorStats stats = mirror->stats();
    EXPECT_EQ(stats.events, 2U);
    EXPECT_EQ(stats.deliveries, 2U);
    EXPECT_EQ(stats.watches, 3U);
    EXPECT_EQ(stats.watches_total, 3U);
}

TEST_F(MirrorRouting, EveryReasonArrivesAsInjected) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x9000}, listener);
    const InvalidationReason reasons[] = {
        InvalidationReason::Unmap,     InvalidationReason::Clear,    InvalidationReason::Protection,
        InvalidationReason::Migration, InvalidationReason::Teardown, InvalidationReason::Other};
    for (const InvalidationReason reason : reasons) {
        mirror->inject(Range{0x2000, 0x3000}, reason);
    }
    mirror->synchronize();
    const std::vector<Heard> heard = listener.heard();
    ASSERT_EQ(heard.size(), std::size(reasons));
    for (std::size_t i = 0; i < heard.size(); ++i) {
        EXPECT_EQ(heard[i].reason, reasons[i]) << "in order, event " << i;
    }
}

TEST_F(MirrorRouting, CallbacksRunOnTheDispatcherNotOnTheInjectingThread) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x2000}, listener);
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->synchronize();
    ASSERT_EQ(listener.count(), 1U);
    EXPECT_NE(listener.heard()[0].thread, std::this_thread::get_id());
}

TEST_F(MirrorRouting, NothingAfterUnwatch) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    Mirror::Watch watch = mirror->watch(Range{0x1000, 0x2000}, listener);
    watch.reset();
    EXPECT_FALSE(watch);
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_EQ(listener.count(), 0U);
    EXPECT_EQ(mirror->stats().watches, 0U);
}

TEST_F(MirrorOverflow, InjectedOverflowInvalidatesEveryListener) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener a, b;
    const Mirror::Watch wa = mirror->watch(Range{0x1000, 0x2000}, a);
    const Mirror::Watch wb = mirror->watch(Range{0x8000, 0x9000}, b);
    mirror->inject_overflow();
    mirror->synchronize();
    for (const RecordingListener* listener : {&a, &b}) {
        ASSERT_EQ(listener->count(), 1U);
        EXPECT_TRUE(listener->heard()[0].all);
        EXPECT_EQ(listener->heard()[0].reason, InvalidationReason::Overflow);
    }
    EXPECT_EQ(mirror->stats().overflows, 1U);
}

// The dispatcher is stuck in a callback; the producer keeps recording events
// into a queue of 4: it must not block, and the loss must be reported.
TEST_F(MirrorOverflow, AFullQueueReportsOverflowAndNeverBlocksTheProducer) {
    MirrorOptions options = fake_options();
    options.event_capacity = 4;
    const auto mirror = Mirror::acquire(options);
    Gate gate;
    std::atomic<bool> in_callback{false};
    RecordingListener listener;
    listener.hook = [&] {
        if (!in_callback.exchange(true)) {
            gate.wait();
        }
    };
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x100000}, listener);
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    while (!in_callback.load()) {
        std::this_thread::sleep_for(1ms);
    }
    // The gate stays shut until the producer is done: an inject that waited
    // for room would wait forever (the bound only ends such a hang).
    auto producer = std::async(std::launch::async, [&] {
        for (int i = 0; i < 20; ++i) {
            mirror->inject(Range{0x2000, 0x3000}, InvalidationReason::Clear);
        }
    });
    EXPECT_EQ(producer.wait_for(60s), std::future_status::ready) << "inject blocked";
    gate.open();
    producer.get();
    mirror->synchronize();
    const std::vector<Heard> heard = listener.heard();
    EXPECT_TRUE(std::any_of(heard.begin(), heard.end(), [](const Heard& h) {
        return h.all && h.reason == InvalidationReason::Overflow;
    }));
    EXPECT_GE(mirror->stats().overflows, 1U);
    EXPECT_LT(heard.size(), 21U) << "some events must have been lost";
}

TEST_F(MirrorWatch, DestroyingItsOwnWatchInsideTheCallbackIsSafe) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    std::optional<Mirror::Watch> watch;
    listener.hook = [&] { watch.reset(); };
    watch.emplace(mirror->watch(Range{0x1000, 0x2000}, listener));
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_EQ(listener.count(), 1U) << "no callback after the watch is gone";
    EXPECT_FALSE(watch.has_value());
}

TEST_F(MirrorWatch, DestroyingAnotherWatchInsideACallbackStopsItsCallbacks) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener first, second;
    std::optional<Mirror::Watch> second_watch;
    first.hook = [&] { second_watch.reset(); };
    const Mirror::Watch first_watch = mirror->watch(Range{0x1000, 0x2000}, first);
    second_watch.emplace(mirror->watch(Range{0x1000, 0x2000}, second));
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_EQ(first.count(), 1U);
    EXPECT_EQ(second.count(), 0U) << "the second watch was destroyed before its turn";
}

TEST_F(MirrorWatch, WatchingFromInsideACallbackWorks) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener outer, inner;
    std::optional<Mirror::Watch> inner_watch;
    outer.hook = [&] {
        if (!inner_watch) {
            inner_watch.emplace(Mirror::acquire()->watch(Range{0x5000, 0x6000}, inner));
        }
    };
    const Mirror::Watch outer_watch = mirror->watch(Range{0x1000, 0x2000}, outer);
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->synchronize();
    ASSERT_TRUE(inner_watch.has_value());
    mirror->inject(Range{0x5000, 0x6000}, InvalidationReason::Clear);
    mirror->synchronize();
    EXPECT_EQ(inner.count(), 1U);
    inner_watch.reset();
}

TEST_F(MirrorWatch, TheLastReferenceDroppedInsideACallbackTearsDownCleanly) {
    RecordingListener listener;
    std::optional<Mirror::Watch> watch;
    listener.hook = [&] { watch.reset(); };  // the only reference to the Mirror
    watch.emplace(Mirror::acquire(fake_options())->watch(Range{0x1000, 0x2000}, listener));
    watch->mirror()->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    ASSERT_TRUE(listener.wait_for_count(1));
    // The dispatcher finishes tearing down after the callback; 60 s bounds a hang.
    for (int i = 0; i < 30000 && Mirror::current() != nullptr; ++i) {
        std::this_thread::sleep_for(2ms);
    }
    EXPECT_EQ(Mirror::current(), nullptr);
    // And the process can have a new one.
    const auto fresh = Mirror::acquire(fake_options());
    EXPECT_EQ(fresh->stats().events, 0U);
}

// A callback acquires while another thread drops the last reference and
// joins the dispatcher: acquire() must not wait for the dying Mirror (it waits
// for this very callback).
TEST_F(MirrorWatch, AcquireInsideACallbackWhileTheMirrorDiesDoesNotDeadlock) {
    auto mirror = Mirror::acquire(fake_options());
    std::atomic<bool> in_hook{false};
    std::atomic<bool> releasing{false};
    std::atomic<bool> got_fresh{false};
    std::optional<Mirror::Watch> watch;
    RecordingListener listener;
    listener.hook = [&] {
        watch.reset();  // now only `mirror` holds the Mirror
        in_hook = true;
        while (!releasing.load()) {
            std::this_thread::sleep_for(1ms);
        }
        std::this_thread::sleep_for(30ms);  // the destructor is joining us by now
        const auto fresh = Mirror::acquire(fake_options());
        got_fresh = fresh != nullptr;
    };
    watch.emplace(mirror->watch(Range{0x1000, 0x2000}, listener));
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    while (!in_hook.load()) {
        std::this_thread::sleep_for(1ms);
    }
    auto release = std::async(std::launch::async, [&] {
        releasing = true;
        mirror.reset();
    });
    ASSERT_EQ(release.wait_for(60s), std::future_status::ready) << "deadlock";
    EXPECT_TRUE(got_fresh.load());
}

TEST_F(MirrorWatch, DestructorWaitsForItsRunningCallback) {
    const auto mirror = Mirror::acquire(fake_options());
    Gate gate;
    std::atomic<bool> entered{false};
    std::atomic<bool> finished{false};
    RecordingListener listener;
    listener.hook = [&] {
        entered = true;
        gate.wait();
        std::this_thread::sleep_for(10ms);
        finished = true;
    };
    std::optional<Mirror::Watch> watch(mirror->watch(Range{0x1000, 0x2000}, listener));
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    while (!entered.load()) {
        std::this_thread::sleep_for(1ms);
    }
    std::atomic<bool> destroyed{false};
    bool callback_done_when_destroyed = false;
    std::thread destroyer([&] {
        watch.reset();
        callback_done_when_destroyed = finished.load();
        destroyed = true;
    });
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(destroyed.load()) << "~Watch returned while its callback was running";
    gate.open();
    destroyer.join();
    EXPECT_TRUE(callback_done_when_destroyed);
}

TEST_F(MirrorWatch, MovedWatchKeepsItsRegistration) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    Mirror::Watch original = mirror->watch(Range{0x1000, 0x2000}, listener);
    Mirror::Watch moved = std::move(original);
    EXPECT_FALSE(original);  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_TRUE(moved);
    EXPECT_EQ(moved.range(), (Range{0x1000, 0x2000}));
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_EQ(listener.count(), 1U);
    Mirror::Watch assigned;
    assigned = std::move(moved);
    EXPECT_EQ(mirror->stats().watches, 1U);
}

TEST_F(MirrorErrors, BadArgumentsAreRefusedWithAReason) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    EXPECT_EQ(errno_of([&] { (void)mirror->watch(Range{0x2000, 0x2000}, listener); }), EINVAL);
    EXPECT_EQ(errno_of([&] { (void)mirror->watch(Range{0x3000, 0x2000}, listener); }), EINVAL);
    EXPECT_EQ(errno_of([&] {
                  mirror->inject(Range{0x2000, 0x1000}, InvalidationReason::Unmap);
              }),
              EINVAL);
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x2000}, listener);
    EXPECT_EQ(errno_of([&] { watch.arm(Range{0x1000, 0x3000}); }), EINVAL);
    EXPECT_EQ(errno_of([&] { watch.arm(Range{0x1800, 0x1800}); }), EINVAL);
    EXPECT_EQ(errno_of([&] { watch.arm(Range{0x1000, 0x2000}); }), 0);
    const Mirror::Watch empty;
    EXPECT_EQ(errno_of([&] { empty.arm(Range{0x1000, 0x2000}); }), EINVAL);
    EXPECT_EQ(mirror->stats().watches, 1U) << "failed watch() calls leave nothing behind";
}

TEST_F(MirrorErrors, InjectingIntoARealSourceIsRefused) {
    MirrorOptions none;
    none.kind = MonitorKind::None;
    const auto mirror = Mirror::acquire(none);
    EXPECT_EQ(mirror->kind(), MonitorKind::None);
    EXPECT_NE(mirror->description().find("promised"), std::string_view::npos);
    try {
        mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
        FAIL() << "inject on the None source must throw";
    } catch (const Error& error) {
        EXPECT_EQ(error.errno_value(), EINVAL);
        EXPECT_NE(std::string(error.what()).find("MonitorKind::Fake"), std::string::npos);
    }
    EXPECT_EQ(errno_of([&] { mirror->inject_overflow(); }), EINVAL);
    // Nothing is ever pending without a monitor.
    EXPECT_TRUE(mirror->up_to_date());
    mirror->synchronize();
}

TEST_F(MirrorErrors, UnwatchablePartsAreReportedByWatchAndArm) {
    MirrorOptions options = fake_options();
    options.fake_unwatchable.push_back(Unwatched{Range{0x4000, 0x6000}, "a file mapping", 0, {}});
    const auto mirror = Mirror::acquire(options);
    RecordingListener listener;
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x5000}, listener);
    const std::vector<Unwatched> unwatched = watch.unwatched();
    ASSERT_EQ(unwatched.size(), 1U);
    EXPECT_EQ(unwatched[0].range, (Range{0x4000, 0x5000}));
    EXPECT_EQ(unwatched[0].why, "a file mapping");
    EXPECT_EQ(errno_of([&] { watch.arm(Range{0x1000, 0x4000}); }), 0);
    try {
        watch.arm(Range{0x3000, 0x5000});
        FAIL() << "arming an unwatchable part must throw";
    } catch (const Error& error) {
        EXPECT_EQ(error.errno_value(), EINVAL);
        EXPECT_NE(std::string(error.what()).find("a file mapping"), std::string::npos)
            << error.what();
    }
    EXPECT_EQ(mirror->stats().armed_ranges, 1U);
}

TEST_F(MirrorSync, SynchronizeDeliversEverythingRecordedBefore) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x2000}, listener);
    for (int i = 0; i < 1000; ++i) {
        mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Clear);
    }
    mirror->synchronize();
    EXPECT_EQ(listener.count(), 1000U);
    EXPECT_TRUE(mirror->up_to_date());
    EXPECT_EQ(mirror->stats().overflows, 0U);
}

TEST_F(MirrorSync, UpToDateIsFalseWhileAnEventWaits) {
    const auto mirror = Mirror::acquire(fake_options());
    Gate gate;
    std::atomic<bool> entered{false};
    RecordingListener listener;
    listener.hook = [&] {
        entered = true;
        gate.wait();
    };
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x2000}, listener);
    EXPECT_TRUE(mirror->up_to_date());
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    EXPECT_FALSE(mirror->up_to_date());
    while (!entered.load()) {
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_FALSE(mirror->up_to_date()) << "delivery has not finished";
    gate.open();
    mirror->synchronize();
    EXPECT_TRUE(mirror->up_to_date());
}

TEST_F(MirrorSync, SynchronizeInsideACallbackReturns) {
    const auto mirror = Mirror::acquire(fake_options());
    RecordingListener listener;
    listener.hook = [&] { mirror->synchronize(); };
    const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x2000}, listener);
    mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
    mirror->synchronize();
    EXPECT_EQ(listener.count(), 1U);
}

TEST_F(MirrorIoContext, CallbacksRunOnTheCallersIoContext) {
    boost::asio::io_context io;
    auto guard = boost::asio::make_work_guard(io);
    std::thread runner([&] { io.run(); });
    {
        MirrorOptions options = fake_options();
        options.io_context = &io;
        const auto mirror = Mirror::acquire(options);
        RecordingListener listener;
        const Mirror::Watch watch = mirror->watch(Range{0x1000, 0x2000}, listener);
        mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Unmap);
        mirror->synchronize();
        ASSERT_EQ(listener.count(), 1U);
        EXPECT_EQ(listener.heard()[0].thread, runner.get_id());
        mirror->inject_overflow();
        mirror->synchronize();
        ASSERT_EQ(listener.count(), 2U);
        EXPECT_TRUE(listener.heard()[1].all);
    }
    guard.reset();
    runner.join();  // returns once the Mirror's wait was cancelled: nothing leaks
}

TEST_F(MirrorIoContext, SynchronizeOnTheIoThreadDeliversInline) {
    boost::asio::io_context io;
    MirrorOptions options = fake_options();
    options.io_context = &io;
    auto mirror = Mirror::acquire(options);
    RecordingListener listener;
    std::optional<Mirror::Watch> watch(mirror->watch(Range{0x1000, 0x2000}, listener));
    std::size_t seen_inside = 0;
    boost::asio::post(io, [&] {
        mirror->inject(Range{0x1000, 0x2000}, InvalidationReason::Clear);
        mirror->synchronize();  // nobody else runs `io`: must not wait for itself
        seen_inside = listener.count();
    });
    io.run_one();
    EXPECT_EQ(seen_inside, 1U);
    EXPECT_EQ(listener.heard()[0].thread, std::this_thread::get_id());
    watch.reset();
    mirror.reset();
    io.restart();
    io.run();  // the Mirror's pending wait is cancelled and freed
}

}  // namespace
}  // namespace odp
