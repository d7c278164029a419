/* Echo backend for bench/balance.py: one epoll loop, any number of connections (up to the
 * descriptor limit). A read that starts with "PING\r\n" is answered "+PONG\r\n" (the
 * health checks' send/expect); everything else is echoed back. Prints "ready" once it
 * listens. Stopped by a signal (SIGTERM, SIGKILL; SIGSTOP hangs it, as the benchmark
 * wants).
 *
 *     echo ADDR PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384

struct pend {
    char *buf;
    size_t off, len;
};

static struct pend *pend;
static int maxfd;

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (fd < maxfd && pend[fd].buf) {
        free(pend[fd].buf);
        pend[fd].buf = NULL;
    }
}

/* Sends what is pending on fd; 1 when all of it went, 0 when the rest waits, -1 on error. */
static int flush(int fd) {
    struct pend *p = &pend[fd];
    while (p->off < p->len) {
        ssize_t n = send(fd, p->buf + p->off, p->len - p->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        p->off += (size_t)n;
    }
    free(p->buf);
    p->buf = NULL;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: echo ADDR PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    maxfd = (int)rl.rlim_cur + 16;
    pend = calloc((size_t)maxfd, sizeof *pend);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
        fprintf(stderr, "echo: bad address %s\n", argv[1]);
        return 2;
    }
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("echo: bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready\n");
    fflush(stdout);

    static char buf[BUF];
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("echo: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break; /* EAGAIN, or EMFILE: the backlog keeps the rest */
                    if (c >= maxfd) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            if (pend[fd].buf) { /* waiting to write: EPOLLOUT */
                int r = flush(fd);
                if (r < 0) {
                    drop(ep, fd);
                } else if (r == 1) {
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                }
                continue;
            }
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                drop(ep, fd);
                continue;
            }
            if (r < 0) continue;
            const char *out = buf;
            size_t len = (size_t)r;
            if (len >= 6 && memcmp(buf, "PING\r\n", 6) == 0) {
                out = "+PONG\r\n";
                len = 7;
            }
            size_t off = 0;
            while (off < len) {
                ssize_t w = send(fd, out + off, len - off, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EINTR) continue;
                    break;
                }
                off += (size_t)w;
            }
            if (off < len) {
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    drop(ep, fd);
                    continue;
                }
                pend[fd].buf = malloc(len - off);
                memcpy(pend[fd].buf, out + off, len - off);
                pend[fd].off = 0;
                pend[fd].len = len - off;
                struct epoll_event ce = {.events = EPOLLOUT, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
            }
        }
    }
}
