#include "spread.hpp"

#include <algorithm>
#include <cmath>

namespace odp_perf {
namespace {

std::vector<double> finite_sorted(std::vector<double> samples) {
    std::erase_if(samples, [](double value) { return !std::isfinite(value); });
    std::sort(samples.begin(), samples.end());
    return samples;
}

// P(Binomial(n, 1/2) = i), in logarithms so that large n do not underflow.
double half_binomial(std::size_t n, std::size_t i) {
    const auto x = static_cast<double>(n);
    const auto k = static_cast<double>(i);
    return std::exp(std::lgamma(x + 1) - std::lgamma(k + 1) - std::lgamma(x - k + 1) -
                    x * std::log(2.0));
}

}  // namespace

std::optional<Interval> median_interval(std::vector<double> samples, double wanted) {
    const std::vector<double> sorted = finite_sorted(std::move(samples));
    const std::size_t n = sorted.size();
    if (n < 2) {
        return std::nullopt;
    }
    // The interval between the k-th lowest and the k-th highest misses the
    // median when k or more samples lie on one side of it: coverage(k) =
    // 1 - 2 P(B < k). Widen from k = 1 while the next k still reaches `wanted`.
    std::size_t k = 1;
    double below_k = half_binomial(n, 0);  // P(B < k)
    while (k + 1 <= n / 2) {
        const double below_next = below_k + half_binomial(n, k);
        if (1 - 2 * below_next < wanted) {
            break;
        }
        below_k = below_next;
        ++k;
    }
    return Interval{sorted[k - 1], sorted[n - k], n, 1 - 2 * below_k};
}

std::optional<double> median(std::vector<double> samples) {
    const std::vector<double> sorted = finite_sorted(std::move(samples));
    if (sorted.empty()) {
        return std::nullopt;
    }
    const std::size_t half = sorted.size() / 2;
    return sorted.size() % 2 == 1 ? sorted[half] : (sorted[half - 1] + sorted[half]) / 2;
}

std::vector<double> paired_ratios(std::span<const double> numerator,
                                  std::span<const double> denominator) {
    std::vector<double> ratios;
    const std::size_t pairs = std::min(numerator.size(), denominator.size());
    for (std::size_t i = 0; i < pairs; ++i) {
        if (denominator[i] > 0) {
            ratios.push_back(numerator[i] / denominator[i]);
        }
    }
    return ratios;
}

std::optional<RatioEstimate> estimate_ratio(const RatioOperand& numerator,
                                            const RatioOperand& denominator) {
    if (!numerator.value || !denominator.value || !(*denominator.value > 0)) {
        return std::nullopt;
    }
    const std::vector<double> ratios = paired_ratios(numerator.samples, denominator.samples);
    std::optional<Interval> interval = median_interval(ratios);
    if (!interval) {
        return RatioEstimate{*numerator.value / *denominator.value, std::nullopt};
    }
    return RatioEstimate{*median(ratios), interval};
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
