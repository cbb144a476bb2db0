/* The C API used from C, as an application would (see c_flow.h). */
#define _POSIX_C_SOURCE 199309L /* nanosleep */
#include "c_flow.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIB ((size_t)1 << 20)

#define CHECK(condition, ...)                             \
    do {                                                  \
        if (!(condition)) {                               \
            snprintf(failure, failure_size, __VA_ARGS__); \
            status = __LINE__;                            \
            goto out;                                     \
        }                                                 \
    } while (0)

struct change_seen {
    int calls;
    uintptr_t begin;
    uintptr_t end;
    enum odp_invalidation_reason reason;
};

static void on_change(void* context, uintptr_t begin, uintptr_t end,
                      enum odp_invalidation_reason reason) {
    struct change_seen* seen = context;
    seen->calls++;
    seen->begin = begin;
    seen->end = end;
    seen->reason = reason;
}

int c_flow_emulated(struct odp_device* device, char* buffer, size_t size, char* failure,
                    size_t failure_size) {
    int status = 0;
    struct odp_region* region = NULL;
    struct odp_lease* lease = NULL;
    struct odp_exposure* exposure = NULL;
    char* text = NULL;
    struct change_seen seen = {0, 0, 0, ODP_INVALIDATION_OTHER};

    struct odp_region_attr attr;
    odp_region_attr_init(&attr);
    attr.mode = ODP_MODE_EMULATED;
    attr.monitor = ODP_MONITOR_NONE;
    attr.chunk_size = MIB;
    int rc = odp_region_register(device, buffer, size,
                                 ODP_ACCESS_LOCAL_WRITE | ODP_ACCESS_REMOTE_WRITE, &attr, &region);
    CHECK(rc == 0, "odp_region_register: %d %s", rc, odp_last_error());

    struct odp_region_info info;
    odp_region_info_init(&info);
    rc = odp_region_query(region, &info);
    CHECK(rc == 0, "odp_region_query: %d %s", rc, odp_last_error());
    CHECK(info.mode == ODP_MODE_EMULATED && info.chunk_size == MIB && !info.implicit &&
              info.begin == (uintptr_t)buffer && info.end == (uintptr_t)buffer + size,
          "odp_region_query: mode %d chunk %zu", (int)info.mode, info.chunk_size);

    /* 2 MiB from 512 KiB: three 1 MiB chunks touched, three SGEs. */
    struct ibv_sge sges[4];
    size_t count = 0;
    rc = odp_region_translate(region, buffer + MIB / 2, 2 * MIB, sges, 4, &count, &lease);
    CHECK(rc == 0, "odp_region_translate: %d %s", rc, odp_last_error());
    CHECK(count == 3, "odp_region_translate: %zu SGEs, 3 expected", count);
    CHECK(sges[0].addr == (uintptr_t)buffer + MIB / 2 && sges[0].length == MIB / 2 &&
              sges[1].addr == (uintptr_t)buffer + MIB && sges[1].length == MIB &&
              sges[2].addr == (uintptr_t)buffer + 2 * MIB && sges[2].length == MIB / 2,
          "odp_region_translate: SGEs do not cover the range in chunk order");
    CHECK(sges[0].lkey != sges[1].lkey && sges[1].lkey != sges[2].lkey,
          "odp_region_translate: one registration per chunk expected");
    bool changed = true;
    rc = odp_lease_release(lease, &changed);
    lease = NULL;
    CHECK(rc == 0 && !changed, "odp_lease_release: %d changed %d", rc, (int)changed);

    /* Too few SGEs: refused, nothing leased. */
    rc = odp_region_translate(region, buffer, 3 * MIB, sges, 2, &count, &lease);
    CHECK(rc == -E2BIG && lease == NULL, "odp_region_translate with max_sge 2: %d", rc);

    rc = odp_region_expose(region, buffer + 4096, 4096, on_change, &seen, &exposure);
    CHECK(rc == 0, "odp_region_expose: %d %s", rc, odp_last_error());
    size_t segments = 0;
    const struct odp_segment* segment = odp_exposure_segments(exposure, &segments);
    CHECK(segments == 1 && segment[0].address == (uintptr_t)buffer + 4096 &&
              segment[0].length == 4096,
          "odp_exposure_segments: %zu segments", segments);
    rc = odp_region_invalidate(region, buffer, 8192, ODP_INVALIDATION_CLEAR);
    CHECK(rc == 0, "odp_region_invalidate: %d %s", rc, odp_last_error());
    CHECK(seen.calls == 1 && seen.begin == (uintptr_t)buffer &&
              seen.end == (uintptr_t)buffer + 8192 && seen.reason == ODP_INVALIDATION_CLEAR,
          "change callback: %d calls", seen.calls);
    CHECK(odp_exposure_changed(exposure), "odp_exposure_changed: false after a change");
    changed = false;
    rc = odp_exposure_release(exposure, &changed);
    exposure = NULL;
    CHECK(rc == 0 && changed, "odp_exposure_release: %d changed %d", rc, (int)changed);

    struct odp_stats stats;
    odp_stats_init(&stats);
    rc = odp_region_stats(region, &stats);
    CHECK(rc == 0, "odp_region_stats: %d %s", rc, odp_last_error());
    CHECK(stats.chunk_faults == 3 && stats.invalidations[ODP_INVALIDATION_CLEAR] == 1,
          "odp_region_stats: %llu chunk faults, %llu clears",
          (unsigned long long)stats.chunk_faults,
          (unsigned long long)stats.invalidations[ODP_INVALIDATION_CLEAR]);
    rc = odp_stats_json(&stats, &text);
    CHECK(rc == 0 && strstr(text, "\"chunk_faults\":3,") != NULL &&
              strstr(text, "\"clear\":1") != NULL,
          "odp_stats_json: %d %s", rc, text != NULL ? text : odp_last_error());

out:
    free(text);
    odp_exposure_release(exposure, NULL);
    odp_lease_release(lease, NULL);
    odp_region_close(region);
    return status;
}

/* The region's statistics once chunks_faulted_ahead reached `count`, or as
 * they were when the patience ran out. */
static int stats_when_faulted_ahead(struct odp_region* region, uint64_t count, long patience_ms,
                                    struct odp_stats* stats) {
    const struct timespec millisecond = {0, 1000000};
    for (long waited = 0;; ++waited) {
        odp_stats_init(stats);
        const int rc = odp_region_stats(region, stats);
        if (rc != 0 || stats->chunks_faulted_ahead >= count || waited >= patience_ms) {
            return rc;
        }
        nanosleep(&millisecond, NULL);
    }
}

static int touch(struct odp_region* region, char* buffer, size_t chunk) {
    struct ibv_sge sge;
    size_t count = 0;
    struct odp_lease* lease = NULL;
    const int rc =
        odp_region_translate(region, buffer + chunk * MIB + 64, 64, &sge, 1, &count, &lease);
    odp_lease_release(lease, NULL);
    return rc;
}

int c_flow_fault_ahead(struct odp_device* device, char* buffer, size_t size, long patience_ms,
                       char* failure, size_t failure_size) {
    int status = 0;
    struct odp_region* region = NULL;
    char* text = NULL;
    struct odp_stats stats;

    struct odp_region_attr attr;
    odp_region_attr_init(&attr);
    attr.mode = ODP_MODE_EMULATED;
    attr.monitor = ODP_MONITOR_NONE;
    attr.chunk_size = MIB;
    attr.fault_ahead = 2;
    int rc = odp_region_register(device, buffer, size, ODP_ACCESS_LOCAL_WRITE, &attr, &region);
    CHECK(rc == 0, "odp_region_register: %d %s", rc, odp_last_error());

    /* Chunks 0 then 1: a sequential pattern, chunks 2 and 3 are registered
     * in the background. */
    rc = touch(region, buffer, 0);
    CHECK(rc == 0, "translate chunk 0: %d %s", rc, odp_last_error());
    rc = touch(region, buffer, 1);
    CHECK(rc == 0, "translate chunk 1: %d %s", rc, odp_last_error());
    rc = stats_when_faulted_ahead(region, 2, patience_ms, &stats);
    CHECK(rc == 0 && stats.chunks_faulted_ahead == 2 && stats.misses == 2,
          "after chunks 0, 1: %d, %llu faulted ahead (2 expected), %llu misses", rc,
          (unsigned long long)stats.chunks_faulted_ahead, (unsigned long long)stats.misses);
    /* Chunk 2 is there already: a hit, and chunk 4 is requested. */
    rc = touch(region, buffer, 2);
    CHECK(rc == 0, "translate chunk 2: %d %s", rc, odp_last_error());
    rc = stats_when_faulted_ahead(region, 3, patience_ms, &stats);
    CHECK(rc == 0 && stats.chunks_faulted_ahead == 3 && stats.fault_ahead_hits == 1 &&
              stats.misses == 2,
          "after chunk 2: %llu faulted ahead (3 expected), %llu hits of them, %llu misses",
          (unsigned long long)stats.chunks_faulted_ahead,
          (unsigned long long)stats.fault_ahead_hits, (unsigned long long)stats.misses);

    /* An explicit asynchronous prefetch of chunk 7. */
    rc = odp_region_prefetch_async(region, buffer + 7 * MIB, MIB, ODP_PREFETCH_WRITE);
    CHECK(rc == 0, "odp_region_prefetch_async: %d %s", rc, odp_last_error());
    rc = stats_when_faulted_ahead(region, 4, patience_ms, &stats);
    CHECK(rc == 0 && stats.chunks_faulted_ahead == 4 && stats.prefetches == 1,
          "after odp_region_prefetch_async: %llu faulted ahead (4 expected), %llu prefetches",
          (unsigned long long)stats.chunks_faulted_ahead, (unsigned long long)stats.prefetches);
    rc = touch(region, buffer, 7);
    CHECK(rc == 0, "translate chunk 7: %d %s", rc, odp_last_error());
    odp_stats_init(&stats);
    rc = odp_region_stats(region, &stats);
    CHECK(rc == 0 && stats.misses == 2 && stats.chunk_faults == 6,
          "after chunk 7: %llu misses (2 expected), %llu chunk faults (6 expected)",
          (unsigned long long)stats.misses, (unsigned long long)stats.chunk_faults);
    rc = odp_stats_json(&stats, &text);
    CHECK(rc == 0 && strstr(text, "\"chunks_faulted_ahead\":4,") != NULL, "odp_stats_json: %d %s",
          rc, text != NULL ? text : odp_last_error());

    rc = odp_region_prefetch_async(region, buffer + size, MIB, ODP_PREFETCH_WRITE);
    CHECK(rc == -EINVAL, "odp_region_prefetch_async outside the region: %d", rc);
    rc = odp_region_prefetch_async(region, buffer, MIB, (enum odp_prefetch)9);
    CHECK(rc == -EINVAL &&
              strstr(odp_last_error(), "odp_region_prefetch_async: unknown advice") != NULL,
          "odp_region_prefetch_async with advice 9: %d %s", rc, odp_last_error());

out:
    free(text);
    odp_region_close(region);
    return status;
}
