// The spread of a ratio between two modes, and what it allows one to say
// about a goal. A ratio from one run of an emulated guest moves by tens of
// percent from run to run; rows therefore carry one sample per round (or per
// cold start), taken with the modes in turn, so that a ratio comes with the
// range of its per-round values. A goal is met only when the whole range
// clears the target, not met when none of it does, and inconclusive when the
// range straddles the target.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>

namespace odp_perf {

struct Interval {
    double low = 0;
    double high = 0;
    std::size_t samples = 0;  // ratios the range is made of
};

// The range of the paired ratios numerator[i] / denominator[i], over the
// pairs both have (the i-th round of each mode, taken one after the other).
// Pairs with a non-positive denominator are skipped; fewer than two usable
// pairs give no range (nothing can be said about the spread of one sample).
[[nodiscard]] std::optional<Interval> ratio_range(std::span<const double> numerator,
                                                  std::span<const double> denominator);

enum class Verdict {
    Met,           // the ratio and its whole range clear the target
    NotMet,        // the ratio and its whole range miss it
    Inconclusive,  // the range straddles the target
    Reported,      // no target: the ratio is only reported
    NotMeasured,
};

[[nodiscard]] std::string_view to_string(Verdict verdict) noexcept;

// Judges a ratio against a threshold target (a predicate that holds on one
// side of a single bound, such as r >= 0.97). Without a range (one round)
// the ratio alone decides.
template <typename Target>
[[nodiscard]] Verdict judge(std::optional<double> ratio, std::optional<Interval> range,
                            const Target& target) {
    if (!ratio) {
        return Verdict::NotMeasured;
    }
    if (!range) {
        return target(*ratio) ? Verdict::Met : Verdict::NotMet;
    }
    const bool low = target(range->low);
    const bool high = target(range->high);
    const bool point = target(*ratio);
    if (low && high && point) {
        return Verdict::Met;
    }
    if (!low && !high && !point) {
        return Verdict::NotMet;
    }
    return Verdict::Inconclusive;
}

}  // namespace odp_perf
