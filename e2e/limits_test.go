package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/testkit"
)

const mib = 1 << 20

// vm reads the current and peak RSS of process pid.
func vm(t testing.TB, pid int) load.Memory {
	t.Helper()
	m, err := load.ReadMemory(pid)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// attackSpec is one raw HTTP/2 attack: streams calls of method on one
// connection, all at once, each declaring declared bytes in its gRPC
// prefix and sending sent bytes of body (head first, zeros after).
type attackSpec struct {
	method   string
	streams  int
	declared uint32
	sent     int64
	head     func(i int) []byte
	end      bool // the last DATA frame ends the stream
	// from is the attacker's local IP address, such as 127.0.0.2 ("":
	// the system's choice, 127.0.0.1).
	from string
	// headers are the request headers of each stream (nil:
	// testkit.RequestHeaders).
	headers func(method string) []hpack.HeaderField
}

// attack runs spec against addr and returns each stream's outcome once
// every stream was answered or had sent all it meant to, plus how long it
// took. The connection stays open until the test ends, as a patient
// attacker's would.
func attack(t testing.TB, addr string, cfg *tls.Config, spec attackSpec) ([]testkit.H2Stream, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := testkit.DialH2From(ctx, spec.from, addr, cfg)
	if err != nil {
		t.Fatalf("attacker's connection: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	begin := time.Now()
	out, errs := attackOn(ctx, c, spec)
	for i, err := range errs {
		if err != nil {
			t.Errorf("stream %d: %v", i, err)
		}
	}
	return out, time.Since(begin)
}

// attackOn runs spec on c and returns each stream's outcome and what went
// wrong in sending it, once every stream was answered or had sent all it
// meant to (or ctx ended).
func attackOn(ctx context.Context, c *testkit.H2Conn, spec attackSpec) ([]testkit.H2Stream, []error) {
	headers := spec.headers
	if headers == nil {
		headers = testkit.RequestHeaders
	}
	streams := make([]*testkit.H2Stream, spec.streams)
	var wg sync.WaitGroup
	errs := make([]error, spec.streams)
	for i := range streams {
		s, err := c.OpenHeaders(headers(spec.method))
		if err != nil {
			errs[i] = fmt.Errorf("opening the stream: %w", err)
			continue
		}
		streams[i] = s
		var head []byte
		if spec.head != nil {
			head = spec.head(i)
		}
		wg.Go(func() {
			err := c.Send(ctx, s, spec.declared, head, spec.sent, spec.end)
			if errors.Is(err, testkit.ErrStreamEnded) {
				err = nil
			}
			if err == nil && spec.end {
				// A complete message: wait for its answer.
				select {
				case <-s.Done():
				case <-ctx.Done():
					err = fmt.Errorf("no answer: %w", ctx.Err())
				}
			}
			errs[i] = err
		})
	}
	wg.Wait()
	out := make([]testkit.H2Stream, len(streams))
	for i, s := range streams {
		if s != nil {
			out[i] = c.Result(s)
		}
	}
	return out, errs
}

// A memory attack against the real binary: a stranger
// who completed a TLS handshake opens 4 CreateNode streams on one
// connection, each declaring 536,870,000 bytes and sending 150 MB. Every
// stream is refused at its first DATA frame with ResourceExhausted naming
// the 1 MiB limit, and the SuperLink's peak RSS (VmHWM) grows by less than
// 64 MiB over its peak before the attack: 10% of the 600 MB the stranger
// tried to make it hold (without the limit it held all of it, 633 MiB).
func TestAttackSmallMethodBodies(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{certs: true})
	pid := sl.cmd.Process.Pid
	before := vm(t, pid).HWM
	res, took := attack(t, sl.fleet, sl.tls, attackSpec{
		method: "/flwr.proto.Fleet/CreateNode", streams: 4, declared: 536870000, sent: 150e6,
	})
	time.Sleep(time.Second) // whatever the SuperLink still reads
	hwm := vm(t, pid).HWM
	t.Logf("VmHWM %d MiB before, %d MiB after the attack (%v); VmRSS now %d MiB", before/mib, hwm/mib, took.Round(time.Millisecond), vm(t, pid).RSS/mib)
	for _, r := range res {
		t.Logf("%s", r.String())
		if !r.Trailers || r.Status != codes.ResourceExhausted || !strings.Contains(r.Message, "1 MiB") {
			t.Errorf("%s, want ResourceExhausted naming the 1 MiB limit", r.String())
		}
		if r.Sent > 16*mib {
			t.Errorf("stream %d could send %d bytes before it was refused", r.ID, r.Sent)
		}
	}
	if grew := hwm - before; grew > 64*mib {
		t.Errorf("the SuperLink's peak RSS grew by %d MiB during the attack, want under 64 MiB", grew/mib)
	}
	if err := checkHealth(t, sl.fleet, sl.tls); err != nil {
		t.Errorf("health after the attack: %v", err)
	}
}

// Six streams on one connection, each a complete 200 MB PushTaskRes
// (well-formed, one 200 MB array, from a node that does not exist),
// against a SuperLink run with --max-inflight-bytes 256MiB. One push fits
// the peer's share of the budget (three quarters) and is read (then
// refused by the state: no such TaskIns); the five others are refused at
// their prefix with ResourceExhausted naming the budget, before 16 MiB of
// each arrived. The bound: what is admitted is at most the budget, and an
// admitted byte costs the SuperLink one byte (the guard reads the push
// into one buffer that the codec decodes in place), so its peak RSS grows
// by under 256 MiB + 64 MiB, a quarter of the 1.2 GB sent (without the
// limits it grew by 1.9 GiB; with the frames and a decoded copy, by 405
// to 430 MiB).
func TestAttackLargePushes(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{certs: true, args: []string{"--max-inflight-bytes", "256MiB"}})
	pid := sl.cmd.Process.Pid
	before := vm(t, pid).HWM
	const size = 200e6
	head := testkit.PushTaskResHead(1, 2, "6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1", size)
	res, took := attack(t, sl.fleet, sl.tls, attackSpec{
		method: "/flwr.proto.Fleet/PushTaskRes", streams: 6, declared: uint32(len(head) + size), sent: int64(len(head) + size),
		head: func(int) []byte { return head }, end: true,
	})
	time.Sleep(time.Second)
	hwm := vm(t, pid).HWM
	t.Logf("VmHWM %d MiB before, %d MiB after the attack (%v); VmRSS now %d MiB", before/mib, hwm/mib, took.Round(time.Millisecond), vm(t, pid).RSS/mib)
	admitted := 0
	for _, r := range res {
		t.Logf("%s", r.String())
		switch {
		case !r.Trailers:
			t.Errorf("%s, want an answer", r.String())
		case r.Status == codes.ResourceExhausted:
			if !strings.Contains(r.Message, "refused for now") || !strings.Contains(r.Message, "in-flight budget") || !strings.Contains(r.Message, "256 MiB") {
				t.Errorf("%s, want the budget named", r.String())
			}
			if r.Sent > 16*mib {
				t.Errorf("stream %d sent %d bytes before it was refused", r.ID, r.Sent)
			}
		case r.Status == codes.NotFound:
			admitted++
		default:
			t.Errorf("%s, want NotFound (read, no such TaskIns) or ResourceExhausted", r.String())
		}
	}
	if admitted < 1 || admitted > 2 {
		t.Errorf("%d pushes were read, want 1 (or 2 if one finished before the last began)", admitted)
	}
	if grew := hwm - before; grew > 320*mib {
		t.Errorf("the SuperLink's peak RSS grew by %d MiB during the attack, want under 256 + 64 MiB", grew/mib)
	}
	if err := checkHealth(t, sl.fleet, sl.tls); err != nil {
		t.Errorf("health after the attack: %v", err)
	}
	if !strings.Contains(sl.out.String(), `level=WARN msg="request refused by a limit"`) {
		t.Errorf("no warning logged:\n%s", sl.out.String())
	}
}
