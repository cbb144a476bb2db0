#include "mr_journal.hpp"

#include <cstdio>
#include <odp/error.hpp>
#include <utility>

namespace odp::stress {

RecordingNic::RecordingNic(std::unique_ptr<Nic> inner) : inner_(std::move(inner)) {}

double RecordingNic::now_ms() const noexcept {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - opened_)
        .count();
}

NicMr RecordingNic::register_memory(std::uintptr_t address, std::size_t length, int ibv_access) {
    const NicMr mr = inner_->register_memory(address, length, ibv_access);
    const std::scoped_lock lock(mutex_);
    if (records_.size() == kept_records) {
        records_.pop_front();
    }
    records_.push_back(Record{mr.lkey, mr.rkey, address, length, now_ms(), std::nullopt});
    return mr;
}

void RecordingNic::deregister(const NicMr& mr) noexcept {
    {
        // Marked before the MR is gone: a report never shows a dead key as
        // registered.
        const std::scoped_lock lock(mutex_);
        for (auto record = records_.rbegin(); record != records_.rend(); ++record) {
            if (record->lkey == mr.lkey && !record->deregistered_ms) {
                record->deregistered_ms = now_ms();
                break;
            }
        }
    }
    inner_->deregister(mr);
}

std::string RecordingNic::history_of(std::uint32_t key) const {
    const std::scoped_lock lock(mutex_);
    std::string text;
    char line[200];
    for (const Record& record : records_) {
        if (record.lkey != key && record.rkey != key) {
            continue;
        }
        std::snprintf(line, sizeof line,
                      "\n        MR lkey 0x%x rkey 0x%x over [%s, +%zu) registered at %.1f ms, ",
                      record.lkey, record.rkey, format_address(record.address).c_str(),
                      record.length, record.registered_ms);
        text += line;
        if (record.deregistered_ms) {
            std::snprintf(line, sizeof line, "deregistered at %.1f ms", *record.deregistered_ms);
            text += line;
        } else {
            text += "still registered";
        }
    }
    return text.empty() ? "\n        no registration with that key remembered" : text;
}

}  // namespace odp::stress
