package testkit

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
)

// H2Conn is a raw HTTP/2 client connection that speaks gRPC's framing by
// hand, as an attacker would: it declares any message length in the
// 5-byte prefix and sends as many body bytes as it likes, honouring the
// server's flow control (it cannot send faster than the server grants).
// Tests use it to check what a server holds while a peer sends.
//
// Its methods are safe for concurrent use: each stream is sent from its
// own goroutine, frames are written one at a time.
type H2Conn struct {
	conn net.Conn
	out  batchWriter // the framer's output
	fr   *http2.Framer
	wmu  sync.Mutex // serializes frame writes and the hpack encoder
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu       sync.Mutex
	cond     *sync.Cond
	connWin  int64
	initWin  int64
	streams  map[uint32]*H2Stream
	nextID   uint32
	readErr  error
	closed   chan struct{} // closed when the reader ends
	goAway   *GoAway
	maxFrame int
}

// H2Stream is one stream of an H2Conn and what the server answered on it.
type H2Stream struct {
	ID  uint32
	win int64

	// Filled by the connection's reader; read them after Done is closed.
	done     chan struct{}
	closed   bool
	Status   codes.Code // grpc-status of the trailers, when any came
	Message  string     // grpc-message of the trailers
	HTTP     string     // :status of the first HEADERS
	Trailers bool       // a HEADERS frame with grpc-status came
	Reset    bool       // the server sent RST_STREAM
	ResetErr http2.ErrCode
	Received int // response DATA bytes
	Sent     int64
}

// Done is closed once the server ended the stream (trailers, RST_STREAM,
// GOAWAY) or the connection failed.
func (s *H2Stream) Done() <-chan struct{} { return s.done }

// String describes the outcome for a test message.
func (s *H2Stream) String() string {
	switch {
	case s.Trailers:
		return fmt.Sprintf("stream %d: %v %q after %d bytes sent", s.ID, s.Status, s.Message, s.Sent)
	case s.Reset:
		return fmt.Sprintf("stream %d: RST_STREAM %v after %d bytes sent", s.ID, s.ResetErr, s.Sent)
	}
	return fmt.Sprintf("stream %d: no answer after %d bytes sent", s.ID, s.Sent)
}

// DialH2 opens a TLS connection with ALPN h2 to addr (cfg nil: plaintext
// h2c with prior knowledge), sends the client preface and its SETTINGS,
// and starts the reader. Close it when done.
func DialH2(ctx context.Context, addr string, cfg *tls.Config) (*H2Conn, error) {
	return DialH2From(ctx, "", addr, cfg)
}

// DialH2From is DialH2 from the local IP address local ("" lets the
// system choose), such as 127.0.0.2: on Linux every address of
// 127.0.0.0/8 is the loopback interface's, so a test can be a second
// peer of a server that tells its peers apart by source address.
func DialH2From(ctx context.Context, local, addr string, cfg *tls.Config) (*H2Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if local != "" {
		ip := net.ParseIP(local)
		if ip == nil {
			return nil, fmt.Errorf("DialH2From: local address %q is not an IP address", local)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	var conn net.Conn
	var err error
	if cfg != nil {
		cfg = cfg.Clone()
		cfg.NextProtos = []string{"h2"}
		conn, err = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	c := &H2Conn{conn: conn, connWin: 65535, initWin: 65535, streams: map[uint32]*H2Stream{}, nextID: 1, maxFrame: 16384, closed: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	c.out.conn = conn
	c.fr = http2.NewFramer(&c.out, conn)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	err = c.write(func() error {
		if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
			return err
		}
		return c.fr.WriteSettings()
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	go c.read()
	return c, nil
}

// write runs f, which writes frames with c.fr, under the write lock.
func (c *H2Conn) write(f func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return f()
}

// batchWriter is what the framer writes to: the connection, one write per
// frame, or while batch is set a buffer that flush sends in one write.
type batchWriter struct {
	conn  net.Conn
	batch bool
	buf   []byte
}

func (w *batchWriter) Write(p []byte) (int, error) {
	if w.batch {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	return w.conn.Write(p)
}

// flush sends the batched frames.
func (w *batchWriter) flush() error {
	_, err := w.conn.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}

// Close closes the connection.
func (c *H2Conn) Close() error { return c.conn.Close() }

// Closed is closed once the connection ended: the server closed it, or
// reading failed (Err says why).
func (c *H2Conn) Closed() <-chan struct{} { return c.closed }

// GoAway is what a GOAWAY frame of the server said.
type GoAway struct {
	Code         http2.ErrCode
	LastStreamID uint32 // the highest stream id it may have processed
	Debug        string // its debug data, if any
}

// GoAway returns what the last GOAWAY frame of the server said, or nil
// when none came.
func (c *H2Conn) GoAway() *GoAway {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goAway
}

// Err is the error that ended the reader (nil while it runs).
func (c *H2Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

func (c *H2Conn) read() {
	var err error
	defer func() {
		c.mu.Lock()
		c.readErr = err
		for _, s := range c.streams {
			c.finish(s)
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		close(c.closed)
	}()
	for {
		var f http2.Frame
		f, err = c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			c.mu.Lock()
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				delta := int64(v) - c.initWin
				c.initWin = int64(v)
				for _, s := range c.streams {
					s.win += delta
				}
			}
			if v, ok := f.Value(http2.SettingMaxFrameSize); ok {
				c.maxFrame = int(v)
			}
			c.cond.Broadcast()
			c.mu.Unlock()
			if err = c.write(c.fr.WriteSettingsAck); err != nil {
				return
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if err = c.write(func() error { return c.fr.WritePing(true, f.Data) }); err != nil {
					return
				}
			}
		case *http2.WindowUpdateFrame:
			c.mu.Lock()
			if f.StreamID == 0 {
				c.connWin += int64(f.Increment)
			} else if s := c.streams[f.StreamID]; s != nil {
				s.win += int64(f.Increment)
			}
			c.cond.Broadcast()
			c.mu.Unlock()
		case *http2.MetaHeadersFrame:
			c.mu.Lock()
			if s := c.streams[f.StreamID]; s != nil {
				if v := f.PseudoValue("status"); v != "" && s.HTTP == "" {
					s.HTTP = v
				}
				if v := f.Header().Flags; v.Has(http2.FlagHeadersEndStream) || hasField(f, "grpc-status") {
					for _, hf := range f.Fields {
						switch hf.Name {
						case "grpc-status":
							n, _ := strconv.Atoi(hf.Value)
							s.Status, s.Trailers = codes.Code(n), true
						case "grpc-message":
							s.Message = decodeGRPCMessage(hf.Value)
						}
					}
				}
				if f.StreamEnded() {
					c.finish(s)
				}
			}
			c.mu.Unlock()
		case *http2.DataFrame:
			c.mu.Lock()
			if s := c.streams[f.StreamID]; s != nil {
				s.Received += len(f.Data())
				if f.StreamEnded() {
					c.finish(s)
				}
			}
			c.mu.Unlock()
			// Give the window back so that responses flow.
			if n := f.Header().Length; n > 0 {
				err = c.write(func() error {
					if err := c.fr.WriteWindowUpdate(0, n); err != nil || f.StreamEnded() {
						return err
					}
					return c.fr.WriteWindowUpdate(f.StreamID, n)
				})
				if err != nil {
					return
				}
			}
		case *http2.RSTStreamFrame:
			c.mu.Lock()
			if s := c.streams[f.StreamID]; s != nil {
				s.Reset, s.ResetErr = true, f.ErrCode
				c.finish(s)
			}
			c.mu.Unlock()
		case *http2.GoAwayFrame:
			c.mu.Lock()
			c.goAway = &GoAway{Code: f.ErrCode, LastStreamID: f.LastStreamID, Debug: string(f.DebugData())}
			for id, s := range c.streams {
				if id > f.LastStreamID {
					c.finish(s)
				}
			}
			c.mu.Unlock()
		}
	}
}

func hasField(f *http2.MetaHeadersFrame, name string) bool {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return true
		}
	}
	return false
}

// decodeGRPCMessage undoes the percent-encoding of grpc-message.
func decodeGRPCMessage(v string) string {
	var b []byte
	for i := 0; i < len(v); i++ {
		if v[i] == '%' && i+2 < len(v) {
			if n, err := strconv.ParseUint(v[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(n))
				i += 2
				continue
			}
		}
		b = append(b, v[i])
	}
	return string(b)
}

// finish marks s ended. c.mu is held.
func (c *H2Conn) finish(s *H2Stream) {
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	c.cond.Broadcast()
}

// RequestHeaders are the request headers of a gRPC call of method
// ("/flwr.proto.Fleet/CreateNode"), in the order gRPC clients send them:
// the fields Open sends.
func RequestHeaders(method string) []hpack.HeaderField {
	return []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "https"},
		{Name: ":path", Value: method},
		{Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}
}

// Open starts a gRPC call of method ("/flwr.proto.Fleet/CreateNode") with
// its request HEADERS and returns the stream.
func (c *H2Conn) Open(method string) (*H2Stream, error) {
	return c.OpenHeaders(RequestHeaders(method))
}

// OpenHeaders starts a stream whose HEADERS carry fields as they are, in
// their order (duplicates, odd values and missing fields included), and
// returns the stream.
func (c *H2Conn) OpenHeaders(fields []hpack.HeaderField) (*H2Stream, error) {
	c.mu.Lock()
	id := c.nextID
	c.nextID += 2
	s := &H2Stream{ID: id, win: c.initWin, done: make(chan struct{})}
	c.streams[id] = s
	c.mu.Unlock()

	return s, c.write(func() error { return c.writeHeaders(id, fields, false) })
}

// writeHeaders writes one HEADERS frame with fields on stream id. c.wmu is
// held.
func (c *H2Conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	c.hbuf.Reset()
	for _, hf := range fields {
		if err := c.henc.WriteField(hf); err != nil {
			return err
		}
	}
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true, EndStream: end})
}

// burstFlush is how many frames a burst writes between flushes.
const burstFlush = 256

// burst calls frame n times under the write lock, flushing every
// burstFlush frames, until the server sent GOAWAY, the connection failed
// or ctx ended (a write blocked past ctx's deadline fails); it returns
// how many frames were flushed.
func (c *H2Conn) burst(ctx context.Context, n int, frame func() error) (int, error) {
	if d, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(d)
		defer c.conn.SetWriteDeadline(time.Time{})
	}
	done := 0
	for done < n {
		c.mu.Lock()
		stopped := c.goAway != nil || c.readErr != nil
		c.mu.Unlock()
		if stopped {
			return done, ErrStreamEnded
		}
		if err := ctx.Err(); err != nil {
			return done, err
		}
		k := min(burstFlush, n-done)
		err := c.write(func() error {
			c.out.batch = true
			defer func() { c.out.batch = false }()
			for range k {
				if err := frame(); err != nil {
					c.out.buf = c.out.buf[:0]
					return err
				}
			}
			return c.out.flush()
		})
		if err != nil {
			return done, err
		}
		done += k
	}
	return done, nil
}

// RapidReset opens n calls of method and cancels each at once: HEADERS
// then RST_STREAM (CANCEL) on a new stream, n times (the attack of
// CVE-2023-44487). It stops early, returning ErrStreamEnded, once the
// server sent GOAWAY or the connection failed, and at ctx's end. It
// returns how many pairs were written; the streams are not tracked.
func (c *H2Conn) RapidReset(ctx context.Context, method string, n int) (int, error) {
	fields := RequestHeaders(method)
	return c.burst(ctx, n, func() error {
		c.mu.Lock()
		id := c.nextID
		c.nextID += 2
		c.mu.Unlock()
		if err := c.writeHeaders(id, fields, false); err != nil {
			return err
		}
		return c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	})
}

// SettingsFlood writes n SETTINGS frames (each setting
// SETTINGS_MAX_CONCURRENT_STREAMS, which the server must acknowledge),
// stopping as RapidReset does, and returns how many were written.
func (c *H2Conn) SettingsFlood(ctx context.Context, n int) (int, error) {
	s := http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100}
	return c.burst(ctx, n, func() error { return c.fr.WriteSettings(s) })
}

// ErrStreamEnded is returned by Send when the server ended the stream
// before everything was sent.
var ErrStreamEnded = errors.New("the server ended the stream")

// Send sends a gRPC message on s: the 5-byte prefix declaring length
// bytes (uncompressed), then head, then zero bytes until sent bytes of body
// (head included) are on the wire, honouring flow control. With end, the
// last frame ends the stream. It returns ErrStreamEnded as soon as the
// server ended the stream, and gives up when ctx ends.
func (c *H2Conn) Send(ctx context.Context, s *H2Stream, length uint32, head []byte, sent int64, end bool) error {
	if sent < int64(len(head)) {
		return fmt.Errorf("Send: %d bytes to send but the head alone is %d", sent, len(head))
	}
	prefix := make([]byte, 5, 5+len(head))
	binary.BigEndian.PutUint32(prefix[1:], length)
	return c.send(ctx, s, append(prefix, head...), 5+sent, end)
}

// Continue sends n more zero bytes of body on s, as Send does.
func (c *H2Conn) Continue(ctx context.Context, s *H2Stream, n int64, end bool) error {
	return c.send(ctx, s, nil, n, end)
}

// send sends pending and then zeros, total bytes in all.
func (c *H2Conn) send(ctx context.Context, s *H2Stream, pending []byte, total int64, end bool) error {
	zeros := make([]byte, 16384)
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	var done int64
	for done < total || (end && total == 0 && done == 0) {
		c.mu.Lock()
		for !s.closed && c.readErr == nil && ctx.Err() == nil && total > 0 && (c.connWin <= 0 || s.win <= 0) {
			c.cond.Wait()
		}
		if s.closed || c.readErr != nil {
			c.mu.Unlock()
			return ErrStreamEnded
		}
		if err := ctx.Err(); err != nil {
			c.mu.Unlock()
			return err
		}
		n := min(int64(c.maxFrame), c.connWin, s.win, total-done)
		c.connWin -= n
		s.win -= n
		c.mu.Unlock()

		var chunk []byte
		if len(pending) > 0 {
			k := min(int(n), len(pending))
			chunk = append(chunk, pending[:k]...)
			pending = pending[k:]
		}
		chunk = append(chunk, zeros[:int(n)-len(chunk)]...)
		err := c.write(func() error { return c.fr.WriteData(s.ID, end && done+n == total, chunk) })
		if err != nil {
			return err
		}
		done += n
		c.mu.Lock()
		s.Sent += n
		c.mu.Unlock()
		if total == 0 {
			break
		}
	}
	return nil
}

// Result returns a copy of what the server answered on s so far.
func (c *H2Conn) Result(s *H2Stream) H2Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := *s
	r.done = nil
	return r
}

// PushTaskResHead returns the first bytes of a well-formed Flower
// PushTaskResRequest whose one TaskRes (run runID, answering the TaskIns
// ancestor, from node) carries one parameter array of n bytes: the whole
// message is these bytes followed by n zero bytes, so that a test can send
// a message of any size without holding it. Every message field comes
// before the array, which is the last field at every level.
func PushTaskResHead(runID, node int64, ancestor string, n int) []byte {
	type level struct {
		small []byte
		field protowire.Number
	}
	str := func(b []byte, num protowire.Number, s string) []byte {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendString(b, s)
	}
	var arr, pr, entry, task, res []byte
	arr = str(arr, 1, "<f4")
	arr = str(arr, 3, "numpy.ndarray")
	pr = str(pr, 1, "0")
	entry = str(entry, 1, "fitres.parameters")
	var producer []byte
	producer = protowire.AppendTag(producer, 1, protowire.VarintType)
	producer = protowire.AppendVarint(producer, protowire.EncodeZigZag(node))
	task = protowire.AppendTag(task, 1, protowire.BytesType)
	task = protowire.AppendBytes(task, producer)
	task = protowire.AppendTag(task, 2, protowire.BytesType)
	task = protowire.AppendBytes(task, []byte{0x10, 0x01}) // anonymous: true
	now := float64(time.Now().UnixMicro()) / 1e6
	task = protowire.AppendTag(task, 3, protowire.Fixed64Type)
	task = protowire.AppendFixed64(task, math.Float64bits(now))
	task = protowire.AppendTag(task, 6, protowire.Fixed64Type)
	task = protowire.AppendFixed64(task, math.Float64bits(3600))
	task = str(task, 7, ancestor)
	task = str(task, 8, "train")
	res = str(res, 2, "1")
	res = protowire.AppendTag(res, 3, protowire.VarintType)
	res = protowire.AppendVarint(res, protowire.EncodeZigZag(runID))
	levels := []level{
		{arr, 4},   // Array.data
		{pr, 2},    // ParametersRecord.data_values
		{entry, 2}, // map entry value
		{nil, 1},   // RecordSet.parameters
		{task, 9},  // Task.recordset
		{res, 4},   // TaskRes.task
		{nil, 1},   // PushTaskResRequest.task_res_list
	}
	var head []byte
	for _, l := range levels {
		h := append([]byte{}, l.small...)
		h = protowire.AppendTag(h, l.field, protowire.BytesType)
		h = protowire.AppendVarint(h, uint64(len(head)+n))
		head = append(h, head...)
	}
	return head
}

// Reset cancels s with RST_STREAM (CANCEL), as a client that gives up.
func (c *H2Conn) Reset(s *H2Stream) error {
	return c.write(func() error { return c.fr.WriteRSTStream(s.ID, http2.ErrCodeCancel) })
}

// WriteRaw writes a DATA frame on s with payload as it is, ignoring flow
// control: for tests that craft the gRPC framing themselves.
func (c *H2Conn) WriteRaw(s *H2Stream, payload []byte, end bool) error {
	return c.write(func() error { return c.fr.WriteData(s.ID, end, payload) })
}
