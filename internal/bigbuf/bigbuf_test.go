package bigbuf

import (
	"runtime"
	"testing"
	"time"
	"weak"
)

func TestReuseFitsAndKeepsBound(t *testing.T) {
	p := New(5*Min, time.Hour)
	if b := p.Reuse(2 * Min); b != nil {
		t.Fatal("an empty pool reused a buffer")
	}
	b := p.Get(2 * Min)
	if len(*b) != 2*Min || cap(*b) != 2*Min+slack {
		t.Fatalf("new buffer: len %d cap %d, want %d and %d", len(*b), cap(*b), 2*Min, 2*Min+slack)
	}
	(*b)[0] = 7
	p.Put(b)
	if got := p.Kept(); got != 2*Min+slack {
		t.Fatalf("kept %d bytes, want %d", got, 2*Min+slack)
	}
	if r := p.Reuse(3 * Min); r != nil {
		t.Fatal("a buffer too small was reused")
	}
	if r := p.Reuse(Min); r != nil {
		t.Fatal("a buffer more than an eighth too large was reused")
	}
	r := p.Reuse(2*Min + 100) // a request carrying an object of the buffer's size
	if r == nil {
		t.Fatal("a fitting buffer was not reused")
	}
	if len(*r) != 2*Min+100 || (*r)[0] != 7 {
		t.Fatalf("reused buffer: len %d, first byte %d; want %d and the old bytes, uncleared", len(*r), (*r)[0], 2*Min+100)
	}
	if p.Kept() != 0 {
		t.Fatalf("kept %d bytes after the only buffer was taken", p.Kept())
	}
	// The bound: a second 2 MiB buffer fits in 5 MiB, a third does not.
	for range 3 {
		p.Put(p.Get(2 * Min))
		p.Put(fresh(2 * Min))
	}
	if got := p.Kept(); got > 5*Min {
		t.Fatalf("kept %d bytes, more than the bound %d", got, 5*Min)
	}
	small := make([]byte, Min-1)
	p.Put(&small)
	if p.Reuse(Min-1) != nil {
		t.Fatal("a buffer below Min was pooled")
	}
}

func TestReuseTakesTheSmallestFit(t *testing.T) {
	p := New(100*Min, time.Hour)
	big, fit := fresh(4*Min), fresh(3*Min)
	p.Put(big)
	p.Put(fit)
	if r := p.Reuse(3 * Min); r != fit {
		t.Fatal("the larger buffer was taken while the exact fit was kept")
	}
}

func TestLentBufferComesBackOnceWritten(t *testing.T) {
	p := New(100*Min, time.Hour)
	b := p.Get(2 * Min)
	p.Lend(b)
	if got := p.Buffer((*b)[:Min]); got.Len() != Min {
		t.Fatalf("a part of a lent buffer: length %d", got.Len())
	} else {
		got.Free()
	}
	if p.Kept() != 0 {
		t.Fatal("a part of a lent buffer brought the buffer back")
	}
	mb := p.Buffer((*b)[:len(*b):len(*b)]) // the answer's slice may have lost the slack
	if again := p.Buffer(*b); again.Len() != 2*Min {
		t.Fatalf("second marshal: length %d", again.Len())
	} else {
		again.Free() // a plain slice: brings nothing back
	}
	if p.Kept() != 0 {
		t.Fatal("the buffer came back before it was written")
	}
	mb.Ref() // gRPC holds it while it writes
	mb.Free()
	if p.Kept() != 0 {
		t.Fatal("the buffer came back while gRPC still held it")
	}
	mb.Free()
	if got := p.Kept(); got != cap(*b) {
		t.Fatalf("kept %d bytes after the write, want the buffer's %d, its slack included", got, cap(*b))
	}
	other := make([]byte, 2*Min)
	p.Buffer(other).Free()
	if got := p.Kept(); got != cap(*b) {
		t.Fatal("a buffer that was never lent came into the pool")
	}
}

func TestLentForgottenPastBound(t *testing.T) {
	p := New(100*Min, time.Hour)
	var all []*[]byte // alive: each at an address of its own
	for range maxLent + 1 {
		b := fresh(Min)
		all = append(all, b)
		p.Lend(b)
	}
	first := all[0]
	if len(p.lent) > maxLent {
		t.Fatalf("%d lent buffers tracked, more than %d", len(p.lent), maxLent)
	}
	p.Buffer(*first).Free()
	if p.Kept() != 0 {
		t.Fatal("a forgotten lent buffer came back")
	}
}

func TestTrimAfterIdle(t *testing.T) {
	p := New(100*Min, 50*time.Millisecond)
	p.Put(p.Get(Min))
	deadline := time.Now().Add(5 * time.Second)
	for p.Kept() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still keeping %d bytes long after the pool went idle", p.Kept())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLentNotKeptAlive: a lent buffer nobody marshals (its call failed)
// is collected: the pool holds lent buffers weakly.
func TestLentNotKeptAlive(t *testing.T) {
	p := New(100*Min, time.Hour)
	b := fresh(8 * Min)
	w := weak.Make(&(*b)[0])
	p.Lend(b)
	b = nil
	for range 5 {
		runtime.GC()
		if w.Value() == nil {
			return
		}
	}
	t.Fatal("a lent buffer nobody marshaled is still in memory after 5 collections")
}
