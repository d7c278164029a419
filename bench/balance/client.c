/* Load client for bench/balance.py: one epoll loop.
 *
 *   client churn HOST PORT CONC SECONDS SRCS TIMEOUT_MS PAUSE_US SLOW_MS
 *       Closed loop: CONC connections in flight, each connects (from the next of SRCS, a
 *       comma-separated list of source addresses, or "-"), writes 32 bytes, reads their
 *       echo, closes, and its slot starts the next one PAUSE_US later (the slots' first
 *       starts spread over PAUSE_US), for SECONDS. A
 *       connection that errs, closes early, answers wrong or takes longer than TIMEOUT_MS
 *       fails; one that succeeds after more than SLOW_MS is slow. Prints one JSON object:
 *       counts, latency percentiles (us) of the successful ones, and every failed or slow
 *       connection as [start, end, kind] in CLOCK_MONOTONIC seconds (Python's
 *       time.monotonic()).
 *
 *   client hold HOST PORT N SRCS SECONDS
 *       Opens N connections (256 at a time), each writes 32 bytes and reads the echo, then
 *       stays idle. Prints "ready ok=.. failed=.." and holds them until SIGTERM or
 *       SECONDS, then prints "closed_by_peer=.." and exits.
 *
 * Source ports are left to connect() (IP_BIND_ADDRESS_NO_PORT), where the kernel may
 * reuse loopback TIME_WAIT ports (tcp_tw_reuse=2, the default).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MSG 32
#define MAXSRC 64
#define MAXBAD 200000

static const char payload[MSG + 1] = "portwarden-balance-bench-0123456";

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static struct sockaddr_in dst;
static struct in_addr srcs[MAXSRC];
static int nsrc, nextsrc;

static void parse_srcs(const char *s) {
    if (strcmp(s, "-") == 0) return;
    char *d = strdup(s), *save = NULL;
    for (char *t = strtok_r(d, ",", &save); t && nsrc < MAXSRC; t = strtok_r(NULL, ",", &save)) {
        if (inet_pton(AF_INET, t, &srcs[nsrc]) != 1) {
            fprintf(stderr, "client: bad source %s\n", t);
            exit(2);
        }
        nsrc++;
    }
    free(d);
}

/* A non-blocking socket connecting to dst: fd, or -errno. */
static int start_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (nsrc) {
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in s = {.sin_family = AF_INET, .sin_addr = srcs[nextsrc++ % nsrc]};
        if (bind(fd, (struct sockaddr *)&s, sizeof s) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

enum { IDLE, CONNECTING, READING, HELD };

struct slot {
    int fd, state, got;
    double start, next;
};

/* ---- churn ---- */

enum { K_CONNECT, K_NOPORT, K_RESET, K_EOF, K_TIMEOUT, K_WRONG, K_OTHER, K_SLOW, NK };
static const char *kname[NK] = {"connect", "noport", "reset", "eof", "timeout", "wrong", "other", "slow"};
static long kcount[NK];
static struct {
    double s, e;
    int k;
} *bad;
static long nbad;
static uint32_t *lat;
static long nlat, caplat;
static long okc, failc;

static void note_bad(double s, double e, int k) {
    kcount[k]++;
    if (k != K_SLOW) failc++;
    if (nbad < MAXBAD) {
        bad[nbad].s = s;
        bad[nbad].e = e;
        bad[nbad].k = k;
        nbad++;
    }
}

static int cmpu(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(double q) {
    if (!nlat) return 0;
    long i = (long)(q * (double)nlat + 0.999999) - 1;
    if (i < 0) i = 0;
    if (i >= nlat) i = nlat - 1;
    return lat[i];
}

static int churn(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: client churn HOST PORT CONC SECONDS SRCS TIMEOUT_MS PAUSE_US SLOW_MS\n");
        return 2;
    }
    int conc = atoi(argv[4]);
    double secs = atof(argv[5]);
    parse_srcs(argv[6]);
    double tmo = atof(argv[7]) / 1e3, pause = atof(argv[8]) / 1e6, slow = atof(argv[9]) / 1e3;
    bad = malloc(sizeof *bad * MAXBAD);
    caplat = 1 << 20;
    lat = malloc(sizeof *lat * (size_t)caplat);
    struct slot *sl = calloc((size_t)conc, sizeof *sl);
    int ep = epoll_create1(0);
    double t0 = now(), end = t0 + secs;
    for (int i = 0; i < conc; i++) {
        sl[i].state = IDLE;
        sl[i].next = t0 + pause * i / conc; /* spread, so that think times do not beat */
        sl[i].fd = -1;
    }
    struct epoll_event evs[256];
    char buf[256];
    int inflight = 0;
    for (;;) {
        double t = now();
        int stopping = t >= end;
        if (stopping && inflight == 0) break;
        /* Starts, and timeouts. */
        double wake = t + 0.005;
        for (int i = 0; i < conc; i++) {
            struct slot *s = &sl[i];
            if (s->state == IDLE) {
                if (stopping) continue;
                if (s->next > t) {
                    if (s->next < wake) wake = s->next;
                    continue;
                }
                int fd = start_connect();
                s->start = t;
                if (fd < 0) {
                    note_bad(t, t, -fd == EADDRNOTAVAIL ? K_NOPORT : K_CONNECT);
                    s->next = t + (pause > 0.001 ? pause : 0.001);
                    continue;
                }
                s->fd = fd;
                s->got = 0;
                s->state = CONNECTING;
                struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                inflight++;
            } else if (t - s->start > tmo) {
                close(s->fd);
                note_bad(s->start, t, K_TIMEOUT);
                s->state = IDLE;
                s->next = t + pause;
                inflight--;
            } else if (s->start + tmo < wake) {
                wake = s->start + tmo;
            }
        }
        int ms = (int)((wake - now()) * 1e3);
        if (ms < 0) ms = 0;
        int n = epoll_wait(ep, evs, 256, ms);
        t = now();
        for (int j = 0; j < n; j++) {
            struct slot *s = &sl[evs[j].data.u32];
            int kind = -1;
            if (s->state == CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err) {
                    kind = err == ECONNREFUSED ? K_CONNECT : err == ECONNRESET ? K_RESET : K_OTHER;
                } else if (send(s->fd, payload, MSG, MSG_NOSIGNAL) != MSG) {
                    kind = errno == ECONNRESET || errno == EPIPE ? K_RESET : K_OTHER;
                } else {
                    s->state = READING;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[j].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                    continue;
                }
            } else if (s->state == READING) {
                ssize_t r = recv(s->fd, buf, sizeof buf, 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (r < 0) {
                    kind = errno == ECONNRESET ? K_RESET : K_OTHER;
                } else if (r == 0) {
                    kind = K_EOF;
                } else if (s->got + r > MSG || memcmp(buf, payload + s->got, (size_t)r) != 0) {
                    kind = K_WRONG;
                } else {
                    s->got += (int)r;
                    if (s->got < MSG) continue;
                    kind = NK; /* done */
                }
            } else {
                continue;
            }
            close(s->fd);
            inflight--;
            s->state = IDLE;
            s->next = t + pause;
            if (kind == NK) {
                double d = t - s->start;
                okc++;
                if (nlat == caplat) {
                    caplat *= 2;
                    lat = realloc(lat, sizeof *lat * (size_t)caplat);
                }
                lat[nlat++] = (uint32_t)(d * 1e6);
                if (d > slow) note_bad(s->start, t, K_SLOW);
            } else {
                note_bad(s->start, t, kind);
            }
        }
    }
    double t1 = now();
    double sum = 0;
    for (long i = 0; i < nlat; i++) sum += lat[i];
    qsort(lat, (size_t)nlat, sizeof *lat, cmpu);
    printf("{\"t0\":%.6f,\"t1\":%.6f,\"seconds\":%.6f,\"ok\":%ld,\"failed\":%ld,", t0, t1, secs, okc, failc);
    printf("\"p50_us\":%u,\"p90_us\":%u,\"p99_us\":%u,\"p999_us\":%u,\"max_us\":%u,\"mean_us\":%.1f,",
           pct(.5), pct(.9), pct(.99), pct(.999), nlat ? lat[nlat - 1] : 0, nlat ? sum / (double)nlat : 0.0);
    printf("\"kinds\":{");
    for (int k = 0; k < NK; k++) printf("%s\"%s\":%ld", k ? "," : "", kname[k], kcount[k]);
    printf("},\"bad\":[");
    for (long i = 0; i < nbad; i++)
        printf("%s[%.6f,%.6f,\"%s\"]", i ? "," : "", bad[i].s, bad[i].e, kname[bad[i].k]);
    printf("]}\n");
    return 0;
}

/* ---- hold ---- */

static volatile sig_atomic_t stop;
static void on_term(int s) {
    (void)s;
    stop = 1;
}

static int hold(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: client hold HOST PORT N SRCS SECONDS\n");
        return 2;
    }
    int total = atoi(argv[4]);
    parse_srcs(argv[5]);
    double secs = atof(argv[6]);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct slot *sl = calloc((size_t)total, sizeof *sl);
    int ep = epoll_create1(0);
    int started = 0, ok = 0, failed = 0, inflight = 0, closed = 0;
    double deadline = now() + 120;
    char buf[256];
    struct epoll_event evs[256];
    while ((started < total || inflight > 0) && now() < deadline && !stop) {
        while (started < total && inflight < 256) {
            struct slot *s = &sl[started];
            s->fd = start_connect();
            s->start = now();
            if (s->fd < 0) {
                failed++;
                s->state = IDLE;
                started++;
                continue;
            }
            s->state = CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)started};
            epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
            started++;
            inflight++;
        }
        int n = epoll_wait(ep, evs, 256, 10);
        double t = now();
        for (int j = 0; j < n; j++) {
            struct slot *s = &sl[evs[j].data.u32];
            int bad_ = 0;
            if (s->state == CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err || send(s->fd, payload, MSG, MSG_NOSIGNAL) != MSG) {
                    bad_ = 1;
                } else {
                    s->state = READING;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[j].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                }
            } else if (s->state == READING) {
                ssize_t r = recv(s->fd, buf, sizeof buf, 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (r <= 0) {
                    bad_ = 1;
                } else {
                    s->got += (int)r;
                    if (s->got >= MSG) {
                        s->state = HELD;
                        ok++;
                        inflight--;
                        struct epoll_event ev = {.events = EPOLLRDHUP, .data.u32 = evs[j].data.u32};
                        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                    }
                }
            } else if (s->state == HELD) {
                closed++;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
                s->state = IDLE;
            }
            if (bad_) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
                s->state = IDLE;
                failed++;
                inflight--;
            }
        }
        /* A connection that has not finished in 10 s fails. */
        for (int i = 0; i < started && n == 0; i++) {
            struct slot *s = &sl[i];
            if ((s->state == CONNECTING || s->state == READING) && t - s->start > 10) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
                s->state = IDLE;
                failed++;
                inflight--;
            }
        }
    }
    printf("ready ok=%d failed=%d\n", ok, failed);
    fflush(stdout);
    double end = now() + secs;
    while (!stop && now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int j = 0; j < n; j++) {
            struct slot *s = &sl[evs[j].data.u32];
            if (s->state == HELD) {
                closed++;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
                s->state = IDLE;
            }
        }
    }
    printf("closed_by_peer=%d\n", closed);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (argc < 4) {
        fprintf(stderr, "usage: client churn|hold HOST PORT ...\n");
        return 2;
    }
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) {
        fprintf(stderr, "client: bad address %s\n", argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "churn") == 0) return churn(argc, argv);
    if (strcmp(argv[1], "hold") == 0) return hold(argc, argv);
    fprintf(stderr, "client: unknown mode %s\n", argv[1]);
    return 2;
}
