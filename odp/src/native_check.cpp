// A loopback data check of native ODP.  A device can report ODP support and
// still lose data: rxe on Linux 7.3 (Debian 7.3.4) completes an RDMA WRITE
// into an ODP MR successfully but stores only the packets that start on a page
// boundary.  Auto must not pick such a mode, so it is tried once, on real
// bytes, before anything relies on it.
#include "native_check.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <odp/error.hpp>
#include <odp/verbs.hpp>

namespace odp::detail {

namespace {

// Anonymous memory that unmaps itself.
class Buffer {
  public:
    explicit Buffer(std::size_t length)
        : length_(length),
          data_(static_cast<std::uint8_t*>(
              mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {
        if (static_cast<void*>(data_) == MAP_FAILED) {
            throw_error(errno, "mmap(" + format_bytes(length) + ") for the native ODP check");
        }
    }
    ~Buffer() { munmap(data_, length_); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    [[nodiscard]] std::uint8_t* data() const noexcept { return data_; }
    [[nodiscard]] std::uint64_t address() const noexcept {
        return reinterpret_cast<std::uint64_t>(data_);
    }

  private:
    std::size_t length_;
    std::uint8_t* data_;
};

// "N of M bytes wrong (first at offset K)", or empty when all match.
std::string compare(const std::uint8_t* got, const std::uint8_t* want, std::size_t length) {
    std::size_t wrong = 0;
    std::size_t first = 0;
    for (std::size_t i = 0; i < length; ++i) {
        if (got[i] != want[i]) {
            first = wrong == 0 ? i : first;
            ++wrong;
        }
    }
    if (wrong == 0) {
        return {};
    }
    return std::to_string(wrong) + " of " + std::to_string(length) +
           " bytes wrong (first at offset " + std::to_string(first) + ")";
}

}  // namespace

std::string check_native_odp_data(ibv_context& context, ibv_pd& pd) {
    using namespace std::chrono_literals;
    const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    // Two pages of payload at a sub-page offset: packets start inside pages.
    const std::size_t offset = 1024;
    const std::size_t length = 2 * page;
    const std::size_t span = 4 * page;

    const verbs::CqPtr cq = verbs::create_cq(context, 4);
    verbs::RcQueuePair requester(pd, *cq, *cq);
    verbs::RcQueuePair responder(pd, *cq, *cq);
    requester.connect(responder.local_endpoint());
    responder.connect(requester.local_endpoint());

    const Buffer pattern(span);
    for (std::size_t i = 0; i < span; ++i) {
        pattern.data()[i] = static_cast<std::uint8_t>(i * 7 + 1);
    }
    const Buffer odp_target(span);
    const Buffer odp_source(span);
    std::memcpy(odp_source.data(), pattern.data(), span);
    const Buffer landing(span);

    constexpr int access =
        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
    const verbs::MrPtr pattern_mr = verbs::reg_mr(pd, pattern.data(), span, access);
    const verbs::MrPtr landing_mr = verbs::reg_mr(pd, landing.data(), span, access);
    const verbs::MrPtr target_mr =
        verbs::reg_mr(pd, odp_target.data(), span, access | IBV_ACCESS_ON_DEMAND);
    const verbs::MrPtr source_mr =
        verbs::reg_mr(pd, odp_source.data(), span, access | IBV_ACCESS_ON_DEMAND);

    std::string problems;
    const auto note = [&](const char* what, const std::string& mismatch) {
        if (!mismatch.empty()) {
            problems += (problems.empty() ? "" : "; ") + std::string(what) + ": " + mismatch;
        }
    };
    const auto complete = [&](const char* what) {
        const ibv_wc wc = verbs::wait_completion(*cq, 5000ms);
        if (wc.status != IBV_WC_SUCCESS) {
            throw_error(EIO, std::string(what) + " completed with " + ibv_wc_status_str(wc.status));
        }
    };

    const ibv_sge write_sge{pattern.address(), static_cast<std::uint32_t>(length),
                            pattern_mr->lkey};
    requester.post_write({&write_sge, 1}, odp_target.address() + offset, target_mr->rkey, 1);
    complete("RDMA WRITE into an ODP MR");
    note("RDMA WRITE into an ODP MR", compare(odp_target.data() + offset, pattern.data(), length));

    const ibv_sge read_sge{landing.address(), static_cast<std::uint32_t>(length), landing_mr->lkey};
    requester.post_read({&read_sge, 1}, odp_source.address() + offset, source_mr->rkey, 2);
    complete("RDMA READ from an ODP MR");
    note("RDMA READ from an ODP MR", compare(landing.data(), pattern.data() + offset, length));
    return problems;
}

}  // namespace odp::detail
