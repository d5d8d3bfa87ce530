package load

import (
	"os/exec"
	"testing"
	"time"
)

// TestTreeCPU: the CPU time of a child that ended counts in its parent's
// tree (its cutime), and not in the parent's own time.
func TestTreeCPU(t *testing.T) {
	cmd := exec.Command("sh", "-c", `sh -c 'i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done'; sleep 30`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	deadline := time.Now().Add(30 * time.Second)
	for {
		tree, err := TreeCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		own, err := ReadCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		// The busy child has ended when the parent has children time.
		if withChildren, _ := readStatTimes(pid); withChildren > own {
			if tree < 100*time.Millisecond || tree <= own {
				t.Fatalf("tree CPU %v, parent's own %v: the child's time is missing", tree, own)
			}
			t.Logf("tree %v, parent's own %v", tree, own)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the busy child did not end within 30 s (tree %v so far)", tree)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
