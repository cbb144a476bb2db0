// Small RAII helpers over /dev/odp_mirror for the guest tests and the benchmark.
// Everything throws std::system_error with what was being done; the tests
// that check error codes use the try_* variants, which return the errno.
#pragma once

#include <fcntl.h>
#include <odp_mirror.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace odp_mirror_test {

inline std::size_t page_size() {
    return static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

[[noreturn]] inline void throw_errno(int err, const std::string& what) {
    throw std::system_error(err, std::generic_category(), what);
}

// One owned file descriptor.
class Fd {
  public:
    explicit Fd(int fd = -1) : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        reset(std::exchange(other.fd_, -1));
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }
    int get() const { return fd_; }
    void reset(int fd = -1) {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = fd;
    }

  private:
    int fd_;
};

// One owned mmap; release() when the test unmapped it itself.
class Mapping {
  public:
    Mapping() = default;
    explicit Mapping(std::size_t length, int prot = PROT_READ | PROT_WRITE,
                     int flags = MAP_PRIVATE | MAP_ANONYMOUS, int fd = -1, off_t offset = 0,
                     void* hint = nullptr)
        : length_(length) {
        void* p = ::mmap(hint, length, prot, flags, fd, offset);
        if (p == MAP_FAILED) {
            throw_errno(errno, "mmap of " + std::to_string(length) + " bytes");
        }
        addr_ = static_cast<char*>(p);
    }
    Mapping(Mapping&& other) noexcept
        : addr_(std::exchange(other.addr_, nullptr)), length_(std::exchange(other.length_, 0)) {}
    Mapping& operator=(Mapping&& other) noexcept {
        unmap();
        addr_ = std::exchange(other.addr_, nullptr);
        length_ = std::exchange(other.length_, 0);
        return *this;
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { unmap(); }

    char* data() const { return addr_; }
    std::uint64_t addr() const { return reinterpret_cast<std::uintptr_t>(addr_); }
    std::size_t size() const { return length_; }
    void release() {
        addr_ = nullptr;
        length_ = 0;
    }
    // Touch every page with a write so that it is present and writable.
    void populate() const {
        for (std::size_t off = 0; off < length_; off += page_size()) {
            addr_[off] = static_cast<char>(off / page_size() + 1);
        }
    }

  private:
    void unmap() {
        if (addr_ != nullptr) {
            ::munmap(addr_, length_);
        }
        addr_ = nullptr;
    }
    char* addr_ = nullptr;
    std::size_t length_ = 0;
};

template <typename T>
T sized() {
    T arg{};
    arg.size = sizeof(T);
    return arg;
}

// An open /dev/odp_mirror with its ring, consumer page and generation array mapped.
class Mirror {
  public:
    explicit Mirror(bool map_areas = true)
        : fd_(::open(ODP_MIRROR_DEVICE_PATH, O_RDWR | O_CLOEXEC)) {
        if (fd_.get() < 0) {
            throw_errno(errno, "open " ODP_MIRROR_DEVICE_PATH " (is odp_mirror.ko loaded?)");
        }
        query_ = sized<odp_mirror_query>();
        check(try_ioctl(ODP_MIRROR_IOC_QUERY, &query_), "ODP_MIRROR_IOC_QUERY");
        if (map_areas) {
            ring_ = Mapping(query_.ring_mmap_size, PROT_READ, MAP_SHARED, fd_.get(),
                            static_cast<off_t>(ODP_MIRROR_MMAP_RING));
            consumer_ = Mapping(query_.consumer_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                                fd_.get(), static_cast<off_t>(ODP_MIRROR_MMAP_CONSUMER));
            generations_ = Mapping(query_.generations_mmap_size, PROT_READ, MAP_SHARED, fd_.get(),
                                   static_cast<off_t>(ODP_MIRROR_MMAP_GENERATIONS));
        }
    }

    int fd() const { return fd_.get(); }
    const odp_mirror_query& query() const { return query_; }

    // 0 or the errno of the ioctl.
    int try_ioctl(unsigned long cmd, void* arg) const {
        return ::ioctl(fd_.get(), cmd, arg) == 0 ? 0 : errno;
    }

    odp_mirror_register add(std::uint64_t start, std::uint64_t length,
                            std::uint64_t cookie = 0) const {
        auto reg = sized<odp_mirror_register>();
        reg.start = start;
        reg.length = length;
        reg.cookie = cookie;
        check(try_ioctl(ODP_MIRROR_IOC_REGISTER, &reg), "ODP_MIRROR_IOC_REGISTER");
        return reg;
    }
    odp_mirror_register add(const Mapping& m, std::uint64_t cookie = 0) const {
        return add(m.addr(), m.size(), cookie);
    }
    int try_remove(std::uint32_t id) const {
        auto unreg = sized<odp_mirror_unregister>();
        unreg.id = id;
        return try_ioctl(ODP_MIRROR_IOC_UNREGISTER, &unreg);
    }
    void remove(std::uint32_t id) const { check(try_remove(id), "ODP_MIRROR_IOC_UNREGISTER"); }

    int try_fault(std::uint32_t id, std::uint64_t start, std::uint64_t length, bool write,
                  odp_mirror_fault* out = nullptr) const {
        auto f = sized<odp_mirror_fault>();
        f.id = id;
        f.start = start;
        f.length = length;
        f.flags = write ? ODP_MIRROR_FAULT_WRITE : 0;
        int err = try_ioctl(ODP_MIRROR_IOC_FAULT, &f);
        if (out != nullptr) {
            *out = f;
        }
        return err;
    }
    odp_mirror_fault fault(std::uint32_t id, std::uint64_t start, std::uint64_t length,
                           bool write) const {
        odp_mirror_fault f{};
        check(try_fault(id, start, length, write, &f), "ODP_MIRROR_IOC_FAULT");
        return f;
    }

    struct Snapshot {
        odp_mirror_snapshot result;
        std::vector<std::uint8_t> pages;
    };
    Snapshot snapshot(std::uint32_t id, std::uint64_t start, std::uint64_t length) const {
        Snapshot s{sized<odp_mirror_snapshot>(), std::vector<std::uint8_t>(length / page_size())};
        s.result.id = id;
        s.result.start = start;
        s.result.length = length;
        s.result.pages = reinterpret_cast<std::uintptr_t>(s.pages.data());
        check(try_ioctl(ODP_MIRROR_IOC_SNAPSHOT, &s.result), "ODP_MIRROR_IOC_SNAPSHOT");
        return s;
    }

    odp_mirror_stats stats() const {
        auto st = sized<odp_mirror_stats>();
        check(try_ioctl(ODP_MIRROR_IOC_STATS, &st), "ODP_MIRROR_IOC_STATS");
        return st;
    }

    const odp_mirror_ring_header& header() const {
        return *reinterpret_cast<const odp_mirror_ring_header*>(ring_.data());
    }
    std::uint64_t head() const { return __atomic_load_n(&header().head, __ATOMIC_ACQUIRE); }
    std::uint64_t lost() const { return __atomic_load_n(&header().lost, __ATOMIC_ACQUIRE); }
    std::uint64_t tail() const { return __atomic_load_n(&consumer().tail, __ATOMIC_ACQUIRE); }
    std::uint64_t generation(std::uint32_t slot) const {
        return __atomic_load_n(&reinterpret_cast<const std::uint64_t*>(generations_.data())[slot],
                               __ATOMIC_ACQUIRE);
    }

    // The reader's side of ODP_MIRROR_CONSUMER_POLL_LOST.
    void set_consumer_flags(std::uint32_t flags) const {
        __atomic_store_n(&consumer().flags, flags, __ATOMIC_RELEASE);
    }
    void set_lost_seen(std::uint64_t lost) const {
        __atomic_store_n(&consumer().lost_seen, lost, __ATOMIC_RELEASE);
    }

    // Every queued event, in order; the ring protocol of the uapi header.
    std::vector<odp_mirror_event> drain() const {
        std::vector<odp_mirror_event> out;
        const auto* events =
            reinterpret_cast<const odp_mirror_event*>(ring_.data() + ODP_MIRROR_RING_EVENTS_OFFSET);
        const std::uint64_t mask = header().entries - 1;
        const std::uint64_t h = head();
        for (std::uint64_t t = tail(); t != h; ++t) {
            out.push_back(events[t & mask]);
        }
        __atomic_store_n(&consumer().tail, h, __ATOMIC_RELEASE);
        return out;
    }

  private:
    static void check(int err, const char* what) {
        if (err != 0) {
            throw_errno(err, what);
        }
    }
    odp_mirror_ring_consumer& consumer() const {
        return *reinterpret_cast<odp_mirror_ring_consumer*>(consumer_.data());
    }

    Fd fd_;
    odp_mirror_query query_{};
    Mapping ring_;
    Mapping consumer_;
    Mapping generations_;
};

// Sends @fd over a unix socket (SCM_RIGHTS), or with fd < 0 the errno -fd
// instead; recv_fd() returns the received descriptor or that -errno.
inline bool send_fd(int sock, int fd, int flags = 0) {
    std::int32_t payload = fd < 0 ? -fd : 0;
    iovec iov{&payload, sizeof(payload)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    }
    return ::sendmsg(sock, &msg, flags) == sizeof(payload);
}

inline int recv_fd(int sock, int flags = 0) {
    std::int32_t payload = 0;
    iovec iov{&payload, sizeof(payload)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    if (::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC) != sizeof(payload)) {
        return -EPROTO;
    }
    if (payload != 0) {
        return -payload;
    }
    const cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg == nullptr || cmsg->cmsg_type != SCM_RIGHTS) {
        return -EPROTO;
    }
    int fd = -1;
    std::memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
    return fd;
}

// "module.open_files 0" ... from debugfs, no file of the module needed.
inline std::map<std::string, long long> debugfs_stats() {
    std::map<std::string, long long> out;
    std::ifstream in("/sys/kernel/debug/odp_mirror/stats");
    std::string name;
    long long value = 0;
    while (in >> name >> value) {
        out[name] = value;
    }
    return out;
}

}  // namespace odp_mirror_test
