package app

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/transport"
)

// NodeOptions configures RunNode. The zero value of each field is its default.
type NodeOptions struct {
	// Server is the Fleet API address, host:port. Required (the command's
	// default is 0.0.0.0:9092, as Flower 1.8.0).
	Server string
	// TLS: root certificates, server name, or Insecure for plaintext.
	// Without Insecure the node always uses TLS (system roots when no
	// root certificate file is given).
	TLS transport.ClientOptions
	// MaxRetries bounds the retries of a failing call (network failures):
	// 0 means unlimited (Flower 1.8.0 without --max-retries), a negative
	// value no retry at all (Flower 1.8.0's --max-retries 0).
	MaxRetries int
	// MaxWaitTime bounds the time spent retrying one failing call: 0 means
	// unlimited, a negative value no retry at all.
	MaxWaitTime time.Duration
	// PingInterval is the ping_interval in seconds sent with CreateNode
	// (default 30); the node pings about every two thirds of it.
	PingInterval float64
	// PollInterval is the wait between PullTaskIns calls when no task
	// came (default 3s). After a task the node asks again at once.
	PollInterval time.Duration
	// Logger receives the node's log (default: discard).
	Logger *slog.Logger
	// NewClient makes the ClientApp once the node id is known (default
	// NewDemoClient).
	NewClient NewClientFunc
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o NodeOptions) withDefaults() (NodeOptions, error) {
	if o.Server == "" {
		return o, errors.New("NodeOptions.Server is empty: give the SuperLink's Fleet API address, such as 127.0.0.1:9092")
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 30
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 3 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.NewClient == nil {
		o.NewClient = NewDemoClient
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// deleteTimeout bounds the DeleteNode call made on the way out.
const deleteTimeout = 5 * time.Second

// RunNode runs a SuperNode: it registers with the SuperLink's Fleet API
// (CreateNode with ping_interval 30), pings in the background, pulls tasks
// (every PollInterval when idle) and answers each through the ClientApp,
// with the record keys of Flower 1.8.0. It blocks until:
//   - a reconnect task with seconds 0 came: it answers reason 1, calls
//     DeleteNode and returns nil (a reconnect with seconds > 0 leaves, waits
//     that long and registers again as a new node);
//   - ctx ends (SIGINT/SIGTERM in the command): it calls DeleteNode and
//     returns nil;
//   - a TLS failure that no retry can fix (wrong CA, expired certificate,
//     name mismatch, TLS/plaintext mismatch): it returns transport's
//     one-line explanation at once, without retrying;
//   - a network failure outlasted MaxRetries or MaxWaitTime: an error
//     wrapping ErrGaveUp (Flower 1.8.0 exits 0 there; we do not);
//   - the address serves the SuperLink's Driver API, not its Fleet API (or
//     no Fleet API at all): an error matching ErrWrongAPI that says which
//     port is which, at once;
//   - the SuperLink refused a call for another reason: that error.
func RunNode(ctx context.Context, o NodeOptions) error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	c := &caller{addr: o.Server, tls: o.TLS, log: o.Logger, now: o.Now, b: backoff{
		Base: defaultBackoffBase, Max: defaultBackoffMax, MaxRetries: o.MaxRetries, MaxWaitTime: o.MaxWaitTime, Rand: rand.Float64,
	}}
	conn, err := dial(ctx, c)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer conn.Close()
	n := &node{o: o, c: c, conn: conn, fleet: pb.NewFleetClient(conn)}
	for {
		seconds, err := n.session(ctx)
		if err != nil || seconds == 0 {
			return err
		}
		o.Logger.Info("reconnecting later, as the server asked", "seconds", seconds)
		if sleep(ctx, time.Duration(seconds)*time.Second) != nil {
			return nil
		}
	}
}

type node struct {
	o     NodeOptions
	c     *caller
	conn  grpc.ClientConnInterface
	fleet pb.FleetClient
}

// errNodeGone means the SuperLink no longer knows the node: register again.
var errNodeGone = errors.New("node unknown to the SuperLink")

// session registers, serves tasks and unregisters. It returns 0, nil to
// stop (reconnect 0 or ctx ended), seconds > 0 to come back later, or an error.
func (n *node) session(ctx context.Context) (int64, error) {
	for {
		seconds, err := n.once(ctx)
		if errors.Is(err, errNodeGone) {
			n.o.Logger.Warn("the SuperLink forgot this node (restarted, or pings missed); registering again")
			if sleep(ctx, n.o.PollInterval) != nil {
				return 0, nil
			}
			continue
		}
		return seconds, err
	}
}

func (n *node) once(ctx context.Context) (int64, error) {
	var id int64
	err := n.c.do(ctx, "CreateNode", func(cctx context.Context) error {
		resp, err := outlastStop(ctx, cctx, func(ctx context.Context) (*pb.CreateNodeResponse, error) {
			return n.fleet.CreateNode(ctx, &pb.CreateNodeRequest{PingInterval: n.o.PingInterval})
		})
		id = resp.GetNode().GetNodeId()
		return err
	})
	if err == nil && ctx.Err() != nil {
		// Stopped while registering: the SuperLink knows the node, so
		// unregister it rather than leave it to miss its pings.
		n.deleteNode(&pb.Node{NodeId: id})
		return 0, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil
		}
		if werr := wrongAPI(ctx, n.conn, n.o.Server, fleetAPI, err); werr != nil {
			return 0, werr
		}
		return 0, err
	}
	self := &pb.Node{NodeId: id}
	n.o.Logger.Info("node registered", "node_id", id, "server", n.o.Server)
	app := n.o.NewClient(id)

	pctx, stopPing := context.WithCancel(ctx)
	pingDone := make(chan struct{})
	lost := make(chan struct{}, 1)
	go func() {
		defer close(pingDone)
		n.pingLoop(pctx, self, lost)
	}()
	defer func() {
		stopPing()
		<-pingDone
	}()

	for {
		var ins *pb.TaskIns
		err := n.c.do(ctx, "PullTaskIns", func(ctx context.Context) error {
			resp, err := n.fleet.PullTaskIns(ctx, &pb.PullTaskInsRequest{Node: self})
			if len(resp.GetTaskInsList()) > 0 {
				ins = resp.GetTaskInsList()[0]
			}
			return err
		})
		if err == nil && ins == nil {
			t := time.NewTimer(n.o.PollInterval)
			select {
			case <-t.C:
				continue
			case <-lost:
				t.Stop()
				return 0, errNodeGone
			case <-ctx.Done():
				t.Stop()
			}
		}
		if ctx.Err() != nil {
			n.deleteNode(self)
			return 0, nil
		}
		if status.Code(err) == codes.NotFound {
			return 0, errNodeGone
		}
		if err != nil {
			n.deleteNode(self)
			return 0, err
		}
		log := n.o.Logger.With("task_id", ins.GetTaskId(), "task_type", ins.GetTask().GetTaskType(), "group_id", ins.GetGroupId(), "run_id", ins.GetRunId())
		log.Debug("task received")
		start := time.Now()
		r := handleTask(ctx, app, id, ins, n.o.Now)
		if e := r.res.GetTask().GetError(); e != nil {
			log.Warn("task failed", "error", e.GetReason())
		}
		err = n.c.do(ctx, "PushTaskRes", func(ctx context.Context) error {
			_, err := n.fleet.PushTaskRes(ctx, &pb.PushTaskResRequest{TaskResList: []*pb.TaskRes{r.res}})
			return err
		})
		if ctx.Err() != nil {
			n.deleteNode(self)
			return 0, nil
		}
		if err != nil && (errors.Is(err, ErrGaveUp) || transport.IsPermanent(err)) {
			n.deleteNode(self)
			return 0, err
		}
		if err != nil {
			// The SuperLink refused this one result (say, its TaskIns is
			// gone); the node itself is fine.
			log.Warn("result refused", "error", err)
		} else {
			log.Info("task answered", "duration", time.Since(start).Round(time.Millisecond))
		}
		if r.reconnect {
			n.deleteNode(self)
			n.o.Logger.Info("node left, as the server asked", "node_id", id)
			return r.seconds, nil
		}
	}
}

// pingLoop pings once at once and then about every 2/3 of the ping
// interval (±12.5%), as Flower 1.8.0, until ctx ends. Failures are logged;
// the task loop handles connection trouble.
//
// A Ping the SuperLink does not acknowledge means it no longer knows the
// node (it restarted, or the node missed its pings): pingLoop signals lost
// and returns, and the node registers again.
func (n *node) pingLoop(ctx context.Context, self *pb.Node, lost chan<- struct{}) {
	base := time.Duration(n.o.PingInterval * float64(time.Second) * 2 / 3)
	for first := true; ; first = false {
		if !first {
			if err := sleep(ctx, jitter(base, 0.125)); err != nil {
				return
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := n.fleet.Ping(cctx, &pb.PingRequest{Node: self, PingInterval: n.o.PingInterval})
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			n.o.Logger.Warn("ping failed", "error", status.Convert(err).Message())
		case !resp.GetSuccess():
			n.o.Logger.Warn("ping not acknowledged: the SuperLink does not know this node", "node_id", self.GetNodeId())
			lost <- struct{}{}
			return
		}
	}
}

// deleteNode unregisters, best effort, even when the node's ctx has ended.
// outlastStop runs call with callCtx's deadline but not its cancellation
// by stop: a call the SuperLink may already have carried out (CreateNode)
// is given up to deleteTimeout after stop ends to bring its answer, so the
// caller learns what to undo. Without a stop it is call(callCtx).
func outlastStop[T any](stop, callCtx context.Context, call func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(callCtx))
	defer cancel()
	if d, ok := callCtx.Deadline(); ok {
		var c2 context.CancelFunc
		ctx, c2 = context.WithDeadline(ctx, d)
		defer c2()
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-stop.Done():
	}
	t := time.NewTimer(deleteTimeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.v, r.err
	case <-t.C:
		cancel()
		r := <-done
		return r.v, r.err
	}
}

func (n *node) deleteNode(self *pb.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	if _, err := n.fleet.DeleteNode(ctx, &pb.DeleteNodeRequest{Node: self}); err != nil {
		n.o.Logger.Warn("DeleteNode failed", "node_id", self.GetNodeId(), "error", status.Convert(err).Message())
		return
	}
	n.o.Logger.Info("node deleted", "node_id", self.GetNodeId())
}
