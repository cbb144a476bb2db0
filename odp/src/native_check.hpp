// Internal: the loopback data check behind DeviceCaps::native_data_ok.
#pragma once

#include <infiniband/verbs.h>

#include <string>

namespace odp::detail {

// Moves real bytes through ODP MRs over a loopback RC connection (RDMA WRITE
// into, RDMA READ from, both at sub-page offsets). Returns what went wrong,
// empty when every byte arrived. Throws odp::Error when the check cannot run.
[[nodiscard]] std::string check_native_odp_data(ibv_context& context, ibv_pd& pd);

}  // namespace odp::detail
