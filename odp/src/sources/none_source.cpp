// MonitorKind::None: no monitor. The application promises never to unmap,
// remap or discard memory while it is registered; nothing is checked.
#include "source.hpp"

namespace odp::detail {
namespace {

class NoneSource final : public Source {
  public:
    [[nodiscard]] MonitorKind kind() const noexcept override { return MonitorKind::None; }
    [[nodiscard]] std::string_view description() const noexcept override {
        return "none: no invalidation source; sees nothing. The application promised never to "
               "munmap, mremap, madvise(DONTNEED) or otherwise replace registered memory; if it "
               "does, the NIC keeps using the old pages (silent corruption).";
    }
    [[nodiscard]] int ready_fd() const noexcept override { return -1; }
    [[nodiscard]] std::uint64_t recorded() const noexcept override { return 0; }
    std::uint64_t drain(EventSink& /*sink*/) override { return 0; }
    std::vector<Unwatched> add(std::uint64_t /*id*/, Range /*range*/) override { return {}; }
    void remove(std::uint64_t /*id*/) noexcept override {}
    std::vector<Range> arm(std::uint64_t /*id*/, Range sub) override { return {sub}; }
};

}  // namespace

std::unique_ptr<Source> make_none_source() {
    return std::make_unique<NoneSource>();
}

}  // namespace odp::detail
