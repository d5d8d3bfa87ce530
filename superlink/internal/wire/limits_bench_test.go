package wire

import (
	"bytes"
	"io"
	"net"
	"testing"

	"golang.org/x/net/http2"
)

// loopConn is a net.Conn whose reads replay one buffer forever (from
// after a prefix) and whose writes are dropped.
type loopConn struct {
	net.Conn
	data []byte
	pos  int
	skip int // bytes at the start that only the first pass reads
}

func (c *loopConn) Read(p []byte) (int, error) {
	if c.pos == len(c.data) {
		c.pos = c.skip
	}
	n := copy(p, c.data[c.pos:])
	c.pos += n
	return n, nil
}

func (c *loopConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *loopConn) Close() error                { return nil }
func (c *loopConn) RemoteAddr() net.Addr        { return &net.TCPAddr{} }

// BenchmarkGuardRead measures the guard's read side alone, in memory, on
// the bytes of an admitted 512 MiB message in 16 KiB DATA frames, read 32
// KiB at a time as gRPC's reader does: the cost it adds per byte, to set
// against what TLS and gRPC cost per byte (BenchmarkGuard). "direct"
// reads the same bytes without the guard.
func BenchmarkGuardRead(b *testing.B) {
	s := newClientScript()
	s.headers(1, mPushTaskRes, 1000, 0, noPrio, false)
	head := len(s.buf.Bytes())
	s.message(1, 512<<20, 0, nil, 0, false) // the prefix of a 512 MiB push
	frame := make([]byte, 16384)
	for range 64 {
		s.fr.WriteData(1, false, frame)
	}
	data := s.buf.Bytes()
	skip := head + frameHeaderLen + grpcPrefixLen
	for _, mode := range []string{"direct", "guarded"} {
		b.Run(mode, func(b *testing.B) {
			lc := &loopConn{data: data, skip: skip}
			var conn net.Conn = lc
			if mode == "guarded" {
				g := testGuard(testBudget(1 << 40))
				gc := g.wrap(lc, nil)
				// Endless message: the stream always has body left.
				conn = gc
				defer func() {
					gc.mu.Lock()
					for _, st := range gc.streams {
						st.left = 1 << 62
					}
					gc.mu.Unlock()
				}()
			}
			buf := make([]byte, 32<<10)
			// Past the headers and prefix.
			for lc.pos < skip {
				conn.Read(buf[:min(len(buf), skip-lc.pos)])
			}
			if gc, ok := conn.(*guardConn); ok {
				gc.mu.Lock()
				for _, st := range gc.streams {
					st.left = 1 << 62
				}
				gc.mu.Unlock()
			}
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := io.ReadFull(conn, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGuardWrite measures the guard's write side alone: gRPC's 32
// KiB writes of 16 KiB DATA frames (a large response) through the guard,
// which finds the frame boundaries.
func BenchmarkGuardWrite(b *testing.B) {
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	frame := make([]byte, 16384)
	for range 64 {
		fr.WriteData(1, false, frame)
	}
	data := out.Bytes()
	for _, mode := range []string{"direct", "guarded"} {
		b.Run(mode, func(b *testing.B) {
			lc := &loopConn{}
			var conn net.Conn = lc
			if mode == "guarded" {
				conn = testGuard(testBudget(1<<30)).wrap(lc, nil)
			}
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for range b.N {
				for p := data; len(p) > 0; {
					n := min(len(p), 32<<10)
					if _, err := conn.Write(p[:n]); err != nil {
						b.Fatal(err)
					}
					p = p[n:]
				}
			}
		})
	}
}
