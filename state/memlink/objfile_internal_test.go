package memlink

import (
	"slices"
	"testing"
)

// TestObjectFileSpace: freed space is reused first fit, joined with its
// free neighbours, and the file grows only when no free span fits.
func TestObjectFileSpace(t *testing.T) {
	of := &objectFile{}
	a, b, c := of.alloc(3*pageSize), of.alloc(1), of.alloc(2*pageSize)
	if a != 0 || b != 3*pageSize || c != 4*pageSize || of.size != 6*pageSize {
		t.Fatalf("offsets %d %d %d, size %d: want 0, 3, 4 pages and 6 pages", a, b, c, of.size)
	}
	of.release(a, 3*pageSize)
	of.release(c, 2*pageSize) // the tail
	if want := []span{{0, 3 * pageSize}, {4 * pageSize, 2 * pageSize}}; !slices.Equal(of.spans, want) {
		t.Fatalf("free %v, want %v", of.spans, want)
	}
	of.release(b, 1) // joins both neighbours
	if want := []span{{0, 6 * pageSize}}; !slices.Equal(of.spans, want) {
		t.Fatalf("free %v, want %v", of.spans, want)
	}
	if d := of.alloc(2 * pageSize); d != 0 {
		t.Errorf("alloc after release: offset %d, want 0 (reused)", d)
	}
	if e := of.alloc(5 * pageSize); e != 2*pageSize || of.size != 7*pageSize {
		t.Errorf("alloc past the free tail: offset %d, size %d; want the tail grown: 2 pages, size 7 pages", e, of.size)
	}
	if len(of.spans) != 0 {
		t.Errorf("free %v, want none", of.spans)
	}
}

// TestObjectFileReadAfterClose: a read that acquired its content before
// the store closed finds the file gone rather than failing or reading
// space another object took.
func TestObjectFileReadAfterClose(t *testing.T) {
	ofs := &objectFiles{dir: t.TempDir(), min: 1}
	c, err := ofs.write([]byte("chunk"))
	if err != nil {
		t.Fatal(err)
	}
	if b, gone, err := c.read(); err != nil || gone || string(b) != "chunk" {
		t.Fatalf("read: %q, gone %v, %v; want the bytes written", b, gone, err)
	}
	c.acquire()
	ofs.close()
	if b, gone, err := c.read(); err != nil || !gone || b != nil {
		t.Errorf("read after close: %q, gone %v, %v; want gone", b, gone, err)
	}
}
