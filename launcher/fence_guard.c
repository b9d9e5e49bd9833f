/*
 * corral fence guard: a small library the launcher preloads into every QEMU it starts
 * (LD_PRELOAD through the domain's <qemu:env>), so that a guest cannot outlive its node's
 * fencing deadline whatever happens to the processes around it.
 *
 * Why inside QEMU: the handler writes the node's deadline (CLOCK_MONOTONIC seconds, the last
 * lease renewal plus the TTL, less a margin) to a file; launchers enforce it, but a node whose
 * handler and launchers are all killed or frozen keeps QEMU running while the controller
 * starts the VM elsewhere. A thread of QEMU's own process cannot be killed or stopped apart
 * from QEMU: if QEMU runs guest code, this thread runs too, and it ends the process once the
 * deadline it last read has passed. No Python, no other process, no device is needed.
 *
 * Rules it keeps:
 *  - only the newest deadline read counts; if the file cannot be read, the last one read is
 *    kept, so a deleted or unreadable file fences at the old deadline, never later;
 *  - no deadline readable at start: QEMU is ended at once (never run a guest unguarded);
 *  - the file is opened with O_NOFOLLOW; the thread blocks every signal, so QEMU's own signal
 *    handlers never run on it, and uses only syscalls QEMU's seccomp sandbox allows
 *    (openat, read, close, clock_gettime, clock_nanosleep, write, kill, exit_group).
 * The environment variable CORRAL_FENCE_FILE names the file; without it the library does
 * nothing (libvirt's capability probes run QEMU without it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_NS 100000000L /* re-read the file every 0.1 s */

static char fence_path[4096];
static double deadline = -1.0;

static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The deadline in the file, or a negative number when it cannot be read or parsed. */
static double read_deadline(void)
{
    char buf[64];
    int fd = open(fence_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return -1.0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1.0;
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    double value = strtod(buf, &end);
    if (errno != 0 || end == buf || (*end != '\0' && *end != '\n') || value < 0)
        return -1.0;
    return value;
}

static void fence(const char *why, double late)
{
    char line[256];
    int n = snprintf(line, sizeof(line),
                     "corral-fence-guard: %s (%.1fs late): ending this QEMU so the guest can "
                     "safely run elsewhere\n", why, late);
    if (n > 0)
        (void)!write(STDERR_FILENO, line, (size_t)n);
    kill(getpid(), SIGKILL);
    _exit(137);
}

static void sleep_until(double when)
{
    struct timespec ts;
    ts.tv_sec = (time_t)when;
    ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *watch(void *unused)
{
    (void)unused;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        double read = read_deadline();
        if (read >= 0)
            deadline = read;
        double now = monotonic_now();
        if (now > deadline)
            fence("the node's fencing deadline passed", now - deadline);
        double next = now + (double)POLL_NS / 1e9;
        sleep_until(next < deadline ? next : deadline);
    }
    return NULL;
}

__attribute__((constructor)) static void corral_fence_guard_start(void)
{
    const char *path = getenv("CORRAL_FENCE_FILE");
    if (path == NULL || path[0] == '\0')
        return;
    if (strlen(path) >= sizeof(fence_path))
        fence("CORRAL_FENCE_FILE is too long", 0.0);
    strcpy(fence_path, path);
    /* QEMU's helpers (if any) are not guests: they need neither. */
    unsetenv("CORRAL_FENCE_FILE");
    unsetenv("LD_PRELOAD");
    deadline = read_deadline();
    if (deadline < 0)
        fence("no fencing deadline readable at start", 0.0);
    if (monotonic_now() > deadline)
        fence("the node's fencing deadline passed before the guest started", monotonic_now() - deadline);
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    if (pthread_create(&thread, &attr, watch, NULL) != 0)
        fence("cannot start the guard thread", 0.0);
    pthread_attr_destroy(&attr);
}
