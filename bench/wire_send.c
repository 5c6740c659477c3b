/* Fast SIP sender for bench/wire_cpu.sh (SENDER=c): RATE packets per
 * second for SECS seconds, REGISTER with credentials and its 401,
 * alternating, as the Python sender sends them, but with sendmmsg(2) in
 * batches every millisecond, so one process reaches a few hundred thousand
 * packets per second. The requests come from CLIENTS addresses (10.9.1.1
 * on, local to the namespace's loopback), 32 at a time from each in turn.
 * Usage: wire_send RATE SECS ID CLIENTS (ID keeps the Call-IDs of parallel
 * senders apart). Prints "sent N packets" on stderr. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32
#define MAXCL 5000
#define MSG 700

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    long rate = atol(argv[1]), secs = atol(argv[2]), id = atol(argv[3]), ncl = atol(argv[4]);
    if (ncl < 1 || ncl > MAXCL) return 2;
    int srv = socket(AF_INET, SOCK_DGRAM, 0);
    static int cs[MAXCL];
    static struct sockaddr_in ca[MAXCL];
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons(5060)};
    inet_pton(AF_INET, "10.9.0.1", &server.sin_addr);
    if (bind(srv, (struct sockaddr *)&server, sizeof server) < 0) { perror("bind 5060"); return 1; }
    for (long i = 0; i < ncl; i++) {
        char a[32];
        snprintf(a, sizeof a, "10.9.%ld.%ld", 1 + i / 250, 1 + i % 250);
        ca[i].sin_family = AF_INET;
        inet_pton(AF_INET, a, &ca[i].sin_addr);
        cs[i] = socket(AF_INET, SOCK_DGRAM, 0);
        if (cs[i] < 0 || bind(cs[i], (struct sockaddr *)&ca[i], sizeof ca[i]) < 0) { perror("client bind"); return 1; }
        socklen_t l = sizeof ca[i];
        getsockname(cs[i], (struct sockaddr *)&ca[i], &l);
    }
    static char reg[BATCH][MSG], ans[BATCH][MSG];
    static struct mmsghdr mr[BATCH], ma[BATCH];
    static struct iovec ir[BATCH], ia[BATCH];
    for (int i = 0; i < BATCH; i++) {
        ir[i].iov_base = reg[i]; ia[i].iov_base = ans[i];
        mr[i].msg_hdr.msg_iov = &ir[i]; mr[i].msg_hdr.msg_iovlen = 1;
        mr[i].msg_hdr.msg_name = &server; mr[i].msg_hdr.msg_namelen = sizeof server;
        ma[i].msg_hdr.msg_iov = &ia[i]; ma[i].msg_hdr.msg_iovlen = 1;
        ma[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    }
    double t0 = now();
    long n = 0, c = 0, turn = 0;
    while (now() - t0 < secs) {
        long due = (long)((now() - t0) * rate) - n;
        while (due >= 2) {
            int k = due / 2 > BATCH ? BATCH : due / 2;
            long who = turn++ % ncl;
            struct sockaddr_in *client = &ca[who];
            for (int i = 0; i < k; i++, c++) {
                ma[i].msg_hdr.msg_name = client;
                long cid = id * 100000000L + c;
                ir[i].iov_len = snprintf(reg[i], MSG,
                    "REGISTER sip:10.9.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.1:%d;branch=z9hG4bK%ld\r\n"
                    "From: <sip:1009@10.9.0.1>;tag=%ld\r\nTo: <sip:1009@10.9.0.1>\r\nCall-ID: %ld@x\r\nCSeq: 2 REGISTER\r\n"
                    "Authorization: Digest username=\"1009\", realm=\"x\", nonce=\"n\", uri=\"sip:10.9.0.1\", response=\"r\"\r\n"
                    "User-Agent: Yealink\r\nContent-Length: 0\r\n\r\n", ntohs(client->sin_port), cid, cid, cid);
                ia[i].iov_len = snprintf(ans[i], MSG,
                    "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 10.9.0.1:%d;branch=z9hG4bK%ld\r\n"
                    "From: <sip:1009@10.9.0.1>;tag=%ld\r\nTo: <sip:1009@10.9.0.1>;tag=s\r\nCall-ID: %ld@x\r\nCSeq: 2 REGISTER\r\n"
                    "WWW-Authenticate: Digest realm=\"x\", nonce=\"m\"\r\nContent-Length: 0\r\n\r\n",
                    ntohs(client->sin_port), cid, cid, cid);
            }
            int a = sendmmsg(cs[who], mr, k, 0), b = sendmmsg(srv, ma, k, 0);
            if (a < 0 || b < 0) { perror("sendmmsg"); return 1; }
            n += a + b;
            due -= 2 * k;
        }
        usleep(1000);
    }
    fprintf(stderr, "sent %ld packets\n", n);
    return 0;
}
