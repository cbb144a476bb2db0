// What the guest command script (run-coherence.sh) tells the tests.
#pragma once

#include <cstdlib>
#include <string>

namespace odp::guest {

// run-coherence.sh loaded odp_mirror.ko (built for this kernel): the Module
// source must work.
inline bool module_expected() {
    const char* value = std::getenv("ODP_COHERENCE_MODULE");
    return value != nullptr && std::string(value) == "1";
}

// The guest kernel (5.10, 6.1, 6.12, 7.3), or "" outside a guest.
inline std::string kernel() {
    const char* value = std::getenv("ODP_VM_KERNEL");
    return value == nullptr ? std::string() : std::string(value);
}

// Whether a CPU write to a pinned anonymous page after mprotect() to
// read-only and back gives the process a copy of it (Linux before 5.19: the
// guest kernel 5.10). The userfaultfd source must refuse there: nothing tells
// it of the copy.
inline bool kernel_copies_pinned_pages() {
    return kernel() == "5.10";
}

// The verbs device under test.
inline std::string device() {
    const char* value = std::getenv("ODP_COHERENCE_DEVICE");
    return value == nullptr ? std::string("rxe0") : std::string(value);
}

}  // namespace odp::guest
