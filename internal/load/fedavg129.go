package load

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/inflatable"
	"github.com/sepal-fl/sepal/transport"
)

// The FedAvg workload of Flower 1.29.0, spoken directly in Go so that
// Python's own cost hides nothing of the SuperLink's: SuperNodes with EC
// keys that register, activate, heartbeat and sign every Fleet call,
// pull messages and their objects and push replies with theirs; a
// ServerApp that starts its run through the Control API, takes the run's
// token and inputs on ServerAppIo as a SuperExec and flwr-serverapp do,
// and runs Flower's FedAvg: per round a train message per node carrying
// the model (one float32 array, cut into 5 MiB chunks), a same-size reply
// per node, aggregated, then an evaluate message per node carrying the
// new model and small replies. The objects are Flower's, byte for byte
// (package inflatable), and so are the calls and their order
// (py/flwr/supernode/start_client_internal.py, py/flwr/server/grid/
// grpc_grid.py, py/flwr/supercore/inflatable/inflatable_utils.py).

// FedAvg129Options describe the Flower 1.29.0 FedAvg workload.
type FedAvg129Options struct {
	// Nodes is the number of SuperNodes (default 2), each with its own
	// TLS connection and key (P-384, as Flower's SuperNodes make).
	Nodes int
	// Rounds is the number of FedAvg rounds (default 2).
	Rounds int
	// ModelBytes is the size of the model: one float32 array of
	// ModelBytes/4 values (default 32 MiB). Its .npy encoding adds 128
	// bytes of header.
	ModelBytes int
	// NodePoll is a SuperNode's wait between PullMessages calls when none
	// came (default 3s, as Flower 1.29.0).
	NodePoll time.Duration
	// ServerPoll is the ServerApp's wait between PullMessages calls while
	// replies are missing (default 3s, as Flower 1.29.0's grid).
	ServerPoll time.Duration
	// InStep starts every node at once; by default node i starts
	// i*NodePoll/Nodes after the first, as SuperNodes started one by one.
	InStep bool
	// Concurrency is how many objects a peer pushes or pulls at once
	// (default 2: Flower's FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES and
	// _PULLS, within the cores of this machine).
	Concurrency int
	// Logger receives the peers' logs (default: discard).
	Logger *slog.Logger
}

func (o FedAvg129Options) withDefaults() (FedAvg129Options, error) {
	o.ServerPoll = cmp.Or(max(o.ServerPoll, 0), 3*time.Second) // Flower 1.29.0's grid; 1.8.0's driver polled every second
	o.Concurrency = cmp.Or(max(o.Concurrency, 0), 2)
	c, err := FedAvgOptions{Nodes: o.Nodes, Rounds: o.Rounds, ModelBytes: o.ModelBytes,
		NodePoll: o.NodePoll, ServerPoll: o.ServerPoll, Logger: o.Logger}.withDefaults()
	o.Nodes, o.Rounds, o.ModelBytes, o.NodePoll, o.Logger = c.Nodes, c.Rounds, c.ModelBytes, c.NodePoll, c.Logger
	return o, err
}

// FedAvg129Result is one Flower 1.29.0 FedAvg run.
type FedAvg129Result struct {
	FedAvgResult
	// HeldPeak is the most object bytes the protocol made the SuperLink
	// hold at once (see holdings).
	HeldPeak int64
	// Start is the SuperLink's memory before the nodes came.
	Start Memory
	// Fleet and AppIo are the object bytes moved through the Fleet API
	// (TLS: the nodes) and ServerAppIo (plaintext, as Flower's processes
	// speak it: the ServerApp); Part is the largest object (a whole chunk
	// with its head).
	Fleet, AppIo Traffic
	Part         int64
	// FleetCalls is the number of signed Fleet calls the nodes made, each
	// of which the SuperLink verifies.
	FleetCalls int64
}

// Traffic is the object bytes pushed to the SuperLink (In) and pulled
// from it (Out) through one API.
type Traffic struct{ In, Out int64 }

// In is every object byte pushed, through either API: what the SuperLink
// hashed.
func (r FedAvg129Result) In() int64 { return r.Fleet.In + r.AppIo.In }

// RunFedAvg129 runs the Flower 1.29.0 FedAvg workload on s (started with
// Options.Flower129 or Options.Flower): o.Nodes SuperNodes join, the
// ServerApp starts a run through the Control API and runs o.Rounds
// rounds over them, then the nodes leave (DeactivateNode,
// UnregisterNode). It returns an error if a node or the ServerApp fails,
// or if the ServerApp averaged fewer nodes than o.Nodes.
func RunFedAvg129(ctx context.Context, s *SuperLink, o FedAvg129Options) (FedAvg129Result, error) {
	var res FedAvg129Result
	o, err := o.withDefaults()
	if err != nil {
		return res, err
	}
	if s.AppIo == "" || s.Control == "" {
		return res, errors.New("the SuperLink serves no Flower 1.29.0 ServerAppIo and Control APIs: start it with Options.Flower129")
	}
	w := &world129{o: o, held: newHoldings()}
	if res.Start, err = s.Memory(); err != nil {
		return res, err
	}
	tlsCreds, err := transport.ClientCredentials(s.TLS)
	if err != nil {
		return res, err
	}

	nctx, stopNodes := context.WithCancel(ctx)
	defer stopNodes()
	var wg sync.WaitGroup
	nodeErr := make(chan error, o.Nodes)
	for i := range o.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !o.InStep && sleepCtx(nctx, o.NodePoll*time.Duration(i)/time.Duration(o.Nodes)) != nil {
				return
			}
			if err := runNode129(nctx, w, s.Fleet, tlsCreds, i); err != nil && nctx.Err() == nil {
				nodeErr <- fmt.Errorf("node %d: %w", i, err)
				stopNodes()
			}
		}()
	}
	defer wg.Wait()

	rounds := &roundClock{s: s}
	if rounds.last, err = s.CPU(); err != nil {
		return res, err
	}
	faults0, err := s.PageFaults()
	if err != nil {
		return res, err
	}
	start := time.Now()
	averaged, roundTimes, err := runServerApp129(nctx, w, s, tlsCreds, func() { _, _ = rounds.Write([]byte("round ")) })
	res.Wall = time.Since(start)
	if err := res.serverDone(s, err, nodeErr, faults0); err != nil {
		return res, err
	}
	res.Rounds, res.RoundCPU = roundTimes, rounds.cpu
	if averaged != o.Nodes {
		return res, fmt.Errorf("the last round averaged %d nodes, want %d", averaged, o.Nodes)
	}
	stopNodes()
	wg.Wait()
	select {
	case nerr := <-nodeErr:
		return res, nerr
	default:
	}
	res.HeldPeak = w.held.peakBytes()
	res.Fleet, res.AppIo, res.Part = w.fleet.load(), w.appIo.load(), w.part.Load()
	res.FleetCalls = w.fleetCalls.Load()
	return res, nil
}

// world129 is what the peers of one run share.
type world129 struct {
	o            FedAvg129Options
	held         *holdings
	fleet, appIo traffic
	part         atomic.Int64
	fleetCalls   atomic.Int64
}

// traffic counts the object bytes moved through one API.
type traffic struct{ in, out atomic.Int64 }

func (t *traffic) load() Traffic { return Traffic{In: t.in.Load(), Out: t.out.Load()} }

// pushed counts an object pushed through t.
func (w *world129) pushed(t *traffic, n int) {
	t.in.Add(int64(n))
	for {
		p := w.part.Load()
		if int64(n) <= p || w.part.CompareAndSwap(p, int64(n)) {
			return
		}
	}
}

// holdings works out, from the workload's own calls, the most object
// bytes the protocol made the SuperLink hold at once: an object from the
// moment the PushObject that stored it returned (or, for one it did not
// ask for, already held, from the moment the PushMessages naming it
// returned) until the ConfirmMessageReceived of the last message that
// names it is sent, when a SuperLink may forget it. Nothing else is
// counted: not requests in flight, not the frames or buffers a
// SuperLink reads them into. It is the least any SuperLink holding its
// objects in memory needs for the same run.
type holdings struct {
	mu         sync.Mutex
	size       map[string]int64    // objects held, by id
	refs       map[string]int      // messages not yet confirmed naming each object
	msgs       map[string][]string // each message's objects (each once)
	live, peak int64
}

func newHoldings() *holdings {
	return &holdings{size: map[string]int64{}, refs: map[string]int{}, msgs: map[string][]string{}}
}

// message records a message stored with the objects of t; those not in
// toPush are held already.
func (h *holdings) message(t *inflatable.Tree, toPush map[string]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.msgs[t.ID]; ok {
		return
	}
	var ids []string
	for _, o := range t.Objects() {
		ids = append(ids, o.ID)
		h.refs[o.ID]++
		if _, ok := h.size[o.ID]; !ok && !toPush[o.ID] {
			h.hold(o.ID, int64(len(o.Content)))
		}
	}
	h.msgs[t.ID] = ids
}

// stored records an object stored by a PushObject.
func (h *holdings) stored(id string, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.size[id]; !ok && h.refs[id] > 0 {
		h.hold(id, int64(n))
	}
}

func (h *holdings) hold(id string, n int64) {
	h.size[id] = n
	h.live += n
	h.peak = max(h.peak, h.live)
}

// confirm records a message confirmed received: the objects nothing else
// names may go.
func (h *holdings) confirm(msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range h.msgs[msg] {
		if h.refs[id]--; h.refs[id] <= 0 {
			delete(h.refs, id)
			h.live -= h.size[id]
			delete(h.size, id)
		}
	}
	delete(h.msgs, msg)
}

func (h *holdings) peakBytes() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peak
}

// clientOptions are the gRPC options of the workload's clients: Flower's
// paths, objects of 5 MiB and more received.
func clientOptions(creds credentials.TransportCredentials, more ...grpc.DialOption) []grpc.DialOption {
	opts := append(flwr129.ClientOptions(), grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	return append(opts, more...)
}

// each calls fn for every item, at most n at once, and returns the first
// error (the rest are not started once one failed).
func each[T any](ctx context.Context, items []T, n int, fn func(context.Context, T) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, n)
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, it); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				cancel()
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// pullObjects pulls objects by id through t, at most n at once, retrying one not
// yet available with Flower's backoff (1 s, doubling to 10 s, jittered),
// and checks that each hashes to its id.
func pullObjects(ctx context.Context, w *world129, t *traffic, ids []string, pull func(context.Context, string) (*flwr129.PullObjectResponse, error)) (map[string][]byte, error) {
	var mu sync.Mutex
	out := make(map[string][]byte, len(ids))
	err := each(ctx, ids, w.o.Concurrency, func(ctx context.Context, id string) error {
		delay := time.Second
		for try := 0; ; try++ {
			r, err := pull(ctx, id)
			if err != nil {
				return fmt.Errorf("PullObject %s: %w", id, err)
			}
			if !r.GetObjectFound() {
				return fmt.Errorf("PullObject %s: not found", id)
			}
			if r.GetObjectAvailable() {
				c := r.GetObjectContent()
				if inflatable.ID(c) != id {
					return fmt.Errorf("PullObject %s: the content hashes to %s", id, inflatable.ID(c))
				}
				t.out.Add(int64(len(c)))
				mu.Lock()
				out[id] = c
				mu.Unlock()
				return nil
			}
			if try >= 500 {
				return fmt.Errorf("PullObject %s: not available after %d tries", id, try)
			}
			if err := sleepCtx(ctx, time.Duration(float64(delay)*(0.8+0.4*rand.Float64()))); err != nil {
				return err
			}
			delay = min(2*delay, 10*time.Second)
		}
	})
	return out, err
}

// pushObjects pushes the objects of t the SuperLink asked for through tr,
// at most n at once.
func pushObjects(ctx context.Context, w *world129, tr *traffic, t *inflatable.Tree, toPush []string, push func(context.Context, string, []byte) (*flwr129.PushObjectResponse, error)) error {
	want := map[string]bool{}
	for _, id := range toPush {
		want[id] = true
	}
	var objs []*inflatable.Tree
	for _, o := range t.Objects() {
		if want[o.ID] {
			objs = append(objs, o)
		}
	}
	return each(ctx, objs, w.o.Concurrency, func(ctx context.Context, o *inflatable.Tree) error {
		r, err := push(ctx, o.ID, o.Content)
		if err != nil {
			return fmt.Errorf("PushObject %s: %w", o.ID, err)
		}
		if !r.GetStored() {
			return fmt.Errorf("PushObject %s: not stored", o.ID)
		}
		w.pushed(tr, len(o.Content))
		w.held.stored(o.ID, len(o.Content))
		return nil
	})
}

// treeIDs lists the ids of a message's object tree, each once, children
// first (Flower's iterate_object_tree).
func treeIDs(t *flwr129.ObjectTree) []string {
	var out []string
	seen := map[string]bool{}
	var walk func(*flwr129.ObjectTree)
	walk = func(t *flwr129.ObjectTree) {
		for _, c := range t.GetChildren() {
			walk(c)
		}
		if !seen[t.GetObjectId()] {
			seen[t.GetObjectId()] = true
			out = append(out, t.GetObjectId())
		}
	}
	walk(t)
	return out
}

// secondsNow is the time as Flower's messages carry it: seconds since the
// epoch.
func secondsNow() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// heartbeats calls beat every 0.8 interval, jittered by a tenth, as
// Flower's HeartbeatSender, until ctx ends.
func heartbeats(ctx context.Context, interval time.Duration, beat func(context.Context)) {
	for {
		d := time.Duration(float64(interval) * 0.8 * (0.9 + 0.2*rand.Float64()))
		if sleepCtx(ctx, d) != nil {
			return
		}
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		beat(c)
		cancel()
	}
}
