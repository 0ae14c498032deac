package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// capNames are the capabilities the nodes use, by number (capability.h).
var capNames = map[int]string{
	unix.CAP_NET_ADMIN:        "CAP_NET_ADMIN",
	unix.CAP_NET_RAW:          "CAP_NET_RAW",
	unix.CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
	unix.CAP_SYS_ADMIN:        "CAP_SYS_ADMIN",
	unix.CAP_BPF:              "CAP_BPF",
	unix.CAP_PERFMON:          "CAP_PERFMON",
}

// effectiveCaps reads this process's effective capabilities from
// /proc/self/status (CapEff, a hex mask).
func effectiveCaps() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// NeedsCaps explains a permission error of an operation that needs the
// capabilities named (unix.CAP_*): which of them this process lacks, and
// how to grant them. Other errors are returned as they are.
func NeedsCaps(err error, caps ...int) error {
	return needsCaps(err, effectiveCaps, caps...)
}

func needsCaps(err error, eff func() (uint64, error), caps ...int) error {
	if err == nil || !errors.Is(err, os.ErrPermission) {
		return err
	}
	// A file's mode, not a capability, refused it (a /dev/net/tun that
	// only root may open, on a host without udev's default 0666).
	var pe *fs.PathError
	if errors.As(err, &pe) && errors.Is(err, syscall.EACCES) {
		mode := "unknown mode"
		if st, serr := os.Stat(pe.Path); serr == nil {
			mode = fmt.Sprintf("mode %#o", st.Mode().Perm())
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				mode += fmt.Sprintf(", owner uid %d", sys.Uid)
			}
		}
		return fmt.Errorf("%w: %s (%s) is not open to uid %d; give it the mode udev gives it on Debian (0666 for /dev/net/tun) or run as root",
			err, pe.Path, mode, os.Geteuid())
	}
	have, rerr := eff()
	var missing, names []string
	for _, c := range caps {
		names = append(names, capNames[c])
		if rerr != nil || have&(1<<c) == 0 {
			missing = append(missing, capNames[c])
		}
	}
	why := "it lacks " + strings.Join(missing, " and ")
	if len(missing) == 0 {
		// Held, yet refused: a security module, a seccomp filter or the
		// bounding set of a container decided.
		why = "it holds " + strings.Join(names, " and ") + ", so a security policy (LSM, seccomp, container) refused it"
	}
	return fmt.Errorf("%w: this needs %s and %s (uid %d); run as root or grant them (systemd: AmbientCapabilities=%s)",
		err, strings.Join(names, " and "), why, os.Geteuid(), strings.Join(names, " "))
}
