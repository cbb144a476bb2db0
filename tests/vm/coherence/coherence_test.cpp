// Coherence, the core promise (issue 4 item 9), over the loopback of the
// device ODP_COHERENCE_DEVICE (rxe0: an RC QP connected to itself; siw0: two
// connected through RDMA CM) through libodp:
//   RDMA WRITE into a registered buffer; then change the mapping under it
//   (munmap + mmap MAP_FIXED, mremap away and back, madvise(DONTNEED),
//   shrinking brk, shmdt + shmat, fork + a write by the parent); then RDMA
//   WRITE again: the data must be in the current mapping; RDMA READ (the peer
//   reading the region) and an RDMA READ response landing in the region (local
//   lease) must see the current pages. Twice in a row, so a mapping created
//   by the first change must be watched too.
// Every mode the kernel offers: emulated+module (wherever odp_mirror.ko is
// built: 5.10, 6.1, 6.12, 7.3), emulated+userfaultfd and pinned; native on 7.3. Plain pinned MRs
// must show the stale-page failure where the pages really change, which
// proves the test can fail.
#include <gtest/gtest.h>
#include <malloc.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <odp/region.hpp>
#include <odp/verbs.hpp>
#include <odp/verbs_cm.hpp>
#include <optional>
#include <thread>

#include "guest_env.hpp"

namespace odp {
namespace {

using namespace std::chrono_literals;

const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
constexpr std::size_t pages = 4;
const Access access = Access::LocalWrite | Access::RemoteWrite | Access::RemoteRead;

enum class Scenario {
    MunmapMmapFixed,
    MremapAwayAndBack,
    MadviseDontneed,
    ShrinkBrk,
    ShmdtShmat,
    ForkParentWrite
};

std::string name_of(Scenario scenario) {
    switch (scenario) {
        case Scenario::MunmapMmapFixed:
            return "munmap_mmap_fixed";
        case Scenario::MremapAwayAndBack:
            return "mremap_away_and_back";
        case Scenario::MadviseDontneed:
            return "madvise_dontneed";
        case Scenario::ShrinkBrk:
            return "shrink_brk";
        case Scenario::ShmdtShmat:
            return "shmdt_shmat";
        case Scenario::ForkParentWrite:
            return "fork_parent_write";
    }
    return "unknown";
}

// Whether the physical pages under the address change. They do not for
// mremap away and back (the page-table entries move, the pages stay) nor for
// fork + parent write (since Linux 5.8 pinned anonymous pages are copied for
// the child at fork, the parent keeps them): there a pinned MR stays right.
bool pages_change(Scenario scenario) {
    return scenario != Scenario::MremapAwayAndBack && scenario != Scenario::ForkParentWrite;
}

struct ModeSetup {
    Mode mode;
    MonitorKind monitor;
    const char* name;
};

const ModeSetup setups[] = {
    {Mode::Pinned, MonitorKind::None, "pinned"},
    {Mode::Native, MonitorKind::Auto, "native"},
    {Mode::Emulated, MonitorKind::Module, "emulated_module"},
    {Mode::Emulated, MonitorKind::Userfaultfd, "emulated_userfaultfd"},
};

// The memory under test and the change made to its mapping.
class Memory {
  public:
    virtual ~Memory() = default;
    [[nodiscard]] void* address() const { return address_; }
    [[nodiscard]] std::size_t length() const { return pages * page; }
    // Changes the mapping; afterwards `address()` is mapped again (writable).
    virtual void change() = 0;

  protected:
    void* address_ = nullptr;
};

class AnonymousMemory : public Memory {
  public:
    explicit AnonymousMemory(Scenario scenario) : scenario_(scenario) {
        address_ =
            ::mmap(nullptr, length(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (address_ == MAP_FAILED) {
            throw std::runtime_error(std::string("mmap: ") + std::strerror(errno));
        }
        std::memset(address_, 0, length());
    }
    ~AnonymousMemory() override { ::munmap(address_, length()); }

    void change() override {
        switch (scenario_) {
            case Scenario::MunmapMmapFixed:
                check(::munmap(address_, length()) == 0, "munmap");
                check(::mmap(address_, length(), PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == address_,
                      "mmap MAP_FIXED");
                break;
            case Scenario::MremapAwayAndBack: {
                void* away =
                    ::mmap(nullptr, length(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                check(away != MAP_FAILED, "mmap a place to move to");
                check(::mremap(address_, length(), length(), MREMAP_MAYMOVE | MREMAP_FIXED, away) ==
                          away,
                      "mremap away");
                check(::mremap(away, length(), length(), MREMAP_MAYMOVE | MREMAP_FIXED, address_) ==
                          address_,
                      "mremap back");
                break;
            }
            case Scenario::MadviseDontneed:
                check(::madvise(address_, length(), MADV_DONTNEED) == 0, "madvise(DONTNEED)");
                break;
            case Scenario::ForkParentWrite:
                fork_and_write();
                break;
            default:
                throw std::logic_error("not an anonymous-memory scenario");
        }
    }

  private:
    static void check(bool ok, const char* what) {
        if (!ok) {
            throw std::runtime_error(std::string(what) + ": " + std::strerror(errno));
        }
    }

    // The child keeps the pages shared until the parent has written (the
    // copy-on-write break happens in the parent), then exits.
    void fork_and_write() {
        int fds[2];
        check(::pipe(fds) == 0, "pipe");
        const pid_t child = ::fork();
        check(child >= 0, "fork");
        if (child == 0) {
            ::close(fds[1]);
            char byte = 0;
            [[maybe_unused]] const ssize_t got = ::read(fds[0], &byte, 1);
            ::_exit(0);
        }
        ::close(fds[0]);
        std::memset(address_, 0x5f, length());
        ::close(fds[1]);
        int status = 0;
        ::waitpid(child, &status, 0);
    }

    Scenario scenario_;
};

// Pages at the top of the brk heap; malloc is kept off brk meanwhile so that
// it never grows into them.
class BrkMemory : public Memory {
  public:
    BrkMemory() {
        if (::mallopt(M_MMAP_THRESHOLD, 0) != 1) {
            throw std::runtime_error("mallopt(M_MMAP_THRESHOLD, 0) failed");
        }
        char* current = static_cast<char*>(::sbrk(0));
        const std::size_t misalignment = reinterpret_cast<std::uintptr_t>(current) % page;
        pad_ = misalignment == 0 ? 0 : page - misalignment;
        if (::sbrk(static_cast<intptr_t>(pad_ + length())) == reinterpret_cast<void*>(-1)) {
            throw std::runtime_error(std::string("sbrk: ") + std::strerror(errno));
        }
        address_ = current + pad_;
        std::memset(address_, 0, length());
    }
    ~BrkMemory() override {
        if (::sbrk(0) == static_cast<char*>(address_) + length()) {
            ::sbrk(-static_cast<intptr_t>(pad_ + length()));
        }
        ::mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    }
    void change() override {
        if (::sbrk(-static_cast<intptr_t>(length())) == reinterpret_cast<void*>(-1) ||
            ::sbrk(static_cast<intptr_t>(length())) != address_) {
            throw std::runtime_error(std::string("sbrk shrink and grow: ") + std::strerror(errno));
        }
    }

  private:
    std::size_t pad_ = 0;
};

// System V shared memory; the change attaches a new segment at the same place.
class ShmMemory : public Memory {
  public:
    ShmMemory() {
        address_ = attach(nullptr);
        std::memset(address_, 0, length());
    }
    ~ShmMemory() override { ::shmdt(address_); }
    void change() override {
        if (::shmdt(address_) != 0) {
            throw std::runtime_error(std::string("shmdt: ") + std::strerror(errno));
        }
        if (attach(address_) != address_) {
            throw std::runtime_error("shmat did not attach at the old address");
        }
    }

  private:
    void* attach(void* where) const {
        const int id = ::shmget(IPC_PRIVATE, length(), IPC_CREAT | 0600);
        if (id < 0) {
            throw std::runtime_error(std::string("shmget: ") + std::strerror(errno));
        }
        void* attached = ::shmat(id, where, 0);
        ::shmctl(id, IPC_RMID, nullptr);  // freed once detached and unpinned
        if (attached == reinterpret_cast<void*>(-1)) {
            throw std::runtime_error(std::string("shmat: ") + std::strerror(errno));
        }
        return attached;
    }
};

std::unique_ptr<Memory> make_memory(Scenario scenario) {
    switch (scenario) {
        case Scenario::ShrinkBrk:
            return std::make_unique<BrkMemory>();
        case Scenario::ShmdtShmat:
            return std::make_unique<ShmMemory>();
        default:
            return std::make_unique<AnonymousMemory>(scenario);
    }
}

bool all_bytes(const void* address, std::size_t length, unsigned char value) {
    const auto* bytes = static_cast<const unsigned char*>(address);
    for (std::size_t i = 0; i < length; ++i) {
        if (bytes[i] != value) {
            return false;
        }
    }
    return true;
}

// "page 0: 11.. 11 | page 1: 00.. 00 | ..." (first and last byte of each page).
std::string first_bytes(const void* address) {
    const auto* bytes = static_cast<const unsigned char*>(address);
    std::string text;
    for (std::size_t p = 0; p < pages; ++p) {
        char piece[48];
        std::snprintf(piece, sizeof piece, "%spage %zu: %02x..%02x", p == 0 ? "" : " | ", p,
                      bytes[p * page], bytes[(p + 1) * page - 1]);
        text += piece;
    }
    // Where the first page changes value: shows partial writes ("0x11 x1024 @0").
    text += " | page 0 runs:";
    std::size_t run_start = 0;
    for (std::size_t i = 1; i <= page && text.size() < 400; ++i) {
        if (i == page || bytes[i] != bytes[run_start]) {
            char piece[40];
            std::snprintf(piece, sizeof piece, " %02x x%zu @%zu", bytes[run_start], i - run_start,
                          run_start);
            text += piece;
            run_start = i;
        }
    }
    return text;
}

// The device, a loopback RC connection (one QP connected to itself, or on
// iWARP two connected through RDMA CM: odp::verbs::LoopbackConnection), and a
// pinned staging buffer.
class Loopback {
  public:
    Loopback() {
        DeviceOptions options;
        options.name = guest::device();
        device_ = Device::open(options);
        cq_ = verbs::create_cq(*device_->context(), 16);
        connection_.emplace(*device_->pd(), *cq_, *cq_);
        void* staging = ::mmap(nullptr, pages * page, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (staging == MAP_FAILED) {
            throw std::runtime_error("mmap staging");
        }
        staging_ = static_cast<unsigned char*>(staging);
        staging_mr_ = verbs::reg_mr(
            *device_->pd(), staging_, pages * page,
            IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE);
    }
    ~Loopback() {
        staging_mr_.reset();
        ::munmap(staging_, pages * page);
    }
    Loopback(const Loopback&) = delete;
    Loopback& operator=(const Loopback&) = delete;

    [[nodiscard]] Device& device() const { return *device_; }
    [[nodiscard]] unsigned char* staging() const { return staging_; }

    // The peer writes `value` into [address, +length) of the region.
    void remote_write(Region& region, void* address, std::size_t length, unsigned char value) {
        std::memset(staging_, value, length);
        Exposure exposure = region.expose(address, length);
        std::size_t offset = 0;
        for (const RemoteSegment& segment : exposure.segments()) {
            const ibv_sge sge{reinterpret_cast<std::uintptr_t>(staging_ + offset), segment.length,
                              staging_mr_->lkey};
            connection_->qp().post_write({&sge, 1}, segment.address, segment.rkey, ++wr_id_);
            (void)verbs::wait_completion(*cq_, 10s);
            offset += segment.length;
        }
        EXPECT_EQ(offset, length);
        EXPECT_FALSE(exposure.release()) << "nothing changed while exposed";
    }

    // RDMA WRITE of the staging buffer (as filled by the caller) to `rkey`.
    void raw_write(void* address, std::size_t length, std::uint32_t rkey) {
        const ibv_sge sge{reinterpret_cast<std::uintptr_t>(staging_),
                          static_cast<std::uint32_t>(length), staging_mr_->lkey};
        connection_->qp().post_write({&sge, 1}, reinterpret_cast<std::uintptr_t>(address), rkey,
                                     ++wr_id_);
        (void)verbs::wait_completion(*cq_, 10s);
    }

    // RDMA WRITE from the lease's SGEs into the staging buffer (the bytes the
    // NIC reads through the lease).
    void write_out(const Lease& lease) {
        std::memset(staging_, 0xee, lease.length());
        connection_->qp().post_write(lease.sges(), reinterpret_cast<std::uintptr_t>(staging_),
                                     staging_mr_->rkey, ++wr_id_);
        (void)verbs::wait_completion(*cq_, 10s);
    }

    // The peer reads [address, +length) of the region into the staging buffer.
    void remote_read(Region& region, void* address, std::size_t length) {
        std::memset(staging_, 0xee, length);
        Exposure exposure = region.expose(address, length);
        std::size_t offset = 0;
        for (const RemoteSegment& segment : exposure.segments()) {
            const ibv_sge sge{reinterpret_cast<std::uintptr_t>(staging_ + offset), segment.length,
                              staging_mr_->lkey};
            connection_->qp().post_read({&sge, 1}, segment.address, segment.rkey, ++wr_id_);
            (void)verbs::wait_completion(*cq_, 10s);
            offset += segment.length;
        }
        EXPECT_EQ(offset, length);
        exposure.release();
    }

    // An RDMA READ of `value`s from the staging buffer lands in the region
    // through a local lease (its lkeys).
    void read_into(Region& region, void* address, std::size_t length, unsigned char value) {
        std::memset(staging_, value, length);
        Lease lease = region.translate(address, length, 4);
        connection_->qp().post_read(lease.sges(), reinterpret_cast<std::uintptr_t>(staging_),
                                    staging_mr_->rkey, ++wr_id_);
        (void)verbs::wait_completion(*cq_, 10s);
        lease.release();
    }

  private:
    std::shared_ptr<Device> device_;
    verbs::CqPtr cq_;
    std::optional<verbs::LoopbackConnection> connection_;
    unsigned char* staging_ = nullptr;
    verbs::MrPtr staging_mr_;
    std::uint64_t wr_id_ = 0;
};

bool module_present() {
    struct stat info {};
    return ::stat("/dev/odp_mirror", &info) == 0;
}

class Coherence : public ::testing::TestWithParam<std::tuple<std::size_t, Scenario>> {
  protected:
    void SetUp() override {
        setup_ = setups[std::get<0>(GetParam())];
        scenario_ = std::get<1>(GetParam());
        loopback_.emplace();
        if (setup_.mode == Mode::Native && !loopback_->device().native_covers(access)) {
            if (guest::kernel() == "7.3" && loopback_->device().name().starts_with("rxe")) {
                FAIL() << "rxe on 7.3 has native ODP, but the device does not report it";
            }
            GTEST_SKIP() << "no native ODP for RC write/read on " << loopback_->device().name()
                         << " with this kernel (" << guest::kernel() << ")";
        }
        if (setup_.monitor == MonitorKind::Userfaultfd && guest::kernel_copies_pinned_pages()) {
            GTEST_SKIP() << "the userfaultfd source refuses on Linux " << guest::kernel()
                         << " (a pinned page can be copied without an event): "
                            "PinnedPageWrite.*/emulated_userfaultfd checks the refusal";
        }
        if (setup_.monitor == MonitorKind::Module && !module_present()) {
            if (guest::module_expected()) {
                FAIL() << "odp_mirror.ko was loaded but /dev/odp_mirror is missing";
            }
            GTEST_SKIP() << "no odp_mirror module on this kernel (" << guest::kernel()
                         << "): odp_mirror.ko is not built for it (its headers are missing)";
        }
    }
    void TearDown() override { loopback_.reset(); }

    ModeSetup setup_{};
    Scenario scenario_{};
    std::optional<Loopback> loopback_;
};

TEST_P(Coherence, DataFollowsTheCurrentMapping) {
    const std::unique_ptr<Memory> memory = make_memory(scenario_);
    void* const address = memory->address();
    const std::size_t length = memory->length();
    RegionOptions options;
    options.mode = setup_.mode;
    options.monitor = setup_.monitor;

    std::optional<Region> region;
    try {
        region.emplace(loopback_->device().register_region(address, length, access, options));
    } catch (const Error& error) {
        FAIL() << "register_region (" << setup_.name << "): " << error.what();
    }
    std::cout << "[ region   ] " << region->describe() << "\n";
    // userfaultfd cannot see shmdt: the region must refuse System V shared
    // memory plainly (at the first translation) rather than pin it unwatched.
    const bool refusal_expected =
        setup_.monitor == MonitorKind::Userfaultfd && scenario_ == Scenario::ShmdtShmat;
    try {
        loopback_->remote_write(*region, address, length, 0x11);
    } catch (const Error& error) {
        if (!refusal_expected) {
            throw;
        }
        std::cout << "[ refused  ] " << error.what() << "\n";
        EXPECT_EQ(error.errno_value(), ENOTSUP);
        EXPECT_NE(std::string(error.what()).find("System V"), std::string::npos);
        EXPECT_NE(std::string(error.what()).find("odp_mirror.ko"), std::string::npos)
            << "the error must say what to do";
        return;
    }
    ASSERT_FALSE(refusal_expected) << "System V shared memory was pinned without a watch";
    ASSERT_TRUE(all_bytes(address, length, 0x11))
        << "before any mapping change the RDMA WRITE must land whole (if not, the device "
           "itself lost data of the write): "
        << first_bytes(address);

    const bool expect_stale = setup_.mode == Mode::Pinned && pages_change(scenario_);
    for (unsigned char round = 0; round < 2; ++round) {
        SCOPED_TRACE("change #" + std::to_string(round + 1));
        memory->change();
        const auto written = static_cast<unsigned char>(0x22 + round);
        loopback_->remote_write(*region, address, length, written);
        const bool landed = all_bytes(address, length, written);
        if (expect_stale) {
            // The counter-example: the MR still points at the old pages.
            EXPECT_FALSE(landed) << "a pinned MR followed " << name_of(scenario_)
                                 << ": the test cannot tell coherent from stale";
            std::cout << "[ stale    ] pinned MR after " << name_of(scenario_)
                      << ": the current mapping holds " << first_bytes(address)
                      << ", the peer's write of " << static_cast<int>(written)
                      << " went to the old pages\n";
            std::memset(address, 0x33, length);
            loopback_->remote_read(*region, address, length);
            EXPECT_FALSE(all_bytes(loopback_->staging(), length, 0x33))
                << "RDMA READ through a stale pinned MR returned the current contents";
            return;
        }
        EXPECT_TRUE(landed) << "RDMA WRITE after " << name_of(scenario_)
                            << " did not reach the current mapping: " << first_bytes(address);

        const auto current = static_cast<unsigned char>(0x33 + round);
        std::memset(address, current, length);
        loopback_->remote_read(*region, address, length);
        EXPECT_TRUE(all_bytes(loopback_->staging(), length, current))
            << "RDMA READ returned " << first_bytes(loopback_->staging()) << " instead of the "
            << "current contents";

        const auto response = static_cast<unsigned char>(0x44 + round);
        loopback_->read_into(*region, address, length, response);
        EXPECT_TRUE(all_bytes(address, length, response))
            << "an RDMA READ response through a lease did not reach the current mapping: "
            << first_bytes(address);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, Coherence,
    ::testing::Combine(::testing::Range<std::size_t>(0, std::size(setups)),
                       ::testing::Values(Scenario::MunmapMmapFixed, Scenario::MremapAwayAndBack,
                                         Scenario::MadviseDontneed, Scenario::ShrinkBrk,
                                         Scenario::ShmdtShmat, Scenario::ForkParentWrite)),
    [](const auto& param_info) {
        return std::string(setups[std::get<0>(param_info.param)].name) + "_" +
               name_of(std::get<1>(param_info.param));
    });

// The native cases rest on the device's own ODP. This checks it without the
// library: one plain IBV_ACCESS_ON_DEMAND MR, one RDMA WRITE of 4 pages whose
// 1 KiB blocks carry distinct values, so a failure shows where the data went.
TEST(NativeOdpDevice, RdmaWriteIntoAPlainOdpMrLandsWhole) {
    Loopback loopback;
    if (!loopback.device().native_covers(access)) {
        GTEST_SKIP() << "no native ODP on " << loopback.device().name() << " with kernel "
                     << guest::kernel();
    }
    AnonymousMemory memory(Scenario::MunmapMmapFixed);
    const verbs::MrPtr mr =
        verbs::reg_mr(*loopback.device().pd(), memory.address(), memory.length(),
                      IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_ON_DEMAND);
    for (std::size_t block = 0; block < memory.length() / 1024; ++block) {
        std::memset(loopback.staging() + block * 1024, static_cast<int>(0x40 + block), 1024);
    }
    loopback.raw_write(memory.address(), memory.length(), mr->rkey);
    const bool whole = std::memcmp(memory.address(), loopback.staging(), memory.length()) == 0;
    EXPECT_TRUE(whole) << "rxe's native ODP lost part of an RDMA WRITE (block k of 1 KiB "
                          "carries 0x40+k): "
                       << first_bytes(memory.address());
}

// An exposed range whose mapping changes while a peer may use it: the owner
// learns it (release() returns true) in every coherent mode.
class ExposureChange : public ::testing::TestWithParam<std::size_t> {};

TEST_P(ExposureChange, IsReportedByRelease) {
    const ModeSetup setup = setups[GetParam()];
    Loopback loopback;
    if (setup.monitor == MonitorKind::Module && !module_present()) {
        GTEST_SKIP() << "no odp_mirror module on this kernel";
    }
    if (setup.monitor == MonitorKind::Userfaultfd && guest::kernel_copies_pinned_pages()) {
        GTEST_SKIP() << "the userfaultfd source refuses on Linux " << guest::kernel()
                     << ": PinnedPageWrite.*/emulated_userfaultfd checks the refusal";
    }
    AnonymousMemory memory(Scenario::MunmapMmapFixed);
    RegionOptions options;
    options.mode = setup.mode;
    options.monitor = setup.monitor;
    Region region =
        loopback.device().register_region(memory.address(), memory.length(), access, options);
    Exposure exposure = region.expose(memory.address(), memory.length());
    memory.change();
    // The monitor's thread notices the change asynchronously; the bound only
    // ends a hang (a busy host can stall the guest for seconds).
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!exposure.changed() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_TRUE(exposure.changed()) << "the mapping under an exposed range changed unnoticed";
    EXPECT_TRUE(exposure.release());
}

INSTANTIATE_TEST_SUITE_P(Emulated, ExposureChange, ::testing::Values(2, 3),
                         [](const auto& param_info) {
                             return std::string(setups[param_info.param].name);
                         });

// A CPU write to a page that a registration pins, after mprotect(PROT_READ)
// and back (issue 13: odp-stress found it with the userfaultfd source on
// 5.10). mprotect leaves a private anonymous page's entry read-only; the
// write faults, and before Linux 5.19 the kernel copies a page whose count
// the pin keeps above one: the process writes into the copy while the NIC
// keeps the old page. The copy calls the MMU notifiers (odp_mirror.ko sees
// it), not userfaultfd, so the userfaultfd source refuses such a kernel with
// a clear error. Elsewhere a lease must report the change, or have moved the
// bytes written after the mprotect. A plain pinned MR shows what the kernel
// does: the old bytes on 5.10, the new ones from 5.19 on.
class PinnedPageWrite : public ::testing::TestWithParam<std::size_t> {};

TEST_P(PinnedPageWrite, AfterMprotectTheLeaseMovesTheCurrentBytes) {
    const ModeSetup setup = setups[GetParam()];
    Loopback loopback;
    if (setup.monitor == MonitorKind::Module && !module_present()) {
        GTEST_SKIP() << "no odp_mirror module on this kernel";
    }
    AnonymousMemory memory(Scenario::MunmapMmapFixed);
    void* const address = memory.address();
    const std::size_t length = memory.length();
    constexpr unsigned char before = 0xa1;  // written before the mprotect
    constexpr unsigned char after = 0xb2;   // written by the CPU after it
    RegionOptions options;
    options.mode = setup.mode;
    options.monitor = setup.monitor;
    std::optional<Region> region;
    try {
        region.emplace(loopback.device().register_region(address, length, access, options));
    } catch (const Error& error) {
        if (setup.monitor != MonitorKind::Userfaultfd || !guest::kernel_copies_pinned_pages()) {
            throw;
        }
        std::cout << "[ refused  ] " << error.what() << "\n";
        EXPECT_EQ(error.errno_value(), ENOTSUP);
        const std::string what = error.what();
        EXPECT_NE(what.find("copy"), std::string::npos) << "the error must name the cause";
        EXPECT_NE(what.find("odp_mirror.ko"), std::string::npos) << "and what to do";
        EXPECT_NE(what.find("Pinned mode"), std::string::npos) << "and what to do";
        return;
    }
    ASSERT_FALSE(setup.monitor == MonitorKind::Userfaultfd && guest::kernel_copies_pinned_pages())
        << "the userfaultfd source accepted a kernel that copies pinned pages without an event";
    std::memset(address, before, length);
    Lease lease = region->translate(address, length, 4);  // pins the chunk
    ASSERT_EQ(::mprotect(address, length, PROT_READ), 0) << std::strerror(errno);
    ASSERT_EQ(::mprotect(address, length, PROT_READ | PROT_WRITE), 0) << std::strerror(errno);
    std::memset(address, after, length);
    loopback.write_out(lease);
    const bool changed = lease.release();
    const bool moved_current = all_bytes(loopback.staging(), length, after);
    const bool moved_old = all_bytes(loopback.staging(), length, before);
    std::cout << "[ moved    ] " << setup.name << ": release() reported "
              << (changed ? "a change" : "no change") << "; the RDMA WRITE moved "
              << (moved_current ? "the bytes written after the mprotect"
                  : moved_old   ? "the bytes written before the mprotect (the old page)"
                                : first_bytes(loopback.staging()))
              << "\n";
    if (setup.mode == Mode::Pinned) {
        const bool kernel_copies = guest::kernel_copies_pinned_pages();
        EXPECT_EQ(moved_old, kernel_copies)
            << "a pinned MR after mprotect and a CPU write, on Linux " << guest::kernel();
        EXPECT_EQ(moved_current, !kernel_copies);
        return;
    }
    EXPECT_TRUE(changed || moved_current)
        << "release() reported no change, but the RDMA WRITE through the lease moved "
        << (moved_old ? "the bytes written before the mprotect: the process wrote into a copy of "
                        "the pinned page and nothing reported it"
                      : first_bytes(loopback.staging()));
}

INSTANTIATE_TEST_SUITE_P(Modes, PinnedPageWrite, ::testing::Values(0, 2, 3),
                         [](const auto& param_info) {
                             return std::string(setups[param_info.param].name);
                         });

}  // namespace
}  // namespace odp
