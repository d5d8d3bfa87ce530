package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// headerTrick is a set of request headers that differs from a gRPC
// client's.
type headerTrick struct {
	name    string
	headers func(method string) []hpack.HeaderField
}

// edited returns the request headers of a method as edit changes them.
func edited(edit func(h []hpack.HeaderField) []hpack.HeaderField) func(string) []hpack.HeaderField {
	return func(method string) []hpack.HeaderField { return edit(testkit.RequestHeaders(method)) }
}

// setField sets the value of the first field called name.
func setField(h []hpack.HeaderField, name, value string) []hpack.HeaderField {
	for i := range h {
		if h[i].Name == name {
			h[i].Value = value
			break
		}
	}
	return h
}

// dropField removes the fields called name.
func dropField(h []hpack.HeaderField, name string) []hpack.HeaderField {
	var out []hpack.HeaderField
	for _, f := range h {
		if f.Name != name {
			out = append(out, f)
		}
	}
	return out
}

// insertAfter inserts f after the first field called name.
func insertAfter(h []hpack.HeaderField, name string, f hpack.HeaderField) []hpack.HeaderField {
	for i := range h {
		if h[i].Name == name {
			return append(h[:i+1], append([]hpack.HeaderField{f}, h[i+1:]...)...)
		}
	}
	return append(h, f)
}

// headerTricks are the request headers tried on the guard. The first is
// the one that once got past it: grpc-go serves a request one of whose content-types is
// valid, and the guard read the last one. The test finds out which of the
// others grpc-go serves, and attacks through those.
var headerTricks = []headerTrick{
	{"content-type application/grpc then text/plain", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return append(h, hpack.HeaderField{Name: "content-type", Value: "text/plain"})
	})},
	{"content-type text/plain then application/grpc", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return append(setField(h, "content-type", "text/plain"), hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	})},
	{"content-type application/grpc+proto", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return setField(h, "content-type", "application/grpc+proto")
	})},
	{"content-type application/grpc;", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return setField(h, "content-type", "application/grpc;")
	})},
	{"content-type APPLICATION/GRPC", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return setField(h, "content-type", "APPLICATION/GRPC")
	})},
	{"content-type application/grpc twice", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return append(h, hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	})},
	{"no content-type", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return dropField(h, "content-type")
	})},
	{"no te", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return dropField(h, "te")
	})},
	{"te gzip", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return setField(h, "te", "gzip")
	})},
	{"a second :path", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return insertAfter(h, ":path", hpack.HeaderField{Name: ":path", Value: mPing})
	})},
	{"host instead of :authority", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return append(dropField(h, ":authority"), hpack.HeaderField{Name: "host", Value: "localhost"})
	})},
	{"grpc-encoding identity", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return append(h, hpack.HeaderField{Name: "grpc-encoding", Value: "identity"})
	})},
	{"metadata before content-type", edited(func(h []hpack.HeaderField) []hpack.HeaderField {
		return insertAfter(h, ":authority", hpack.HeaderField{Name: "user-agent", Value: "grpc-go/1.85.0"})
	})},
}

// probe reports whether grpc-go serves a health check with the trick's
// headers (an OK answer with a response message), and what came, on a
// connection of its own from the attacker's address.
func (b *attackBed) probe(ctx context.Context, h headerTrick) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := b.dialAttacker(ctx, 0, b.sl.fleet)
	if err != nil {
		b.t.Fatalf("attacker's connection: %v", err)
	}
	defer c.Close()
	s, err := c.OpenHeaders(h.headers(mHealth))
	if err != nil {
		return false, err.Error()
	}
	if err := c.Send(ctx, s, 0, nil, 0, true); err != nil && !errors.Is(err, testkit.ErrStreamEnded) {
		return false, err.Error()
	}
	select {
	case <-s.Done():
	case <-ctx.Done():
	}
	r := c.Result(s)
	return r.Trailers && r.Status == codes.OK && r.Received > 0, fmt.Sprintf("%s, %d bytes of response", r.String(), r.Received)
}

// Header tricks: requests that grpc-go serves whatever their odd headers
// (two content-types, application/grpc+proto, no te, a host header...)
// are guarded like any other. For each such header set, from one attacker
// address: 4 x 200 MB CreateNode are refused at their length prefix with
// ResourceExhausted naming the 1 MiB limit (peak RSS growth under 64
// MiB); Driver GetNodes 2 x 300 MB too; 4 x 200 MB complete PushTaskRes
// under --max-inflight-bytes 256MiB are read only as far as the budget
// admits (one; growth under 256 MiB + 64 MiB), the others refused. The
// legitimate FedAvg run finishes every round with both nodes.
func TestAttackHeaderTricks(t *testing.T) {
	needE2E(t)
	bed := newBed(t, bedOptions{args: []string{"--max-inflight-bytes", "256MiB"}, metrics: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var served []headerTrick
	for _, h := range headerTricks {
		ok, what := bed.probe(ctx, h)
		t.Logf("%s: served %v (%s)", h.name, ok, what)
		if ok {
			served = append(served, h)
		}
	}
	if len(served) == 0 || served[0].name != headerTricks[0].name {
		t.Fatalf("grpc-go no longer serves the first trick's request (%s): the test needs a new trick", headerTricks[0].name)
	}

	// About a round per header set (each set's three attacks take 2 s
	// when refused at once).
	run := bed.startRun(len(served) + 4)
	if !run.waitRounds(1, time.Minute) {
		t.Fatal("the legitimate run finished no round within a minute")
	}
	health := bed.watchHealth()
	var total cost
	add := func(c cost) {
		total.grew = max(total.grew, c.grew)
		total.cpu += c.cpu
	}
	const size = 200e6
	head := testkit.PushTaskResHead(1, 2, noSuchTaskIns, size)
	for _, h := range served {
		t.Run(h.name, func(t *testing.T) {
			res, c := bed.measuredAttack(t, bed.sl.fleet, attackSpec{
				method: mCreateNode, streams: 4, declared: size, sent: size, end: true, from: attackerIP(0), headers: h.headers,
			})
			add(c)
			t.Logf("4 x 200 MB CreateNode: %s; %v", outcomes(res), c)
			refusedAt(t, "CreateNode", res, "1 MiB")
			if c.grew >= attackSlack {
				t.Errorf("CreateNode: peak RSS grew by %d MiB, want under %d MiB", c.grew/mib, attackSlack/mib)
			}

			res, c = bed.measuredAttack(t, bed.sl.driver, attackSpec{
				method: mGetNodes, streams: 2, declared: 300e6, sent: 300e6, end: true, from: attackerIP(0), headers: h.headers,
			})
			add(c)
			t.Logf("2 x 300 MB Driver GetNodes: %s; %v", outcomes(res), c)
			refusedAt(t, "GetNodes", res, "1 MiB")
			if c.grew >= attackSlack {
				t.Errorf("GetNodes: peak RSS grew by %d MiB, want under %d MiB", c.grew/mib, attackSlack/mib)
			}

			res, c = bed.measuredAttack(t, bed.sl.fleet, attackSpec{
				method: mPushTaskRes, streams: 4, declared: uint32(len(head) + size), sent: int64(len(head) + size), end: true,
				head: func(int) []byte { return head }, from: attackerIP(0), headers: h.headers,
			})
			add(c)
			t.Logf("4 x 200 MB PushTaskRes: %s; %v", outcomes(res), c)
			if n := admittedPushes(t, "PushTaskRes", res); n < 1 || n > 2 {
				t.Errorf("PushTaskRes: %d pushes were read, want 1 (or 2 if one finished before the last began)", n)
			}
			if bound := 256*mib + attackSlack; c.grew >= bound {
				t.Errorf("PushTaskRes: peak RSS grew by %d MiB, want under %d MiB (the budget and %d MiB)", c.grew/mib, bound/mib, attackSlack/mib)
			}
		})
	}
	h := health.end()
	end := time.Now()
	rep := run.wait(t, 3*time.Minute)
	t.Logf("legitimate run: %v; %v", rep, h)
	summary(t, fmt.Sprintf("header tricks (%d served of %d tried)", len(served), len(headerTricks)), total, &rep,
		fmt.Sprintf("peak growth is the largest of any one attack, CPU their sum; the run went on past the attacks: %v", rep.lastedPast(end)))
	rep.check(t, 2)
	if err := checkHealth(t, bed.sl.fleet, bed.tls); err != nil {
		t.Errorf("health after the attacks: %v", err)
	}
}
