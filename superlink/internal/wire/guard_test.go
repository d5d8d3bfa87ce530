package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// scriptConn is a net.Conn whose reads return script in pieces of the
// sizes chunk picks, and whose writes are kept.
type scriptConn struct {
	net.Conn // nil: other methods are not used
	script   []byte
	chunk    func(left int) int
	eofLast  bool          // the read of the script's last bytes returns io.EOF with them, as tls.Conn can
	block    chan struct{} // when set, writes wait until Close (or fail once a deadline is set): a client that never reads
	deadline atomic.Bool
	closed   sync.Once
	mu       sync.Mutex
	written  bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error) {
	if len(c.script) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.chunk(len(c.script)), len(c.script))
	copy(p, c.script[:n])
	c.script = c.script[n:]
	if c.eofLast && len(c.script) == 0 {
		return n, io.EOF
	}
	return n, nil
}

func (c *scriptConn) Write(p []byte) (int, error) {
	if c.block != nil {
		if c.deadline.Load() {
			return 0, os.ErrDeadlineExceeded
		}
		<-c.block
		return 0, net.ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written.Write(p)
}

func (c *scriptConn) Close() error {
	if c.block != nil {
		c.closed.Do(func() { close(c.block) })
	}
	return nil
}

func (c *scriptConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// clientScript writes HTTP/2 client frames for a test.
type clientScript struct {
	buf  bytes.Buffer
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func newClientScript() *clientScript {
	s := &clientScript{}
	s.buf.WriteString(clientPreface)
	s.fr = http2.NewFramer(&s.buf, nil)
	s.fr.AllowIllegalWrites = true
	s.henc = hpack.NewEncoder(&s.hbuf)
	s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	return s
}

// headers opens stream id for method; the header block is split into
// frames of at most split bytes (HEADERS then CONTINUATION), with padding
// and a priority (unless zero) on the HEADERS frame when asked.
func (s *clientScript) headers(id uint32, method string, split int, pad uint8, prio http2.PriorityParam, end bool) {
	s.hbuf.Reset()
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: method},
		{Name: ":authority", Value: "localhost"}, {Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"}, {Name: "user-agent", Value: "grpc-python/1.62"},
	} {
		s.henc.WriteField(f)
	}
	block := s.hbuf.Bytes()
	first := block[:min(split, len(block))]
	p := http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(first) == len(block), PadLength: pad, Priority: prio}
	s.fr.WriteHeaders(p)
	for rest := block[len(first):]; len(rest) > 0; {
		k := min(split, len(rest))
		s.fr.WriteContinuation(id, k == len(rest), rest[:k])
		rest = rest[k:]
	}
}

// message sends a gRPC message declaring length, with body bytes of
// content (zeros), in DATA frames of the given payload sizes (the last one
// takes the rest); padding on every frame when pad > 0.
func (s *clientScript) message(id uint32, length uint32, body int, sizes []int, pad uint8, end bool) {
	msg := make([]byte, 5+body)
	msg[1], msg[2], msg[3], msg[4] = byte(length>>24), byte(length>>16), byte(length>>8), byte(length)
	for i := 0; len(msg) > 0 || i == 0; i++ {
		k := len(msg)
		if i < len(sizes) {
			k = min(sizes[i], len(msg))
		}
		k = min(k, 16384-int(pad)-1)
		last := k == len(msg)
		if pad > 0 {
			s.fr.WriteDataPadded(id, end && last, msg[:k], make([]byte, pad))
		} else {
			s.fr.WriteData(id, end && last, msg[:k])
		}
		msg = msg[k:]
		if last {
			break
		}
	}
}

// guardOutput feeds script through a guard in reads of random sizes (seed)
// and returns what the guard gave gRPC and wrote to the client, once the
// connection ended.
func guardOutput(t testing.TB, g *guard, script []byte, seed uint64) (read, written []byte) {
	t.Helper()
	read, written, end := guardRun(t, g, script, seed)
	end()
	return read, written
}

// guardRun is guardOutput before the connection ends, which end does.
func guardRun(t testing.TB, g *guard, script []byte, seed uint64) (read, written []byte, end func()) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	sc := &scriptConn{script: script, chunk: func(left int) int {
		if seed == 0 {
			return left
		}
		switch r.IntN(4) {
		case 0:
			return 1 + r.IntN(3)
		case 1:
			return 1 + r.IntN(20)
		}
		return 1 + r.IntN(40000)
	}}
	c := g.wrap(sc, nil)
	var out bytes.Buffer
	buf := make([]byte, 70000)
	for len(sc.script) > 0 || len(c.out) > 0 {
		size := len(buf)
		if seed != 0 {
			size = 1 + r.IntN(len(buf))
		}
		n, err := c.Read(buf[:size])
		out.Write(buf[:n])
		if err == io.EOF && len(sc.script) == 0 {
			break // the script ended with withheld bytes
		}
		if errors.Is(err, errClosedByLimit) {
			c.answering.Wait()
			return out.Bytes(), nil, func() {}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	c.answering.Wait()
	sc.mu.Lock()
	written = append([]byte(nil), sc.written.Bytes()...)
	sc.mu.Unlock()
	return out.Bytes(), written, func() {
		t.Helper()
		// The end of the connection releases what it held.
		if n, err := c.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("read after the script: %d, %v", n, err)
		}
	}
}

// noPrio is a HEADERS frame without a priority.
var noPrio http2.PriorityParam

const (
	mCreateNode  = "/flwr.proto.Fleet/CreateNode"
	mPushTaskRes = "/flwr.proto.Fleet/PushTaskRes"
	mPing        = "/flwr.proto.Fleet/Ping"
)

// A client's bytes reach gRPC unchanged, whatever the read sizes, when
// nothing is refused: header blocks split over CONTINUATION frames, padded
// and prioritized HEADERS, padded DATA, message prefixes split over
// several frames, empty DATA frames, unknown methods.
func TestGuardPassesBytesUnchanged(t *testing.T) {
	s := newClientScript()
	s.headers(1, mCreateNode, 1000, 0, noPrio, false)
	s.message(1, 9, 9, nil, 0, true)
	s.headers(3, mPushTaskRes, 7, 3, http2.PriorityParam{StreamDep: 0x4e000001, Exclusive: true, Weight: 15}, false)
	s.headers(5, mPing, 3, 0, http2.PriorityParam{StreamDep: 0x05000001, Weight: 200}, false)
	s.fr.WriteData(3, false, nil)                                       // empty
	s.message(3, 60000, 60000, []int{2, 1, 1, 1, 500, 20000}, 7, false) // below captureMin
	s.message(5, 40, 40, []int{4}, 0, true)
	s.fr.WritePing(false, [8]byte{1})
	s.fr.WriteWindowUpdate(0, 1000)
	s.fr.WriteData(3, true, nil)
	s.headers(7, "/unknown.Service/Method", 1000, 0, noPrio, false)
	s.message(7, 1000, 1000, nil, 0, false)
	s.fr.WriteRSTStream(7, http2.ErrCodeCancel)
	script := s.buf.Bytes()

	b := testBudget(1 << 30)
	g := testGuard(b)
	g.late = 0
	for seed := range uint64(300) {
		read, written := guardOutput(t, g, script, seed)
		if !bytes.Equal(read, script) {
			t.Fatalf("seed %d: gRPC got %d bytes that differ from the client's %d", seed, len(read), len(script))
		}
		if len(written) != 0 {
			t.Fatalf("seed %d: the guard answered %d bytes", seed, len(written))
		}
	}
	// Every read ended with EOF, which releases what the connection held.
	if st := b.stats(); st.InflightBytes != 0 {
		t.Fatalf("budget holds %d bytes after the connections ended", st.InflightBytes)
	}
}

// frames parses b as HTTP/2 frames (headers decoded with dec) and
// describes each in one line.
func frameLines(t testing.TB, b []byte, dec *hpack.Decoder, preface bool) []string {
	t.Helper()
	if preface {
		if !bytes.HasPrefix(b, []byte(clientPreface)) {
			t.Fatal("no client preface")
		}
		b = b[len(clientPreface):]
	}
	fr := http2.NewFramer(nil, bytes.NewReader(b))
	fr.ReadMetaHeaders = dec
	var out []string
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("frame %d: %v", len(out), err)
		}
		h := f.Header()
		line := fmt.Sprint(h.Type, " ", h.StreamID)
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			for _, hf := range f.Fields {
				line += " " + hf.Name + "=" + hf.Value
			}
			if f.StreamEnded() {
				line += " END_STREAM"
			}
		case *http2.RSTStreamFrame:
			line += " " + f.ErrCode.String()
		case *http2.DataFrame:
			line += fmt.Sprint(" ", len(f.Data()))
			if f.StreamEnded() {
				line += " END_STREAM"
			}
		case *http2.WindowUpdateFrame:
			line += fmt.Sprint(" ", f.Increment)
		case *http2.GoAwayFrame:
			line += " " + f.ErrCode.String()
		}
		out = append(out, line)
	}
}

// Refused requests come out the same whatever the read sizes: gRPC gets
// an RST_STREAM (CANCEL) before any DATA of the stream, then the stream's
// frames, which it drops; the client gets a trailers-only
// ResourceExhausted naming the limit, then RST_STREAM (NO_ERROR) when it
// was still sending. A large request admitted is captured: gRPC sees none
// of its frames, and the client gets the window they take. Small requests
// that fit are untouched.
func TestGuardRefusalsIndependentOfReads(t *testing.T) {
	s := newClientScript()
	s.headers(1, mCreateNode, 1000, 0, noPrio, false)
	s.message(1, 2<<20, 30000, []int{3, 0, 1}, 0, false) // prefix split over frames; refused
	s.headers(3, mPushTaskRes, 1000, 0, noPrio, false)
	s.message(3, 20<<20, 20000, nil, 0, false) // admitted: 20 MiB, with 30 of another peer's
	s.headers(5, mPushTaskRes, 1000, 0, noPrio, false)
	s.message(5, 15<<20, 20000, []int{16000}, 9, false) // over the budget (60 MiB for large requests)
	s.headers(7, mPing, 1000, 0, noPrio, false)
	s.message(7, 20, 20, nil, 0, true) // small, fits the headroom
	script := s.buf.Bytes()

	var want []string
	for seed := range uint64(200) {
		b := testBudget(64 << 20)
		g := testGuard(b)
		other := b.peerFor("192.0.2.1")
		if r := b.reserve(30<<20, other); r != "" {
			t.Fatal(r)
		}
		read, written := guardOutput(t, g, script, seed)
		got := frameLines(t, read, hpack.NewDecoder(4096, nil), true)
		if seed == 0 {
			want = got
			t.Logf("gRPC gets:\n%s", strings.Join(got, "\n"))
		} else if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("seed %d: gRPC gets\n%s\nwant\n%s", seed, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		answers := frameLines(t, written, hpack.NewDecoder(4096, nil), false)
		joined := strings.Join(answers, "\n")
		if len(answers) != 6 {
			t.Fatalf("seed %d: answers\n%s", seed, joined)
		}
		for _, w := range []string{
			"HEADERS 1 :status=200 content-type=application/grpc grpc-status=8 grpc-message=request of 2097152 bytes refused: CreateNode takes at most 1 MiB",
			"RST_STREAM 1 NO_ERROR",
			"HEADERS 5 :status=200 content-type=application/grpc grpc-status=8 grpc-message=request of 15728640 bytes refused for now: the SuperLink is receiving 50 MiB of other requests",
			"RST_STREAM 5 NO_ERROR",
			// The window for captureAhead of stream 3's message, and its prefix.
			fmt.Sprintf("WINDOW_UPDATE 3 %d", captureAhead+grpcPrefixLen),
			fmt.Sprintf("WINDOW_UPDATE 0 %d", captureAhead+grpcPrefixLen),
		} {
			if !strings.Contains(joined, w) {
				t.Fatalf("seed %d: answers lack %q:\n%s", seed, w, joined)
			}
		}
		if st := b.stats(); st.Refused[RefusedTooLarge] != 1 || st.Refused[RefusedBusy] != 1 || st.InflightBytes != 30<<20 {
			t.Fatalf("seed %d: stats %+v", seed, st)
		}
		b.release(30<<20, other)
	}
	if strings.Contains(strings.Join(want, "\n"), "DATA 3") {
		t.Fatalf("gRPC got DATA of the captured stream:\n%s", strings.Join(want, "\n"))
	}
	// The RST_STREAMs come before the refused streams' DATA.
	idx := func(prefix string) int {
		for i, l := range want {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		t.Fatalf("no %q in\n%s", prefix, strings.Join(want, "\n"))
		return -1
	}
	if idx("RST_STREAM 1 CANCEL") > idx("DATA 1") || idx("RST_STREAM 5 CANCEL") > idx("DATA 5") {
		t.Fatalf("an RST_STREAM comes after DATA:\n%s", strings.Join(want, "\n"))
	}
	if strings.Contains(strings.Join(want, "\n"), "RST_STREAM 3") || strings.Contains(strings.Join(want, "\n"), "RST_STREAM 7") {
		t.Fatal("an admitted stream was reset")
	}
}

// fuzzScript turns fuzz input into a client's frames: streams of guarded
// and other methods, messages of varied declared and sent sizes split
// over frames with or without padding, empty frames, resets, pings.
func fuzzScript(data []byte) []byte {
	s := newClientScript()
	next := func() int {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return int(b)
	}
	methods := []string{mCreateNode, mPushTaskRes, mPing, "/flwr.proto.Driver/PushTaskIns", "/x.Y/Z"}
	var open []uint32
	id := uint32(1)
	for len(data) > 0 {
		switch op := next() % 6; {
		case op == 0 || len(open) == 0:
			method, split, pad := methods[next()%len(methods)], 1+next()*4, uint8(next()%3)
			var prio http2.PriorityParam // none, or a varied one
			if next()%2 == 0 {
				prio = http2.PriorityParam{StreamDep: uint32(next())<<23 | uint32(next()), Exclusive: next()%2 == 0, Weight: uint8(next())}
			}
			s.headers(id, method, split, pad, prio, false)
			open = append(open, id)
			id += 2
		case op == 1 || op == 2:
			sid := open[next()%len(open)]
			declared := []uint32{0, 10, 1 << 20, 1<<20 + 1, 3 << 20, 600 << 20}[next()%6]
			body := min(int(declared), next()*97)
			sizes := []int{next() % 7, next() % 3, next()}
			s.message(sid, declared, body, sizes, uint8(next()%4), next()%3 == 0)
		case op == 3:
			s.fr.WriteData(open[next()%len(open)], next()%4 == 0, nil)
		case op == 4:
			s.fr.WriteRSTStream(open[next()%len(open)], http2.ErrCodeCancel)
		default:
			s.fr.WritePing(false, [8]byte{byte(next())})
		}
	}
	return s.buf.Bytes()
}

// However the frames come and however they are read, what the guard gives
// gRPC is a valid frame sequence, the same for every way of reading it,
// and the budget is back to zero once the connection ends.
func FuzzGuardFrames(f *testing.F) {
	f.Add([]byte{0, 1, 2, 0, 1, 5, 5, 1, 0, 3, 4, 200, 1, 2, 3, 4}, uint64(1))
	f.Add([]byte{0, 0, 9, 1, 1, 1, 0, 4, 2, 9, 9, 9, 1, 3, 4, 0, 2, 7, 1, 1}, uint64(7))
	f.Add([]byte{0, 1, 0, 0, 1, 0, 3, 3, 0, 1, 2, 1, 0, 5, 1, 3, 0, 0, 1, 1, 4, 4, 0, 9}, uint64(3))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		wd := time.AfterFunc(5*time.Second, func() { panic(fmt.Sprintf("hung on %q %d", data, seed)) })
		defer wd.Stop()
		script := fuzzScript(data)
		var want []string
		for i, sd := range []uint64{0, seed | 1} {
			b := testBudget(8 << 20)
			g := testGuard(b)
			g.late = 0
			read, _ := guardOutput(t, g, script, sd)
			if closedTotal(b.stats()) > 0 {
				return // what gRPC got before depends on the reads
			}
			got := frameLines(t, read, hpack.NewDecoder(4096, nil), true)
			if i == 0 {
				want = got
			} else if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("reads of seed %d change what gRPC gets:\n%s\nwant\n%s", sd, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if st := b.stats(); st.InflightBytes != 0 {
				t.Fatalf("budget holds %d bytes after the end", st.InflightBytes)
			}
		}
	})
}

// Bytes that are not HTTP/2 at all neither panic the guard nor make it
// hold more than its bound.
func FuzzGuardGarbage(f *testing.F) {
	f.Add([]byte("\x00\x00\x05\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x05"), uint64(2))
	f.Add([]byte("\x00\x01\x00\x01\x2c\x00\x00\x00\x01\xff\xff\xff"), uint64(5))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		s := newClientScript()
		s.headers(1, mPushTaskRes, 10, 0, noPrio, false)
		script := append(s.buf.Bytes(), data...)
		b := testBudget(8 << 20)
		g := testGuard(b)
		g.late = 0
		sc := &scriptConn{script: script, chunk: func(left int) int { return 1 + int(seed%uint64(left)) }}
		c := g.wrap(sc, nil)
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
			if c.held > maxHeldPerConn+2*16384 {
				t.Fatalf("the guard holds %d bytes", c.held)
			}
		}
		c.answering.Wait()
		if st := b.stats(); st.InflightBytes != 0 {
			t.Fatalf("budget holds %d bytes after the end", st.InflightBytes)
		}
	})
}

// The guard's answers go out between gRPC's frames, whatever the sizes of
// gRPC's writes: never inside a frame, nor between a HEADERS frame and its
// CONTINUATION; and the streams gRPC ends are noted.
func TestGuardAnswersAtFrameBoundaries(t *testing.T) {
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	fr.WriteSettings()
	fr.WriteData(1, false, make([]byte, 5000))
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: []byte{0x88}, EndHeaders: false}) // :status 200, split
	fr.WriteContinuation(3, false, nil)
	fr.WriteContinuation(3, true, nil)
	fr.WriteData(3, false, make([]byte, 100))
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: []byte{0x88}, EndHeaders: true, EndStream: true})
	fr.WriteRSTStream(5, http2.ErrCodeCancel)
	server := out.Bytes()
	answer := trailersOnly(7, codes.ResourceExhausted, "no", true)
	// Where another frame may go: frame starts outside the header block
	// of stream 3, and the end.
	var allowed []int
	for i, inBlock := 0, false; ; {
		if !inBlock {
			allowed = append(allowed, i)
		}
		if i == len(server) {
			break
		}
		length := int(server[i])<<16 | int(server[i+1])<<8 | int(server[i+2])
		if typ := server[i+3]; typ == frameHeaders || typ == frameContinuation {
			inBlock = server[i+4]&flagEndHeaders == 0
		}
		i += frameHeaderLen + length
	}

	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		sc := &scriptConn{}
		c := testGuard(testBudget(1<<30)).wrap(sc, nil)
		for _, id := range []uint32{1, 3, 5} {
			c.streams[id] = &gstream{id: id, reserved: 10}
		}
		c.g.b.used.Store(30)
		at := r.IntN(len(server)) // the answer is decided after this many bytes
		decided := -1             // what gRPC had written then
		for p := server; len(p) > 0; {
			n := min(len(p), 1+r.IntN(3000))
			if seed%2 == 0 {
				n = min(len(p), 1+r.IntN(20)) // header blocks split too
			}
			if sent := len(server) - len(p); sent <= at && at < sent+n {
				decided = sent
				// What queue's writer does, without a goroutine.
				c.wmu.Lock()
				c.cmu.Lock()
				c.ctl = append(c.ctl, ctlFrame{b: answer})
				c.cmu.Unlock()
				if c.outb.atBoundary() {
					c.writeCtl()
				}
				c.wmu.Unlock()
			}
			if _, err := c.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		// At the first place allowed once it was decided, not later.
		b := 0
		for _, a := range allowed {
			if a >= decided {
				b = a
				break
			}
		}
		want := append(append(append([]byte{}, server[:b]...), answer...), server[b:]...)
		if !bytes.Equal(sc.written.Bytes(), want) {
			t.Fatalf("seed %d: the answer decided after %d bytes is not at byte %d", seed, decided, b)
		}
		lines := frameLines(t, sc.written.Bytes(), hpack.NewDecoder(4096, nil), false)
		got := strings.Join(lines, "\n")
		if !strings.Contains(got, "HEADERS 7 :status=200 content-type=application/grpc grpc-status=8 grpc-message=no END_STREAM\nRST_STREAM 7 NO_ERROR") {
			t.Fatalf("seed %d: the answer is not whole:\n%s", seed, got)
		}
		if len(lines) != 8 { // CONTINUATIONs are read into their HEADERS
			t.Fatalf("seed %d: %d frames:\n%s", seed, len(lines), got)
		}
		if st := c.g.b.stats(); st.InflightBytes != 10 {
			t.Fatalf("seed %d: %d bytes held, want those of stream 1 only (gRPC ended 3 and 5)", seed, st.InflightBytes)
		}
	}
}

// The end of a connection releases all it reserved, also when the last
// read returns bytes together with io.EOF (as tls.Conn does when
// close_notify follows the last record) and those bytes complete a large
// prefix, and when gRPC closes the connection while its reader is between
// the read and the parse.
func TestGuardReleasesAtConnectionEnd(t *testing.T) {
	s := newClientScript()
	s.headers(1, mPushTaskRes, 1000, 0, noPrio, false)
	s.message(1, 40<<20, 0, nil, 0, false) // the prefix alone
	script := s.buf.Bytes()
	b := testBudget(64 << 20)
	g := testGuard(b)
	g.late = 0
	buf := make([]byte, 70000)
	readAll := func(c *guardConn) {
		t.Helper()
		for {
			_, err := c.Read(buf)
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}

	for _, chunk := range []int{len(script), 7, 1} {
		sc := &scriptConn{script: script, chunk: func(int) int { return chunk }, eofLast: true}
		c := g.wrap(sc, nil)
		readAll(c)
		c.Close()
		c.answering.Wait()
		if st := b.stats(); st.InflightBytes != 0 {
			t.Fatalf("reads of %d bytes, the last with io.EOF: budget holds %d bytes after Close", chunk, st.InflightBytes)
		}
	}

	// Closed by gRPC before its reader parses the bytes it had read.
	sc := &scriptConn{script: script, chunk: func(left int) int { return left }}
	c := g.wrap(sc, nil)
	c.Close()
	readAll(c)
	c.Close()
	c.answering.Wait()
	if st := b.stats(); st.InflightBytes != 0 {
		t.Fatalf("closed before the parse: budget holds %d bytes", st.InflightBytes)
	}
}

// A HEADERS frame with a priority but no padding has no pad length: the
// first byte of its stream dependency (here with the exclusive bit set)
// must not cut the end of the header block, which would hide the :path
// from the guard and let a large request of a small method through.
func TestGuardPriorityWithoutPadding(t *testing.T) {
	// The block with :path and what follows it in its last tail bytes,
	// 128 to 255 of them, so that the dependency's first byte can equal
	// tail and the cut fall on a field boundary.
	var block []byte
	tail := 0
	for n := 0; tail < 128; n++ {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"}, {Name: ":authority", Value: "localhost"}} {
			enc.WriteField(f)
		}
		at := buf.Len()
		for _, f := range []hpack.HeaderField{
			{Name: ":path", Value: mCreateNode}, {Name: "content-type", Value: "application/grpc"},
			{Name: "te", Value: "trailers"}, {Name: "user-agent", Value: "grpc-python/1.62 " + strings.Repeat("x", n)},
		} {
			enc.WriteField(f)
		}
		block, tail = buf.Bytes(), buf.Len()-at
	}
	if tail > 255 {
		t.Fatalf("tail of %d bytes", tail)
	}
	s := newClientScript()
	s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true,
		Priority: http2.PriorityParam{StreamDep: uint32(tail-128)<<24 | 3, Exclusive: true, Weight: 15}})
	s.message(1, 2<<20, 1000, nil, 0, false)
	script := s.buf.Bytes()
	// The dependency's first byte, after SETTINGS and the HEADERS frame header.
	if got := script[len(clientPreface)+15+frameHeaderLen]; int(got) != tail {
		t.Fatalf("the dependency's first byte is %d, want %d", got, tail)
	}

	for seed := range uint64(50) {
		b := testBudget(64 << 20)
		g := testGuard(b)
		read, written := guardOutput(t, g, script, seed)
		got := strings.Join(frameLines(t, read, hpack.NewDecoder(4096, nil), true), "\n")
		if !strings.Contains(got, ":path="+mCreateNode) || !strings.Contains(got, "RST_STREAM 1 CANCEL") {
			t.Fatalf("seed %d: gRPC gets\n%s", seed, got)
		}
		answers := strings.Join(frameLines(t, written, hpack.NewDecoder(4096, nil), false), "\n")
		if !strings.Contains(answers, "HEADERS 1 :status=200 content-type=application/grpc grpc-status=8 grpc-message=request of 2097152 bytes refused: CreateNode takes at most 1 MiB") {
			t.Fatalf("seed %d: the request was not refused; answers:\n%s", seed, answers)
		}
	}
}

// A client that sends refused requests and never reads the answers does
// not make the guard hold a goroutine (and an answer) per refusal: past a
// few answers waiting, its connection is closed.
func TestGuardBoundsPendingAnswers(t *testing.T) {
	s := newClientScript()
	for i := range 300 {
		id := uint32(2*i + 1)
		s.headers(id, mCreateNode, 1000, 0, noPrio, false)
		s.message(id, 2<<20, 100, nil, 0, false)
	}
	b := testBudget(64 << 20)
	g := testGuard(b)
	sc := &scriptConn{script: s.buf.Bytes(), chunk: func(int) int { return 1000 }, block: make(chan struct{})}
	base := runtime.NumGoroutine()
	c := g.wrap(sc, nil)
	t.Cleanup(func() {
		c.Close()
		c.answering.Wait()
	})
	buf := make([]byte, 70000)
	peak := 0
	var err error
	for err == nil {
		_, err = c.Read(buf)
		peak = max(peak, runtime.NumGoroutine()-base)
	}
	if peak > 40 {
		t.Errorf("%d goroutines more while the client reads no answer", peak)
	}
	if !errors.Is(err, errClosedByLimit) || closedTotal(b.stats()) != 1 {
		t.Errorf("read error %v, stats %+v: want the connection closed by a limit", err, b.stats())
	}
}

// A write that ends streams allocates nothing.
func TestGuardWriteAllocs(t *testing.T) {
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	for id := uint32(1); id < 8; id += 2 {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x88}, EndHeaders: true, EndStream: true})
	}
	fr.WriteRSTStream(9, http2.ErrCodeCancel)
	c := testGuard(testBudget(1<<30)).wrap(&loopConn{}, nil)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := c.Write(out.Bytes()); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per write", n)
	}
}

// testMethodLimit is the method limits of Flower 1.8.0, for the tests.
func testMethodLimit(method string) (int64, string) {
	switch method {
	case mPushTaskRes, "/flwr.proto.Driver/PushTaskIns":
		return 512 << 20, ""
	}
	return SmallMessageSize, "only PushTaskRes and PushTaskIns carry parameters, up to 512 MiB"
}

// testConfig is the wire configuration of the tests: the SuperLink's
// defaults, a budget of max bytes.
func testConfig(max int64) Config {
	return Config{
		MaxInflightBytes: max, MinRequestRate: 64 << 10, MaxConnections: 4096, MaxConnectionsPerPeer: 256,
		MaxConcurrentStreams: 32, HandshakeTimeout: 15 * time.Second, IdleTimeout: 15 * time.Minute, StallTimeout: time.Minute,
		MethodLimit: testMethodLimit, Logger: slog.New(slog.DiscardHandler),
	}
}

// testBudget is a budget of max bytes.
func testBudget(max int64) *budget { return newBudget(max) }

// testGuard is a guard on b with the default limits, logging nowhere.
func testGuard(b *budget) *guard { return newGuard(b, testConfig(b.max)) }

// closedTotal is the number of connections closed by a limit.
func closedTotal(st Stats) uint64 {
	var n uint64
	for _, v := range st.Closed {
		n += v
	}
	return n
}

func (c *scriptConn) SetReadDeadline(time.Time) error { return nil }
func (c *scriptConn) SetWriteDeadline(t time.Time) error {
	c.deadline.Store(!t.IsZero())
	return nil
}
