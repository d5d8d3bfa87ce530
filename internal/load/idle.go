package load

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/sepal-fl/sepal/app"
	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/transport"
)

// IdleOptions describe the idle-nodes workload.
type IdleOptions struct {
	// Nodes is the number of SuperNodes (default 1000), each with its own
	// TLS connection.
	Nodes int
	// Poll is their wait between PullTaskIns calls (default 3s, as Flower
	// 1.8.0).
	Poll time.Duration
	// Settle is how long they poll, all registered; the SuperLink's RSS
	// is the median of readings every second in its second half (default
	// 10 polls).
	Settle time.Duration
	// Ramp spreads the nodes' start over this time (default 2s), as a
	// fleet does not connect in one instant.
	Ramp time.Duration
	// Logger receives the nodes' logs (default: discard).
	Logger *slog.Logger
}

// IdleResult is the SuperLink's memory before the nodes came and while
// they poll.
type IdleResult struct {
	Nodes int
	// Before is the SuperLink's memory before the nodes came; After the
	// median RSS while they poll, with the peak RSS so far.
	Before, After Memory
	// CPU is the SuperLink's CPU time during Settle: the cost of the
	// polling itself.
	CPU    time.Duration
	Settle time.Duration
}

// PerNode is the RSS the SuperLink gained per connected node.
func (r IdleResult) PerNode() float64 {
	return float64(r.After.RSS-r.Before.RSS) / float64(r.Nodes)
}

// RunIdle reads the SuperLink's RSS, connects o.Nodes SuperNodes
// (app.RunNode, CreateNode, a Ping every 20 s, PullTaskIns every o.Poll),
// waits until the SuperLink lists them all online, lets them poll for
// o.Settle and reads its RSS again; then it stops the nodes.
func RunIdle(ctx context.Context, s *SuperLink, o IdleOptions) (IdleResult, error) {
	if o.Nodes <= 0 {
		o.Nodes = 1000
	}
	if o.Poll <= 0 {
		o.Poll = 3 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 10 * o.Poll
	}
	if o.Ramp <= 0 {
		o.Ramp = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	res := IdleResult{Nodes: o.Nodes, Settle: o.Settle}
	drv, closeDrv, err := driverClient(s)
	if err != nil {
		return res, err
	}
	defer closeDrv()
	run, err := drv.CreateRun(ctx, &pb.CreateRunRequest{})
	if err != nil {
		return res, fmt.Errorf("CreateRun: %w", err)
	}
	if res.Before, err = s.Memory(); err != nil {
		return res, err
	}

	nctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, o.Nodes)
	for i := range o.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sleepCtx(nctx, o.Ramp*time.Duration(i)/time.Duration(o.Nodes)) != nil {
				return
			}
			err := app.RunNode(nctx, app.NodeOptions{
				Server: s.Fleet, TLS: s.TLS, PollInterval: o.Poll, Logger: o.Logger,
				NewClient: func(int64) app.ClientApp { return &client{index: i, values: 1} },
			})
			if err != nil {
				errc <- fmt.Errorf("node %d: %w", i, err)
			}
		}()
	}
	defer wg.Wait()
	defer stop()

	deadline := time.Now().Add(o.Ramp + 2*time.Minute)
	for {
		r, err := drv.GetNodes(ctx, &pb.GetNodesRequest{RunId: run.RunId})
		if err != nil {
			return res, fmt.Errorf("GetNodes: %w", err)
		}
		if len(r.Nodes) >= o.Nodes {
			break
		}
		select {
		case err := <-errc:
			return res, err
		default:
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("only %d of %d nodes registered within %v", len(r.Nodes), o.Nodes, o.Ramp+2*time.Minute)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return res, err
		}
	}
	cpu0, err := s.CPU()
	if err != nil {
		return res, err
	}
	// The RSS in the second half of Settle, read every second: the
	// median is the steady state (the garbage collector's cycles and the
	// return of memory freed after the nodes' handshakes make it wander).
	if err := sleepCtx(ctx, o.Settle/2); err != nil {
		return res, err
	}
	var rss []int64
	for end := time.Now().Add(o.Settle / 2); ; {
		m, err := s.Memory()
		if err != nil {
			return res, err
		}
		rss = append(rss, m.RSS)
		res.After.HWM = m.HWM
		if !time.Now().Before(end) {
			break
		}
		if err := sleepCtx(ctx, min(time.Second, time.Until(end))); err != nil {
			return res, err
		}
	}
	slices.Sort(rss)
	res.After.RSS = rss[len(rss)/2]
	cpu1, err := s.CPU()
	if err != nil {
		return res, err
	}
	res.CPU = cpu1 - cpu0
	select {
	case err := <-errc:
		return res, err
	default:
	}
	return res, nil
}

// driverClient opens a Driver API client on s.
func driverClient(s *SuperLink) (pb.DriverClient, func(), error) {
	creds, err := transport.ClientCredentials(s.TLS)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(s.Driver, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, err
	}
	return pb.NewDriverClient(conn), func() { conn.Close() }, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
