// The ratio between two modes, its confidence interval, and what it allows
// one to say about a goal. A ratio from one run of an emulated guest moves by
// tens of percent from run to run; rows therefore carry one sample per round
// (or per cold start, per repeat), taken with the modes in turn, so that the
// i-th samples of two modes pair up into the i-th ratio. Every ratio of
// odp-perf compare, of one run or of runs merged (whose pairs each stay
// within their run), is computed one way: the median of the paired ratios,
// with the distribution-free confidence interval of that median (order
// statistics of the sign test: no assumption on the shape of the noise,
// which under emulation is skewed and sometimes bimodal). A goal is met
// only when the whole interval clears the target, missed when none of it
// does, inconclusive when it straddles the target.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace odp_perf {

// The confidence that a median interval aims for; fewer than 6 samples
// cannot reach it, and give their whole range with the confidence it has.
inline constexpr double kWantedConfidence = 0.95;

// The least confidence on which a goal is called met or missed; below it
// (fewer than 5 ratios) the goal is inconclusive whatever its interval.
inline constexpr double kVerdictConfidence = 0.9;

struct Interval {
    double low = 0;
    double high = 0;
    std::size_t samples = 0;  // ratios the interval is made of
    double confidence = 0;    // probability that it holds the true median
};

// The interval [x(k), x(n+1-k)] of the sorted samples with the largest k
// whose confidence, 1 - 2 P(Binomial(n, 1/2) < k), is at least `wanted`
// (k = 1, the whole range, when none is: 1 - 2^(1-n), 87.5 % of 4 samples).
// Non-finite samples are left out; fewer than two give none.
[[nodiscard]] std::optional<Interval> median_interval(std::vector<double> samples,
                                                      double wanted = kWantedConfidence);

// The median of the finite samples (none: none).
[[nodiscard]] std::optional<double> median(std::vector<double> samples);

// numerator[i] / denominator[i] over the pairs both have (the i-th round of
// each mode); a pair with a denominator that is not positive is skipped.
[[nodiscard]] std::vector<double> paired_ratios(std::span<const double> numerator,
                                                std::span<const double> denominator);

// One side of a ratio: a row's value (all rounds together) and its samples.
struct RatioOperand {
    std::optional<double> value;
    std::span<const double> samples;
};

struct RatioEstimate {
    double ratio = 0;                  // the median of the paired ratios, or of the values
    std::optional<Interval> interval;  // none below two pairs
};

// numerator / denominator: with two or more paired samples their median and
// its interval, else the ratio of the two values without an interval. None
// when a value is missing or the denominator is not positive.
[[nodiscard]] std::optional<RatioEstimate> estimate_ratio(const RatioOperand& numerator,
                                                          const RatioOperand& denominator);

enum class Verdict {
    Met,           // the whole interval clears the target
    NotMet,        // none of the interval clears it
    Inconclusive,  // the interval straddles the target, or is missing or too unsure
    Reported,      // no target: the ratio is only reported
    NotMeasured,
};

[[nodiscard]] std::string_view to_string(Verdict verdict) noexcept;

// Judges a ratio against a threshold target (a predicate that holds on one
// side of a single bound, such as r >= 0.97) by its interval alone. A ratio
// without an interval (one round), or whose interval is less sure than
// kVerdictConfidence (two rounds: 50%), says too little about its spread: it
// is inconclusive, whichever side of the target it lies on.
template <typename Target>
[[nodiscard]] Verdict judge(const std::optional<RatioEstimate>& estimate, const Target& target) {
    if (!estimate) {
        return Verdict::NotMeasured;
    }
    if (!estimate->interval || estimate->interval->confidence < kVerdictConfidence) {
        return Verdict::Inconclusive;
    }
    const bool low = target(estimate->interval->low);
    const bool high = target(estimate->interval->high);
    if (low && high) {
        return Verdict::Met;
    }
    if (!low && !high) {
        return Verdict::NotMet;
    }
    return Verdict::Inconclusive;
}

}  // namespace odp_perf
