package testkit

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// StartSelf starts the running test binary again as a helper process,
// running no test (its TestMain reads env to know what to do), and returns
// it with the first line it printed, without the newline. The test fails
// if it cannot start or prints no line; the process is killed when the
// test ends if it still runs. For tests that need a process to kill.
func StartSelf(t testing.TB, env ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper process: read %q: %v", line, err)
	}
	return cmd, strings.TrimSuffix(line, "\n")
}
