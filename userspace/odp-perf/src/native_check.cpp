#include "native_check.hpp"

#include <odp/error.hpp>
#include <odp/verbs.hpp>

#include "buffer.hpp"

namespace odp_perf {
namespace {

using namespace std::chrono_literals;
namespace verbs = odp::verbs;

constexpr std::size_t kLength = 16 * 1024;  // four pages
// The transfer starts and ends inside pages, so that packets start inside
// pages at every path MTU (7.3's rxe ODP misplaces exactly those).
constexpr std::size_t kOffset = 1000;
constexpr std::size_t kTransfer = kLength - 2 * kOffset;
constexpr int kAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

struct Case {
    const char* name;
    bool write;      // RDMA WRITE (else READ) posted by QP a
    bool local_odp;  // the MR on a's side is ON_DEMAND (else the remote one is)
};

std::string check_case(ibv_pd& pd, ibv_cq& cq, verbs::RcQueuePair& a, const Case& c,
                       std::uint32_t seed) {
    MappedBuffer local(kLength, page_size(), true);
    MappedBuffer remote(kLength, page_size(), true);
    MappedBuffer& source = c.write ? local : remote;
    MappedBuffer& target = c.write ? remote : local;
    fill_pattern(source.bytes(), seed, 0);
    fill_pattern(target.bytes(), seed, 0, true);
    const verbs::MrPtr local_mr = verbs::reg_mr(pd, local.data(), kLength,
                                                kAccess | (c.local_odp ? IBV_ACCESS_ON_DEMAND : 0));
    const verbs::MrPtr remote_mr = verbs::reg_mr(
        pd, remote.data(), kLength, kAccess | (c.local_odp ? 0 : IBV_ACCESS_ON_DEMAND));
    const ibv_sge sge{local.address() + kOffset, static_cast<std::uint32_t>(kTransfer),
                      local_mr->lkey};
    if (c.write) {
        a.post_write({&sge, 1}, remote.address() + kOffset, remote_mr->rkey, 1);
    } else {
        a.post_read({&sge, 1}, remote.address() + kOffset, remote_mr->rkey, 1);
    }
    // wait_completion throws on a timeout or an error completion.
    (void)verbs::wait_completion(cq, 10s);
    const auto moved = target.bytes().subspan(kOffset, kTransfer);
    const std::uint64_t wrong = count_mismatches(moved, seed, kOffset);
    if (wrong == 0) {
        return {};
    }
    std::size_t first = kOffset;
    while (first < kOffset + kTransfer && target.data()[first] == pattern_byte(seed, first)) {
        ++first;
    }
    return std::string(c.name) + ": " + std::to_string(wrong) + " of " + std::to_string(kTransfer) +
           " bytes wrong (first at offset " + std::to_string(first) + ")";
}

}  // namespace

NativeCheck check_native_odp_data(odp::Device& device) {
    NativeCheck check;
    if (!device.caps().odp || device.context() == nullptr) {
        check.detail = "no native ODP on " + std::string(device.name());
        return check;
    }
    check.ran = true;
    try {
        const verbs::CqPtr cq = verbs::create_cq(*device.context(), 16);
        verbs::RcQueuePair a(*device.pd(), *cq, *cq);
        verbs::RcQueuePair b(*device.pd(), *cq, *cq);
        a.connect(b.local_endpoint());
        b.connect(a.local_endpoint());
        const Case cases[] = {
            {"RDMA WRITE into an ODP MR", true, false},
            {"RDMA WRITE from an ODP MR", true, true},
            {"RDMA READ from an ODP MR", false, false},
            {"RDMA READ into an ODP MR", false, true},
        };
        std::uint32_t seed = 0x0dd;
        for (const Case& c : cases) {
            const std::string problem = check_case(*device.pd(), *cq, a, c, ++seed);
            if (!problem.empty()) {
                check.detail += (check.detail.empty() ? "" : "; ") + problem;
            }
        }
        check.ok = check.detail.empty();
        if (check.ok) {
            check.detail = "native ODP moved every byte right (WRITE and READ, both directions)";
        }
    } catch (const std::exception& error) {
        check.ok = false;
        check.detail = std::string("the check itself failed: ") + error.what();
    }
    return check;
}

}  // namespace odp_perf
