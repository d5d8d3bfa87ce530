package wire

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// messageBytes is a gRPC message body of n bytes that is not all alike,
// so that a byte out of place would show.
func messageBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>12)
	}
	return b
}

// messageFrames writes msg (body) declared as its length in DATA frames of
// the given payload sizes, padded by pad, the last one ending the stream
// when end.
func (s *clientScript) messageFrames(id uint32, body []byte, sizes []int, pad uint8, end bool) {
	msg := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(msg[1:], uint32(len(body)))
	msg = append(msg, body...)
	for i := 0; len(msg) > 0; i++ {
		k := min(len(msg), 16384-int(pad)-1)
		if i < len(sizes) {
			k = min(k, sizes[i])
		}
		last := k == len(msg)
		if pad > 0 {
			s.fr.WriteDataPadded(id, end && last, msg[:k], make([]byte, pad))
		} else {
			s.fr.WriteData(id, end && last, msg[:k])
		}
		msg = msg[k:]
	}
}

// dataFlow is what the DATA frames of stream id in a client's script take
// of the flow-control window: their lengths, padding included.
func dataFlow(t *testing.T, script []byte, id uint32) int64 {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(script[len(clientPreface):]))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var n int64
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		if h := f.Header(); h.Type == http2.FrameData && h.StreamID == id {
			n += int64(h.Length)
		}
	}
}

// A large admitted message never reaches gRPC as frames: gRPC gets the
// stream's HEADERS, one stand-in DATA frame ending the stream, and the
// stand-in resolves to exactly the message's bytes, in one buffer. The
// client gets back exactly the window its frames took (on the stream, and
// on the connection less the stand-in gRPC counts itself), however the
// frames are cut and padded and however the reads fall; small messages
// around it pass untouched, and the budget is free at the end.
func TestGuardCapturesLargeMessages(t *testing.T) {
	body := messageBytes(300000)
	s := newClientScript()
	s.headers(1, mPushTaskRes, 1000, 0, noPrio, false)
	s.headers(3, mPing, 1000, 0, noPrio, false)
	s.fr.WriteData(1, false, nil) // empty, before the message
	s.messageFrames(1, body, []int{2, 3, 7000, 1, 16000}, 5, true)
	s.message(3, 40, 40, nil, 0, true)
	script := s.buf.Bytes()
	flow := dataFlow(t, script, 1)

	for seed := range uint64(200) {
		b := testBudget(64 << 20)
		g := testGuard(b)
		g.late = 0
		read, written, end := guardRun(t, g, script, seed)
		lines := frameLines(t, read, hpack.NewDecoder(4096, nil), true)
		var got []string
		var standIn []byte
		fr := http2.NewFramer(nil, bytes.NewReader(read[len(clientPreface):]))
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 1 && len(d.Data()) > 0 {
				standIn = append([]byte(nil), d.Data()...)
			}
		}
		for _, l := range lines {
			if strings.HasSuffix(l, " 1") || strings.Contains(l, " 1 ") {
				got = append(got, l)
			}
		}
		// The empty DATA frame before the prefix is withheld with it, and
		// goes with the message.
		if len(got) != 2 || !strings.HasPrefix(got[0], "HEADERS 1") || got[1] != fmt.Sprintf("DATA 1 %d END_STREAM", grpcPrefixLen+StandInLen) {
			t.Fatalf("seed %d: gRPC gets of stream 1:\n%s", seed, strings.Join(got, "\n"))
		}
		if !strings.Contains(strings.Join(lines, "\n"), "DATA 3 45") {
			t.Fatalf("seed %d: the Ping did not pass:\n%s", seed, strings.Join(lines, "\n"))
		}
		if len(standIn) != grpcPrefixLen+StandInLen || binary.BigEndian.Uint32(standIn[1:]) != uint32(StandInLen) {
			t.Fatalf("seed %d: stand-in %x", seed, standIn)
		}
		buf, ok := g.standIns.Resolve(standIn[grpcPrefixLen:])
		if !ok || !bytes.Equal(buf, body) {
			t.Fatalf("seed %d: the stand-in resolves to %d bytes (%v), want the message's %d", seed, len(buf), ok, len(body))
		}
		end()
		var stream, conn int64
		wfr := http2.NewFramer(nil, bytes.NewReader(written))
		for {
			f, err := wfr.ReadFrame()
			if err != nil {
				break
			}
			w, ok := f.(*http2.WindowUpdateFrame)
			if !ok {
				t.Fatalf("seed %d: the guard wrote %v", seed, f.Header())
			}
			if w.StreamID == 0 {
				conn += int64(w.Increment)
			} else {
				stream += int64(w.Increment)
			}
		}
		if stream != flow || conn != flow-int64(grpcPrefixLen+StandInLen) {
			t.Fatalf("seed %d: window granted: stream %d, connection %d; the frames took %d", seed, stream, conn, flow)
		}
		if st := b.stats(); st.InflightBytes != 0 {
			t.Fatalf("seed %d: budget holds %d bytes", seed, st.InflightBytes)
		}
	}
}

// A captured message the client ends early reaches gRPC as its prefix
// alone, ending the stream, which gRPC reports as a message cut short; a
// stand-in whose stream ended before gRPC took it is gone from the
// stand-ins, and a message that is not a stand-in is not resolved.
func TestGuardCaptureCutShort(t *testing.T) {
	s := newClientScript()
	s.headers(1, mPushTaskRes, 1000, 0, noPrio, false)
	s.message(1, 200000, 100000, nil, 0, true)
	script := s.buf.Bytes()
	b := testBudget(64 << 20)
	g := testGuard(b)
	g.late = 0
	read, _ := guardOutput(t, g, script, 3)
	lines := frameLines(t, read, hpack.NewDecoder(4096, nil), true)
	last := lines[len(lines)-1]
	if last != "DATA 1 5 END_STREAM" {
		t.Fatalf("gRPC gets:\n%s", strings.Join(lines, "\n"))
	}
	if n := g.standIns.held(); n != 0 {
		t.Fatalf("%d stand-ins held", n)
	}
	if _, ok := g.standIns.Resolve(make([]byte, StandInLen)); ok {
		t.Fatal("zeros resolved as a stand-in")
	}
	if st := b.stats(); st.InflightBytes != 0 {
		t.Fatalf("budget holds %d bytes", st.InflightBytes)
	}
}
