/* The demo client in C on libzmq: numbered requests, request 2 without its
 * address, Lazy Pirate retries. The wire format is docs/protocol.md.
 *
 *   ./client [--connect ENDPOINT] [--requests N] [--timeout-ms MS] [--tries N]
 *   ./client --help
 *
 * Environment: SERVER_CONNECT, CLIENT_REQUESTS, CLIENT_TIMEOUT_MS, CLIENT_TRIES.
 * Exit status: 0 when every request was answered, 1 when one was not, 2 on a
 * usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define MALFORMED 2        /* the request sent without its address frame */
#define HEARTBEAT_MS 10000 /* as the server: keeps an idle connection open through nginx */
#define REPLY_FRAMES 3
#define MAX_FRAME 512      /* status and replica are short; longer frames are cut */

struct config {
    const char *endpoint;
    long requests;
    long timeout_ms;
    long tries;
};

struct reply {
    int frames;
    char status[MAX_FRAME + 1];
};

#define USAGE "usage: client [--help] [--connect ENDPOINT] [--requests N] [--timeout-ms MS] " \
              "[--tries N]\n"

static void usage(const char *message)
{
    fprintf(stderr, "error: %s\n", message);
    fputs(USAGE, stderr);
    exit(2);
}

/* --help: what each flag does, its environment variable and its default; exit 0. */
static void help(void)
{
    fputs(USAGE, stdout);
    fputs("\n"
          "The demo client: numbered requests, request 2 without its address, Lazy Pirate\n"
          "retries. Exit 0 when every request was answered, 1 when one was not, 2 on a\n"
          "usage error.\n"
          "\n"
          "options:\n"
          "  --help               show this help and exit\n"
          "  --connect ENDPOINT   the server or nginx (env SERVER_CONNECT, default\n"
          "                       tcp://localhost:5555)\n"
          "  --requests N         how many requests (env CLIENT_REQUESTS, default 10)\n"
          "  --timeout-ms MS      wait per reply before a retry (env CLIENT_TIMEOUT_MS,\n"
          "                       default 2500)\n"
          "  --tries N            tries per request, the first included (env CLIENT_TRIES,\n"
          "                       default 3)\n",
          stdout);
    exit(0);
}

static long whole_number(const char *name, const char *text, long least)
{
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < least || value > 1000000000L) {
        fprintf(stderr, "error: %s must be a whole number >= %ld, not '%s'\n", name, least, text);
        exit(2);
    }
    return value;
}

static const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return value != NULL ? value : fallback;
}

static struct config parse_args(int argc, char **argv)
{
    const char *connect = env_or("SERVER_CONNECT", "tcp://localhost:5555");
    const char *requests = env_or("CLIENT_REQUESTS", "10");
    const char *timeout_ms = env_or("CLIENT_TIMEOUT_MS", "2500");
    const char *tries = env_or("CLIENT_TRIES", "3");
    static const struct option longopts[] = {
        {"connect", required_argument, NULL, 'c'},
        {"requests", required_argument, NULL, 'r'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"tries", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    int option;
    while ((option = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (option) {
        case 'c': connect = optarg; break;
        case 'r': requests = optarg; break;
        case 't': timeout_ms = optarg; break;
        case 'n': tries = optarg; break;
        case 'h': help(); break;
        default: usage("unknown option or missing value");
        }
    }
    if (optind < argc)
        usage("unexpected argument");
    struct config config = {
        .endpoint = connect,
        .requests = whole_number("--requests", requests, 0),
        .timeout_ms = whole_number("--timeout-ms", timeout_ms, 1),
        .tries = whole_number("--tries", tries, 1),
    };
    return config;
}

static void *open_socket(void *context, const struct config *config)
{
    void *sock = zmq_socket(context, ZMQ_REQ);
    int linger = 0; /* close drops anything unsent: a stuck socket is thrown away whole */
    int interval = HEARTBEAT_MS, timeout = 3 * HEARTBEAT_MS;
    if (sock == NULL || zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0
        || zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &interval, sizeof interval) != 0
        || zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout) != 0
        || zmq_connect(sock, config->endpoint) != 0) {
        fprintf(stderr, "error: cannot connect to %s: %s\n", config->endpoint,
                zmq_strerror(zmq_errno()));
        exit(1);
    }
    return sock;
}

static int send_frames(void *sock, const char **frames, int count)
{
    for (int i = 0; i < count; i++) {
        int flags = i + 1 < count ? ZMQ_SNDMORE : 0;
        if (zmq_send(sock, frames[i], strlen(frames[i]), flags) < 0)
            return -1;
    }
    return 0;
}

/* The four statuses a reply may carry (docs/protocol.md). */
static int known_status(const char *status)
{
    static const char *const known[] = {"Server response", "Invalid message", "Server error",
                                        "Server timeout"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(status, known[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Receive one whole reply: its frame count and its first frame (the status). */
static int receive_reply(void *sock, struct reply *reply)
{
    int more = 1;
    size_t more_size = sizeof more;
    char frame[MAX_FRAME];
    reply->frames = 0;
    reply->status[0] = '\0';
    while (more) {
        int size = zmq_recv(sock, frame, sizeof frame, 0);
        if (size < 0 || zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &more_size) != 0)
            return -1;
        if (reply->frames == 0) {
            size_t kept = (size_t)size < sizeof frame ? (size_t)size : sizeof frame;
            memcpy(reply->status, frame, kept);
            reply->status[kept] = '\0';
        }
        reply->frames++;
    }
    return 0;
}

/* Lazy Pirate: send, wait up to timeout_ms for the reply; if none comes, the
 * REQ socket is stuck in its send-receive cycle, so close it and resend on a
 * fresh one. Returns 0 with the reply, -1 when the last try went unanswered. */
static int request(void *context, void **sock, const struct config *config,
                   const char **frames, int count, struct reply *reply)
{
    for (long attempt = 1; attempt <= config->tries; attempt++) {
        if (*sock == NULL)
            *sock = open_socket(context, config);
        if (send_frames(*sock, frames, count) == 0) {
            zmq_pollitem_t items[] = {{*sock, 0, ZMQ_POLLIN, 0}};
            int ready = zmq_poll(items, 1, config->timeout_ms);
            if (ready > 0 && receive_reply(*sock, reply) == 0)
                return 0;
        }
        zmq_close(*sock);
        *sock = NULL;
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct config config = parse_args(argc, argv);
    char address[64], data[64];
    snprintf(address, sizeof address, "c-client-%ld", (long)getpid());
    void *context = zmq_ctx_new();
    void *sock = NULL;
    int status = 0;
    for (long number = 0; number < config.requests; number++) {
        snprintf(data, sizeof data, "request %ld", number);
        const char *well_formed[] = {address, data};
        const char *without_address[] = {data};
        printf("Sending request: %ld\n", number);
        fflush(stdout);
        struct reply reply;
        int failed = number == MALFORMED
                         ? request(context, &sock, &config, without_address, 1, &reply)
                         : request(context, &sock, &config, well_formed, 2, &reply);
        if (failed) {
            fprintf(stderr, "error: server at %s did not answer request %ld after %ld tries\n",
                    config.endpoint, number, config.tries);
            status = 1;
            break;
        }
        if (reply.frames != REPLY_FRAMES || !known_status(reply.status)) {
            fprintf(stderr, "error: malformed reply: %d frame(s), status '%s'\n", reply.frames,
                    reply.status);
            status = 1;
            break;
        }
        printf("Received response: %s\n", reply.status);
        fflush(stdout);
    }
    if (sock != NULL)
        zmq_close(sock);
    zmq_ctx_term(context);
    return status;
}
