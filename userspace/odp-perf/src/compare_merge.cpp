// Boost 1.74's property_tree includes the deprecated <boost/bind.hpp>, which
// prints a note at every build unless its global placeholders are asked for.
#define BOOST_BIND_GLOBAL_PLACEHOLDERS
#include "compare_merge.hpp"

#include <algorithm>
#include <boost/property_tree/json_parser.hpp>
#include <boost/property_tree/ptree.hpp>
#include <cerrno>
#include <fstream>
#include <map>
#include <odp/error.hpp>
#include <sstream>
#include <tuple>

namespace odp_perf {
namespace {

using boost::property_tree::ptree;

// Boost's JSON reader keeps every value as text: null, true, numbers.
const ptree& child(const ptree& tree, const std::string& key) {
    const auto found = tree.get_child_optional(key);
    if (!found) {
        odp::throw_error(EINVAL, "compare JSON: \"" + key + "\" is missing");
    }
    return *found;
}

std::string text(const ptree& tree, const std::string& key) {
    return child(tree, key).get_value<std::string>();
}

std::optional<double> number(const ptree& tree, const std::string& key) {
    const std::string value = text(tree, key);
    if (value == "null") {
        return std::nullopt;
    }
    try {
        return std::stod(value);
    } catch (const std::exception&) {
        odp::throw_error(EINVAL, "compare JSON: \"" + key + "\" is not a number: " + value);
    }
}

std::uint64_t count(const ptree& tree, const std::string& key) {
    const std::optional<double> value = number(tree, key);
    return value ? static_cast<std::uint64_t>(*value) : 0;
}

// A counter added to schema 1 after files of it were recorded: absent in an
// older file, which ran nothing that counts it (0), so that its plot can
// still be redrawn and the file merged.
std::uint64_t later_count(const ptree& tree, const std::string& key) {
    return tree.get_child_optional(key) ? count(tree, key) : 0;
}

std::vector<double> numbers(const ptree& tree, const std::string& key) {
    std::vector<double> values;
    for (const auto& [unused, item] : child(tree, key)) {
        const std::string value = item.get_value<std::string>();
        try {
            if (value != "null") {  // a sample that was not finite
                values.push_back(std::stod(value));
            }
        } catch (const std::exception&) {
            odp::throw_error(EINVAL, "compare JSON: \"" + key + "\" holds " + value);
        }
    }
    return values;
}

Row row_from(const ptree& item) {
    Row row;
    row.mode = text(item, "mode");
    row.server_mode = text(item, "server_mode");
    row.test = text(item, "test");
    row.size = count(item, "size");
    row.iterations = count(item, "iterations");
    row.depth = static_cast<std::uint32_t>(count(item, "depth"));
    row.bw_MBps = number(item, "bw_MBps");
    row.lat_us_p50 = number(item, "lat_us_p50");
    row.lat_us_p99 = number(item, "lat_us_p99");
    row.reg_us = number(item, "reg_us");
    row.first_touch_us = number(item, "first_touch_us");
    row.first_write_us = number(item, "first_write_us");
    row.warm_us = number(item, "warm_us");
    row.prefetch_us = number(item, "prefetch_us");
    row.hit_rate = number(item, "hit_rate");
    if (const std::optional<double> budget = number(item, "budget_bytes")) {
        row.budget_bytes = static_cast<std::uint64_t>(*budget);
    }
    row.pinned_bytes_peak = count(item, "pinned_bytes_peak");
    row.faults = count(item, "faults");
    row.invalidations = count(item, "invalidations");
    row.fault_ahead_hits = later_count(item, "fault_ahead_hits");  // with fault-ahead
    row.verified_bytes = count(item, "verified_bytes");
    row.mismatched_bytes = count(item, "mismatched_bytes");
    const std::string error = text(item, "error");
    row.error = error == "null" ? std::string() : error;
    row.round_bw_MBps = numbers(item, "round_bw_MBps");
    row.round_lat_us_p50 = numbers(item, "round_lat_us_p50");
    row.reg_us_samples = numbers(item, "reg_us_samples");
    row.first_touch_us_samples = numbers(item, "first_touch_us_samples");
    return row;
}

// The mean of the runs that have the value (none: none).
std::optional<double> mean(const std::vector<const Row*>& rows, std::optional<double> Row::*value) {
    double sum = 0;
    int values = 0;
    for (const Row* row : rows) {
        if (row->*value) {
            sum += *(row->*value);
            ++values;
        }
    }
    return values == 0 ? std::nullopt : std::optional(sum / values);
}

Row merge_rows(const std::vector<const Row*>& rows) {
    Row merged = *rows.front();
    for (std::size_t run = 1; run < rows.size(); ++run) {
        const Row& row = *rows[run];
        merged.iterations += row.iterations;
        merged.faults += row.faults;
        merged.invalidations += row.invalidations;
        merged.fault_ahead_hits += row.fault_ahead_hits;
        merged.verified_bytes += row.verified_bytes;
        merged.mismatched_bytes += row.mismatched_bytes;
        merged.pinned_bytes_peak = std::max(merged.pinned_bytes_peak, row.pinned_bytes_peak);
        for (auto samples : {&Row::round_bw_MBps, &Row::round_lat_us_p50, &Row::reg_us_samples,
                             &Row::first_touch_us_samples}) {
            (merged.*samples)
                .insert((merged.*samples).end(), (row.*samples).begin(), (row.*samples).end());
        }
    }
    for (auto value :
         {&Row::bw_MBps, &Row::lat_us_p50, &Row::lat_us_p99, &Row::reg_us, &Row::first_touch_us,
          &Row::first_write_us, &Row::warm_us, &Row::prefetch_us, &Row::hit_rate}) {
        merged.*value = mean(rows, value);
    }
    // One file (a plot redrawn, a merged file read again) keeps its error as
    // it is: a "run N: " of its own would pile up at every redraw.
    for (std::size_t run = 0; run < rows.size() && rows.size() > 1; ++run) {
        if (!rows[run]->error.empty()) {
            merged.error = "run " + std::to_string(run + 1) + ": " + rows[run]->error;
            break;
        }
    }
    return merged;
}

}  // namespace

CompareResult parse_compare_json(const std::string& text_of_json) {
    ptree tree;
    try {
        std::istringstream in(text_of_json);
        boost::property_tree::read_json(in, tree);
    } catch (const boost::property_tree::json_parser_error& error) {
        odp::throw_error(EINVAL, std::string("compare JSON: ") + error.what());
    }
    if (text(tree, "schema") != "odp-perf-compare/1") {
        odp::throw_error(EINVAL, "compare JSON: schema " + text(tree, "schema") +
                                     ", expected odp-perf-compare/1");
    }
    CompareResult result;
    result.kernel = text(tree, "kernel");
    result.device = text(tree, "device");
    result.emulated_monitor = text(tree, "emulated_monitor");
    result.sizes_note = text(tree, "sizes_note");
    // Files before RDMA CM have neither: endpoint exchange, every mode the device had.
    result.connection = tree.get<std::string>("connection", "");
    if (const auto absent = tree.get_child_optional("absent_modes")) {
        for (const auto& [mode, why] : *absent) {
            result.absent_modes[mode] = why.get_value<std::string>();
        }
    }
    // Older files have no "fault_ahead": they were made without it.
    if (tree.get_child_optional("fault_ahead")) {
        result.fault_ahead = static_cast<std::size_t>(count(tree, "fault_ahead"));
    }
    const ptree& check = child(tree, "native_odp_data_check");
    result.native_check.ran = text(check, "ran") == "true";
    result.native_check.ok = text(check, "ok") == "true";
    result.native_check.detail = text(check, "detail");
    for (const auto& [unused, mode] : child(tree, "modes")) {
        result.modes.push_back(mode.get_value<std::string>());
    }
    // Older files have no "monitors": their one emulated column is emulated_monitor's.
    if (const auto monitors = tree.get_child_optional("monitors")) {
        for (const auto& [label, monitor] : *monitors) {
            result.monitors[label] = monitor.get_value<std::string>();
        }
    } else if (!result.emulated_monitor.empty()) {
        result.monitors["emulated"] = result.emulated_monitor;
    }
    for (const auto& [unused, item] : child(tree, "results")) {
        result.rows.push_back(row_from(item));
    }
    return result;
}

CompareResult read_compare_json(const std::string& path) {
    std::ifstream in(path);
    if (!in) {
        odp::throw_errno("opening " + path);
    }
    std::ostringstream text;
    text << in.rdbuf();
    try {
        return parse_compare_json(text.str());
    } catch (const odp::Error& error) {
        // what() ends in the errno's text, which the new error adds again.
        std::string what = error.what();
        const std::string errno_text = ": " + error.code().message();
        if (what.ends_with(errno_text)) {
            what.resize(what.size() - errno_text.size());
        }
        odp::throw_error(error.errno_value(), path + ": " + what);
    }
}

CompareResult merge_runs(const std::vector<CompareResult>& runs) {
    if (runs.empty()) {
        odp::throw_error(EINVAL, "no runs to merge");
    }
    const CompareResult& first = runs.front();
    for (std::size_t run = 1; run < runs.size(); ++run) {
        const CompareResult& other = runs[run];
        if (std::tie(other.kernel, other.device, other.modes, other.monitors, other.connection,
                     other.fault_ahead) != std::tie(first.kernel, first.device, first.modes,
                                                    first.monitors, first.connection,
                                                    first.fault_ahead)) {
            odp::throw_error(EINVAL, "run " + std::to_string(run + 1) + " (" + other.device +
                                         ", kernel " + other.kernel +
                                         ") did not compare what run 1 did (" + first.device +
                                         ", kernel " + first.kernel +
                                         "): same device, kernel, modes, sources, connection and "
                                         "--fault-ahead needed");
        }
    }
    CompareResult merged = first;
    merged.rows.clear();
    for (const CompareResult& run : runs) {
        if (run.native_check.ran && !run.native_check.ok && merged.native_check.ok) {
            merged.native_check = run.native_check;
        }
    }
    // Rows in the first run's order; a row missing from a run is left out of
    // its mean and samples.
    using Key = std::tuple<std::string, std::string, std::uint64_t>;
    std::map<Key, std::vector<const Row*>> by_key;
    std::vector<Key> order;
    for (const CompareResult& run : runs) {
        for (const Row& row : run.rows) {
            const Key key{row.mode, row.test, row.size};
            auto& rows = by_key[key];
            if (rows.empty()) {
                order.push_back(key);
            }
            rows.push_back(&row);
        }
    }
    for (const Key& key : order) {
        merged.rows.push_back(merge_rows(by_key.at(key)));
    }
    merged.goals = evaluate_goals(merged.rows);
    return merged;
}

}  // namespace odp_perf
