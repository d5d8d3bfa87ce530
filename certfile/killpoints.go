//go:build sepal_killpoints

package certfile

// This file is built only with -tags sepal_killpoints, by the tests that
// kill a writer at every step (e2e's flower-certs kill test). It is never in
// a release binary.
//
//	SEPAL_KILL_AFTER_STEP=N  SIGKILL this process right after WriteSet's
//	                         (or RecoverSet's) N-th step (1 is the first)
//	SEPAL_TRACE_STEPS=1      print each step to stderr as "step N: OP"

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

func init() {
	n, _ := strconv.Atoi(os.Getenv("SEPAL_KILL_AFTER_STEP"))
	trace := os.Getenv("SEPAL_TRACE_STEPS") != ""
	if n <= 0 && !trace {
		return
	}
	count := 0
	stepHook = func(op string) {
		count++
		if trace {
			fmt.Fprintf(os.Stderr, "step %d: %s\n", count, op)
		}
		if count == n {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
}
