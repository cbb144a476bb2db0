/* ODP_API marks what libodp.so exports. The library is built with hidden
 * visibility by default (only the public API is part of its ABI, internal
 * calls bind locally), so every public class and function carries it. Usable
 * from C (odp/odp.h) and C++. */
#ifndef ODP_EXPORT_H
#define ODP_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define ODP_API __attribute__((visibility("default")))
#define ODP_LOCAL __attribute__((visibility("hidden")))
#else
#define ODP_API
#define ODP_LOCAL
#endif

#endif /* ODP_EXPORT_H */
