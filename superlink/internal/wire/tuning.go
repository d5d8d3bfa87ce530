package wire

import (
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/internal/bigbuf"
)

// How a SuperLink's connections buffer their bytes. Each choice below was
// measured with internal/cmd/sepal-load and BenchmarkThroughput (see
// docs/performance.md); the bytes on the wire are unchanged.
//
//   - Under TLS, the socket is read in chunks of up to 256 KiB and the TLS
//     records of one gRPC write are written with one system call
//     (batchedCreds, conn.go).
//   - Under TLS, gRPC reads straight from the TLS connection
//     (ReadBufferSize 0): TLS already holds a whole record, so gRPC's own
//     32 KiB read buffer was one more copy, and 32 KiB held by every idle
//     connection. Plaintext connections keep gRPC's read buffer and are
//     not wrapped: without it, gRPC reads each frame's header and payload
//     from the socket apart, and gathering writes would only copy them.
//   - gRPC gathers up to writeBuffer (64 KiB) of frames per write to TLS,
//     in a buffer taken from a pool for each write and given back after it
//     (SharedWriteBuffer), so that an idle connection holds none. Larger
//     buffers saved few system calls more, and a fleet's polls, answered
//     at once, held one each while they were written.
//   - The buffers gRPC reads DATA frames into come from framePool: not
//     cleared (gRPC fills each before use), and reused.
//   - A received array of megabytes is allocated after a garbage
//     collection when the heap holds as much garbage (collectFor in
//     decode.go).
//   - Flow-control windows stay gRPC's (64 KiB, grown by its bandwidth
//     estimate): larger static windows measured no faster on loopback, and
//     the frame guard's bound on bytes withheld per connection assumes
//     them.
const writeBuffer = 64 << 10

// isTLS reports whether creds (nil: plaintext) are TLS, through wrappers
// that keep the inner credentials' Info, as guardCreds and the transport
// package's do.
func isTLS(creds credentials.TransportCredentials) bool {
	return creds != nil && creds.Info().SecurityProtocol == "tls"
}

// tunedCreds returns creds whose connections read and write in large
// chunks when they are TLS; other credentials (nil, or plaintext ones
// such as those guarded puts in place of nil) are returned as they are.
func tunedCreds(creds credentials.TransportCredentials) credentials.TransportCredentials {
	if !isTLS(creds) {
		return creds
	}
	return batchedCreds{creds}
}

// frameSize is the largest DATA frame gRPC accepts (HTTP/2's default).
const frameSize = 16 << 10

// framePoolKeep is how many bytes of frame buffers framePool keeps for
// reuse: the frames of two 32 MiB messages received at once.
const framePoolKeep = 64 << 20

// framePoolIdle is how long framePool keeps buffers nobody asked for.
const framePoolIdle = 30 * time.Second

// framePoolShared is the pool of every server of the process (a SuperLink's Fleet
// and Driver APIs share it), so that it keeps framePoolKeep in all.
var framePoolShared = newFramePool(framePoolKeep, framePoolIdle)

// framePool is the mem.BufferPool of a SuperLink's gRPC servers, which
// read every received DATA frame (up to 16 KiB) into a buffer from it.
//
// gRPC's default pool clears each buffer it hands out, and keeps the
// buffers given back in a sync.Pool, which the garbage collector empties.
// Clearing 16 KiB per frame cost about a tenth of the CPU time of
// relaying large arrays; and as a message of tens of megabytes arrives in
// thousands of frames, each large message received after a collection
// took new memory for its frames while the last one's waited for the
// collector. framePool hands buffers out uncleared (gRPC overwrites the
// bytes it asked for before anyone reads them) and keeps up to keep bytes
// of 16 KiB buffers, most recently used first, until idle passes without
// a request; the rest go to the garbage collector. Buffers of other sizes
// are allocated and dropped. It is safe for concurrent use.
type framePool struct {
	mu   sync.Mutex
	free []*[]byte
	max  int // buffers kept
	trim bigbuf.Trimmer
}

func newFramePool(keep int, idle time.Duration) *framePool {
	p := &framePool{max: keep / frameSize}
	p.trim.Init(idle, &p.mu, p.drop)
	return p
}

// Get returns a buffer of length n.
func (p *framePool) Get(n int) *[]byte {
	if n <= frameSize {
		p.trim.Used()
		p.mu.Lock()
		if k := len(p.free); k > 0 {
			b := p.free[k-1]
			p.free = p.free[:k-1]
			p.mu.Unlock()
			*b = (*b)[:n]
			return b
		}
		p.mu.Unlock()
		b := make([]byte, n, frameSize)
		return &b
	}
	b := make([]byte, n)
	return &b
}

// Put gives a buffer back.
func (p *framePool) Put(b *[]byte) {
	if cap(*b) != frameSize {
		return
	}
	p.mu.Lock()
	if len(p.free) < p.max {
		p.free = append(p.free, b)
		p.trim.Arm()
	}
	p.mu.Unlock()
}

// drop lets the kept buffers go (the pool went idle). p.mu is held.
func (p *framePool) drop() {
	clear(p.free)
	p.free = p.free[:0]
}
