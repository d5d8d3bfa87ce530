package load

import (
	"slices"
	"testing"
)

// TestNodeArgs: the defaults fit a few nodes; a thousand from one address
// need a burst of a thousand, and more than --max-nodes a higher one.
func TestNodeArgs(t *testing.T) {
	if got := NodeArgs(16); got != nil {
		t.Errorf("NodeArgs(16) = %q, want none", got)
	}
	if got := NodeArgs(1000); !slices.Equal(got, []string{"--node-registration-burst", "1000"}) {
		t.Errorf("NodeArgs(1000) = %q", got)
	}
	if got := NodeArgs(20000); !slices.Equal(got, []string{"--node-registration-burst", "20000", "--max-nodes", "20000"}) {
		t.Errorf("NodeArgs(20000) = %q", got)
	}
}
