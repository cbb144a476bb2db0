// Fork safety (internal). A child forked while libodp objects are alive
// inherits their memory but not their threads, and its descriptors still name
// the parent's kernel objects: the userfaultfd's registrations belong to the
// parent's address space, an eventfd wakes the parent's threads, an MR or a
// PD is the parent's (ibv_dereg_mr from the child deregisters it for the
// parent). So an object remembers the process that created it, and in any
// other process its destructor touches none of that: it leaves the kernel
// objects to the parent (the child's copies of the descriptors are closed,
// which only drops a reference) and never joins a thread that is not there.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <new>
#include <utility>

namespace odp::detail {

class CreatorProcess {
  public:
    // One getpid() system call: for destructors and slow paths only.
    [[nodiscard]] bool is_current() const noexcept { return ::getpid() == pid_; }
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  private:
    pid_t pid_ = ::getpid();
};

// In a forked child, drops the handle of something that belongs to the
// parent without destroying it. A thread of the parent does not exist here:
// joining it never returns, and glibc may have recycled its descriptor for a
// thread of the child, so it cannot be detached either. An Asio descriptor
// would remove itself from the epoll set the child shares with the parent.
// The handle is moved into storage that is never destroyed (allocates
// nothing, cannot fail; the moved-from handle is empty).
template <typename Handle>
void leave_to_parent(Handle& handle) noexcept {
    alignas(Handle) static unsigned char never_destroyed[sizeof(Handle)];
    ::new (static_cast<void*>(never_destroyed)) Handle(std::move(handle));
}

}  // namespace odp::detail
