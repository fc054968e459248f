/*
 * PID 1 for the kernel boot test: prints the kernel release and the
 * guest's view of its uptime, then powers off. reboot(2) is called
 * directly: a shell writing 'o' to /proc/sysrq-trigger leaves UML hung.
 */
#include <stdio.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(void)
{
	struct utsname u;
	char up[64] = "?";
	FILE *f;

	if (uname(&u) == 0)
		printf("usmol-boot-test release=%s version=%s\n", u.release, u.version);
	mkdir("/proc", 0555);
	mount("proc", "/proc", "proc", 0, NULL);
	f = fopen("/proc/uptime", "r");
	if (f) {
		if (!fgets(up, sizeof(up), f))
			up[0] = '\0';
		fclose(f);
	}
	printf("usmol-boot-test uptime=%s", up);
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 1;
}
