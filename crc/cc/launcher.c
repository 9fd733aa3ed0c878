/* meshcc's native front: what make starts once per compile.
 *
 * A Python meshcc costs an interpreter's start (milliseconds) per compile;
 * this costs an exec. It knows nothing of compiler command lines: it hands
 * its argv, working directory and environment to the user's meshcc agent
 * over the agent's Unix socket and does what the answer says (crc/cc/front.py
 * has the protocol): exit with a status, become the real compiler in a local
 * slot, or become meshcc itself. With no agent running it starts one as
 * meshcc would (crc/cc/wrapper.py, start_agent: the agent's lock, taken here
 * and handed over, makes the compiles a `make -j` starts at once start one
 * agent between them) and waits for its socket. A front that finds the agent
 * started by another and not answering yet runs its invocation here
 * instead if a local slot is free now (the CPUs would idle while the agent
 * starts), unless MESHCC_FALLBACK=0. Whenever it cannot reach an
 * agent (CRC_MESH not set, a socket path it cannot form, no agent within
 * MESHCC_CONNECT_TIMEOUT) it becomes meshcc itself, which says why; so it is
 * never less than meshcc.
 *
 * Built by `meshcc --launcher` (crc/cc/launcher.py), which puts MESHCC_PYTHON
 * (the interpreter), MESHCC_ROOT (the package's root) and MESHCC_FRONT (the
 * code that runs meshcc) in front of this text. The socket's name and the
 * local slots follow crc/cc/paths.py and crc/cc/compiler.py exactly.
 */
#define _GNU_SOURCE                    /* struct ucred */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define MAX_MESSAGE (1u << 20)
#define MAX_SOCKET_PATH 100
#define LOCK_ENV "CRC_MESHCC_AGENT_LOCK"
/* Seconds between attempts to start an agent while none answers (talk.py's RESTART). */
#define RESTART 0.5
/* Longest wait between attempts to connect (talk.py's POLL). */
#define POLL 0.005
/* Seconds between looks for a free local slot while no agent answers. */
#define HERE_AGAIN 0.02

static void say(const char *text);
static void here_while_starting(void);

/* -- becoming someone else ------------------------------------------------- */

static char **own_argv;
static int own_argc;

/* Become meshcc itself: MESHCC_PYTHON -S -c MESHCC_FRONT MESHCC_ROOT argv... */
static void become_meshcc(void)
{
    char **args = calloc((size_t)own_argc + 6, sizeof *args);
    if (args == NULL) {
        perror("meshcc");
        exit(127);
    }
    int n = 0;
    args[n++] = (char *)MESHCC_PYTHON;
    args[n++] = (char *)"-S";
    args[n++] = (char *)"-c";
    args[n++] = (char *)MESHCC_FRONT;
    args[n++] = (char *)MESHCC_ROOT;
    for (int i = 0; i < own_argc; i++)
        args[n++] = own_argv[i];
    args[n] = NULL;
    execv(MESHCC_PYTHON, args);
    fprintf(stderr, "meshcc: cannot run %s: %s\n", MESHCC_PYTHON, strerror(errno));
    exit(127);
}

/* -- the agent's socket (crc/cc/paths.py) ---------------------------------- */

static uint32_t crc32_of(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static uint32_t adler32_of(const unsigned char *p, size_t n)
{
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    return (b << 16) | a;
}

static void tag(const char *text, size_t n, char out[17])
{
    snprintf(out, 17, "%08x%08x", crc32_of((const unsigned char *)text, n),
             adler32_of((const unsigned char *)text, n));
}

/* Python's str.strip() for ASCII (anything else: the socket is not found,
 * and meshcc itself takes over). */
static int is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static size_t strip(const char *s, const char **start)
{
    size_t n = strlen(s);
    while (n && is_space((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n && is_space((unsigned char)s[n - 1]))
        n--;
    *start = s;
    return n;
}

/* Characters, as Python counts a decoded path (UTF-8 lead bytes). */
static size_t characters(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

/* Whether the agent's folder is ours alone (as the agent makes it): a
 * directory, not a link, owned by us, open to nobody else. Anything else
 * could hand our environment, or an `exec`, to another user. */
static int folder_is_ours(const char *path)
{
    char folder[256];
    snprintf(folder, sizeof folder, "%s", path);
    char *slash = strrchr(folder, '/');
    if (slash == NULL)
        return 0;
    *slash = '\0';
    struct stat st;
    return lstat(folder, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid() &&
           (st.st_mode & 077) == 0;
}

/* Whether the process at the other end of `sock` is ours. */
static int peer_is_ours(int sock)
{
    struct ucred cred;
    socklen_t size = sizeof cred;
    return getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 &&
           cred.uid == getuid();
}

static const char *const MESH_ENV[] = {
    "CRC_MESH", "CRC_MESH_SECRET_FILE", "CRC_MESH_TLS_CA", "CRC_MESH_TLS_CERT",
    "CRC_MESH_TLS_KEY", "CRC_MESH_TLS_SERVER_NAME",
};

static int socket_path(char *out, size_t size)
{
    char key[8192];
    size_t used = 0;
    for (size_t i = 0; i < sizeof MESH_ENV / sizeof *MESH_ENV; i++) {
        const char *value = getenv(MESH_ENV[i]), *start = "";
        size_t n = value ? strip(value, &start) : 0;
        if (i == 0 && n == 0)
            return -1;                                /* CRC_MESH is not set */
        if (used + n + 1 > sizeof key)
            return -1;
        if (i > 0)
            key[used++] = '\0';
        memcpy(key + used, start, n);
        used += n;
    }
    const char *base = getenv("XDG_RUNTIME_DIR");
    if (base == NULL || *base == '\0')
        base = "/tmp";
    char folder[4096];
    size_t base_len = strlen(base);
    int len = snprintf(folder, sizeof folder, "%s%scrc-meshcc-%u", base,
                       base[base_len - 1] == '/' ? "" : "/", (unsigned)getuid());
    if (len < 0 || (size_t)len >= sizeof folder)
        return -1;
    if (characters(folder) > MAX_SOCKET_PATH - 30) {
        char base_tag[17];
        tag(base, strlen(base), base_tag);
        base_tag[8] = '\0';
        snprintf(folder, sizeof folder, "/tmp/crc-meshcc-%u-%s", (unsigned)getuid(), base_tag);
    }
    char key_tag[17];
    tag(key, used, key_tag);
    len = snprintf(out, size, "%s/agent-%s.sock", folder, key_tag);
    return len < 0 || (size_t)len >= size ? -1 : 0;
}

/* -- starting an agent (crc/cc/wrapper.py, start_agent) ----------------------- */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The environment for the agent: ours, PYTHONPATH led by the package's
 * root, the lock's descriptor in LOCK_ENV. */
static char **agent_environ(int lock)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (env == NULL)
        return NULL;
    size_t k = 0;
    const char *old_path = getenv("PYTHONPATH");
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PYTHONPATH=", 11) != 0 &&
            strncmp(environ[i], LOCK_ENV "=", sizeof LOCK_ENV) != 0)
            env[k++] = environ[i];
    size_t size = strlen(MESHCC_ROOT) + (old_path ? strlen(old_path) : 0) + 16;
    char *path = malloc(size), *given = malloc(sizeof LOCK_ENV + 16);
    if (path == NULL || given == NULL)
        return NULL;
    if (old_path && *old_path)
        snprintf(path, size, "PYTHONPATH=%s:%s", MESHCC_ROOT, old_path);
    else
        snprintf(path, size, "PYTHONPATH=%s", MESHCC_ROOT);
    snprintf(given, sizeof LOCK_ENV + 16, LOCK_ENV "=%d", lock);
    env[k++] = path;
    env[k++] = given;
    env[k] = NULL;
    return env;
}

/* What start_agent did (wrapper.py's STARTED, STARTING_ELSEWHERE, NEITHER). */
enum { NEITHER, STARTING_ELSEWHERE, STARTED };

/* Start an agent for `path` in the background, detached from us, unless one
 * is starting or running (its lock is taken). STARTING_ELSEWHERE: taken, and
 * the agent has not bound its socket yet (no process id file); one that has
 * and does not answer is not starting (NEITHER). */
static int start_agent(const char *path)
{
    char folder[256], lock_path[256];
    snprintf(folder, sizeof folder, "%s", path);
    char *slash = strrchr(folder, '/');
    if (slash == NULL)
        return NEITHER;
    *slash = '\0';
    mkdir(folder, 0700);
    if (!folder_is_ours(path))
        return NEITHER;                      /* (meshcc itself will say why) */
    snprintf(lock_path, sizeof lock_path, "%s.lock", path);
    char pid_path[256];                      /* (paths.py, pid_file) */
    size_t n = strlen(path);
    if (n > 5 && strcmp(path + n - 5, ".sock") == 0)
        snprintf(pid_path, sizeof pid_path, "%.*s.pid", (int)(n - 5), path);
    else
        snprintf(pid_path, sizeof pid_path, "%s.pid", path);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lock < 0)
        return NEITHER;                      /* (meshcc itself will say why) */
    if (flock(lock, LOCK_EX | LOCK_NB) != 0) {
        int held = errno == EWOULDBLOCK;
        close(lock);                         /* an agent has it: wait for its socket */
        return held && access(pid_path, F_OK) != 0 ? STARTING_ELSEWHERE : NEITHER;
    }
    unlink(pid_path);         /* ours: no agent lives; a killed one's file would
                                 say one has bound its socket */
    if (lock <= 2) {                         /* (started without stdin/out/err) */
        int moved = fcntl(lock, F_DUPFD_CLOEXEC, 3);
        close(lock);
        if (moved < 0)
            return NEITHER;
        lock = moved;
    }
    char **env = agent_environ(lock);
    if (env == NULL) {
        close(lock);
        return NEITHER;
    }
    pid_t pid = fork();
    if (pid == 0) {                          /* a session of its own, no terminal */
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        if (chdir("/") == 0 && fork() == 0) {    /* detached: make waits for none of it */
            long most = sysconf(_SC_OPEN_MAX);
            for (int fd = 3; fd < (most > 0 && most < 4096 ? most : 4096); fd++)
                if (fd != lock)
                    close(fd);               /* (make's jobserver pipe, say) */
            fcntl(lock, F_SETFD, 0);
            char *args[] = {(char *)MESHCC_PYTHON, (char *)"-S", (char *)"-m",
                            (char *)"crc.cc.agent", (char *)path, NULL};
            execve(MESHCC_PYTHON, args, env);
        }
        _exit(0);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    close(lock);                             /* (the agent holds it now) */
    return STARTED;
}

/* A connection to the agent at `addr`: started if none is running, waited
 * for up to MESHCC_CONNECT_TIMEOUT seconds (plain seconds; anything else is
 * left to meshcc itself to read and say). -1 if none. */
/* `name`'s value in plain seconds, `otherwise` when it is not set; -1 when
 * it says something else (meshcc itself reads and says it). */
static double seconds(const char *name, double otherwise)
{
    const char *given = getenv(name);
    if (given == NULL || *given == '\0')
        return otherwise;
    char *end;
    double value = strtod(given, &end);
    return *end == '\0' && value > 0 ? value : -1;
}

static int connect_agent(const struct sockaddr_un *addr)
{
    double timeout = seconds("MESHCC_CONNECT_TIMEOUT", 5.0);
    if (timeout < 0 || seconds("MESHCC_TIMEOUT", 600.0) < 0)
        return -1;
    double deadline = now() + timeout, start_again = 0.0, here_again = 0.0, delay = 0.002;
    int elsewhere = 0, mine = 0;
    for (;;) {
        int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (sock < 0)
            return -1;
        if (connect(sock, (const struct sockaddr *)addr, sizeof *addr) == 0) {
            if (folder_is_ours(addr->sun_path) && peer_is_ours(sock))
                return sock;
            close(sock);
            return -1;                       /* not our agent: meshcc itself says why */
        }
        int why = errno;
        close(sock);
        if (why != ENOENT && why != ECONNREFUSED)
            return -1;
        if (now() >= start_again) {
            int state = start_agent(addr->sun_path);
            mine = mine || state == STARTED;     /* ours to wait for, then */
            elsewhere = state == STARTING_ELSEWHERE && !mine;
            start_again = now() + RESTART;
        }
        if (elsewhere && now() >= here_again) {
            here_while_starting();
            here_again = now() + HERE_AGAIN;
        }
        if (now() > deadline)
            return -1;
        struct timespec pause = {0, (long)(delay * 1e9)};
        nanosleep(&pause, NULL);
        delay = delay * 2 < POLL ? delay * 2 : POLL;
    }
}

/* -- a local slot (crc/cc/compiler.py, local_slot) -------------------------- */

/* Take one of CPU-count local slots, held until we (or the compiler we
 * become) exit. With `wait`, wait for one if all are busy; without, 0 when
 * none is free now. 1 when one is held, or when slots cannot be had (no
 * writable temporary directory: as meshcc, no limit then). */
static int local_slot(int wait)
{
    long count = sysconf(_SC_NPROCESSORS_ONLN);
    int slots = count > 0 ? (int)count : 1;
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || *tmp == '\0')
        tmp = "/tmp";
    char folder[4096], path[4200];
    if (snprintf(folder, sizeof folder, "%s/crc-meshcc-%u", tmp, (unsigned)getuid())
        >= (int)sizeof folder)
        return wait;
    if (mkdir(folder, 0700) != 0 && errno != EEXIST)
        return wait;
    int first = (int)(getpid() % slots), last = -1;
    for (int k = 0; k < slots; k++) {
        int i = (first + k) % slots;
        snprintf(path, sizeof path, "%s/slot-%d", folder, i);
        int fd = open(path, O_RDWR | O_CREAT, 0600);
        if (fd < 0) {
            if (last >= 0)
                close(last);
            return wait;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            if (last >= 0)
                close(last);
            return 1;                  /* held until we (the compiler) exit */
        }
        if (last >= 0)
            close(last);
        last = fd;
    }
    if (last >= 0 && !wait) {
        close(last);
        return 0;
    }
    if (last >= 0)
        flock(last, LOCK_EX);          /* all busy: wait for one */
    return 1;
}

/* -- here while the agent starts (crc/cc/compiler.py, invocation) ----------- */

static const char *const OWN_NAMES[] = {"meshcc", "meshcc.py", "__main__.py", NULL};

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int own_name(const char *name)
{
    for (int i = 0; OWN_NAMES[i]; i++)
        if (strcmp(name, OWN_NAMES[i]) == 0)
            return 1;
    return 0;
}

/* A yes/no variable as meshcc reads it (wrapper.py, flag). */
static int flag(const char *name, int otherwise)
{
    const char *given = getenv(name), *start;
    if (given == NULL)
        return otherwise;
    size_t n = strip(given, &start);
    if (n == 0)
        return otherwise;
    static const char *const NO[] = {"0", "no", "false", "off", NULL};
    for (int i = 0; NO[i]; i++)
        if (n == strlen(NO[i]) && strncasecmp(start, NO[i], n) == 0)
            return 0;
    return 1;
}

static int own_path(char *me, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", me, size - 1);
    if (n < 0)
        return -1;
    me[n] = '\0';
    return 0;
}

/* Whether `path` is meshcc itself (compiler.py, _is_self). */
static int is_self(const char *path, const char *me)
{
    char real[4096];
    if (realpath(path, real) == NULL)
        return 0;
    return strcmp(real, me) == 0 || own_name(base_name(real));
}

/* The compiler `name` means, as compiler.py's find_real finds it: a path as
 * it is, a bare name on PATH skipping meshcc itself. 0 when found. */
static int find_real(const char *name, const char *me, char *out, size_t size)
{
    if (strchr(name, '/') != NULL) {
        if (is_self(name, me) || access(name, X_OK) != 0)
            return -1;
        return snprintf(out, size, "%s", name) < (int)size ? 0 : -1;
    }
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/bin:/usr/bin";
    for (;;) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        struct stat st;
        if (snprintf(out, size, "%.*s/%s", (int)(n ? n : 1), n ? path : ".", name) < (int)size
            && stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0
            && !is_self(out, me))
            return 0;
        if (end == NULL)
            return -1;
        path = end + 1;
    }
}

/* Another front has started the agent and it does not answer yet: if a
 * local slot is free now, become the real compiler (what meshcc does with
 * any invocation it does not send). The front that starts it waits, and
 * says what it says (a mesh that is down, a wrong setting). */
static void here_while_starting(void)
{
    static int found = 0;              /* the real compiler: 1 found, -1 none */
    static char real[4096];
    static char **args;                /* its arguments: ours, after "meshcc" if named */
    if (found == 0) {
        char me[4096];
        found = -1;
        if (own_argc < 1 || !flag("MESHCC_FALLBACK", 1) || own_path(me, sizeof me) != 0)
            return;                    /* (MESHCC_FALLBACK=0: nothing here unasked) */
        int launcher = own_name(base_name(own_argv[0]));
        if (launcher && own_argc < 2)
            return;                    /* (meshcc itself says how it is used) */
        const char *name = launcher ? own_argv[1] : base_name(own_argv[0]);
        if (find_real(name, me, real, sizeof real) != 0)
            return;
        args = own_argv + (launcher ? 1 : 0);
        found = 1;
    }
    if (found < 0 || !local_slot(0))
        return;
    if (flag("MESHCC_VERBOSE", 0))
        say("meshcc: compiling here: the meshcc agent is starting\n");
    args[0] = real;
    execv(real, args);
    fprintf(stderr, "meshcc: cannot run %s: %s\n", real, strerror(errno));
    exit(127);
}

/* -- talking to the agent --------------------------------------------------- */

struct buffer {
    char *data;
    size_t used, size;
};

static int add(struct buffer *b, const char *field, size_t n)
{
    if (b->used + n + 1 > b->size) {
        size_t size = (b->size ? b->size : 4096);
        while (size < b->used + n + 1)
            size *= 2;
        char *data = realloc(b->data, size);
        if (data == NULL)
            return -1;
        b->data = data;
        b->size = size;
    }
    memcpy(b->data + b->used, field, n);
    b->data[b->used + n] = '\0';
    b->used += n + 1;
    return 0;
}

static int add_string(struct buffer *b, const char *s)
{
    return add(b, s, strlen(s));
}

/* All of `p` to `fd`: to the agent's socket with `send`, where a peer gone
 * mid-request is an error here, not SIGPIPE (whose disposition, were it
 * ignored instead, the compiler we may become would inherit). */
static int put_all(int fd, const char *p, size_t n, int to_socket)
{
    while (n) {
        ssize_t done = to_socket ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += done;
        n -= (size_t)done;
    }
    return 0;
}

/* Text for the user, on standard error. */
static void say(const char *text)
{
    put_all(2, text, strlen(text), 0);
}

static int read_all(int fd, char *p, size_t n)
{
    while (n) {
        ssize_t done = read(fd, p, n);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            return -1;
        p += done;
        n -= (size_t)done;
    }
    return 0;
}

/* The request: "MCC1", u32 length, then cwd, our path, argc, argv, environ. */
static int ask(int sock)
{
    struct buffer b = {0};
    char cwd[4096], me[4096], count[16];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return -1;
    if (own_path(me, sizeof me) != 0)
        return -1;
    snprintf(count, sizeof count, "%d", own_argc);
    if (add(&b, "MCC1\0\0\0", 7) != 0)          /* magic and length, filled in below */
        return -1;
    b.used = 8;
    if (add_string(&b, cwd) || add_string(&b, me) || add_string(&b, count))
        return -1;
    for (int i = 0; i < own_argc; i++)
        if (add_string(&b, own_argv[i]))
            return -1;
    for (char **e = environ; *e; e++)
        if (add_string(&b, *e))
            return -1;
    uint32_t body = (uint32_t)(b.used - 8);
    if (body > MAX_MESSAGE)
        return -1;
    b.data[4] = (char)(body >> 24);
    b.data[5] = (char)(body >> 16);
    b.data[6] = (char)(body >> 8);
    b.data[7] = (char)body;
    int status = put_all(sock, b.data, b.used, 1);
    free(b.data);
    return status;
}

/* The answer's fields (NUL-terminated, after a u32 length); their count. */
static int answer(int sock, char ***fields)
{
    unsigned char head[4];
    if (read_all(sock, (char *)head, 4) != 0)
        return -1;
    uint32_t size = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 |
                    (uint32_t)head[2] << 8 | head[3];
    if (size == 0 || size > MAX_MESSAGE)
        return -1;
    char *body = malloc(size);
    if (body == NULL || read_all(sock, body, size) != 0 || body[size - 1] != '\0')
        return -1;
    int count = 0;
    for (uint32_t i = 0; i < size; i++)
        count += body[i] == '\0';
    char **out = calloc((size_t)count + 1, sizeof *out);
    if (out == NULL)
        return -1;
    char *p = body;
    for (int i = 0; i < count; i++) {
        out[i] = p;
        p += strlen(p) + 1;
    }
    *fields = out;
    return count;
}

int main(int argc, char **argv)
{
    own_argc = argc;
    own_argv = argv;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (socket_path(addr.sun_path, sizeof addr.sun_path) != 0)
        become_meshcc();
    int sock = connect_agent(&addr);
    if (sock < 0)
        become_meshcc();                                    /* meshcc says why */
    /* No answer within what meshcc itself would wait: it takes over. */
    double wait = seconds("MESHCC_CONNECT_TIMEOUT", 5.0) + seconds("MESHCC_TIMEOUT", 600.0) + 10;
    struct timeval limit = {(time_t)wait, 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    char **fields;
    int count;
    if (ask(sock) != 0 || (count = answer(sock, &fields)) < 2)
        become_meshcc();
    close(sock);
    const char *kind = fields[0], *text = fields[1];
    if (strcmp(kind, "exit") == 0 && count >= 3) {
        say(fields[2]);
        return atoi(text);
    }
    if (strcmp(kind, "exec") == 0 && count >= 3) {
        say(text);
        local_slot(1);
        execv(fields[2], fields + 2);
        fprintf(stderr, "meshcc: cannot run %s: %s\n", fields[2], strerror(errno));
        return 127;
    }
    if (strcmp(kind, "python") == 0)
        say(text);
    become_meshcc();        /* "python", or an answer it cannot read (another version's agent) */
    return 127;
}
