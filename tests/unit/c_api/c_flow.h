/* One use of the C API written in C (c_flow.c), called by c_api_test.cpp. */
#ifndef ODP_TEST_C_FLOW_H
#define ODP_TEST_C_FLOW_H

#include <odp/odp.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* On `device`: registers buffer[0, size) emulated (monitor none, 1 MiB
 * chunks, size at least 3 MiB and 1 MiB aligned), translates 2 MiB at an
 * offset of 512 KiB, checks the SGEs, exposes 4 KiB with a change callback,
 * reports a change, reads the statistics and their JSON, and releases
 * everything. Returns 0, or the source line of the first check that failed
 * with the reason in failure[0, failure_size). */
int c_flow_emulated(struct odp_device* device, char* buffer, size_t size, char* failure,
                    size_t failure_size);

/* Fault-ahead from C: registers buffer[0, size) emulated (monitor none,
 * 1 MiB chunks, size at least 8 MiB and 1 MiB aligned) with
 * odp_region_attr.fault_ahead 2, touches chunks 0, 1 and 2 in order and
 * waits (up to `patience_ms`) for the background registrations, then asks
 * odp_region_prefetch_async for chunk 7 and waits for it, checking the
 * statistics at each step. Returns as c_flow_emulated. */
int c_flow_fault_ahead(struct odp_device* device, char* buffer, size_t size, long patience_ms,
                       char* failure, size_t failure_size);

#ifdef __cplusplus
}
#endif

#endif
