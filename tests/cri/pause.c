/*
 * pause: the process of a pod's sandbox container in tests/cri. containerd's
 * CRI plugin starts it first; it holds the pod's namespaces (network, IPC,
 * UTS, and pid when the pod shares one) while the pod's containers come and
 * go. It does nothing but wait: it reaps every child re-parented to it (it is
 * the pid 1 of the pod's pid namespace when the pod shares one), and it
 * exits with status 0 on SIGTERM or SIGINT, which a pid 1 would otherwise
 * ignore. Built static (gcc -static) so the image needs no libc.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void reap(int sig)
{
	int saved = errno;

	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static int on(int sig, void (*handler)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	return sigaction(sig, &sa, NULL);
}

int main(void)
{
	static const char failed[] = "pause: cannot install the signal handlers\n";

	if (on(SIGTERM, stop, 0) || on(SIGINT, stop, 0) ||
	    on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART)) {
		if (write(2, failed, sizeof(failed) - 1) < 0)
			return 1;
		return 1;
	}
	/* Children that ended before the handler was in place. */
	reap(SIGCHLD);
	for (;;)
		pause();
}
