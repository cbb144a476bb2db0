#include "spread.hpp"

#include <algorithm>

namespace odp_perf {

std::optional<Interval> ratio_range(std::span<const double> numerator,
                                    std::span<const double> denominator) {
    Interval range;
    const std::size_t pairs = std::min(numerator.size(), denominator.size());
    for (std::size_t i = 0; i < pairs; ++i) {
        if (!(denominator[i] > 0)) {
            continue;
        }
        const double ratio = numerator[i] / denominator[i];
        range.low = range.samples == 0 ? ratio : std::min(range.low, ratio);
        range.high = range.samples == 0 ? ratio : std::max(range.high, ratio);
        ++range.samples;
    }
    if (range.samples < 2) {
        return std::nullopt;
    }
    return range;
}

std::string_view to_string(Verdict verdict) noexcept {
    switch (verdict) {
        case Verdict::Met:
            return "met";
        case Verdict::NotMet:
            return "not met";
        case Verdict::Inconclusive:
            return "inconclusive";
        case Verdict::Reported:
            return "reported";
        case Verdict::NotMeasured:
            return "not measured";
    }
    return "unknown";
}

}  // namespace odp_perf
