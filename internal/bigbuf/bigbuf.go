// Package bigbuf keeps the large buffers of a SuperLink (objects read
// back from the object files, captured requests) for reuse, so that the
// next one is written into memory the process already has.
//
// A buffer of megabytes taken from the garbage-collected heap is cleared
// by the runtime first, and once the runtime's scavenger has given the
// pages of the last one back to the system, every page faults in again:
// in the 16-node Flower 1.29 FedAvg run, reading replies back from the
// object files and capturing the nodes' pushes took 220,000 page faults,
// nearly all of them into buffers of this kind. A buffer from the pool is
// neither cleared nor faulted in: whoever takes one overwrites every byte
// before anyone reads it.
//
// A buffer comes back by one of two ways: Put, by its owner, or gRPC once
// it has written the buffer to the connection: the state lends a buffer
// it answers with (Lend), and the SuperLink's codec turns a lent buffer
// it marshals into a mem.Buffer that gives it back (Buffer). A buffer
// neither way brings back is simply collected.
package bigbuf

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
	"weak"

	"google.golang.org/grpc/mem"
)

// Min is the smallest buffer the pool deals in: smaller ones are
// allocated and collected as usual.
const Min = 1 << 20

// slack is the room a new buffer has beyond the length asked for, so that
// an object's buffer can later take the request that carries an object of
// the same size (its bytes and a few fields).
const slack = 64 << 10

// maxLent is how many lent buffers the pool tracks; a buffer lent and
// never marshaled (its call failed) is forgotten once this many are. The
// pool holds lent buffers weakly: one nobody marshals is collected.
const maxLent = 256

// Shared is the pool of the process: the state, the codec and the frame
// guard share it. It keeps up to 64 MiB (two 32 MiB arrays) while buffers
// are asked for, and lets them go after 30 seconds without a request.
var Shared = New(64<<20, 30*time.Second)

// Pool keeps large buffers for reuse: up to keep bytes of them, most
// recently given back first, until idle passes without a request. It
// satisfies mem.BufferPool. It is safe for concurrent use.
type Pool struct {
	mu   sync.Mutex
	free []*[]byte // most recently given back last
	kept int       // bytes of capacity in free
	keep int
	lent map[uintptr]lent // by the address of their first byte
	trim Trimmer
}

// New returns a pool that keeps up to keep bytes of buffers, for idle
// after the last request.
func New(keep int, idle time.Duration) *Pool {
	p := &Pool{keep: keep, lent: map[uintptr]lent{}}
	p.trim.Init(idle, &p.mu, p.drop)
	return p
}

var _ mem.BufferPool = (*Pool)(nil)

// Get returns a buffer of length n. Its bytes are whatever they were:
// the caller overwrites all of them before anyone reads them.
func (p *Pool) Get(n int) *[]byte {
	if b := p.Reuse(n); b != nil {
		return b
	}
	return fresh(n)
}

// fresh allocates a buffer of length n with room for reuse.
func fresh(n int) *[]byte {
	c := n
	if n >= Min {
		c += slack
	}
	b := make([]byte, n, c)
	return &b
}

// Reuse returns a kept buffer of length n, or nil when the pool has none
// that fits: one of at least n bytes and at most an eighth more, the
// smallest such. Its bytes are whatever they were.
func (p *Pool) Reuse(n int) *[]byte {
	if n < Min {
		return nil
	}
	p.trim.Used()
	p.mu.Lock()
	defer p.mu.Unlock()
	best := -1
	for i, b := range p.free {
		if c := cap(*b); c >= n && c <= n+n/8 && (best < 0 || c < cap(*p.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	b := p.free[best]
	p.free = slices.Delete(p.free, best, best+1)
	p.kept -= cap(*b)
	*b = (*b)[:n]
	return b
}

// Put gives a buffer back: kept if there is room, else left to the
// collector. Nobody may use it after.
func (p *Pool) Put(b *[]byte) {
	c := cap(*b)
	if c < Min {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.kept+c > p.keep {
		return
	}
	p.free = append(p.free, b)
	p.kept += c
	p.trim.Arm()
}

// drop lets the kept buffers go (the pool went idle). p.mu is held.
func (p *Pool) drop() {
	clear(p.free)
	p.free = p.free[:0]
	p.kept = 0
}

// Trimmer lets a pool drop what it keeps once a whole idle period passes
// without a request. Init sets it up; the pool's lock guards it.
type Trimmer struct {
	idle  time.Duration
	mu    *sync.Mutex // the pool's
	drop  func()      // called with mu held
	used  atomic.Bool // a request came since the last look
	timer *time.Timer // pending look, nil when none
}

// Init has drop called, with mu held, once idle passes without a request
// after Arm.
func (t *Trimmer) Init(idle time.Duration, mu *sync.Mutex, drop func()) {
	t.idle, t.mu, t.drop = idle, mu, drop
}

// Used notes a request; it needs no lock (it runs for every one).
func (t *Trimmer) Used() {
	if !t.used.Load() {
		t.used.Store(true)
	}
}

// Arm, with the pool's lock held, starts the wait for an idle period
// unless it is under way.
func (t *Trimmer) Arm() {
	if t.timer == nil {
		t.timer = time.AfterFunc(t.idle, t.look)
	}
}

// look drops what the pool keeps when no request came during a whole
// idle period, or waits for another. (A flag rather than the time of the
// last request: Used runs for every request, and a clock reading there is
// not needed.)
func (t *Trimmer) look() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.timer = nil
	if t.used.Swap(false) {
		t.Arm()
		return
	}
	t.drop()
}

// Lend records that b, a buffer of the pool, goes out in a response and
// comes back once written (see Buffer). Its owner may not use it after.
func (p *Pool) Lend(b *[]byte) {
	if cap(*b) < Min || len(*b) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.lent) >= maxLent {
		clear(p.lent) // calls that failed before their answer was marshaled
	}
	p.lent[uintptr(unsafe.Pointer(&(*b)[0]))] = lent{weak.Make(&(*b)[0]), len(*b), cap(*b)}
}

// lent is a lent buffer: held weakly (one nobody marshals is collected,
// and another buffer at its address later is told apart), its length and
// its capacity (the answer's slice may have less: the buffer comes back
// whole, with its slack, so that a request can be received into it).
type lent struct {
	first weak.Pointer[byte]
	n, c  int
}

// Buffer returns b for gRPC to write: a mem.Buffer that comes back to the
// pool once written when b is exactly a lent buffer (taken back from the
// lent ones, so it comes back once), else b as it is.
func (p *Pool) Buffer(b []byte) mem.Buffer {
	if len(b) >= Min {
		k := uintptr(unsafe.Pointer(&b[0]))
		p.mu.Lock()
		l, ok := p.lent[k]
		ok = ok && l.n == len(b) && l.first.Value() == &b[0]
		if ok {
			delete(p.lent, k)
		}
		p.mu.Unlock()
		if ok {
			// b starts at the lent buffer's first byte, which is alive:
			// b is that buffer, whose capacity is l.c.
			whole := unsafe.Slice(&b[0], l.c)[:l.n]
			return mem.NewBuffer(&whole, p)
		}
	}
	return mem.SliceBuffer(b)
}

// Kept returns the bytes of buffers the pool keeps, for tests and metrics.
func (p *Pool) Kept() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.kept
}
