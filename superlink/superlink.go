// Package superlink is Sepal's SuperLink: the Flower 1.8.0 Fleet API (for
// SuperNodes) and Driver API (for ServerApps) over gRPC, sharing one
// state.State (in memory unless Options.State says otherwise).
//
// It follows the 1.8.0 semantics of PROTOCOL.md (random signed 64-bit node
// and run ids, UUID4 task ids, liveness from ping_interval, a TaskIns handed
// to exactly one node once, results forgotten once pulled, the made-up
// NODE_UNAVAILABLE result for an offline consumer) with these differences on
// purpose:
//
//   - Requests 1.8.0 answers with UNKNOWN and a Python exception text, or
//     silently accepts, get a status code and a message that says what to
//     do: InvalidArgument for malformed requests (empty lists, ttl <= 0,
//     a task id that is not a UUID, ...), NotFound for an unknown run, an
//     unknown consumer node, DeleteNode of an unknown node, or a TaskRes
//     whose ancestry names no stored TaskIns, PermissionDenied for a TaskRes
//     from a node other than the TaskIns's consumer, and FailedPrecondition
//     for a TaskRes to a TaskIns not yet pulled, or twice in one request.
//     A TaskRes from the TaskIns's consumer that repeats a stored one (a
//     retry), or that comes after PullTaskRes delivered a result for its
//     TaskIns (say NODE_UNAVAILABLE while the node was cut off), is
//     answered OK and discarded, as 1.8.0 accepts it: a 1.8.0 SuperNode
//     retries a refused PushTaskRes forever and would pull no other task.
//   - Every element of PushTaskRes's task_res_list is stored (1.8.0 only
//     the first); pushes are all-or-nothing.
//   - PullTaskRes for a TaskIns whose consumer was deleted answers the
//     NODE_UNAVAILABLE result (1.8.0 fails with UNKNOWN).
//   - A result PullTaskRes delivered is kept (without its TaskIns's
//     arrays) until the run's next PullTaskRes does not ask for it; asked
//     for again, it is delivered again (1.8.0: deleted at once), so that a
//     ServerApp whose response was lost, by the network or a SuperLink
//     that died while sending it, still gets it.
//   - Identical parameter arrays are held once, however many tasks carry
//     them, and sent from that one copy.
//   - Registration is bounded (Options.NodeLimits): CreateNode and Ping
//     refuse a ping_interval above the cap with InvalidArgument, and
//     CreateNode past the limits per connection, per peer and per
//     certificate, or of all nodes, with ResourceExhausted. A node whose
//     client certificate is revoked is forgotten at the CRL's reload
//     (Options.Revocations), so its tasks are answered NODE_UNAVAILABLE.
//
// Kept as in 1.8.0: Ping of an unknown node answers success=false;
// PullTaskIns of an unknown or anonymous node answers no task (a SuperNode
// that polls too early keeps working); DeleteNode of an anonymous node is a
// no-op; GetNodes of an unknown run is empty; TTL is validated, and not
// enforced on delivery. A TaskIns stays until the ServerApp has its result
// (the real one, or NODE_UNAVAILABLE once its consumer is offline or
// deleted), or, unlike 1.8.0, until its ttl has run out for a minute since
// it was pushed: then Serve's sweep forgets it and its result, so that the
// tasks of a ServerApp that went away do not hold memory forever.
//
// Memory: the in-memory state (state/memstate) holds Array.data values of
// 4 KiB and more once, content addressed, with reference counts, released
// when the last task holding them is deleted. The gRPC codec (see
// codec.go) sends large arrays by reference instead of copying them into
// each response, and decodes large bytes fields straight from the received
// frames, without copying an array the state already holds (a state that
// is a state.BlobFinder). One
// FedAvg round of a 100 MiB model to 16 nodes peaks near 2.3x the model
// size in the SuperLink's heap, where a copy per node would be 16x.
package superlink

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink/internal/codec"
	"github.com/sepal-fl/sepal/superlink/internal/wire"
)

// MaxMessageSize is the largest gRPC message received or sent, both ways:
// 512 MiB, as Flower 1.8.0.
const MaxMessageSize = 536870912

// Options configure a SuperLink. State is required; the zero value of
// every other field is its default.
type Options struct {
	// Logger receives one line per node that joins or leaves and per run
	// created. Default: slog.Default().
	Logger *slog.Logger
	// Now is the clock of the Flower 1.29.0 services' checks (node
	// signatures' time window). Default: time.Now.
	Now func() time.Time
	// ShutdownGrace bounds how long Serve waits for RPCs in flight once its
	// context ends before it cuts the connections. Default: 5s.
	ShutdownGrace time.Duration
	// SweepInterval is how often Serve calls State.Sweep, which looks for
	// nodes that missed their ping, so that their leaving is logged, and
	// for tasks past their ttl, to forget them. Default: 5s.
	SweepInterval time.Duration
	// State keeps the nodes, runs and tasks of Flower 1.8.0, and those of
	// Flower 1.29.0 when it is a state.LinkState too (else Flower129.State
	// must be set for them); the SuperLink does not close it. Required:
	// memstate.New for a state in memory.
	State state.State
	// Limits bound what peers may make Serve hold: request sizes, the
	// in-flight budget, connections. Default: see Limits.
	Limits Limits
	// Flower129 configures the Flower 1.29.0 generation (its Fleet
	// methods, ServerAppIo and Control APIs). Default: see
	// Flower129Options.
	Flower129 Flower129Options
	// NodeLimits bound the nodes peers may register on the Fleet API.
	// Default: see NodeLimits.
	NodeLimits NodeLimits
	// Revocations, when not nil, returns the client-certificate CRL in
	// force on the Fleet API (nil while there is none): Serve forgets the
	// nodes created with a certificate it lists, through
	// State.RevokeNodes, at start and within a second of each new list
	// (see watchRevocations). Default nil.
	Revocations func() *x509.RevocationList
	// ServerOptions are added to the gRPC server options of every API,
	// before Sepal's own, so that interceptors given here (metrics) run
	// outermost and see every call as answered. Default: none.
	ServerOptions []grpc.ServerOption

	// wireTest changes the wire layer's configuration, in tests.
	wireTest func(*wire.Config)
}

// SuperLink holds the state shared by the Fleet and Driver services. Its
// methods are safe for concurrent use.
type SuperLink struct {
	log    *slog.Logger
	opts   Options
	state  state.State
	codec  *codec.Codec
	wire   *wire.Wire
	flower *flower129
	nodes  *nodeGuard

	stopOnce sync.Once
	stopping chan struct{} // closed when Serve begins to stop
}

// New returns a SuperLink on o.State. It panics when o.State is nil (a
// programming error: a SuperLink has nowhere to keep anything).
func New(o Options) *SuperLink {
	if o.State == nil {
		panic("superlink.New: Options.State is nil: pass memstate.New(...) for a state in memory")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ShutdownGrace <= 0 {
		o.ShutdownGrace = 5 * time.Second
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 5 * time.Second
	}
	o.Limits = o.Limits.withDefaults()
	bf, _ := o.State.(state.BlobFinder)
	wc := o.Limits.wireConfig(o.Logger)
	if o.wireTest != nil {
		o.wireTest(&wc)
	}
	w := wire.New(wc)
	c := codec.New(codec.Options{Finder: bf, StandIns: w.StandIns(), Fresh: fresh, Opaque: opaque})
	g := newNodeGuard(o.NodeLimits, o.Logger)
	s := &SuperLink{log: o.Logger, opts: o, state: o.State, codec: c, wire: w,
		flower: newFlower129(o, g), nodes: g, stopping: make(chan struct{})}
	if s.flower != nil {
		s.flower.control.stopping = s.stopping
	}
	return s
}

// fresh reports whether the arrays of a request are most likely new: a
// node's results.
func fresh(m proto.Message) bool {
	_, ok := m.(*flwrproto.PushTaskResRequest)
	return ok
}

// opaque reports whether the large bytes of a request are Flower 1.29.0
// objects, which the states key by their SHA-256 (computed once, by the
// state) and never look up by content.
func opaque(m proto.Message) bool {
	_, ok := m.(*flwr129.PushObjectRequest)
	return ok
}

// Fleet returns the Fleet service (the SuperNodes' API) on this SuperLink's
// state, for tests and for callers that build their own gRPC server.
func (s *SuperLink) Fleet() flwrproto.FleetServer { return &fleet{s: s.state, g: s.nodes} }

// Driver returns the Driver service (the ServerApps' API) on this
// SuperLink's state.
func (s *SuperLink) Driver() flwrproto.DriverServer { return &driver{s: s.state} }

// serverOptions are the gRPC server options of one API served with
// creds (nil: plaintext): the wire layer's (guard, limits, keepalive:
// server pings after 210 s idle as 1.8.0, clients may ping every 10 s,
// connections recycled after about an hour so that long-lived clients
// pick up a rotated certificate), 512 MiB messages both ways (as 1.8.0),
// the codec that sends large arrays without copying them, and the
// interceptors: a panic answered Internal, an undecodable request
// InvalidArgument, a revoked client certificate Unauthenticated. Options.
// ServerOptions come first, so that their interceptors run outermost.
func (s *SuperLink) serverOptions(creds credentials.TransportCredentials) []grpc.ServerOption {
	opts := slices.Clone(s.opts.ServerOptions)
	opts = append(opts, s.wire.ServerOptions(creds)...)
	return append(opts,
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.ForceServerCodecV2(s.codec),
		grpc.ChainUnaryInterceptor(recoverInterceptor(s.log), codec.InvalidUnaryInterceptor, recheckInterceptor),
		grpc.ChainStreamInterceptor(codec.InvalidStreamInterceptor),
	)
}

// watchPressure turns both health services NOT_SERVING while small
// requests are being refused for want of budget (pings and polls fail:
// a load balancer had better send new calls elsewhere), and SERVING again
// once they pass, until ctx ends.
func (s *SuperLink) watchPressure(ctx context.Context, servers map[*health.Server][]string) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	under := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if p := s.wire.Pressure(); p != under {
			under = p
			st := healthpb.HealthCheckResponse_SERVING
			if p {
				st = healthpb.HealthCheckResponse_NOT_SERVING
				st := s.wire.Stats()
				s.log.Warn("small requests are refused for want of in-flight budget: health says NOT_SERVING until they pass", "inflight_bytes", st.InflightBytes, "max_inflight_bytes", st.MaxInflightBytes)
			} else {
				s.log.Info("small requests pass again: health says SERVING")
			}
			for h, names := range servers {
				for _, name := range names {
					h.SetServingStatus(name, st)
				}
			}
		}
	}
}

// Ready reports whether the SuperLink serves small requests now: false,
// with why, while they are refused for want of in-flight budget.
func (s *SuperLink) Ready() (bool, string) {
	if s.wire.Pressure() {
		return false, "small requests are being refused: the in-flight budget is full"
	}
	return true, ""
}

// recoverInterceptor turns a panic in a handler into Internal, so that one
// bad request never takes the SuperLink down.
func recoverInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("an RPC handler panicked; the call gets Internal", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				resp, err = nil, status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
			}
		}()
		return h(ctx, req)
	}
}
