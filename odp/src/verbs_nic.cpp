// The real NIC: a verbs context and protection domain.
#include <infiniband/verbs.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <odp/error.hpp>
#include <odp/nic.hpp>
#include <odp/verbs.hpp>

#include "creator_process.hpp"
#include "native_check.hpp"

namespace odp {

namespace {

TransportOdpCaps transport_caps(std::uint32_t bits) {
    TransportOdpCaps caps;
    caps.send = (bits & IBV_ODP_SUPPORT_SEND) != 0;
    caps.recv = (bits & IBV_ODP_SUPPORT_RECV) != 0;
    caps.write = (bits & IBV_ODP_SUPPORT_WRITE) != 0;
    caps.read = (bits & IBV_ODP_SUPPORT_READ) != 0;
    caps.atomic = (bits & IBV_ODP_SUPPORT_ATOMIC) != 0;
    caps.srq_recv = (bits & IBV_ODP_SUPPORT_SRQ_RECV) != 0;
    return caps;
}

// ibv_advise_mr has no capability bit: try it once on a one-page ODP MR.
bool probe_prefetch(ibv_pd& pd) {
    const long page = sysconf(_SC_PAGESIZE);
    void* buffer = mmap(nullptr, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) {
        return false;
    }
    bool supported = false;
    if (ibv_mr* mr = ibv_reg_mr(&pd, buffer, static_cast<std::size_t>(page),
                                IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_ON_DEMAND)) {
        ibv_sge sge{reinterpret_cast<std::uint64_t>(buffer), static_cast<std::uint32_t>(page),
                    mr->lkey};
        supported = ibv_advise_mr(&pd, IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE,
                                  IBV_ADVISE_MR_FLAG_FLUSH, &sge, 1) == 0;
        ibv_dereg_mr(mr);
    }
    munmap(buffer, static_cast<std::size_t>(page));
    return supported;
}

class VerbsNic final : public Nic {
  public:
    explicit VerbsNic(std::string_view wanted)
        : context_(verbs::open_device(wanted)),
          pd_(verbs::alloc_pd(*context_)),
          name_(verbs::device_name(*context_)),
          iwarp_(context_->device->transport_type == IBV_TRANSPORT_IWARP) {
        ibv_device_attr_ex attr{};
        check_rc(ibv_query_device_ex(context_.get(), nullptr, &attr),
                 "ibv_query_device_ex on " + name_);
        const auto& odp = attr.odp_caps;
        caps_.odp = (odp.general_caps & IBV_ODP_SUPPORT) != 0;
        caps_.implicit_odp = caps_.odp && (odp.general_caps & IBV_ODP_SUPPORT_IMPLICIT) != 0;
        caps_.rc = transport_caps(odp.per_transport_caps.rc_odp_caps);
        caps_.uc = transport_caps(odp.per_transport_caps.uc_odp_caps);
        caps_.ud = transport_caps(odp.per_transport_caps.ud_odp_caps);
        caps_.xrc = transport_caps(attr.xrc_odp_caps);
        caps_.max_mr_size = attr.orig_attr.max_mr_size;
        caps_.max_sge = static_cast<std::uint32_t>(attr.orig_attr.max_sge);
        caps_.prefetch = caps_.odp && probe_prefetch(*pd_);
        if (caps_.odp && caps_.rc.write && caps_.rc.read) {
            try {
                const std::string problems = detail::check_native_odp_data(*context_, *pd_);
                caps_.native_data_ok = problems.empty();
                caps_.native_data_check = problems.empty() ? "passed" : "failed: " + problems;
            } catch (const std::exception& e) {
                caps_.native_data_check = std::string("not run: ") + e.what();
            }
        }
    }

    ~VerbsNic() override {
        if (!creator_.is_current()) {
            // A forked child: the PD and the context's objects are the
            // parent's (a child's ibv_dealloc_pd would free them for it).
            static_cast<void>(pd_.release());
            static_cast<void>(context_.release());
        }
    }

    [[nodiscard]] std::string_view name() const noexcept override { return name_; }
    [[nodiscard]] const DeviceCaps& caps() const noexcept override { return caps_; }

    NicMr register_memory(std::uintptr_t address, std::size_t length, int ibv_access) override {
        // iWARP places an RDMA READ response in the local sink as a tagged
        // write: the protocol wants the sink's registration to allow remote
        // writes (siw itself checks local write only; hardware checks).
        if (iwarp_ && (ibv_access & IBV_ACCESS_LOCAL_WRITE) != 0) {
            ibv_access |= IBV_ACCESS_REMOTE_WRITE;
        }
        errno = 0;
        ibv_mr* mr = ibv_reg_mr(pd_.get(), reinterpret_cast<void*>(address), length, ibv_access);
        if (mr == nullptr) {
            const int err = errno != 0 ? errno : EIO;
            std::string message =
                std::string("ibv_reg_mr(") +
                (length == SIZE_MAX ? std::string("implicit ODP")
                                    : format_address(address) + ", " + format_bytes(length)) +
                ((ibv_access & IBV_ACCESS_ON_DEMAND) != 0 ? ", ON_DEMAND" : "") + ") on " + name_;
            if (err == EFAULT) {
                message += ": memory not mapped or not accessible";
            } else if (err == ENOMEM) {
                message += ": cannot pin (RLIMIT_MEMLOCK or memory exhausted: raise `ulimit -l`)";
            } else if (err == EOPNOTSUPP || err == EINVAL) {
                message += (ibv_access & IBV_ACCESS_ON_DEMAND) != 0
                               ? ": the device or kernel has no ODP for this (use Mode::Emulated)"
                               : "";
            }
            throw_error(err, message);
        }
        return NicMr{mr, mr->lkey, mr->rkey};
    }

    void deregister(const NicMr& mr) noexcept override {
        if (mr.handle == nullptr || !creator_.is_current()) {
            return;  // in a forked child the MR is the parent's: leave it registered
        }
        if (const int rc = ibv_dereg_mr(static_cast<ibv_mr*>(mr.handle)); rc != 0) {
            log_error("ibv_dereg_mr(lkey " + std::to_string(mr.lkey) + ") on " + name_ + ": " +
                      std::strerror(rc > 0 ? rc : errno));
        }
    }

    void advise(Prefetch advice, std::span<const ibv_sge> sges) override {
        const auto verb = advice == Prefetch::Write ? IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE
                                                    : IBV_ADVISE_MR_ADVICE_PREFETCH;
        const int rc = ibv_advise_mr(pd_.get(), verb, IBV_ADVISE_MR_FLAG_FLUSH,
                                     const_cast<ibv_sge*>(sges.data()),
                                     static_cast<std::uint32_t>(sges.size()));
        if (rc != 0) {
            const int err = rc > 0 ? rc : (errno != 0 ? errno : EIO);
            throw_error(err,
                        "ibv_advise_mr(" + std::to_string(sges.size()) + " SGEs) on " + name_ +
                            (err == EOPNOTSUPP ? ": the device cannot prefetch ODP memory" : ""));
        }
    }

    [[nodiscard]] ibv_context* context() const noexcept override { return context_.get(); }
    [[nodiscard]] ibv_pd* pd() const noexcept override { return pd_.get(); }

  private:
    const detail::CreatorProcess creator_;
    verbs::ContextPtr context_;
    verbs::PdPtr pd_;  // declared after context_: destroyed first
    std::string name_;
    bool iwarp_;
    DeviceCaps caps_;
};

}  // namespace

std::unique_ptr<Nic> open_verbs_nic(std::string_view name) {
    return std::make_unique<VerbsNic>(name);
}

std::string to_string(const DeviceCaps& caps) {
    const auto ops = [](const TransportOdpCaps& t) {
        std::string text;
        const auto add = [&](bool on, const char* op) {
            if (on) {
                text += text.empty() ? "" : " ";
                text += op;
            }
        };
        add(t.send, "send");
        add(t.recv, "recv");
        add(t.write, "write");
        add(t.read, "read");
        add(t.atomic, "atomic");
        add(t.srq_recv, "srq_recv");
        return text.empty() ? std::string("-") : text;
    };
    return std::string("native ODP: ") + (caps.odp ? "yes" : "no") +
           " (implicit: " + (caps.implicit_odp ? "yes" : "no") +
           ", prefetch: " + (caps.prefetch ? "yes" : "no") + ")\n" + "  RC: " + ops(caps.rc) +
           "\n  UC: " + ops(caps.uc) + "\n  UD: " + ops(caps.ud) + "\n  XRC: " + ops(caps.xrc) +
           "\n  max_mr_size: " + format_bytes(caps.max_mr_size) +
           ", max_sge: " + std::to_string(caps.max_sge) + "\n" +
           (caps.native_data_check.empty()
                ? std::string()
                : "  native data check: " + caps.native_data_check + "\n");
}

}  // namespace odp
