package superlink

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state/memstate"
)

// handled records the size of every request gRPC handed to a handler.
type handled struct {
	mu    sync.Mutex
	sizes map[string][]int
}

func (h *handled) interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok {
		h.mu.Lock()
		h.sizes[info.FullMethod] = append(h.sizes[info.FullMethod], proto.Size(m))
		h.mu.Unlock()
	}
	return next(ctx, req)
}

func (h *handled) largest() (string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	method, n := "", 0
	for m, sizes := range h.sizes {
		for _, s := range sizes {
			if s > n {
				method, n = m, s
			}
		}
	}
	return method, n
}

// overLimit returns a request handed to a handler past its method's limit.
func (h *handled) overLimit() (string, int, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for m, sizes := range h.sizes {
		limit, _ := methodLimit(m)
		for _, s := range sizes {
			if int64(s) > limit {
				return m, s, true
			}
		}
	}
	return "", 0, false
}

// headerRig is a SuperLink over TLS whose handlers record what gRPC hands
// them, for raw HTTP/2 requests.
type headerRig struct {
	addr string
	cfg  *tls.Config
	h    *handled
	sl   *SuperLink
}

func newHeaderRig(t testing.TB) *headerRig {
	t.Helper()
	creds, caFile := testCerts(t)
	h := &handled{sizes: map[string][]int{}}
	sl := New(Options{Logger: slog.New(slog.DiscardHandler), State: memstate.New(memstate.Options{}),
		ServerOptions: []grpc.ServerOption{grpc.ChainUnaryInterceptor(h.interceptor)}})
	link := testkit.Serve(t, serveOn(sl, creds))
	f := &fixture{caFile: caFile}
	return &headerRig{addr: link.Fleet, cfg: f.tlsConfig(t), h: h, sl: sl}
}

// send opens a connection, sends one request with the header fields given
// and body (a whole gRPC message, prefix included) and waits until the
// server ended the stream or the connection.
func (r *headerRig) send(t testing.TB, fields []hpack.HeaderField, body []byte) {
	t.Helper()
	raw, err := tls.Dial("tcp", r.addr, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	for _, f := range fields {
		enc.WriteField(f)
	}
	w := &bytes.Buffer{}
	w.WriteString(clientPreface)
	fr := http2.NewFramer(w, nil)
	fr.AllowIllegalWrites = true
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	fr.WriteWindowUpdate(0, 1<<30)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hbuf.Bytes(), EndHeaders: true})
	if _, err := raw.Write(w.Bytes()); err != nil {
		t.Fatal(err)
	}
	// The body, as fast as the server's window lets it (the reader below
	// keeps count), in a goroutine: the server may refuse it early.
	rfr := http2.NewFramer(io.Discard, raw)
	rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	connWin, streamWin, done := int64(65535), int64(65535), false
	go func() {
		wfr := http2.NewFramer(raw, nil)
		for len(body) > 0 {
			mu.Lock()
			for !done && (connWin <= 0 || streamWin <= 0) {
				cond.Wait()
			}
			if done {
				mu.Unlock()
				return
			}
			n := min(int64(len(body)), 16384, connWin, streamWin)
			connWin -= n
			streamWin -= n
			mu.Unlock()
			if wfr.WriteData(1, int64(len(body)) == n, body[:n]) != nil {
				return
			}
			body = body[n:]
		}
	}()
	defer func() {
		mu.Lock()
		done = true
		cond.Broadcast()
		mu.Unlock()
	}()
	for {
		f, err := rfr.ReadFrame()
		if err != nil {
			return // the connection ended
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				mu.Lock()
				streamWin += int64(v) - 65535
				cond.Broadcast()
				mu.Unlock()
			}
		case *http2.WindowUpdateFrame:
			mu.Lock()
			if f.StreamID == 0 {
				connWin += int64(f.Increment)
			} else {
				streamWin += int64(f.Increment)
			}
			cond.Broadcast()
			mu.Unlock()
		case *http2.RSTStreamFrame:
			return
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				return
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				return
			}
		case *http2.GoAwayFrame:
			return
		}
	}
}

// oversized is a well-formed CreateNodeRequest of SmallMessageSize+n
// bytes (an unknown field makes up the size), as a gRPC message.
func oversized(n int) []byte {
	m := padded(&flwrproto.CreateNodeRequest{PingInterval: 30}, SmallMessageSize+n)
	b, _ := proto.Marshal(m)
	msg := make([]byte, 5, 5+len(b))
	msg[1], msg[2], msg[3], msg[4] = byte(len(b)>>24), byte(len(b)>>16), byte(len(b)>>8), byte(len(b))
	return append(msg, b...)
}

// headerCandidates are header fields a fuzzer combines: what grpc-go reads
// to decide whether and where to serve a request, with odd spellings.
var headerCandidates = []hpack.HeaderField{
	{Name: ":method", Value: "POST"}, {Name: ":method", Value: "GET"}, {Name: ":method", Value: "post"},
	{Name: ":scheme", Value: "https"}, {Name: ":scheme", Value: "http"},
	{Name: ":path", Value: mCreateNode}, {Name: ":path", Value: mPushTaskRes}, {Name: ":path", Value: "flwr.proto.Fleet/CreateNode"},
	{Name: ":path", Value: "/flwr.proto.Fleet/CreateNode/"}, {Name: ":path", Value: "//flwr.proto.Fleet/CreateNode"},
	{Name: ":path", Value: "/flwr.proto.Fleet/PushTaskRes?x"},
	{Name: ":authority", Value: "localhost"}, {Name: "host", Value: "localhost"},
	{Name: "content-type", Value: "application/grpc"}, {Name: "content-type", Value: "text/plain"},
	{Name: "content-type", Value: "application/grpc+proto"}, {Name: "content-type", Value: "application/grpc;charset=x"},
	{Name: "content-type", Value: "application/grpcx"}, {Name: "content-type", Value: "APPLICATION/GRPC"},
	{Name: "te", Value: "trailers"}, {Name: "te", Value: "gzip"},
	{Name: "grpc-encoding", Value: "identity"}, {Name: "grpc-timeout", Value: "10S"},
	{Name: "user-agent", Value: "grpc-python/1.62"}, {Name: "x-extra", Value: "1"},
}

// headerSet turns fuzz input into header fields: pseudo-headers first
// (as HTTP/2 wants, though a client may break the rule), then the rest,
// any of them repeated.
func headerSet(data []byte) []hpack.HeaderField {
	var pseudo, regular []hpack.HeaderField
	for _, b := range data {
		f := headerCandidates[int(b)%len(headerCandidates)]
		if b >= 128 { // out of order on purpose
			regular = append(regular, f)
		} else if strings.HasPrefix(f.Name, ":") {
			pseudo = append(pseudo, f)
		} else {
			regular = append(regular, f)
		}
	}
	return append(pseudo, regular...)
}

// Whatever headers a request carries, if gRPC hands it to a handler it
// went through the guard's limits: no handler ever gets a request larger
// than its method takes (a path gRPC serves is one the guard knows: an
// oversized CreateNode is refused, a PushTaskRes of that size is not). The seeds are the tricks an attacker tried:
// two content-type values (a gRPC one, then another), odd casing, a
// missing te, a content-type with a subtype.
func FuzzGuardHeaders(f *testing.F) {
	base := []byte{0, 3, 5, 11, 13, 19, 23}
	f.Add(base)
	f.Add(append(append([]byte{}, base...), 14))   // application/grpc, then text/plain
	f.Add([]byte{0, 3, 5, 11, 14, 13})             // text/plain, then application/grpc
	f.Add([]byte{0, 3, 5, 11, 15})                 // application/grpc+proto, no te
	f.Add([]byte{0, 3, 5, 11, 16, 18, 20})         // a parameter, upper case too
	f.Add([]byte{0, 3, 6, 5, 11, 13, 19})          // two paths
	f.Add([]byte{0, 3, 7, 12, 13, 19})             // a path without its slash, Host for :authority
	f.Add([]byte{1, 0, 3, 5, 11, 13, 19})          // two methods
	f.Add([]byte{0, 3, 5, 11, 13, 128 + 13, 19})   // a content-type after the others
	f.Add([]byte{0, 3, 5, 11, 13, 19, 21, 22, 24}) // encodings, timeouts, extras
	r := newHeaderRig(f)
	body := oversized(1000)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 24 {
			return
		}
		r.send(t, headerSet(data), body)
		if m, n, over := r.h.overLimit(); over {
			t.Fatalf("gRPC handed %s a request of %d bytes, past its limit, with headers %v", m, n, headerSet(data))
		}
	})
}

// The tricks an attacker tried, each refused at the prefix, and a
// request with the usual headers handled (the rig itself works).
func TestGuardHeaderTricks(t *testing.T) {
	r := newHeaderRig(t)
	normal := headerSet([]byte{0, 3, 5, 11, 13, 19, 23})
	small, _ := proto.Marshal(&flwrproto.CreateNodeRequest{PingInterval: 30})
	r.send(t, normal, append([]byte{0, 0, 0, 0, byte(len(small))}, small...))
	if _, n := r.h.largest(); n == 0 {
		t.Fatal("the usual request was not handled: the rig does not reach gRPC")
	}
	before := r.sl.LimitStats().Refused[RefusedTooLarge]
	tricks := map[string][]byte{
		"grpc then text/plain":   {0, 3, 5, 11, 13, 14, 19},
		"text/plain then grpc":   {0, 3, 5, 11, 14, 13, 19},
		"grpc+proto, no te":      {0, 3, 5, 11, 15},
		"subtype and upper case": {0, 3, 5, 11, 16, 18, 19},
		"content-type last":      {0, 3, 5, 11, 19, 128 + 13},
	}
	for name, set := range tricks {
		r.send(t, headerSet(set), oversized(1000))
		if m, n := r.h.largest(); n > SmallMessageSize {
			t.Fatalf("%s: gRPC handed %s a request of %d bytes", name, m, n)
		}
	}
	if got := r.sl.LimitStats().Refused[RefusedTooLarge] - before; got != uint64(len(tricks)) {
		t.Errorf("%d requests refused as too large, want %d", got, len(tricks))
	}
}

// oversized decodes as a CreateNodeRequest of the size asked.
func TestOversizedShape(t *testing.T) {
	b := oversized(10)
	var m flwrproto.CreateNodeRequest
	if err := proto.Unmarshal(b[5:], &m); err != nil || m.PingInterval != 30 || proto.Size(&m) != SmallMessageSize+10+protowire.SizeTag(999)+protowire.SizeVarint(SmallMessageSize+10)+9 {
		t.Fatalf("%v %v size %d", err, m.PingInterval, proto.Size(&m))
	}
}
