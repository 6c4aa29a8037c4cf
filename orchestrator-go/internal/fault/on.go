//go:build faultinject

package fault

import (
	"os"
	"syscall"
)

var target = os.Getenv(EnvVar)

func hit(point string) {
	if target != "" && point == target {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}
