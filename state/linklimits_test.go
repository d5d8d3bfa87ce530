package state

import (
	"testing"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// TestTreeObjectsBounded: TreeObjects counts a tree, and stops past the
// bound however wide the tree.
func TestTreeObjectsBounded(t *testing.T) {
	wide := &flwr129.ObjectTree{Children: make([]*flwr129.ObjectTree, 1<<20)}
	for i := range wide.Children {
		wide.Children[i] = &flwr129.ObjectTree{}
	}
	if got := TreeObjects(wide); got != MaxTreeObjects+1 {
		t.Errorf("a tree of a million children: %d, want %d", got, MaxTreeObjects+1)
	}
	exact := &flwr129.ObjectTree{Children: wide.Children[:MaxTreeObjects-1]}
	if got := TreeObjects(exact); got != MaxTreeObjects {
		t.Errorf("a tree of %d objects: %d", MaxTreeObjects, got)
	}
}
