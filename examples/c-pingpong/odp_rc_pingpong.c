/* odp_rc_pingpong: an RC ping-pong over libodp's C API (odp/odp.h), in the
 * style of rdma-core's ibv_rc_pingpong.
 *
 * Two processes (server: no address; client: the server's address) connect
 * RC queue pairs after an out-of-band exchange over TCP, then bounce a
 * message back and forth: the client sends, the server answers, `iters`
 * times. Every message is checked byte by byte: iteration i carries a pattern
 * that differs from iteration i-1 at every byte and is not periodic, so a
 * message that did not arrive, arrived in part or landed at the wrong offset
 * is caught.
 *
 * Memory is registered through libodp in the mode asked for (-m pinned,
 * native, emulated or auto), never with ibv_reg_mr directly:
 *  - the sender translates its buffer into SGEs before each work request
 *    (odp_region_translate) and releases the lease once it has completed;
 *  - with RDMA WRITE (-o write, the default) each side exposes its receive
 *    buffer (odp_region_expose) and sends the segments to the peer, which
 *    writes one WR per segment, the last one WRITE_WITH_IMM;
 *  - with SEND/RECV (-o send) the receiver leases its buffer for each RECV.
 *
 * Build: cc -std=c11 odp_rc_pingpong.c $(pkg-config --cflags --libs odp libibverbs)
 * Exit status: 0 every message verified; 1 an error (device, connection,
 * verbs, libodp: the message says which); 2 bad usage; 3 wrong bytes arrived.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <odp/odp.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_ERROR = 1, EXIT_USAGE = 2, EXIT_DATA = 3 };
enum op { OP_WRITE, OP_SEND };
enum { MAX_SGE = 16, MAX_SEGMENTS = 64, LINE_MAX_BYTES = 256 };

struct options {
    const char* device;
    int ib_port;
    int gid_index; /* -1: choose */
    const char* tcp_port;
    size_t size;
    unsigned long iters;
    enum odp_mode mode;
    enum op op;
    const char* server; /* NULL: be the server */
    int connect_seconds;
};

/* What each side tells the other out of band. */
struct peer {
    uint32_t qpn;
    uint32_t psn;
    uint16_t lid;
    enum ibv_mtu mtu;
    union ibv_gid gid;
    size_t segment_count; /* -o write: the peer's exposed receive buffer */
    struct odp_segment segments[MAX_SEGMENTS];
};

struct context {
    struct options opt;
    struct odp_device* device;
    struct ibv_context* verbs;
    struct ibv_pd* pd;
    struct ibv_cq* send_cq;
    struct ibv_cq* recv_cq;
    struct ibv_qp* qp;
    struct ibv_port_attr port;
    union ibv_gid gid;
    uint32_t max_sge;
    char* send_buf;
    char* recv_buf;
    size_t mapped; /* bytes of each mapping */
    struct odp_region* send_region;
    struct odp_region* recv_region;
    struct odp_exposure* exposure; /* -o write: our receive buffer, for the peer */
    struct odp_lease* recv_lease;  /* -o send: the posted RECV's buffer */
    int sock;
    struct peer peer;
};

static const char* program = "odp_rc_pingpong";

__attribute__((format(printf, 1, 2))) static int fail(const char* format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "%s: ", program);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    return EXIT_ERROR;
}

/* A libodp call failed: its negative errno and this thread's message. */
static int fail_odp(const char* call, int rc) {
    const char* message = odp_last_error();
    return fail("%s: %s", call, message[0] != '\0' ? message : strerror(-rc));
}

static void usage(FILE* out);

__attribute__((format(printf, 1, 2))) static int usage_error(const char* format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "%s: ", program);
    vfprintf(stderr, format, args);
    fprintf(stderr, " (see --help)\n");
    va_end(args);
    return EXIT_USAGE;
}

static void usage(FILE* out) {
    fprintf(out,
            "usage: %s [options]            start a server and wait for a client\n"
            "       %s [options] SERVER     connect to the server at SERVER\n"
            "\n"
            "options:\n"
            "  -d, --ib-dev=DEVICE    verbs device (default: the first one)\n"
            "  -i, --ib-port=PORT     device port (default 1)\n"
            "  -g, --gid-idx=INDEX    GID index (default: the first RoCE v2 IPv4 one on RoCE)\n"
            "  -p, --port=PORT        TCP port of the out-of-band exchange (default 18515)\n"
            "  -s, --size=BYTES       message size, K/M suffixes allowed (default 4096)\n"
            "  -n, --iters=N          round trips (default 1000)\n"
            "  -m, --mode=MODE        registration: pinned, native, emulated or auto (default)\n"
            "  -o, --op=OP            write (RDMA WRITE with immediate, default) or send\n"
            "  -t, --connect-timeout=S  the client retries connecting for S seconds (default 10)\n"
            "  -h, --help             this text\n"
            "\n"
            "Every message is verified byte by byte. Exit status: 0 all verified, 1 error,\n"
            "2 bad usage, 3 wrong bytes arrived.\n",
            program, program);
}

static bool parse_size(const char* text, size_t* size) {
    char* end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || end == text) {
        return false;
    }
    if (*end == 'K' || *end == 'k') {
        value <<= 10;
        ++end;
    } else if (*end == 'M' || *end == 'm') {
        value <<= 20;
        ++end;
    }
    if (*end != '\0' || value == 0 || value > (1ULL << 30)) {
        return false;
    }
    *size = (size_t)value;
    return true;
}

static bool parse_number(const char* text, unsigned long max, unsigned long* value) {
    char* end = NULL;
    errno = 0;
    const unsigned long parsed = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || parsed > max) {
        return false;
    }
    *value = parsed;
    return true;
}

/* Returns -1 when the options are good, else the exit status. */
static int parse_options(int argc, char** argv, struct options* opt) {
    static const struct option long_options[] = {
        {"ib-dev", required_argument, NULL, 'd'},
        {"ib-port", required_argument, NULL, 'i'},
        {"gid-idx", required_argument, NULL, 'g'},
        {"port", required_argument, NULL, 'p'},
        {"size", required_argument, NULL, 's'},
        {"iters", required_argument, NULL, 'n'},
        {"mode", required_argument, NULL, 'm'},
        {"op", required_argument, NULL, 'o'},
        {"connect-timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *opt = (struct options){.device = NULL,
                            .ib_port = 1,
                            .gid_index = -1,
                            .tcp_port = "18515",
                            .size = 4096,
                            .iters = 1000,
                            .mode = ODP_MODE_AUTO,
                            .op = OP_WRITE,
                            .server = NULL,
                            .connect_seconds = 10};
    int c;
    unsigned long number = 0;
    while ((c = getopt_long(argc, argv, "d:i:g:p:s:n:m:o:t:h", long_options, NULL)) != -1) {
        switch (c) {
            case 'd':
                opt->device = optarg;
                break;
            case 'i':
                if (!parse_number(optarg, 255, &number) || number == 0) {
                    return usage_error("bad port number '%s' (1-255)", optarg);
                }
                opt->ib_port = (int)number;
                break;
            case 'g':
                if (!parse_number(optarg, 255, &number)) {
                    return usage_error("bad GID index '%s' (0-255)", optarg);
                }
                opt->gid_index = (int)number;
                break;
            case 'p':
                opt->tcp_port = optarg;
                break;
            case 's':
                if (!parse_size(optarg, &opt->size)) {
                    return usage_error("bad size '%s' (1 byte to 1G, e.g. 4096, 64K, 1M)", optarg);
                }
                break;
            case 'n':
                if (!parse_number(optarg, 1000000000UL, &opt->iters) || opt->iters == 0) {
                    return usage_error("bad iteration count '%s'", optarg);
                }
                break;
            case 'm': {
                const int rc = odp_mode_parse(optarg, &opt->mode);
                if (rc != 0) {
                    return usage_error("%s", odp_last_error());
                }
                break;
            }
            case 'o':
                if (strcmp(optarg, "write") == 0) {
                    opt->op = OP_WRITE;
                } else if (strcmp(optarg, "send") == 0) {
                    opt->op = OP_SEND;
                } else {
                    return usage_error("unknown operation '%s': use write or send", optarg);
                }
                break;
            case 't':
                if (!parse_number(optarg, 3600, &number)) {
                    return usage_error("bad connect timeout '%s' (seconds)", optarg);
                }
                opt->connect_seconds = (int)number;
                break;
            case 'h':
                usage(stdout);
                return EXIT_SUCCESS;
            default:
                usage(stderr);
                return EXIT_USAGE;
        }
    }
    if (optind + 1 < argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    opt->server = optind < argc ? argv[optind] : NULL;
    return -1;
}

/* ---- the data: byte k of iteration i from side `side` ------------------ */

/* A hash of the offset (not periodic: bytes landing at the wrong offset are
 * caught) plus the iteration (every byte changes from one to the next). */
static uint8_t pattern(size_t k, unsigned long i, int side) {
    uint32_t h = (uint32_t)k * 0x9e3779b1u ^ (uint32_t)side * 0x85ebca77u;
    h ^= h >> 15;
    h *= 0x2c1b3c6du;
    h ^= h >> 12;
    return (uint8_t)(h + (uint32_t)i);
}

static void fill(char* buffer, size_t size, unsigned long i, int side) {
    for (size_t k = 0; k < size; ++k) {
        buffer[k] = (char)pattern(k, i, side);
    }
}

/* 0 when every byte is right, else EXIT_DATA after saying where. */
static int verify(const char* buffer, size_t size, unsigned long i, int side) {
    size_t wrong = 0;
    size_t first = 0;
    for (size_t k = 0; k < size; ++k) {
        if ((uint8_t)buffer[k] != pattern(k, i, side)) {
            if (wrong++ == 0) {
                first = k;
            }
        }
    }
    if (wrong == 0) {
        return 0;
    }
    fprintf(stderr,
            "%s: DATA CHECK FAILED in iteration %lu: %zu of %zu bytes wrong, the first at "
            "offset %zu (0x%02x, expected 0x%02x)\n",
            program, i, wrong, size, first, (unsigned)(uint8_t)buffer[first],
            (unsigned)pattern(first, i, side));
    return EXIT_DATA;
}

/* ---- out-of-band exchange over TCP ------------------------------------- */

static int tcp_connect(const struct options* opt) {
    const struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo* found = NULL;
    int rc = getaddrinfo(opt->server, opt->tcp_port, &hints, &found);
    if (rc != 0) {
        fail("cannot resolve %s:%s: %s", opt->server, opt->tcp_port, gai_strerror(rc));
        return -1;
    }
    const time_t deadline = time(NULL) + opt->connect_seconds;
    int sock = -1;
    int last_errno = 0;
    do {
        for (struct addrinfo* a = found; a != NULL && sock < 0; a = a->ai_next) {
            sock = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
            if (sock >= 0 && connect(sock, a->ai_addr, a->ai_addrlen) != 0) {
                last_errno = errno;
                close(sock);
                sock = -1;
            }
        }
        if (sock < 0 && time(NULL) < deadline) {
            usleep(200 * 1000); /* the server may not listen yet */
        }
    } while (sock < 0 && time(NULL) < deadline);
    freeaddrinfo(found);
    if (sock < 0) {
        fail("cannot connect to %s:%s for %d s: %s (is the server running?)", opt->server,
             opt->tcp_port, opt->connect_seconds, strerror(last_errno));
    }
    return sock;
}

static int tcp_accept(const struct options* opt) {
    const struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo* found = NULL;
    const int rc = getaddrinfo(NULL, opt->tcp_port, &hints, &found);
    if (rc != 0) {
        fail("bad TCP port %s: %s", opt->tcp_port, gai_strerror(rc));
        return -1;
    }
    int listener = -1;
    int last_errno = 0;
    const int one = 1;
    for (struct addrinfo* a = found; a != NULL && listener < 0; a = a->ai_next) {
        listener = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (listener >= 0 &&
            (setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
             bind(listener, a->ai_addr, a->ai_addrlen) != 0 || listen(listener, 1) != 0)) {
            last_errno = errno;
            close(listener);
            listener = -1;
        }
    }
    freeaddrinfo(found);
    if (listener < 0) {
        fail("cannot listen on TCP port %s: %s", opt->tcp_port, strerror(last_errno));
        return -1;
    }
    const int sock = accept(listener, NULL, NULL);
    if (sock < 0) {
        fail("accept on TCP port %s: %s", opt->tcp_port, strerror(errno));
    }
    close(listener);
    return sock;
}

static int send_all(int sock, const char* text) {
    size_t left = strlen(text);
    while (left > 0) {
        const ssize_t sent = send(sock, text, left, MSG_NOSIGNAL);
        if (sent <= 0) {
            return fail("sending to the peer: %s", sent < 0 ? strerror(errno) : "closed");
        }
        text += sent;
        left -= (size_t)sent;
    }
    return 0;
}

/* One line (without its '\n'); byte by byte: messages are tiny. */
static int receive_line(int sock, char* line, size_t size) {
    size_t used = 0;
    for (;;) {
        char c;
        const ssize_t got = recv(sock, &c, 1, 0);
        if (got <= 0) {
            return fail("receiving from the peer: %s",
                        got < 0 ? strerror(errno) : "the peer closed the connection");
        }
        if (c == '\n') {
            line[used] = '\0';
            return 0;
        }
        if (used + 1 >= size) {
            return fail("a line from the peer is too long: not an %s peer?", program);
        }
        line[used++] = c;
    }
}

/* This side's first packet sequence number (any 24-bit value will do). */
static uint32_t local_psn(const struct context* ctx) {
    return (ctx->qp->qp_num * 4099u) & 0xffffffu;
}

static void gid_to_text(const union ibv_gid* gid, char* text) {
    for (int i = 0; i < 16; ++i) {
        sprintf(text + 2 * i, "%02x", gid->raw[i]);
    }
}

static bool gid_from_text(const char* text, union ibv_gid* gid) {
    if (strlen(text) != 32) {
        return false;
    }
    for (int i = 0; i < 16; ++i) {
        unsigned byte = 0;
        if (sscanf(text + 2 * i, "%2x", &byte) != 1) {
            return false;
        }
        gid->raw[i] = (uint8_t)byte;
    }
    return true;
}

/* "ODP-PINGPONG 1 <qpn> <psn> <lid> <mtu> <gid> <op> <size> <segments>", then
 * one "<address> <length> <rkey>" line per exposed segment. */
static int send_endpoint(struct context* ctx) {
    char gid[33];
    char line[LINE_MAX_BYTES];
    gid_to_text(&ctx->gid, gid);
    size_t count = 0;
    const struct odp_segment* segments =
        ctx->exposure != NULL ? odp_exposure_segments(ctx->exposure, &count) : NULL;
    snprintf(line, sizeof line, "ODP-PINGPONG 1 %" PRIu32 " %" PRIu32 " %u %d %s %s %zu %zu\n",
             ctx->qp->qp_num, local_psn(ctx), (unsigned)ctx->port.lid, (int)ctx->port.active_mtu,
             gid, ctx->opt.op == OP_WRITE ? "write" : "send", ctx->opt.size, count);
    int rc = send_all(ctx->sock, line);
    for (size_t i = 0; i < count && rc == 0; ++i) {
        snprintf(line, sizeof line, "%" PRIu64 " %" PRIu32 " %" PRIu32 "\n", segments[i].address,
                 segments[i].length, segments[i].rkey);
        rc = send_all(ctx->sock, line);
    }
    return rc;
}

static int receive_endpoint(struct context* ctx) {
    char line[LINE_MAX_BYTES];
    char gid[LINE_MAX_BYTES];
    char op[LINE_MAX_BYTES];
    unsigned version = 0;
    unsigned lid = 0;
    int mtu = 0;
    size_t size = 0;
    struct peer* peer = &ctx->peer;
    int rc = receive_line(ctx->sock, line, sizeof line);
    if (rc != 0) {
        return rc;
    }
    if (sscanf(line, "ODP-PINGPONG %u %" SCNu32 " %" SCNu32 " %u %d %255s %255s %zu %zu", &version,
               &peer->qpn, &peer->psn, &lid, &mtu, gid, op, &size, &peer->segment_count) != 9 ||
        version != 1 || !gid_from_text(gid, &peer->gid) || mtu < IBV_MTU_256 ||
        mtu > IBV_MTU_4096 || peer->segment_count > MAX_SEGMENTS) {
        return fail("the peer sent '%s': not an %s peer of this version?", line, program);
    }
    const char* our_op = ctx->opt.op == OP_WRITE ? "write" : "send";
    if (strcmp(op, our_op) != 0 || size != ctx->opt.size) {
        return fail("the peer runs -o %s -s %zu but this side -o %s -s %zu: use the same", op, size,
                    our_op, ctx->opt.size);
    }
    peer->lid = (uint16_t)lid;
    peer->mtu = (enum ibv_mtu)mtu;
    size_t covered = 0;
    for (size_t i = 0; i < peer->segment_count; ++i) {
        struct odp_segment* segment = &peer->segments[i];
        rc = receive_line(ctx->sock, line, sizeof line);
        if (rc != 0) {
            return rc;
        }
        if (sscanf(line, "%" SCNu64 " %" SCNu32 " %" SCNu32, &segment->address, &segment->length,
                   &segment->rkey) != 3) {
            return fail("the peer sent a bad segment line '%s'", line);
        }
        covered += segment->length;
    }
    if (ctx->opt.op == OP_WRITE && covered != ctx->opt.size) {
        return fail("the peer exposed %zu bytes for %zu-byte messages", covered, ctx->opt.size);
    }
    return 0;
}

/* Both sides ready before the first message: a one-line barrier. */
static int barrier(struct context* ctx, const char* word) {
    char line[LINE_MAX_BYTES];
    char expected[LINE_MAX_BYTES];
    snprintf(expected, sizeof expected, "%s\n", word);
    int rc = send_all(ctx->sock, expected);
    if (rc == 0) {
        rc = receive_line(ctx->sock, line, sizeof line);
    }
    if (rc == 0 && strcmp(line, word) != 0) {
        rc = fail("the peer said '%s' instead of '%s'", line, word);
    }
    return rc;
}

/* ---- verbs ------------------------------------------------------------- */

/* On RoCE: the first RoCE v2 GID with an IPv4-mapped address (what rxe on an
 * IPv4 interface has); InfiniBand needs none (index 0). */
static int choose_gid(struct context* ctx) {
    if (ctx->opt.gid_index < 0) {
        ctx->opt.gid_index = 0;
        if (ctx->port.link_layer == IBV_LINK_LAYER_ETHERNET) {
            ctx->opt.gid_index = -1;
            for (int i = 0; i < ctx->port.gid_tbl_len && ctx->opt.gid_index < 0; ++i) {
                struct ibv_gid_entry entry;
                if (ibv_query_gid_ex(ctx->verbs, (uint32_t)ctx->opt.ib_port, (uint32_t)i, &entry,
                                     0) == 0 &&
                    entry.gid_type == IBV_GID_TYPE_ROCE_V2 && entry.gid.raw[10] == 0xff &&
                    entry.gid.raw[11] == 0xff) {
                    ctx->opt.gid_index = i;
                }
            }
            if (ctx->opt.gid_index < 0) {
                return fail(
                    "%s port %d has no RoCE v2 GID with an IPv4 address: give the "
                    "netdev an address, or pick one with -g",
                    odp_device_name(ctx->device), ctx->opt.ib_port);
            }
        }
    }
    if (ibv_query_gid(ctx->verbs, (uint8_t)ctx->opt.ib_port, ctx->opt.gid_index, &ctx->gid) != 0) {
        return fail("ibv_query_gid(%s port %d index %d): %s", odp_device_name(ctx->device),
                    ctx->opt.ib_port, ctx->opt.gid_index, strerror(errno));
    }
    return 0;
}

static int create_queue_pair(struct context* ctx) {
    struct ibv_device_attr attr;
    if (ibv_query_device(ctx->verbs, &attr) != 0) {
        return fail("ibv_query_device(%s): %s", odp_device_name(ctx->device), strerror(errno));
    }
    if (ibv_query_port(ctx->verbs, (uint8_t)ctx->opt.ib_port, &ctx->port) != 0) {
        return fail("ibv_query_port(%s, %d): %s", odp_device_name(ctx->device), ctx->opt.ib_port,
                    strerror(errno));
    }
    ctx->max_sge = attr.max_sge < MAX_SGE ? (uint32_t)attr.max_sge : MAX_SGE;
    const int depth = MAX_SEGMENTS + 2;
    /* Two CQs: a reply may complete before the ACK of what it answers. */
    ctx->send_cq = ibv_create_cq(ctx->verbs, depth, NULL, NULL, 0);
    ctx->recv_cq = ibv_create_cq(ctx->verbs, 2, NULL, NULL, 0);
    if (ctx->send_cq == NULL || ctx->recv_cq == NULL) {
        return fail("ibv_create_cq(%s): %s", odp_device_name(ctx->device), strerror(errno));
    }
    struct ibv_qp_init_attr init = {
        .send_cq = ctx->send_cq,
        .recv_cq = ctx->recv_cq,
        .cap = {.max_send_wr = (uint32_t)depth,
                .max_recv_wr = 2,
                .max_send_sge = ctx->max_sge,
                .max_recv_sge = ctx->max_sge},
        .qp_type = IBV_QPT_RC,
    };
    ctx->qp = ibv_create_qp(ctx->pd, &init);
    if (ctx->qp == NULL) {
        return fail("ibv_create_qp(%s, RC): %s", odp_device_name(ctx->device), strerror(errno));
    }
    struct ibv_qp_attr to_init = {
        .qp_state = IBV_QPS_INIT,
        .pkey_index = 0,
        .port_num = (uint8_t)ctx->opt.ib_port,
        .qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
    };
    if (ibv_modify_qp(ctx->qp, &to_init,
                      IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) != 0) {
        return fail("ibv_modify_qp(INIT): %s", strerror(errno));
    }
    return choose_gid(ctx);
}

static int connect_queue_pair(struct context* ctx) {
    const struct peer* peer = &ctx->peer;
    const enum ibv_mtu mtu = peer->mtu < ctx->port.active_mtu ? peer->mtu : ctx->port.active_mtu;
    struct ibv_qp_attr rtr = {
        .qp_state = IBV_QPS_RTR,
        .path_mtu = mtu,
        .dest_qp_num = peer->qpn,
        .rq_psn = peer->psn,
        .max_dest_rd_atomic = 1,
        .min_rnr_timer = 12,
        .ah_attr = {.dlid = peer->lid,
                    .sl = 0,
                    .src_path_bits = 0,
                    .port_num = (uint8_t)ctx->opt.ib_port},
    };
    if (ctx->port.link_layer == IBV_LINK_LAYER_ETHERNET || peer->lid == 0) {
        rtr.ah_attr.is_global = 1;
        rtr.ah_attr.grh.dgid = peer->gid;
        rtr.ah_attr.grh.sgid_index = (uint8_t)ctx->opt.gid_index;
        rtr.ah_attr.grh.hop_limit = 1;
    }
    if (ibv_modify_qp(ctx->qp, &rtr,
                      IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) != 0) {
        return fail("ibv_modify_qp(RTR) to qp %" PRIu32 ": %s", peer->qpn, strerror(errno));
    }
    struct ibv_qp_attr rts = {
        .qp_state = IBV_QPS_RTS,
        .timeout = 14,
        .retry_cnt = 7,
        .rnr_retry = 7,
        .sq_psn = local_psn(ctx),
        .max_rd_atomic = 1,
    };
    if (ibv_modify_qp(ctx->qp, &rts,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                          IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) != 0) {
        return fail("ibv_modify_qp(RTS): %s", strerror(errno));
    }
    return 0;
}

/* Waits for one completion and checks it. Gives up after 10 s, or as soon
 * as the peer closes the TCP connection (it failed and said why); yields the
 * CPU while the CQ is empty, so that both ends share one CPU well. */
static int wait_completion(struct context* ctx, struct ibv_cq* cq, enum ibv_wc_opcode opcode,
                           struct ibv_wc* wc) {
    const char* what = opcode == IBV_WC_RECV_RDMA_WITH_IMM ? "the peer's write"
                       : opcode == IBV_WC_RECV             ? "the peer's message"
                                                           : "our own work request";
    const time_t deadline = time(NULL) + 10;
    for (unsigned long polls = 1;; ++polls) {
        const int n = ibv_poll_cq(cq, 1, wc);
        if (n < 0) {
            return fail("ibv_poll_cq: %d", n);
        }
        if (n == 1) {
            break;
        }
        if (polls % 1024 == 0) {
            struct pollfd peer = {.fd = ctx->sock, .events = POLLIN};
            if (ctx->sock >= 0 && poll(&peer, 1, 0) > 0) {
                return fail(
                    "the peer closed the connection while this side waited for %s "
                    "(see the peer's output)",
                    what);
            }
            if (time(NULL) > deadline) {
                return fail("no completion in 10 s while waiting for %s", what);
            }
        }
        sched_yield();
    }
    if (wc->status != IBV_WC_SUCCESS) {
        return fail("work request %" PRIu64 " failed: %s (%d)", wc->wr_id,
                    ibv_wc_status_str(wc->status), (int)wc->status);
    }
    if (wc->opcode != opcode) {
        return fail("completion of opcode %d, expected %d", (int)wc->opcode, (int)opcode);
    }
    return 0;
}

/* ---- one message each way ---------------------------------------------- */

/* Posts the RECV for the next message: -o write needs no buffer (the
 * immediate consumes it), -o send leases the receive buffer until it lands. */
static int post_receive(struct context* ctx) {
    struct ibv_sge sges[MAX_SGE];
    size_t count = 0;
    if (ctx->opt.op == OP_SEND) {
        const int rc = odp_region_translate(ctx->recv_region, ctx->recv_buf, ctx->opt.size, sges,
                                            ctx->max_sge, &count, &ctx->recv_lease);
        if (rc != 0) {
            return fail_odp("odp_region_translate(receive buffer)", rc);
        }
    }
    struct ibv_recv_wr wr = {.wr_id = 1, .sg_list = sges, .num_sge = (int)count};
    struct ibv_recv_wr* bad = NULL;
    const int rc = ibv_post_recv(ctx->qp, &wr, &bad);
    if (rc != 0) {
        return fail("ibv_post_recv: %s", strerror(rc));
    }
    return 0;
}

/* Sends iteration i's message; the leases on the send buffer are released
 * once the last work request has completed (RC completes in order). */
static int send_message(struct context* ctx, unsigned long i, int side) {
    struct odp_lease* leases[MAX_SEGMENTS];
    size_t lease_count = 0;
    int status = 0;
    fill(ctx->send_buf, ctx->opt.size, i, side);
    const size_t wr_count = ctx->opt.op == OP_WRITE ? ctx->peer.segment_count : 1;
    size_t offset = 0;
    for (size_t w = 0; w < wr_count && status == 0; ++w) {
        const bool last = w + 1 == wr_count;
        const size_t length =
            ctx->opt.op == OP_WRITE ? ctx->peer.segments[w].length : ctx->opt.size;
        struct ibv_sge sges[MAX_SGE];
        size_t sge_count = 0;
        int rc = odp_region_translate(ctx->send_region, ctx->send_buf + offset, length, sges,
                                      ctx->max_sge, &sge_count, &leases[lease_count]);
        if (rc != 0) {
            status = fail_odp("odp_region_translate(send buffer)", rc);
            break;
        }
        ++lease_count;
        struct ibv_send_wr wr = {
            .wr_id = i,
            .sg_list = sges,
            .num_sge = (int)sge_count,
            .opcode = ctx->opt.op == OP_SEND ? IBV_WR_SEND
                      : last                 ? IBV_WR_RDMA_WRITE_WITH_IMM
                                             : IBV_WR_RDMA_WRITE,
            .send_flags = last ? IBV_SEND_SIGNALED : 0,
        };
        if (ctx->opt.op == OP_WRITE) {
            wr.wr.rdma.remote_addr = ctx->peer.segments[w].address;
            wr.wr.rdma.rkey = ctx->peer.segments[w].rkey;
            wr.imm_data = htonl((uint32_t)i);
        }
        struct ibv_send_wr* bad = NULL;
        rc = ibv_post_send(ctx->qp, &wr, &bad);
        if (rc != 0) {
            status = fail("ibv_post_send: %s", strerror(rc));
            break;
        }
        offset += length;
    }
    struct ibv_wc wc;
    if (status == 0) {
        status = wait_completion(ctx, ctx->send_cq,
                                 ctx->opt.op == OP_SEND ? IBV_WC_SEND : IBV_WC_RDMA_WRITE, &wc);
    }
    for (size_t l = 0; l < lease_count; ++l) {
        bool changed = false;
        odp_lease_release(leases[l], &changed);
        if (changed && status == 0) {
            /* This program never remaps its buffers: a change is a bug. */
            status = fail(
                "the send buffer's mapping changed while the NIC read it "
                "(iteration %lu)",
                i);
        }
    }
    return status;
}

/* Waits for iteration i's message from the peer and checks every byte. */
static int receive_message(struct context* ctx, unsigned long i, int side) {
    struct ibv_wc wc;
    int status = wait_completion(
        ctx, ctx->recv_cq, ctx->opt.op == OP_SEND ? IBV_WC_RECV : IBV_WC_RECV_RDMA_WITH_IMM, &wc);
    if (status == 0 && ctx->opt.op == OP_WRITE && ntohl(wc.imm_data) != (uint32_t)i) {
        status = fail("immediate %" PRIu32 " in iteration %lu", ntohl(wc.imm_data), i);
    }
    /* (A write's immediate completion carries the length of that last write.) */
    if (status == 0 && ctx->opt.op == OP_SEND && wc.byte_len != ctx->opt.size) {
        status = fail("received %" PRIu32 " bytes in iteration %lu, expected %zu", wc.byte_len, i,
                      ctx->opt.size);
    }
    if (ctx->recv_lease != NULL) {
        bool changed = false;
        odp_lease_release(ctx->recv_lease, &changed);
        ctx->recv_lease = NULL;
        if (changed && status == 0) {
            status = fail("the receive buffer's mapping changed while the NIC wrote it");
        }
    }
    if (status == 0) {
        status = verify(ctx->recv_buf, ctx->opt.size, i, side);
    }
    return status;
}

/* ---- setup and teardown ------------------------------------------------ */

static int map_buffers(struct context* ctx) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    ctx->mapped = (ctx->opt.size + page - 1) / page * page;
    ctx->send_buf =
        mmap(NULL, ctx->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ctx->recv_buf =
        mmap(NULL, ctx->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ctx->send_buf == MAP_FAILED || ctx->recv_buf == MAP_FAILED) {
        return fail("mmap of two %zu-byte buffers: %s", ctx->mapped, strerror(errno));
    }
    memset(ctx->recv_buf, 0, ctx->mapped);

    struct odp_region_attr attr;
    odp_region_attr_init(&attr);
    attr.mode = ctx->opt.mode;
    int rc =
        odp_region_register(ctx->device, ctx->send_buf, ctx->opt.size, 0, &attr, &ctx->send_region);
    if (rc != 0) {
        return fail_odp("odp_region_register(send buffer)", rc);
    }
    rc = odp_region_register(ctx->device, ctx->recv_buf, ctx->opt.size,
                             ODP_ACCESS_LOCAL_WRITE | ODP_ACCESS_REMOTE_WRITE, &attr,
                             &ctx->recv_region);
    if (rc != 0) {
        return fail_odp("odp_region_register(receive buffer)", rc);
    }
    char* text = NULL;
    if (odp_region_describe(ctx->recv_region, &text) == 0) {
        printf("  registered: %s\n", text);
        free(text);
    }
    if (ctx->opt.op == OP_WRITE) {
        rc = odp_region_expose(ctx->recv_region, ctx->recv_buf, ctx->opt.size, NULL, NULL,
                               &ctx->exposure);
        if (rc != 0) {
            return fail_odp("odp_region_expose(receive buffer)", rc);
        }
        size_t count = 0;
        (void)odp_exposure_segments(ctx->exposure, &count);
        if (count > MAX_SEGMENTS) {
            return fail(
                "the receive buffer is exposed in %zu segments, at most %d fit: use a "
                "smaller -s",
                count, MAX_SEGMENTS);
        }
    }
    return 0;
}

static int print_statistics(struct context* ctx) {
    struct odp_stats stats;
    odp_stats_init(&stats);
    char* json = NULL;
    int rc = odp_device_stats(ctx->device, &stats);
    if (rc == 0) {
        rc = odp_stats_json(&stats, &json);
    }
    if (rc != 0) {
        return fail_odp("odp_device_stats", rc);
    }
    printf("  libodp statistics: %s\n", json);
    free(json);
    return 0;
}

static int finish(struct context* ctx, int status) {
    if (ctx->qp != NULL && ibv_destroy_qp(ctx->qp) != 0 && status == 0) {
        status = fail("ibv_destroy_qp: %s", strerror(errno));
    }
    /* The QP is gone: nothing can use what these leases hold any more. */
    odp_lease_release(ctx->recv_lease, NULL);
    bool changed = false;
    odp_exposure_release(ctx->exposure, &changed);
    if (changed && status == 0) {
        status = fail("the receive buffer's mapping changed while it was exposed");
    }
    for (int i = 0; i < 2; ++i) {
        struct ibv_cq* cq = i == 0 ? ctx->send_cq : ctx->recv_cq;
        if (cq != NULL && ibv_destroy_cq(cq) != 0 && status == 0) {
            status = fail("ibv_destroy_cq: %s", strerror(errno));
        }
    }
    odp_region_close(ctx->send_region);
    odp_region_close(ctx->recv_region);
    odp_device_close(ctx->device);
    if (ctx->send_buf != NULL && ctx->send_buf != MAP_FAILED) {
        munmap(ctx->send_buf, ctx->mapped);
    }
    if (ctx->recv_buf != NULL && ctx->recv_buf != MAP_FAILED) {
        munmap(ctx->recv_buf, ctx->mapped);
    }
    if (ctx->sock >= 0) {
        close(ctx->sock);
    }
    return status;
}

static int run(struct context* ctx) {
    const bool client = ctx->opt.server != NULL;
    struct odp_device_attr attr;
    odp_device_attr_init(&attr);
    attr.name = ctx->opt.device;
    int rc = odp_device_open(&attr, &ctx->device);
    if (rc != 0) {
        return fail_odp("odp_device_open", rc);
    }
    ctx->verbs = odp_device_context(ctx->device);
    ctx->pd = odp_device_pd(ctx->device);
    printf("%s: %s on %s, %zu-byte messages, %lu iterations, %s, %s mode\n", program,
           client ? "client" : "server", odp_device_name(ctx->device), ctx->opt.size,
           ctx->opt.iters, ctx->opt.op == OP_WRITE ? "RDMA WRITE with immediate" : "SEND/RECV",
           odp_mode_name(ctx->opt.mode));
    if ((rc = create_queue_pair(ctx)) != 0 || (rc = map_buffers(ctx)) != 0 ||
        (rc = post_receive(ctx)) != 0) {
        return rc;
    }
    ctx->sock = client ? tcp_connect(&ctx->opt) : tcp_accept(&ctx->opt);
    if (ctx->sock < 0) {
        return EXIT_ERROR;
    }
    if ((rc = send_endpoint(ctx)) != 0 || (rc = receive_endpoint(ctx)) != 0 ||
        (rc = connect_queue_pair(ctx)) != 0 || (rc = barrier(ctx, "ready")) != 0) {
        return rc;
    }

    /* The client is side 0, the server side 1: each checks the other's bytes. */
    const int me = client ? 0 : 1;
    struct timespec start;
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned long i = 0; i < ctx->opt.iters; ++i) {
        if (client) {
            if ((rc = send_message(ctx, i, me)) != 0 ||
                (rc = receive_message(ctx, i, 1 - me)) != 0 ||
                (i + 1 < ctx->opt.iters && (rc = post_receive(ctx)) != 0)) {
                return rc;
            }
        } else {
            if ((rc = receive_message(ctx, i, 1 - me)) != 0 ||
                (i + 1 < ctx->opt.iters && (rc = post_receive(ctx)) != 0) ||
                (rc = send_message(ctx, i, me)) != 0) {
                return rc;
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    /* Neither side tears down while the other may still poll. */
    if ((rc = barrier(ctx, "done")) != 0) {
        return rc;
    }
    const double seconds =
        (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    const double bytes = 2.0 * (double)ctx->opt.size * (double)ctx->opt.iters;
    printf("  %.0f bytes in %.2f seconds = %.2f Mbit/sec\n", bytes, seconds,
           bytes * 8 / seconds / 1e6);
    printf("  %lu iters in %.2f seconds = %.2f usec/iter\n", ctx->opt.iters, seconds,
           seconds * 1e6 / (double)ctx->opt.iters);
    printf("  every byte of %lu messages verified\n", 2 * ctx->opt.iters);
    return print_statistics(ctx);
}

int main(int argc, char** argv) {
    struct context ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.sock = -1;
    const int parsed = parse_options(argc, argv, &ctx.opt);
    if (parsed >= 0) {
        return parsed;
    }
    return finish(&ctx, run(&ctx));
}
