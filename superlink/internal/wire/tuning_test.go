package wire

import (
	"testing"
	"time"
)

// framePool hands out buffers of the length asked, keeps at most its
// bound of 16 KiB buffers for reuse, and drops other sizes.
func TestFramePool(t *testing.T) {
	p := newFramePool(3*frameSize, time.Hour)
	var got []*[]byte
	for _, n := range []int{1, 1024, frameSize, frameSize, frameSize} {
		b := p.Get(n)
		if len(*b) != n || cap(*b) != frameSize {
			t.Fatalf("Get(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		got = append(got, b)
	}
	if b := p.Get(frameSize + 1); len(*b) != frameSize+1 {
		t.Fatalf("Get(%d): len %d", frameSize+1, len(*b))
	} else {
		p.Put(b) // another size: dropped
	}
	for _, b := range got {
		p.Put(b)
	}
	if len(p.free) != 3 {
		t.Fatalf("kept %d buffers, want 3 (the bound)", len(p.free))
	}
	again := p.Get(100)
	if again != got[2] || len(*again) != 100 { // LIFO: the last of the three kept
		t.Errorf("Get after Put did not reuse the last buffer kept")
	}
}

// Buffers kept go once nobody asked for one for the idle time.
func TestFramePoolTrimsWhenIdle(t *testing.T) {
	p := newFramePool(8*frameSize, 50*time.Millisecond)
	bs := []*[]byte{p.Get(frameSize), p.Get(frameSize)}
	for _, b := range bs {
		p.Put(b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.free)
		p.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d buffers still kept 5 s after the last request", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
