#include <numeric>
#include <odp/stats.hpp>
#include <ostream>
#include <string>

namespace odp {

std::uint64_t Stats::total_invalidations() const noexcept {
    return std::accumulate(invalidations.begin(), invalidations.end(), std::uint64_t{0});
}

namespace {

template <typename Emit>
void for_each_field(const Stats& s, Emit&& emit) {
    emit("hits", s.hits);
    emit("misses", s.misses);
    emit("chunk_faults", s.chunk_faults);
    emit("bytes_registered", s.bytes_registered);
    emit("prefetches", s.prefetches);
    emit("chunks_faulted_ahead", s.chunks_faulted_ahead);
    emit("fault_ahead_hits", s.fault_ahead_hits);
    emit("chunks_invalidated", s.chunks_invalidated);
    emit("stale_while_leased", s.stale_while_leased);
    emit("evictions", s.evictions);
    emit("back_pressure", s.back_pressure);
    emit("pinned_bytes", s.pinned_bytes);
    emit("peak_pinned_bytes", s.peak_pinned_bytes);
}

}  // namespace

std::string to_string(const Stats& stats) {
    std::string text;
    for_each_field(stats, [&](const char* name, std::uint64_t value) {
        text += name;
        text += ' ';
        text += std::to_string(value);
        text += '\n';
    });
    text += "invalidations " + std::to_string(stats.total_invalidations());
    for (std::size_t i = 0; i < invalidation_reason_count; ++i) {
        if (stats.invalidations[i] != 0) {
            text += ' ';
            text += to_string(static_cast<InvalidationReason>(i));
            text += '=';
            text += std::to_string(stats.invalidations[i]);
        }
    }
    text += '\n';
    return text;
}

std::string to_json(const Stats& stats) {
    std::string text = "{";
    for_each_field(stats, [&](const char* name, std::uint64_t value) {
        text += '"';
        text += name;
        text += "\":";
        text += std::to_string(value);
        text += ',';
    });
    text += "\"invalidations\":{";
    for (std::size_t i = 0; i < invalidation_reason_count; ++i) {
        text += i == 0 ? "\"" : ",\"";
        text += to_string(static_cast<InvalidationReason>(i));
        text += "\":";
        text += std::to_string(stats.invalidations[i]);
    }
    text += "}}";
    return text;
}

std::ostream& operator<<(std::ostream& out, const Stats& stats) {
    return out << to_string(stats);
}

}  // namespace odp
