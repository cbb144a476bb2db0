// Which chunks the budget evicts, and in which order (EvictionPolicy).
//
// Concurrency contract: eviction_order() runs under the device mutex (from
// DeviceState::reserve_locked), on a snapshot of the usable chunks of every
// region. It reads the pins' last use and reuse interval, which hit paths
// store without a lock (a stale value only misjudges a chunk, it never
// evicts a leased one: evict_locked claims the pin, and fails on a lease
// taken since the snapshot), and writes Pin::protected_chunk, which only
// code under the device mutex reads or writes.
#include <algorithm>

#include "region_core.hpp"

namespace odp::detail {
namespace {

using Candidates = std::vector<const EvictionCandidate*>;

void by_last_use(Candidates& chunks) {
    std::sort(chunks.begin(), chunks.end(),
              [](const auto* a, const auto* b) { return a->last_use < b->last_use; });
}

Candidates evictable(const Candidates& chunks) {
    Candidates out;
    std::copy_if(chunks.begin(), chunks.end(), std::back_inserter(out),
                 [](const auto* c) { return c->evictable; });
    return out;
}

// Moves reused probationary chunks into the protected set, as LIRS makes a
// block whose inter-reference recency is below the oldest LIR block's
// recency a LIR block, dropping that one.
void promote(const Candidates& all, std::uint64_t capacity) {
    Candidates protected_chunks;
    Candidates reused;
    std::uint64_t protected_bytes = 0;
    for (const EvictionCandidate* chunk : all) {
        if (chunk->pin->protected_chunk) {
            protected_chunks.push_back(chunk);
            protected_bytes += chunk->bytes;
        } else if (chunk->reuse_interval != 0) {
            reused.push_back(chunk);
        }
    }
    by_last_use(protected_chunks);
    std::sort(reused.begin(), reused.end(),
              [](const auto* a, const auto* b) { return a->reuse_interval < b->reuse_interval; });
    std::size_t oldest = 0;  // protected_chunks[oldest..] are still protected
    for (const EvictionCandidate* chunk : reused) {
        // Room, or a protected chunk unused for longer (at this chunk's last
        // use) than this chunk went between its uses: it takes that place.
        while (protected_bytes + chunk->bytes > capacity && oldest < protected_chunks.size() &&
               chunk->last_use > protected_chunks[oldest]->last_use &&
               chunk->reuse_interval < chunk->last_use - protected_chunks[oldest]->last_use) {
            protected_chunks[oldest]->pin->protected_chunk = false;
            protected_bytes -= protected_chunks[oldest]->bytes;
            ++oldest;
        }
        if (protected_bytes + chunk->bytes <= capacity) {
            chunk->pin->protected_chunk = true;
            protected_bytes += chunk->bytes;
        }
    }
}

}  // namespace

std::vector<const EvictionCandidate*> eviction_order(
    const std::vector<EvictionCandidate>& candidates, EvictionPolicy policy,
    std::uint64_t protected_capacity) {
    Candidates all;
    all.reserve(candidates.size());
    for (const EvictionCandidate& candidate : candidates) {
        all.push_back(&candidate);
    }
    if (policy == EvictionPolicy::LeastRecentlyUsed) {
        Candidates order = evictable(all);
        by_last_use(order);
        return order;
    }
    promote(all, protected_capacity);
    // Probationary chunks first, then protected ones; least recently used
    // first within each.
    Candidates order = evictable(all);
    std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
        if (a->pin->protected_chunk != b->pin->protected_chunk) {
            return !a->pin->protected_chunk;
        }
        return a->last_use < b->last_use;
    });
    return order;
}

}  // namespace odp::detail
